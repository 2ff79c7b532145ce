"""Seed scale: a Phi-3-mini-shaped model (3.8B parameters, random bf16 weights) exported with the
OpenVINO Phi-3 sample's exact int4 flags, then TTFT and TPOT of ovgen vs openvino-genai's LLMPipeline
vs optimum-intel's OVModelForCausalLM.generate (the sample's own path) on that IR, interleaved.

Not run by CI: building takes minutes and ~12 GB of RAM. The folders are kept for later runs
(`$OVGEN_HOME/models/phi3-mini-random/{hf,openvino-int4}`, ~7.6 GB + ~2.3 GB; delete when done).
All three compile with the same properties (the sample's ov_config plus ovgen's CPU defaults, i.e.
`Model.ov_config`) and use the sample's prompt ids (the seed prompt, add_special_tokens=False),
greedy, ignore_eos / min_new_tokens so every run makes the same number of tokens; the tokens
are checked to agree.

    python benchmarks/phi3_seed_scale.py [--runs 3] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from ovgen import phi3
from ovgen.hf_files import read_gguf_metadata
from ovgen.prepare import GGUF_NAME, model_root, ovgen_home, prepare


def build(root: Path) -> Path:
    """Checkpoint and int4 IR, each built once (in a temporary folder renamed when complete)."""
    prepare([], progress=False)  # the SmolLM2 GGUF provides the base vocabulary
    meta = read_gguf_metadata(model_root() / "gguf" / GGUF_NAME)
    for name, make in (("hf", lambda d: phi3.build_checkpoint(meta, d, phi3.MINI)),
                       ("openvino-int4", lambda d: phi3.export(root / "hf", d, root / "export.log"))):
        final = root / name
        if final.is_dir():  # renamed into place only when complete
            continue
        tmp = root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        make(tmp)
        tmp.rename(final)
        print(f"built {final} in {time.perf_counter() - t0:.0f} s (peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB, children "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6:.1f} GB)", flush=True)
    return root / "openvino-int4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=default_path("phi3_seed_scale"))
    args = ap.parse_args()
    ir = build(ovgen_home() / "models" / "phi3-mini-random")
    n = args.new_tokens

    import openvino as ov
    import openvino_genai as og
    import torch
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer
    from _timing import hf_stamp_streamer

    model = ovgen.load(ir, ov_config=phi3.SEED_OV_CONFIG)
    ids = model.tokenizer.encode(phi3.SEED_PROMPT)
    pipe = og.LLMPipeline(str(ir), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)  # same properties
    hf_tok = AutoTokenizer.from_pretrained(ir)
    ref = OVModelForCausalLM.from_pretrained(ir, device="CPU", ov_config=model.ov_config)
    assert hf_tok(phi3.SEED_PROMPT, add_special_tokens=False).input_ids == ids

    def stats(start: float, stamps: list[float], tokens: list[int]):
        stamps = np.asarray(stamps)
        return {"ttft_ms": (stamps[0] - start) * 1e3, "tpot_ms": float(np.median(np.diff(stamps))) * 1e3,
                "tokens": tokens}

    def run_ovgen():
        stamps = []
        t0 = time.perf_counter()
        res = ovgen.generate(model, ids, {"do_sample": False, "max_new_tokens": n, "ignore_eos": True},
                             on_token=lambda r: stamps.append(time.perf_counter()))
        return stats(t0, stamps, res.sequences[0].token_ids)

    inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
    gcfg = og.GenerationConfig()
    gcfg.max_new_tokens, gcfg.ignore_eos, gcfg.do_sample = n, True, False

    def run_genai():
        stamps = []

        def streamer(_token):
            stamps.append(time.perf_counter())
            return og.StreamingStatus.RUNNING

        t0 = time.perf_counter()
        res = pipe.generate(inputs, gcfg, streamer)
        return stats(t0, stamps[:n], [int(t) for t in res.tokens[0]])


    enc = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.int64)}

    def run_optimum():
        st = hf_stamp_streamer(time.perf_counter)
        t0 = time.perf_counter()
        out = ref.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n, streamer=st)
        return stats(t0, st.stamps, out[0, len(ids):].tolist())

    runners = {"ovgen": run_ovgen, "openvino-genai SDPA": run_genai, "optimum-intel generate": run_optimum}
    for fn in runners.values():  # warm-up, excluded
        fn()
    rows = {k: [] for k in runners}
    for _ in range(args.runs):
        for name, fn in runners.items():  # interleaved
            rows[name].append(fn())
    base = {m: np.median([r[m] for r in rows["ovgen"]]) for m in ("ttft_ms", "tpot_ms")}
    table = {}
    print(f"{'runtime':<24} {'TTFT ms':>9} {'TPOT ms':>9} {'TTFT ovgen/x':>13} {'TPOT ovgen/x':>13}")
    for name, rs in rows.items():
        ttft, tpot = np.median([r["ttft_ms"] for r in rs]), np.median([r["tpot_ms"] for r in rs])
        table[name] = {"ttft_ms": float(ttft), "tpot_ms": float(tpot), "ovgen_over_this_ttft": float(base["ttft_ms"] / ttft),
                       "ovgen_over_this_tpot": float(base["tpot_ms"] / tpot),
                       "same_tokens_as_ovgen": all(r["tokens"] == rows["ovgen"][0]["tokens"] for r in rs)}
        print(f"{name:<24} {ttft:9.1f} {tpot:9.1f} {base['ttft_ms'] / ttft:13.3f} {base['tpot_ms'] / tpot:13.3f}"
              f"  same tokens: {table[name]['same_tokens_as_ovgen']}")
    save_result(args.out, "phi3_seed_scale", runs=args.runs, new_tokens=n, prompt_tokens=len(ids), shape=phi3.MINI,
                export_flags=phi3.EXPORT_FLAGS, ov_config=model.ov_config,
                ir_bytes=(ir / "openvino_model.bin").stat().st_size, results=table)


if __name__ == "__main__":
    main()
