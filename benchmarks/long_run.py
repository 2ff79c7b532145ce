"""Long run: 20,000 tokens in one process across many streamed generations on one compiled model.

Reports RSS growth (goal < 50 MB from the end of the first generation to the end) and the median
TPOT of the last 1,000 tokens against the first 1,000's (goal within 5 %). Generations alternate
greedy and sampling (top-k 50, top-p 0.9, repetition 1.1) over rotating prompts, each streamed
through `ovgen.stream` and consumed token by token, every one from a fresh Session (as a server
would) except every fifth, which reuses the previous Session.

    python benchmarks/long_run.py [--tokens 20000] [--per-generation 250]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script

PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain how a compiler works, step by step.",
           "List the countries of Europe and their capitals.", "Describe a day in the life of a bee."]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--per-generation", type=int, default=250)  # 4 per 1,000: 2 greedy + 2 sampling in each window
    ap.add_argument("--out", default=default_path("long_run"))
    args = ap.parse_args()
    model = ovgen.load(args.model)
    modes = [{"do_sample": False}, {"do_sample": True, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0}]
    itl: list[float] = []  # inter-token latency of every token after each generation's first
    rss, done, gen, session = [], 0, 0, None
    t_start = time.perf_counter()
    while done < args.tokens:
        cfg = {**modes[gen % 2], "ignore_eos": True,
               "max_new_tokens": min(args.per_generation, args.tokens - done)}
        session = session if gen % 5 == 4 else model.session()
        last = None
        for rec in ovgen.stream(model, PROMPTS[gen % len(PROMPTS)], cfg, session=session):
            if last is not None:
                itl.append((rec.ready_ns - last) / 1e6)
            last = rec.ready_ns
            done += 1
        gen += 1
        rss.append(rss_mb())
    first, last = np.median(itl[:1000]), np.median(itl[-1000:])
    growth = rss[-1] - rss[0]
    wall = time.perf_counter() - t_start
    print(f"{done} tokens in {gen} generations, {wall:.0f} s")
    print(f"RSS {rss[0]:.1f} MB after the first generation -> {rss[-1]:.1f} MB at the end: "
          f"growth {growth:+.1f} MB (goal < 50)")
    print(f"TPOT median first 1000 {first:.2f} ms, last 1000 {last:.2f} ms: ratio {last / first:.3f} (goal <= 1.05)")
    save_result(args.out, "long_run", tokens=done, generations=gen, wall_s=wall, rss_mb_after_first=rss[0],
                rss_mb_end=rss[-1], rss_growth_mb=growth, rss_goal_mb=50, tpot_first_1000_ms=float(first),
                tpot_last_1000_ms=float(last), tpot_last_over_first=float(last / first), tpot_goal=1.05)


if __name__ == "__main__":
    main()
