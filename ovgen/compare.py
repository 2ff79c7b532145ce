"""`ovgen compare`: the same prompts, greedy, through four runtimes side by side.

    ovgen-ov     ovgen's loop on the OpenVINO IR
    ovgen-onnx   ovgen's loop on the onnxruntime-genai model (ovgen/ort.py)
    ort-genai    onnxruntime-genai's own generation loop on that model
    ov-genai     openvino-genai's LLMPipeline (SDPA) on the IR, compiled with ovgen's properties

Every runner gets the same prompt token ids (tokenised once, add_special_tokens=False) and stops at
the model's eos or after `new_tokens`. A disagreement between ovgen-ov and ov-genai (same IR) or
between ovgen-onnx and ort-genai (same ONNX model) is a loop bug; one between the IR and the ONNX
model comes from their different weights (int8/fp16 IR vs int4 ONNX) and kernels.

Timings: TTFT from the call to the first token, TPOT = (last - first) / (n - 1), per prompt; the
table shows medians over prompts, each runner's ratio to ovgen-ov. Runners run interleaved per
prompt, after one warm-up each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from .precision import label as precision_label
from .runtime import describe_cpu
from .ties import first_divergence

RUNNERS = ("ovgen-ov", "ovgen-onnx", "ort-genai", "ov-genai")
PAIRS = (("ovgen-ov", "ov-genai"), ("ovgen-onnx", "ort-genai"), ("ovgen-ov", "ovgen-onnx"))
DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three prime numbers:",
    "Explain photosynthesis in one sentence.",
    "The quick brown fox",
    "Once upon a time, in a small village,",
    "Q: Why is the sky blue?\nA:",
]


@dataclass
class Run:
    tokens: list[int]
    ttft_ms: float | None  # None: not measured (no token; one token has no TPOT)
    tpot_ms: float | None


def timed(start_ns: int, stamps: Sequence[int], tokens: list[int]) -> Run:
    ttft = (stamps[0] - start_ns) / 1e6 if stamps else None
    tpot = (stamps[-1] - stamps[0]) / 1e6 / (len(stamps) - 1) if len(stamps) > 1 else None
    return Run(tokens, ttft, tpot)


def _median(values) -> float | None:
    """The median of the measured values (None: none was)."""
    measured = [v for v in values if v is not None]
    return float(np.median(measured)) if measured else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def read_prompts(path: str | None) -> list[str]:
    """One prompt per line (blank lines skipped), or a JSON list of strings (file ending in .json)."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(x, str) and x for x in prompts):
            raise ValueError(f"{p}: expected a JSON list of non-empty strings")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{p}: no prompts")
    return prompts


def ovgen_runner(model, config: dict) -> Callable[[list[int]], Run]:
    """run(ids) through ovgen.generate on one Session reused across prompts (as the pipelines reuse
    their requests), a stamp per streamed token."""
    import ovgen

    session = model.session()

    def run(ids):
        stamps = []
        start = perf_counter_ns()
        res = ovgen.generate(model, ids, config, session=session, on_token=lambda r: stamps.append(perf_counter_ns()))
        return timed(start, stamps, res.sequences[0].token_ids)
    return run


def genai_runner(pipe, config) -> Callable[[list[int]], Run]:
    """run(ids) through an openvino-genai LLMPipeline and GenerationConfig, same prompt ids
    (TokenizedInputs), a stamp per generated token (token_streamer)."""
    import openvino as ov
    import openvino_genai

    def run(ids):
        stamps = []
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)),
                                                ov.Tensor(np.ones((1, len(ids)), np.int64)))
        start = perf_counter_ns()
        out = pipe.generate(inputs, config, streamer=token_streamer(lambda t: stamps.append(perf_counter_ns())))
        return timed(start, stamps, [int(t) for t in out.tokens[0]])
    return run


def runners(ir_dir: Path, onnx_dir: Path, new_tokens: int, precision: str = "exact"):
    """(name -> run(ids) for the four runtimes, the IR's tokenizer, name -> the precision it runs at);
    each model is loaded once, here. openvino-genai gets the properties ovgen compiled with."""
    import onnxruntime_genai  # noqa: F401 - fail early with ImportError naming the package
    import openvino_genai

    import ovgen

    ov_model, onnx_model = ovgen.load(ir_dir, precision=precision), ovgen.load(onnx_dir)
    if not hasattr(onnx_model, "new_generator"):
        raise ValueError(f"{onnx_dir} is not an onnxruntime-genai model folder (no genai_config.json)")
    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", ATTENTION_BACKEND="SDPA", **ov_model.ov_config)
    eos = set(ov_model.generation_config.eos_token_id)
    gcfg = openvino_genai.GenerationConfig()
    gcfg.max_new_tokens, gcfg.do_sample = new_tokens, False
    gcfg.eos_token_id, gcfg.stop_token_ids = min(eos), eos
    greedy = {"max_new_tokens": new_tokens, "do_sample": False}

    def ort_own(ids):
        start = perf_counter_ns()
        return timed(start, *ort_loop(onnx_model.new_generator(len(ids) + new_tokens, do_sample=False), ids))

    run = {"ovgen-ov": ovgen_runner(ov_model, greedy), "ovgen-onnx": ovgen_runner(onnx_model, greedy),
           "ort-genai": ort_own, "ov-genai": genai_runner(pipe, gcfg)}
    ov_precision = precision_label(ov_model.report)
    precisions = {"ovgen-ov": ov_precision, "ov-genai": ov_precision, "ovgen-onnx": "onnx", "ort-genai": "onnx"}
    return run, ov_model.tokenizer, precisions, {"openvino": ov_model.report, "onnx": onnx_model.report}


