"""`ovgen bench`: per-token latency of one model at several prompt lengths.

Greedy, ignore_eos, `new_tokens` per run; prompts are a fixed English text cut to exactly N tokens.
Runs are interleaved across prompt lengths (32, 512, 2048, 32, 512, ...) after one warm-up; the
table shows medians over runs (ITL percentiles over all runs' tokens pooled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from time import perf_counter

import numpy as np

from .profiling import STAGES, Profile, chrome_trace, stage_ns
from .precision import label as precision_label
from .runtime import describe_cpu

_TEXT = ("The river rose slowly through the night, and by morning the low fields east of the village were "
         "under water. People moved what they could to the upper floors, counted their animals, and waited "
         "for the rain to stop. Nobody spoke much; everyone had seen this before and knew it would pass. ")


def synthetic_prompt(tokenizer, n: int) -> list[int]:
    """Exactly n token ids of plain English text (repeated as needed)."""
    if n < 1:
        raise ValueError(f"prompt length must be >= 1, got {n}")
    unit = tokenizer.encode(_TEXT, add_special_tokens=False)
    return (unit * (n // len(unit) + 1))[:n]


def parse_lengths(text: str, max_context: int | None, new_tokens: int) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--prompt-tokens must be comma-separated integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--prompt-tokens must be positive integers, got {text!r}")
    if max_context and max(lengths) + new_tokens > max_context:
        raise ValueError(f"--prompt-tokens {max(lengths)} + --new-tokens {new_tokens} exceed the model's context "
                         f"({max_context})")
    return lengths


def bench(model, lengths: Sequence[int], new_tokens: int, runs: int, *, overlap: bool = True,
          progress: Callable[[], None] | None = None) -> tuple[dict, dict[int, list[Profile]]]:
    """Returns (results, profiles by prompt length)."""
    import ovgen

    cfg = {"max_new_tokens": new_tokens, "ignore_eos": True, "do_sample": False}
    prompts = {n: synthetic_prompt(model.tokenizer, n) for n in lengths}
    session = model.session()
    ovgen.generate(model, prompts[lengths[0]][:16], {**cfg, "max_new_tokens": 4}, session=session)  # warm-up
    profiles: dict[int, list[Profile]] = {n: [] for n in lengths}
    for _ in range(runs):
        for n in lengths:
            res = ovgen.generate(model, prompts[n], cfg, session=session, overlap=overlap)
            profiles[n].append(res.profile)
            if progress:
                progress()
    rows = []
    for n in lengths:
        stats = [p.stats() for p in profiles[n]]
        itl = np.concatenate([p.itl_ms() for p in profiles[n]])
        med = lambda key: float(np.median([s[key] for s in stats]))  # noqa: E731
        # decode tokens only (token 0's "model" is the prefill, which TTFT shows)
        per_token = {f"{s}_ms": float(np.median([np.mean([stage_ns(r, s) for r in p.records[1:]] or [0]) / 1e6
                                                 for p in profiles[n]])) for s in STAGES}
        rows.append({"prompt_tokens": n, "new_tokens": new_tokens, "runs": runs, "ttft_ms": med("ttft_ms"),
                     "tpot_ms": med("tpot_ms"), "itl_p50_ms": float(np.percentile(itl, 50)),
                     "itl_p90_ms": float(np.percentile(itl, 90)), "itl_p99_ms": float(np.percentile(itl, 99)),
                     "tokens_per_s": med("tokens_per_s"), "decode_tokens_per_s": med("decode_tokens_per_s"),
                     "per_token_stage_ms": per_token})
    floor = floor_model(model, session)
    for row in rows:  # the physical limit: bytes a decode step must read over the measured bandwidth
        ctx = row["prompt_tokens"] + row["new_tokens"] // 2
        row["bytes_per_step_mb"] = (floor["weights_bytes"] + floor["kv_bytes_per_token"] * ctx) / 1e6
        row["floor_ms"] = row["bytes_per_step_mb"] * 1e6 / floor["bandwidth_bytes_per_s"] * 1e3
        row["tpot_over_floor"] = row["tpot_ms"] / row["floor_ms"]
    return {"model": str(model.path), "device": model.device, "precision": model.precision,
            "ov_config": dict(model.ov_config), "report": model.report, "overlap": overlap, "floor": floor,
            "results": rows}, profiles


def memory_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes per second this machine moves in a large NumPy copy (bytes read + bytes written over
    the time; the best of `reps`): the bandwidth a memory-bound decode step could at most use."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = perf_counter()
        np.copyto(dst, src)
        best = min(best, perf_counter() - t0)
    return 2 * nbytes / best


def floor_model(model, session=None) -> dict:
    """What a decode step must read at the least: every weight once (the IR's .bin: compressed
    weights and their scales) plus the KV cache (per token: every state's heads x head size in
    the cache's precision), and this machine's copy bandwidth to read it with."""
    element = {"f16": 2, "bf16": 2, "f32": 4, "u8": 1, "i8": 1, "u4": 0.5}.get(
        model.ov_config.get("KV_CACHE_PRECISION", "f32"), 4)
    per_token = 0.0
    if hasattr(model, "compiled"):
        s = session or model.session()
        s.prefill([1, 2])
        for st in s.request.query_state():
            shape = st.state.shape
            per_token += float(np.prod(shape)) / shape[2] * element if len(shape) == 4 else 0.0
        weights = (model.path / "openvino_model.bin").stat().st_size
    else:  # an onnxruntime-genai folder
        weights = sum(f.stat().st_size for f in model.path.glob("*.onnx*"))
    return {"weights_bytes": weights, "kv_bytes_per_token": per_token, "bandwidth_bytes_per_s": memory_bandwidth()}


def table(result: dict) -> str:
    head = (f"{'prompt':>7} {'TTFT ms':>9} {'TPOT ms':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'tok/s':>7} "
            f"{'floor ms':>8} {'/floor':>6}   per decode token: model / read / process / choice / accept / detok / "
            "callback (ms)")
    rep = result["report"]
    lines = [f"{describe_cpu(rep)}, "
             f"precision {precision_label(rep)}: " + ", ".join(f"{k} {v}" for k, v in result["ov_config"].items()),
             f"floor: {result['floor']['weights_bytes'] / 1e6:.0f} MB of weights + "
             f"{result['floor']['kv_bytes_per_token'] / 1e3:.1f} KB of KV per token, read at "
             f"{result['floor']['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (a NumPy copy's bandwidth)", head]
    for r in result["results"]:
        st = r["per_token_stage_ms"]
        split = " / ".join(f"{st[f'{s}_ms']:.3f}" for s in STAGES)
        lines.append(f"{r['prompt_tokens']:>7} {r['ttft_ms']:>9.1f} {r['tpot_ms']:>8.2f} {r['itl_p50_ms']:>7.2f} "
                     f"{r['itl_p90_ms']:>7.2f} {r['itl_p99_ms']:>7.2f} {r['decode_tokens_per_s']:>7.1f} "
                     f"{r['floor_ms']:>8.2f} {r['tpot_over_floor']:>6.1f}   {split}")
    return "\n".join(lines)


def plot(profiles: dict[int, list[Profile]], path: str) -> None:
    """Latency over token position (median over runs; token 0 is TTFT, left out of the scale) and
    the inter-token latency histogram, one colour per prompt length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for n, profs in profiles.items():
        itl = np.array([p.itl_ms() for p in profs])
        ax1.plot(np.arange(1, itl.shape[1] + 1), np.median(itl, axis=0), label=f"{n}-token prompt")
        ax2.hist(itl.reshape(-1), bins=40, alpha=0.5, label=f"{n}-token prompt")
    ax1.set(xlabel="generated token position", ylabel="inter-token latency (ms, median over runs)",
            title="latency over token position")
    ax2.set(xlabel="inter-token latency (ms)", ylabel="tokens", title="histogram (all runs)")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_trace(profiles: dict[int, list[Profile]], path: str) -> None:
    """Every run as its own process row ("512-token prompt, run 2"), times from each run's start."""
    events = []
    pid = 0
    for n, profs in profiles.items():
        for i, p in enumerate(profs):
            pid += 1
            events += p.trace_events(pid, f"{n}-token prompt, run {i + 1}")
    chrome_trace(events, path)
