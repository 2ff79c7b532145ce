"""Several sampled sequences of one prompt (num_return_sequences = N): generated tokens per second,
ovgen's sequences side by side (the prompt once, its KV row forked into N rows decoded as one batch)
against ovgen's sequences one after another (as ovgen ran them before: the prompt's snapshot
restored per sequence) and openvino-genai's `generate(ids, num_return_sequences=N)` on the same IR,
ids and compile properties.

Sampling with top_k 50 at temperature 1 (`--temperature`, `--top-p`: both runtimes take them),
`--new-tokens` per sequence (ignore_eos), one seed. The
runtimes alternate in a balanced order, `--pairs` timed runs each per N (after a warm-up); ratios
are medians of the per-round ratios. ovgen's two ways must give the same sequences (each sequence's
own generator; `same_sequences` counts those equal, a batched infer's f32 sums may flip a draw that
falls on an edge of the distribution); genai draws from its own generator (other tokens, same work).

    python benchmarks/sequences.py [--pairs 6] [--new-tokens 64]

`--prompts P`: a dataset's case instead, P prompts each asking for N = 2 and 4 sequences: ovgen's
list-of-prompts batch (`generate(model, prompts, cfg, batch_size=P * N)`: every prompt's N rows in
one batch, as genai runs them) against the prompts run one by one (each prompt's N sequences side by side:
how a list ran them before they joined the other prompts' rows) and openvino-genai's
`generate([prompts], num_return_sequences=N)`, and where each one's time per decode step goes
(`step_ms`: ovgen's infer and its host time between infers, from the records; genai's infer and
sampling, from its raw perf metrics); writes results/sequences_batch.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

import numpy as np

from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import throughput

COUNTS = (1, 2, 4, 8)
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


@contextmanager
def one_after_another():
    """ovgen's sequences run as before side by side existed: one at a time from the prompt's snapshot."""
    gen = sys.modules["ovgen.generate"]
    real = gen.side_by_side
    gen.side_by_side = lambda *a: False
    try:
        yield
    finally:
        gen.side_by_side = real


def _sampling(count: int, n: int, warp: dict) -> dict:
    """ovgen's settings; `warp`: temperature and top_p."""
    return {"do_sample": True, "top_k": 50, "seed": 7, "max_new_tokens": n, "ignore_eos": True,
            "num_return_sequences": count, **warp}


def _genai(model, ids: list[list[int]], count: int, n: int, warp: dict, steps: dict | None = None):
    """A callable running openvino-genai's `generate` on the prompts `ids` (left-padded into one batch,
    as genai's tokenizer pads one) with the same sampling settings, returning every sequence's tokens.
    `steps`: its per-step infer and sampling times (medians over the decode steps, ms) go to
    steps["genai_infer"] / steps["genai_host"], one entry per call (from its raw perf metrics)."""
    import openvino as ov
    import openvino_genai as og

    pipe = og.LLMPipeline(str(model.path), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)
    gcfg = og.GenerationConfig()
    gcfg.max_new_tokens, gcfg.ignore_eos, gcfg.do_sample = n, True, True
    gcfg.top_k, gcfg.rng_seed, gcfg.num_return_sequences = 50, 7, count
    gcfg.temperature, gcfg.top_p = warp["temperature"], warp["top_p"]
    width = max(len(p) for p in ids)
    tensor = np.array([[0] * (width - len(p)) + p for p in ids], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in ids], np.int64)

    def genai():
        out = pipe.generate(og.TokenizedInputs(ov.Tensor(tensor), ov.Tensor(mask)), gcfg)
        if steps is not None:  # [0] is the prompt's infer
            raw = out.perf_metrics.raw_metrics
            steps["genai_infer"].append(float(np.median(np.array(raw.token_infer_durations)[1:])) / 1e3)
            steps["genai_host"].append(float(np.median(np.array(raw.sampling_durations)[1:])) / 1e3)
        return [[int(t) for t in row] for row in out.tokens]
    return genai


def runners(model, count: int, n: int, warp: dict) -> dict:
    """name -> a callable generating `count` sequences of n tokens, returning them."""
    import ovgen
    from ovgen.generate import prompt_ids

    ids = prompt_ids(model, PROMPT)
    cfg = _sampling(count, n, warp)

    def side():
        return [s.token_ids for s in ovgen.generate(model, ids, cfg).sequences]

    def serial():
        with one_after_another():
            return side()

    return {"side_by_side": side, "one_after_another": serial, "genai": _genai(model, [ids], count, n, warp)}


DATASET = ["Write a short story about a lighthouse keeper.", "Describe a walk in the rain.",
           "Explain how a bicycle works.", "Give advice to a new gardener.", "Tell a fable about a fox.",
           "Describe your ideal breakfast.", "Write a letter to a future self.", "Explain why the sea is salty."]