def ort_loop(gen, ids: list[int]) -> tuple[list[int], list[int]]:
    """onnxruntime-genai's own generation loop, as its examples write it: (perf_counter_ns stamps,
    tokens), one per generated token (the streamed tokens: a final eos included)."""
    gen.append_tokens(np.asarray(ids, np.int32))
    tokens, stamps = [], []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
        stamps.append(perf_counter_ns())
    return stamps, tokens


def token_streamer(fn):
    """An openvino-genai streamer calling fn(token_id) once per generated token."""
    import openvino_genai

    class _Streamer(openvino_genai.StreamerBase):
        def write(self, token):
            for t in token if isinstance(token, list) else [token]:
                fn(t)
            return openvino_genai.StreamingStatus.RUNNING

        def end(self):
            pass

    return _Streamer()


def compare(prompts: list[str], ir_dir: Path, onnx_dir: Path, new_tokens: int, *, precision: str = "exact",
            progress: Callable[[str], None] | None = None) -> dict:
    """Run every prompt through every runner; the results dict `ovgen compare --json` prints."""
    run, tok, precisions, reports = runners(ir_dir, onnx_dir, new_tokens, precision)
    all_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    for name in RUNNERS:  # warm-up: first inferences allocate and compile kernels
        run[name](all_ids[0])
    per_prompt = []
    for prompt, ids in zip(prompts, all_ids):
        runs = {name: run[name](ids) for name in RUNNERS}
        per_prompt.append({
            "prompt": prompt, "prompt_tokens": len(ids),
            "runs": {n: {"tokens": r.tokens, "ttft_ms": r.ttft_ms, "tpot_ms": r.tpot_ms} for n, r in runs.items()},
            "divergence": {f"{a} vs {b}": first_divergence(runs[a].tokens, runs[b].tokens) for a, b in PAIRS},
        })
        if progress:
            progress(prompt)
    summary = {}
    for name in RUNNERS:
        summary[name] = {"precision": precisions[name], **{key: _median([p["runs"][name][key] for p in per_prompt])
                                                            for key in ("ttft_ms", "tpot_ms")}}
    base = summary["ovgen-ov"]
    for s in summary.values():
        s["ttft_ratio"], s["tpot_ratio"] = _ratio(s["ttft_ms"], base["ttft_ms"]), _ratio(s["tpot_ms"], base["tpot_ms"])
    agreement = {}
    for a, b in PAIRS:
        key = f"{a} vs {b}"
        same = [p for p in per_prompt if p["runs"][a]["tokens"] == p["runs"][b]["tokens"]]
        agreement[key] = {"identical": len(same), "prompts": len(per_prompt),
                          "first_divergence": [p["divergence"][key] for p in per_prompt]}
    return {"new_tokens": new_tokens, "ir": str(ir_dir), "onnx": str(onnx_dir), "summary": summary,
            "agreement": agreement, "prompts": per_prompt, "models": reports}


def table(result: dict) -> str:
    cpu = result["models"]["openvino"]
    lines = [describe_cpu(cpu),
             f"{'runner':<12} {'precision':<14} {'TTFT ms':>9} {'TPOT ms':>9} {'TTFT/ovgen-ov':>14} {'TPOT/ovgen-ov':>14}"]
    def cell(x, width, digits):
        return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"

    for name, s in result["summary"].items():
        lines.append(f"{name:<12} {s['precision']:<14} {cell(s['ttft_ms'], 9, 1)} {cell(s['tpot_ms'], 9, 2)} "
                     f"{cell(s['ttft_ratio'], 14, 2)} {cell(s['tpot_ratio'], 14, 2)}")
    lines.append("")
    lines.append(f"{'greedy agreement':<26} identical  first divergence per prompt (- = none)")
    for key, a in result["agreement"].items():
        divs = " ".join("-" if d is None else str(d) for d in a["first_divergence"])
        lines.append(f"{key:<26} {a['identical']:>3}/{a['prompts']:<5}  {divs}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in ((axes[0], "ttft_ms", "TTFT (ms, median)"), (axes[1], "tpot_ms", "TPOT (ms, median)")):
        ax.bar(names, [result["summary"][n][key] or 0.0 for n in names], color=["C0", "C1", "C2", "C3"])  # (- : 0)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20)
    ax = axes[2]
    n_new = result["new_tokens"]
    for i, (key, a) in enumerate(result["agreement"].items()):
        divs = [n_new if d is None else d for d in a["first_divergence"]]
        ax.scatter(np.arange(len(divs)) + 0.1 * i, divs, label=key)
    ax.set_title(f"first divergence (token index; {n_new} = none)")
    ax.set_xlabel("prompt")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
