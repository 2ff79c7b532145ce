"""Batched throughput: generated tokens per second at B = 1, 2, 4, 8, 16, ovgen against
openvino-genai's own batched `generate([prompts])` on the same IR, prompts and compile properties.

Each measurement runs in a worker process of its own (so its peak RSS is its own): load, one warm-up
batch, then `--runs` timed batches of B prompts x `--new-tokens` tokens (ignore_eos), each from the
call to the last token; the worker reports their median. Rounds interleave the runtimes in a
balanced order; medians of the rounds, ratios per B (median of the per-round ratios).

    python benchmarks/batch.py [--rounds 3] [--runs 3] [--new-tokens 64] [--plot batch.png]

`--in-process PAIRS`: both runtimes in one process instead, PAIRS interleaved batches each per B,
ratios per pair (this machine's drift swings the worker rounds by more than the gap between the
runtimes); writes results/batch_in_process.json. A third runtime runs beside them there, "loop": a
bare Python loop (input tensors set once and overwritten in place per step, as ovgen's session does,
np.argmax per row) over the very model ovgen compiled, its top-k candidates off - about the least a
Python loop on that graph can do, so the ratios tell the share of a gap that is ovgen's loop from
the share that is Python and the graph.

    python benchmarks/batch.py --in-process 6 [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from time import perf_counter

import numpy as np

from _results import default_path, line_plot, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced, throughput
from ovgen.backend import TOP_GATE

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "List three prime numbers:", "Write a haiku about the sea.", "The quick brown fox",
           "My favourite colour is", "Q: Why is the sky blue?\nA:", "Explain photosynthesis in one sentence.",
           "Translate 'good morning' into Spanish.", "1, 2, 3, 4,", "import numpy as np\n",
           "The history of the printing press begins", "A recipe for pancakes:", "Dear diary, today",
           "The three laws of robotics are"]
SIZES = (1, 2, 4, 8, 16)


def runner(runtime: str, model, b: int, n: int):
    """A callable generating B prompts x n tokens (ignore_eos) on `runtime`, returning every row's tokens."""
    prompts = PROMPTS[:b]
    if runtime == "ovgen":
        import ovgen

        def run():
            return [r.sequences[0].token_ids for r in ovgen.generate(model, prompts, {"max_new_tokens": n,
                                                                                      "ignore_eos": True},
                                                                     batch_size=b)]
        return run
    if runtime == "loop":
        return _bare_loop(model, prompts, n)
    import openvino as ov
    import openvino_genai as og

    pipe = og.LLMPipeline(str(model.path), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.ignore_eos, cfg.do_sample = n, True, False
    padded, mask = _left_padded(model, prompts)  # the same ids as ovgen's

    def run():
        out = pipe.generate(og.TokenizedInputs(ov.Tensor(padded), ov.Tensor(mask)), cfg)
        return [[int(t) for t in row] for row in out.tokens]
    return run


def _left_padded(model, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The prompts' ids left-padded with 0 into one batch, and its attention mask."""
    ids = [model.tokenizer.encode(p) for p in prompts]
    width = max(map(len, ids))
    padded = np.array([[0] * (width - len(x)) + x for x in ids], np.int64)
    mask = np.array([[0] * (width - len(x)) + [1] * len(x) for x in ids], np.int64)
    return padded, mask


def _bare_loop(model, prompts: list[str], n: int):
    """Greedy on `model.compiled` with nothing but the inputs each infer needs, held the way ovgen's
    session holds them: the prompt batch as arrays, then input tensors set on the request once whose
    memory each step overwrites in place (the argmax tokens, positions + 1, the mask grown by a
    column of ones and its shape set), `start_async()` with no inputs, np.argmax per row, the top-k
    candidates off. What ovgen adds over this is its loop; what this lacks against genai is Python
    and the graph's outputs."""
    import openvino as ov

    request = model.compiled.create_infer_request()
    padded, mask = _left_padded(model, prompts)
    b, width = len(prompts), mask.shape[1] + n
    fixed = {"beam_idx": np.arange(b, dtype=np.int32)}
    if "logits_to_keep" in model.input_names:
        fixed["logits_to_keep"] = np.ones(1, np.int64)
    if TOP_GATE in model.input_names:
        fixed[TOP_GATE] = np.zeros((), np.bool_)
    ids, pos, grid = np.zeros((b, 1), np.int64), np.zeros((b, 1), np.int64), np.ones((b, width), np.int64)
    grid[:, :mask.shape[1]] = mask  # the whole run's mask; each step's [b, kv] is copied out of it
    first = np.maximum(np.cumsum(mask, 1) - 1, 0)  # the prompt's positions, each row from its first real token
    flat = np.zeros(b * width, np.int64)  # the mask tensor's memory, viewed as [b, kv] per step
    preset = {"input_ids": ov.Tensor(ids, shared_memory=True), "position_ids": ov.Tensor(pos, shared_memory=True),
              "attention_mask": ov.Tensor(flat.reshape(b, width), shared_memory=True)}

    def run():
        request.reset_state()
        request.start_async({"input_ids": padded, "attention_mask": mask, "position_ids": first, **fixed},
                            share_inputs=True)
        request.wait()
        for name, tensor in preset.items():
            request.set_tensor(name, tensor)
        pos[:] = first[:, -1:]
        kv, rows = mask.shape[1], []
        for i in range(n):
            rows.append(request.get_tensor("logits").data[:, -1].argmax(-1))
            if i + 1 < n:
                kv += 1
                ids[:, 0] = rows[-1]
                pos[:] += 1
                flat[:b * kv].reshape(b, kv)[:] = grid[:, :kv]
                preset["attention_mask"].set_shape([b, kv])
                request.start_async()
                request.wait()
        return np.stack(rows, 1).tolist()
    return run


def worker(runtime: str, b: int, n: int, runs: int) -> dict:
    import ovgen

    run = runner(runtime, ovgen.load(), b, n)
    run()  # warm-up
    times = []
    for _ in range(runs):
        t0 = perf_counter()
        tokens = run()
        times.append(perf_counter() - t0)
    dt = float(np.median(times))
    return {"tokens_per_s": b * n / dt, "seconds": dt, "runs_s": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "first_row": tokens[0][:16]}


def in_process(model, n: int, pairs: int) -> dict:
    """Both runtimes and the bare loop in this one process (one model, one genai pipeline per B),
    `pairs` timed batches of each per B in a balanced order: the per-pair throughput ratios cancel
    the machine's drift, which the worker processes' rounds do not (no peak RSS here: one process
    holds them all)."""
    rows = {}
    for b in SIZES:
        runs = {rt: runner(rt, model, b, n) for rt in ("ovgen", "genai", "loop")}
        tokens, tps = throughput(runs, pairs, b * n)
        ratio = {(a, c): float(np.median(np.array(tps[a]) / np.array(tps[c])))
                 for a, c in (("ovgen", "genai"), ("loop", "genai"), ("ovgen", "loop"))}
        rows[b] = {**{f"{rt}_tokens_per_s": float(np.median(t)) for rt, t in tps.items()},
                   **{f"{a}_over_{c}": r for (a, c), r in ratio.items()},
                   "same_tokens": tokens["ovgen"] == tokens["genai"] == tokens["loop"]}
        print(b, json.dumps(rows[b]), flush=True)
    return rows


def measure(runtime: str, b: int, n: int, runs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", runtime, str(b), str(n), str(runs)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _speedups(rows: dict) -> None:
    for b in SIZES:
        rows[b]["ovgen_speedup_vs_b1"] = rows[b]["ovgen_tokens_per_s"] / rows[1]["ovgen_tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default=default_path("batch"))
    ap.add_argument("--runs", type=int, default=3, help="timed batches per worker (their median)")
    ap.add_argument("--worker", nargs=4, default=None)
    ap.add_argument("--in-process", type=int, default=0, metavar="PAIRS",
                    help="instead: both runtimes and a bare loop in this process, PAIRS interleaved batches each per B")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], *map(int, args.worker[1:]))))
        return
    if args.in_process:
        import ovgen

        model = ovgen.load()
        rows = in_process(model, args.new_tokens, args.in_process)
        _speedups(rows)
        out = args.out if args.out != default_path("batch") else default_path("batch_in_process")
        save_result(out, "batch_in_process", pairs=args.in_process, new_tokens=args.new_tokens,
                    report=model.report, results=rows)
        return
    runs = {(rt, b): [] for rt in ("ovgen", "genai") for b in SIZES}
    for r in range(args.rounds):
        for b in SIZES:
            for rt in balanced(["ovgen", "genai"], r + b):
                runs[rt, b].append(measure(rt, b, args.new_tokens, args.runs))
                print(rt, b, runs[rt, b][-1]["tokens_per_s"], flush=True)
    rows = {}
    for b in SIZES:
        o = [x["tokens_per_s"] for x in runs["ovgen", b]]
        g = [x["tokens_per_s"] for x in runs["genai", b]]
        rows[b] = {"ovgen_tokens_per_s": float(np.median(o)), "genai_tokens_per_s": float(np.median(g)),
                   "ovgen_over_genai": float(np.median(np.array(o) / np.array(g))),
                   "ovgen_peak_rss_mb": float(np.median([x["peak_rss_mb"] for x in runs["ovgen", b]])),
                   "genai_peak_rss_mb": float(np.median([x["peak_rss_mb"] for x in runs["genai", b]]))}
    _speedups(rows)
    print(f"{'B':>3} {'ovgen tok/s':>12} {'genai tok/s':>12} {'ovgen/genai':>12} {'vs B=1':>7} {'RSS MB ovgen/genai':>20}")
    for b, r in rows.items():
        print(f"{b:>3} {r['ovgen_tokens_per_s']:>12.1f} {r['genai_tokens_per_s']:>12.1f} {r['ovgen_over_genai']:>12.2f} "
              f"{r['ovgen_speedup_vs_b1']:>7.2f} {r['ovgen_peak_rss_mb']:>9.0f}/{r['genai_peak_rss_mb']:<9.0f}")
    if args.plot:
        _plot(rows, args.plot)
    import ovgen

    save_result(args.out, "batch", rounds=args.rounds, runs=args.runs, new_tokens=args.new_tokens,
                report=ovgen.load().report, results=rows,
                per_round={f"{rt} B={b}": [x["tokens_per_s"] for x in v] for (rt, b), v in runs.items()})


def _plot(rows: dict, path: str) -> None:
    sizes = list(rows)
    line_plot(path, sizes, {"ovgen": [rows[b]["ovgen_tokens_per_s"] for b in sizes],
                            "openvino-genai generate([...])": [rows[b]["genai_tokens_per_s"] for b in sizes]},
              xlabel="batch size B", ylabel="generated tokens / s", xscale="log", title="batched throughput")


if __name__ == "__main__":
    main()
