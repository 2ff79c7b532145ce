"""Beam search wall time: ovgen vs openvino-genai's LLMPipeline (SDPA backend) on the same IR.

4 beams, 64 new tokens, 2 returned sequences, the same prompt ids (a prompt whose beams run to the
length limit, so both run every step; not ignore_eos, which genai's beam search does not honour). Runs are interleaved (ovgen, genai, ovgen, genai, ...); the figure is the median over pairs of
ovgen's time / genai's time (goal <= 1.0). The outputs are checked to be the same tokens.

    python benchmarks/beam_vs_genai.py [-m DIR] [--pairs 7] [--new-tokens 64] [--beams 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import openvino as ov
import openvino_genai as og

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--out", default=default_path("beam_vs_genai"))
    args = ap.parse_args()

    model = ovgen.load(args.model)
    pipe = og.LLMPipeline(str(model.path), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)
    ids = model.tokenizer.encode(PROMPT)
    cfg = {"num_beams": args.beams, "num_return_sequences": 2, "max_new_tokens": args.new_tokens}
    gcfg = og.GenerationConfig()
    gcfg.num_beams, gcfg.num_return_sequences = args.beams, 2
    gcfg.max_new_tokens = args.new_tokens
    inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))

    def run_ovgen():
        t0 = time.perf_counter()
        res = ovgen.generate(model, ids, cfg)
        return time.perf_counter() - t0, [s.token_ids for s in res.sequences]

    def run_genai():
        t0 = time.perf_counter()
        res = pipe.generate(inputs, gcfg)
        return time.perf_counter() - t0, [[int(t) for t in s] for s in res.tokens]

    run_ovgen(), run_genai()  # warm-up, excluded
    ours, theirs, same, lengths = [], [], True, set()
    for _ in range(args.pairs):
        t_a, seq_a = run_ovgen()
        t_b, seq_b = run_genai()
        ours.append(t_a)
        theirs.append(t_b)
        same &= seq_a == seq_b
        lengths.update(len(s) for s in seq_a + seq_b)
    ratios = np.array(ours) / np.array(theirs)
    ratio = float(np.median(ratios))
    print(f"beam search, {args.beams} beams, {args.new_tokens} new tokens, {args.pairs} interleaved pairs")
    print(f"  ovgen  median {np.median(ours) * 1e3:8.1f} ms")
    print(f"  genai  median {np.median(theirs) * 1e3:8.1f} ms")
    print(f"  ovgen / genai = {ratio:.3f} (median of per-pair ratios; goal <= 1.0); same tokens: {same}; "
          f"sequence lengths {sorted(lengths)}")
    save_result(args.out, "beam_vs_genai", pairs=args.pairs, beams=args.beams, new_tokens=args.new_tokens,
                ratio_median=ratio, ratios=ratios.tolist(), ovgen_s=ours, genai_s=theirs, same_tokens=bool(same))


if __name__ == "__main__":
    main()
