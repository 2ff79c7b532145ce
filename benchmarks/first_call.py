"""The first answer of a process: what `Model.warmup()` (the CLI's default warm-up) moves out of it.

Each round starts three fresh processes, in a balanced order: ovgen without a warm-up (cold),
ovgen after `model.warmup()` (warm), and openvino-genai's LLMPipeline on the same IR and compile
properties (its first generate, cold: genai does not warm up). Each loads the default model,
answers one chat prompt (`--new-tokens` tokens, eos ignored) and reports its TTFT, its first
inter-token gap (the first one-token step) and its TPOT after that first step; medians over the
rounds, ratios warm / cold per round. The warm-up does not make the process faster overall: it
pays the first-use costs before the question is asked (`warmup_plus_answer_ms`: the warm-up and
the whole answer, against the cold process's answer).

    python benchmarks/first_call.py [--rounds 7] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from time import perf_counter_ns

import numpy as np

from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
MODES = ("ovgen_cold", "ovgen_warm", "genai_cold")


def child(mode: str, n: int) -> dict:
    """One fresh process's first answer (run as `first_call.py --child MODE`)."""
    import ovgen
    from ovgen.generate import prompt_ids

    t0 = perf_counter_ns()
    model = ovgen.load()
    load_ms = (perf_counter_ns() - t0) / 1e6  # (genai: its LLMPipeline's construction, below)
    ids = prompt_ids(model, PROMPT)
    warmup_ms = model.warmup() if mode == "ovgen_warm" else 0.0
    stamps = []
    if mode.startswith("ovgen"):
        start = perf_counter_ns()
        ovgen.generate(model, ids, {"max_new_tokens": n, "ignore_eos": True},
                       on_token=lambda r: stamps.append(perf_counter_ns()))
    else:
        import openvino as ov
        import openvino_genai as og

        from ovgen.compare import token_streamer

        t0 = perf_counter_ns()
        pipe = og.LLMPipeline(str(model.path), "CPU", **model.ov_config)
        load_ms = (perf_counter_ns() - t0) / 1e6
        del model
        cfg = og.GenerationConfig()
        cfg.max_new_tokens, cfg.ignore_eos = n, True
        inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
        start = perf_counter_ns()
        pipe.generate(inputs, cfg, streamer=token_streamer(lambda t: stamps.append(perf_counter_ns())))
    gaps = np.diff(stamps) / 1e6
    ttft = (stamps[0] - start) / 1e6
    answer = (stamps[-1] - start) / 1e6
    return {"load_ms": load_ms, "warmup_ms": warmup_ms, "ttft_ms": ttft, "first_step_ms": float(gaps[0]),
            "tpot_after_first_ms": float(gaps[1:].mean()), "answer_ms": answer,
            "warmup_plus_answer_ms": warmup_ms + answer, "tokens": len(stamps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=default_path("first_call"))
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.new_tokens)))
        return
    runs = {m: [] for m in MODES}
    for r in range(args.rounds):
        for m in balanced(list(MODES), r):
            out = subprocess.run([sys.executable, __file__, "--child", m, "--new-tokens", str(args.new_tokens)],
                                 capture_output=True, text=True, check=True)
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ("load_ms", "warmup_ms", "ttft_ms", "first_step_ms", "tpot_after_first_ms", "answer_ms",
            "warmup_plus_answer_ms")
    medians = {m: {k: float(np.median([x[k] for x in v])) for k in keys} for m, v in runs.items()}
    ratio = {k: float(np.median([w[k] / c[k] for w, c in zip(runs["ovgen_warm"], runs["ovgen_cold"])]))
             for k in ("ttft_ms", "first_step_ms", "tpot_after_first_ms")}
    ratio["warmup_plus_answer_over_cold_answer"] = float(np.median(
        [w["warmup_plus_answer_ms"] / c["answer_ms"] for w, c in zip(runs["ovgen_warm"], runs["ovgen_cold"])]))
    ratio["ovgen_warm_ttft_over_genai_cold_ttft"] = float(np.median(
        [w["ttft_ms"] / g["ttft_ms"] for w, g in zip(runs["ovgen_warm"], runs["genai_cold"])]))
    ratio["ovgen_cold_ttft_over_genai_cold_ttft"] = float(np.median(
        [c["ttft_ms"] / g["ttft_ms"] for c, g in zip(runs["ovgen_cold"], runs["genai_cold"])]))
    import ovgen
    from ovgen.runtime import describe_cpu

    report = ovgen.load().report
    print(describe_cpu(report))
    for m, v in medians.items():
        print(f"{m:11s} " + "  ".join(f"{k} {x:7.1f}" for k, x in v.items()))
    print("warm / cold:", json.dumps({k: round(v, 3) for k, v in ratio.items()}))
    save_result(args.out, "first_call", rounds=args.rounds, new_tokens=args.new_tokens, prompt=PROMPT,
                report=report, medians=medians, ratios=ratio, runs=runs)


if __name__ == "__main__":
    main()
