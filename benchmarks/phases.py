"""What each inference precision costs per phase on this CPU: the numbers `precision="fast"` chooses
from, at more lengths than its calibration times, with openvino-genai's default compile properties
beside them, and what the KV handover between two compiles costs by the prefill cache's precision.

One process; every compile of ovgen's IR (its graph heads included) is timed in a balanced order
per round, medians of `--rounds`: a decode step (median of 16) after a 64- and a 1,024-token
context, and prefill at 8 / 32 / 256 / 1,024 tokens. Then the handover of a 1,024-token prompt
from a bf16 prefill compile at each KV precision into an f32-dq decode compile (KV f16): reading
the state, and writing it.

    python benchmarks/phases.py [--rounds 4]
"""

from __future__ import annotations

import argparse
from time import perf_counter

import numpy as np

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced
from ovgen import fast
from ovgen.model import build_ir, compile_ir, resolve_model_dir
from ovgen.precision import compile_properties
from ovgen.runtime import describe_cpu

HINTS = {"f32 (exact)": ("f32", None), "f32-dq": ("f32-dq", None), "bf16": ("bf16", None),
         "bf16, KV u8 (genai defaults)": ("bf16", "u8")}
CONTEXTS = (64, 1024)
PREFILLS = (8, 32, 256, 1024)


def handover(ir, n: int) -> dict:
    dst = compile_ir(ir, "CPU", compile_properties("f32-dq", "CPU", None)).create_infer_request()
    out = {}
    for kv in ("f32", "f16", "u8"):
        src = compile_ir(ir, "CPU", compile_properties("bf16", "CPU", {"KV_CACHE_PRECISION": kv})).create_infer_request()
        read, write = [], []
        for _ in range(3):
            fast._prefill_time(src, n)
            t0 = perf_counter()
            got = [(s.name, s.state) for s in src.query_state()]
            t1 = perf_counter()
            states = {s.name: s for s in dst.query_state()}
            for name, tensor in got:
                states[name].state = tensor
            read.append((t1 - t0) * 1e3)
            write.append((perf_counter() - t1) * 1e3)
        out[kv] = {"read_ms": float(np.median(read)), "write_ms": float(np.median(write))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=default_path("phases"))
    args = ap.parse_args()
    ir, *_ = build_ir(resolve_model_dir(None))
    reqs = {k: compile_ir(ir, "CPU", compile_properties(h, "CPU", {"KV_CACHE_PRECISION": kv} if kv else None)
                          ).create_infer_request() for k, (h, kv) in HINTS.items()}
    cells = [("step", c) for c in CONTEXTS] + [("prefill", n) for n in PREFILLS]
    times = {(k, c): [] for k in reqs for c in cells}
    for i in range(args.rounds):
        for cell in cells:
            for k in balanced(list(reqs), i):
                kind, n = cell
                times[k, cell].append(fast._step_time(reqs[k], 16, n) if kind == "step" else fast._prefill_time(reqs[k], n))
    med = {k: {f"{kind} {n}": float(np.median(times[k, (kind, n)])) for kind, n in cells} for k in reqs}
    hand = handover(ir, 1024)
    report = ovgen.load().report
    print(f"CPU: {describe_cpu(report)}")
    print(f"{'hint':<30}" + "".join(f"{kind + ' ' + str(n):>14}" for kind, n in cells) + "   (ms)")
    for k, row in med.items():
        print(f"{k:<30}" + "".join(f"{v:>14.1f}" for v in row.values()))
    for kv, v in hand.items():
        print(f"handover of 1024 tokens, bf16 prefill with KV {kv} -> f32-dq decode (KV f16): read {v['read_ms']:.1f} ms, "
              f"write {v['write_ms']:.1f} ms")
    save_result(args.out, "phases", rounds=args.rounds, report=report, results=med, handover=hand)


if __name__ == "__main__":
    main()
