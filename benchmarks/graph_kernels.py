"""What the graph passes and the overlap buy, each measured against running without it, interleaved.

1. slice_last_position: prefill time (TTFT's model part) at 32 / 512 / 2,048-token prompts, IR with
   the hidden state sliced to the last position before the LM head vs the IR as exported (logits for
   every prompt position).
2. Fused heads: host time per token (processors + choice, from the profile) for greedy with the
   argmax read from the graph's top-64 candidates vs np.argmax over the logits, and for top-k
   sampling on those candidates vs the whole vocabulary.
3. Overlap: TPOT with a consumer that takes 0 / 2 / 10 ms per token, next infer started
   asynchronously vs synchronously.
4. What the heads cost the graph: decode step of the sliced IR with each set of extra outputs vs
   none (lock-step, paired per-step ratios; raw InferRequests, no ovgen loop): logsumexp, + the
   top-64 candidates (what `ovgen.load` compiles), + the argmax head (stable TopK-1, compiled until
   this measurement showed its cost; greedy now reads the argmax from the top-64 candidates).

    python benchmarks/graph_kernels.py [--runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from time import perf_counter_ns

import numpy as np

import ovgen
from _results import default_path, save_result
from _timing import lockstep, median_ratio
from ovgen.bench import synthetic_prompt
from ovgen.kernels import graph
from ovgen.backend import TOP_CANDIDATES
from ovgen.model import read_ir
from ovgen.runtime import core

G = importlib.import_module("ovgen.generate")  # the module (ovgen.generate the attribute is the function)


def _top(ir) -> bool:
    return graph.add_topk_output(ir, TOP_CANDIDATES)


HEADS = {  # name -> graph passes after slice_last_position
    "no heads": (),
    "logsumexp": (graph.add_logsumexp_output,),
    "logsumexp + top-64 (ovgen.load)": (graph.add_logsumexp_output, _top),
    "logsumexp + top-64 + argmax": (graph.add_logsumexp_output, _top, graph.add_argmax_output),
}


def head_cost(model, runs: int, steps: int = 64) -> dict:
    """Decode step with each set of heads against none, lock-step, same properties as `model`."""
    requests = {}
    for name, passes in HEADS.items():
        ir = read_ir(model.path)
        graph.slice_last_position(ir)
        for p in passes:
            p(ir)
        requests[name] = core().compile_model(ir, model.device, model.ov_config).create_infer_request()
    prompt = np.array([synthetic_prompt(model.tokenizer, 32)], np.int64)
    past = {}

    def run(name: str, ids: np.ndarray):
        r, n, t = requests[name], past.get(name, 0), ids.shape[1]
        r.infer({"input_ids": ids, "attention_mask": np.ones((1, n + t), np.int64),
                 "position_ids": np.arange(n, n + t, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)})
        past[name] = n + t
        return r.get_tensor("logits").data

    def prefill(name: str):
        requests[name].reset_state()
        past[name] = 0
        return run(name, prompt)

    res = lockstep(list(requests), prefill, lambda name, tok: run(name, np.array([[tok]], np.int64)), steps, runs)
    for name, r in res.items():
        print(f"heads: {name:<32} decode step {r['step_ms']:6.2f} ms, / no heads {r['step_ratio']:.3f}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=default_path("graph_kernels"))
    args = ap.parse_args()

    sliced, full = ovgen.load(args.model), ovgen.load(args.model, last_logits_only=False)
    out: dict = {"slice_last_position": {}, "fused_head": {}, "overlap": {}}
    out["head_cost"] = head_cost(sliced, args.runs)

    # 1. prefill, sliced vs full LM head
    for n in (32, 512, 2048):
        ids = synthetic_prompt(sliced.tokenizer, n)
        times = {"sliced": [], "full": []}
        sessions = {"sliced": sliced.session(), "full": full.session()}
        for s in sessions.values():
            s.prefill(ids)  # warm-up at this shape
        for _ in range(args.runs):
            for name, s in sessions.items():
                t0 = perf_counter_ns()
                s.prefill(ids)
                times[name].append((perf_counter_ns() - t0) / 1e6)
        out["slice_last_position"][n] = {"sliced_ms": float(np.median(times["sliced"])),
                                         "full_ms": float(np.median(times["full"])),
                                         "sliced_over_full": median_ratio(times["sliced"], times["full"])}
        print(f"prefill {n:>5} tokens: sliced {np.median(times['sliced']):8.1f} ms, full "
              f"{np.median(times['full']):8.1f} ms, ratio {out['slice_last_position'][n]['sliced_over_full']:.3f}")

    # 2. host time per token with and without the graph's heads
    ids = synthetic_prompt(sliced.tokenizer, 32)
    no_candidates = dataclasses.replace(sliced, top_candidates=0)  # same compiled model, outputs unused
    numpy_argmax = lambda x: int(np.argmax(x))  # noqa: E731 - not `search.greedy`: decode scans the logits
    cases = {
        "greedy": ({"max_new_tokens": 64, "ignore_eos": True}, (sliced, G.greedy), (sliced, numpy_argmax)),
        "top_k50_top_p0.9": ({"max_new_tokens": 64, "ignore_eos": True, "do_sample": True, "top_k": 50,
                              "top_p": 0.9, "seed": 0}, (sliced, None), (no_candidates, None)),
    }
    original = G.greedy
    for case, (cfg, fused, plain) in cases.items():
        host = {"graph": [], "numpy": []}
        for _ in range(args.runs):
            for name, (model, choose) in (("graph", fused), ("numpy", plain)):
                G.greedy = choose or original
                try:
                    st = ovgen.generate(model, ids, cfg).profile.stats()
                finally:
                    G.greedy = original
                host[name].append((st["process_ms"] + st["choice_ms"]) / cfg["max_new_tokens"])
        out["fused_head"][case] = {"graph_host_ms_per_token": float(np.median(host["graph"])),
                                   "numpy_host_ms_per_token": float(np.median(host["numpy"])),
                                   "graph_over_numpy": median_ratio(host["graph"], host["numpy"])}
        r = out["fused_head"][case]
        print(f"{case:<17} host ms/token: graph head {r['graph_host_ms_per_token']:.3f}, NumPy "
              f"{r['numpy_host_ms_per_token']:.3f}, ratio {r['graph_over_numpy']:.3f}")

    # 3. overlap with consumers of different cost
    session = sliced.session()
    for cost_ms in (0, 2, 10):
        tpot = {True: [], False: []}
        consumer = (lambda r, c=cost_ms: time.sleep(c / 1e3)) if cost_ms else None
        for _ in range(args.runs):
            for overlap in (True, False):
                res = ovgen.generate(sliced, ids, {"max_new_tokens": 64, "ignore_eos": True}, session=session,
                                     on_token=consumer, overlap=overlap)
                tpot[overlap].append(res.metrics["tpot_ms"])
        out["overlap"][cost_ms] = {"overlap_tpot_ms": float(np.median(tpot[True])),
                                   "sync_tpot_ms": float(np.median(tpot[False])),
                                   "overlap_over_sync": median_ratio(tpot[True], tpot[False])}
        r = out["overlap"][cost_ms]
        print(f"consumer {cost_ms:>2} ms/token: TPOT overlap {r['overlap_tpot_ms']:.2f}, sync {r['sync_tpot_ms']:.2f}, "
              f"ratio {r['overlap_over_sync']:.3f}")
    save_result(args.out, "graph_kernels", runs=args.runs, **out)


if __name__ == "__main__":
    main()
