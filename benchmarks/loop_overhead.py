"""Loop overhead per token: TPOT minus the bare `infer()` time of the same request.

For every generated token after the first, overhead = (time between this token's record and the
previous one) - (the infer() call that produced this token's logits). It covers input preparation,
reading logits, the processor chain, token choice, log-probabilities, detokenisation, stopping and
the generator itself. Modes run interleaved (A B A B ...); medians over all tokens of all runs.

    python benchmarks/loop_overhead.py [-m DIR] [--runs 5] [--new-tokens 128]
"""

from __future__ import annotations

import argparse

import numpy as np

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script

MODES = {
    "greedy": {"do_sample": False},
    "topk50_topp0.9_rep1.1": {"do_sample": True, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0},
}
GOALS = {"greedy": 0.01, "topk50_topp0.9_rep1.1": 0.03}
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def one_run(model, cfg: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    res = ovgen.generate(model, PROMPT, {**cfg, "max_new_tokens": n, "ignore_eos": True})
    recs = res.sequences[0].records
    ready = np.array([r.ready_ns for r in recs], dtype=np.int64)
    infer = np.array([r.model_ns for r in recs[1:]], dtype=np.int64)
    return np.diff(ready), infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default=default_path("loop_overhead"))
    args = ap.parse_args()
    model = ovgen.load(args.model)
    for cfg in MODES.values():  # warm-up, excluded
        one_run(model, cfg, 16)
    itl = {m: [] for m in MODES}
    infer = {m: [] for m in MODES}
    for _ in range(args.runs):
        for mode, cfg in MODES.items():  # interleaved
            a, b = one_run(model, cfg, args.new_tokens)
            itl[mode].append(a)
            infer[mode].append(b)
    rows = {}
    print(f"{'mode':<24} {'TPOT ms':>8} {'infer ms':>9} {'overhead ms':>12} {'overhead %':>11} {'goal':>6}")
    for mode in MODES:
        tpot = np.concatenate(itl[mode]) / 1e6
        inf = np.concatenate(infer[mode]) / 1e6
        over = tpot - inf
        ratio = float(np.median(over) / np.median(inf))
        per_run = [float(np.median(a - b) / np.median(b)) for a, b in zip(itl[mode], infer[mode])]
        rows[mode] = {"tpot_ms_median": float(np.median(tpot)), "infer_ms_median": float(np.median(inf)),
                      "overhead_ms_median": float(np.median(over)), "overhead_ratio": ratio,
                      "overhead_ratio_per_run": per_run, "goal": GOALS[mode]}
        print(f"{mode:<24} {np.median(tpot):8.3f} {np.median(inf):9.3f} {np.median(over):12.4f} "
              f"{100 * ratio:10.2f}% {100 * GOALS[mode]:5.0f}%")
    save_result(args.out, "loop_overhead", runs=args.runs, new_tokens=args.new_tokens, results=rows)


if __name__ == "__main__":
    main()