def dataset_runners(model, prompts: int, count: int, n: int, warp: dict, steps: dict | None = None) -> dict:
    """name -> a callable generating `count` sequences of n tokens for each of `prompts` prompts.
    `steps`: where the list's and genai's per-step times go (`step_times`, `_genai`)."""
    import ovgen
    from ovgen.generate import prompt_ids

    ids = [prompt_ids(model, [{"role": "user", "content": q}]) for q in DATASET[:prompts]]
    cfg = _sampling(count, n, warp)

    def joined():
        res = ovgen.generate(model, ids, cfg, batch_size=len(ids) * count)
        if steps is not None:
            infer, host = step_times([rec for r in res for s in r.sequences for rec in s.records])
            steps["ovgen_infer"].append(infer)
            steps["ovgen_host"].append(host)
        return [s.token_ids for r in res for s in r.sequences]

    def one_by_one():
        return [s.token_ids for p in ids for s in ovgen.generate(model, p, cfg).sequences]

    return {"joined": joined, "one_by_one": one_by_one, "genai": _genai(model, ids, count, n, warp, steps)}


def step_times(records) -> tuple[float, float]:
    """Medians (ms) over a batch's decode steps of its infer and of the host's time from one infer's
    end to the next one's start (the rows' token choice and the next inputs: the step's critical
    path, as genai's sampling is its), from the records (a step's rows share its infer)."""
    steps = sorted({(r.infer_start_ns, r.model_ns) for r in records if r.index > 0})
    infer = np.array([m for _, m in steps], np.float64)
    between = np.diff([s for s, _ in steps]) - infer[:-1]
    return float(np.median(infer)) / 1e6, float(np.median(between)) / 1e6


def measure(runs: dict, pairs: int, sequences: int, n: int, ours: str, before: str) -> dict:
    """One warm-up, then `pairs` timed runs of each runner (each must return `sequences` sequences of
    n tokens) in a balanced order: tokens/s per runner (medians), `ours` over the others (medians of
    per-round ratios), and how many sequences `ours` and `before` share (the two ways of ovgen must
    draw the same ones)."""
    out, tps = throughput(runs, pairs, sequences * n)
    assert all(len(v) == sequences for v in out.values()), {k: len(v) for k, v in out.items()}
    return {**{f"{name}_tokens_per_s": float(np.median(t)) for name, t in tps.items()},
            **{f"{ours}_over_{b}": float(np.median(np.array(tps[ours]) / np.array(tps[b]))) for b in (before, "genai")},
            "same_sequences": sum(a == b for a, b in zip(out[ours], out[before])), "sequences": sequences}


def dataset(model, args) -> None:
    rows = {}
    for count in (2, 4):
        steps = {k: [] for k in ("ovgen_infer", "ovgen_host", "genai_infer", "genai_host")}
        runs = dataset_runners(model, args.prompts, count, args.new_tokens, _warp(args), steps)
        rows[count] = measure(runs, args.pairs, args.prompts * count, args.new_tokens, "joined", "one_by_one")
        # per decode step, ms (medians over the timed calls; the warm-up call's entry dropped), and the
        # infers' ratio per round: where a gap between the two runtimes' throughput sits
        timed = {k: v[1:] for k, v in steps.items()}
        rows[count]["step_ms"] = {k: float(np.median(v)) for k, v in timed.items()}
        rows[count]["step_infer_ovgen_over_genai"] = float(np.median(np.array(timed["ovgen_infer"])
                                                                     / np.array(timed["genai_infer"])))
        print(count, json.dumps(rows[count]), flush=True)
    save_result(args.out or default_path("sequences_batch"), "sequences_batch", pairs=args.pairs,
                new_tokens=args.new_tokens, prompts=args.prompts, warp=_warp(args), report=model.report, results=rows)


def _warp(args) -> dict:
    return {"temperature": args.temperature, "top_p": args.top_p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--prompts", type=int, default=0, help="a dataset's case: this many prompts (at most 8)")
    ap.add_argument("--out", default=None, help="default: results/sequences.json (sequences_batch.json with --prompts)")
    args = ap.parse_args()

    import ovgen

    model = ovgen.load()
    print(json.dumps(model.report["cpu_model"]), model.report["cpu_flags"], model.report["properties"]
          ["INFERENCE_PRECISION_HINT"], flush=True)
    if args.prompts:
        return dataset(model, args)
    rows = {}
    for count in COUNTS:
        runs = runners(model, count, args.new_tokens, _warp(args))
        rows[count] = measure(runs, args.pairs, count, args.new_tokens, "side_by_side", "one_after_another")
        print(count, json.dumps(rows[count]), flush=True)
    save_result(args.out or default_path("sequences"), "sequences", pairs=args.pairs, new_tokens=args.new_tokens,
                warp=_warp(args), report=model.report, results=rows)


if __name__ == "__main__":
    main()
