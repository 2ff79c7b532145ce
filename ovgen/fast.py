"""`precision="fast"`: each phase in the inference precision that runs it fastest on this CPU.

The CPU plugin's bf16 prefills a long prompt ~3x faster than f32 on an AMX Xeon and decodes ~1.3x
slower there (issue 17's measurement), so no single precision is best for a whole generation. A
`Plan` says which precision prefills (prompts of at least `min_prefill_tokens`) and which decodes;
when they differ the model is compiled twice and the KV state is handed from the prefill request to
the decode request once, after the prompt (`Session.prefill`): O(prompt) copied once. The prefill
compile keeps its KV state in f32 (`model._prefill_config`): reading it is then a plain copy.

The plan for "fast" is measured, not assumed: on a CPU whose plugin lists BF16, `calibrate` times
prefill at a few prompt lengths and a decode step in f32 and bf16 (a few seconds, once per CPU,
OpenVINO version and model; cached under $OVGEN_HOME/fast/) and picks per phase, with the prompt
length from which bf16 prefill wins. On a CPU without bf16 there is nothing faster than f32: fast
is exact, and the report says so. An explicit plan, `precision={"prefill": "bf16", "decode": "f32",
"min_prefill_tokens": 64}`, skips the measurement (and splits even when both are the same, which is
how the handover is tested on any CPU).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import openvino as ov

from .backend import TOP_GATE
from .runtime import device_info, has_bf16

HINTS = ("f32", "bf16", "f16")
CALIBRATION = 2


@dataclass(frozen=True)
class Plan:
    prefill: str  # INFERENCE_PRECISION_HINT of the prefill compile
    decode: str  # ... of the decode compile (the one every other call runs on)
    min_prefill_tokens: int = 0  # shorter prompts prefill on the decode compile
    split: bool = True  # two compiled models (False: one, both phases in `decode`)
    source: str = "explicit"  # "explicit", "calibrated (...)" or why it is a single compile

    @property
    def describe(self) -> dict:
        return asdict(self)


def plan_from(value: dict) -> Plan:
    """An explicit plan from `precision={...}`; ValueError naming the field."""
    unknown = set(value) - {"prefill", "decode", "min_prefill_tokens"}
    if unknown:
        raise ValueError(f"precision plan: unknown field(s) {sorted(unknown)}; use prefill, decode, min_prefill_tokens")
    for phase in ("prefill", "decode"):
        if value.get(phase) not in HINTS:
            raise ValueError(f"precision plan: {phase} must be one of {', '.join(HINTS)}, got {value.get(phase)!r}")
    n = value.get("min_prefill_tokens", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"precision plan: min_prefill_tokens must be an integer >= 0, got {n!r}")
    return Plan(value["prefill"], value["decode"], n)


def fast_plan(folder: Path, device: str, compile_fn) -> Plan:
    """The plan "fast" means on this device: f32 throughout without bf16, else calibrated (cached)."""
    if not has_bf16(device):
        return Plan("f32", "f32", 0, split=False,
                    source="fast = exact: this CPU has no inference precision faster than f32")
    path = _cache_path(folder, device)
    if path.is_file():
        return Plan(**json.loads(path.read_text()))
    plan = calibrate(folder, device, compile_fn)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(plan)))
    return plan


def _cache_path(folder: Path, device: str) -> Path:
    from .prepare import ovgen_home

    info = device_info(device)
    # CALIBRATION names what a cached plan was measured with (2: f32 phases without dynamic quantization)
    key = json.dumps([CALIBRATION, info.get("name"), info.get("cpu_model"), info.get("cpu_flags"), ov.get_version(),
                      str(folder.resolve()), (folder / "openvino_model.bin").stat().st_size])
    return ovgen_home() / "fast" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")


def calibrate(folder: Path, device: str, compile_fn, lengths=(32, 256, 1024), steps: int = 16) -> Plan:
    """Median times of prefill at `lengths` and of a decode step, f32 against bf16 (interleaved,
    3 rounds); the prefill precision is bf16 from the shortest length where it wins."""
    compiled = {h: compile_fn(h) for h in ("f32", "bf16")}
    reqs = {h: c.create_infer_request() for h, c in compiled.items()}
    times = {(h, n): [] for h in reqs for n in (*lengths, "step")}
    for _ in range(3):
        for n in lengths:
            for h, r in reqs.items():
                times[h, n].append(_prefill_time(r, n))
        for h, r in reqs.items():
            times[h, "step"].append(_step_time(r, steps))
    med = {k: float(np.median(v)) for k, v in times.items()}
    wins = [n for n in lengths if med["bf16", n] < med["f32", n]]
    decode = "bf16" if med["bf16", "step"] < med["f32", "step"] else "f32"
    prefill, min_tokens = ("bf16", min(wins)) if wins else (decode, 0)
    detail = ", ".join(f"{k[1]}: f32 {med['f32', k[1]]:.1f} / bf16 {med['bf16', k[1]]:.1f} ms"
                       for k in times if k[0] == "f32")
    return Plan(prefill, decode, min_tokens, split=prefill != decode, source=f"calibrated ({detail})")


def _inputs(r: ov.InferRequest, ids: np.ndarray, past: int) -> dict:
    names = {n for p in r.model_inputs for n in p.get_names()}
    t = ids.shape[1]
    out = {"input_ids": ids, "attention_mask": np.ones((1, past + t), np.int64)}
    if "position_ids" in names:
        out["position_ids"] = np.arange(past, past + t, dtype=np.int64)[None]
    if "beam_idx" in names:
        out["beam_idx"] = np.zeros(1, np.int32)
    if "logits_to_keep" in names:
        out["logits_to_keep"] = np.ones(1, np.int64)
    if TOP_GATE in names:
        out[TOP_GATE] = np.array(True)  # timed with the top-k candidates on, as sampling runs
    return out


def _prefill_time(r: ov.InferRequest, n: int) -> float:
    r.reset_state()
    ids = (np.arange(n, dtype=np.int64) % 1000 + 100)[None]
    t0 = perf_counter()
    r.infer(_inputs(r, ids, 0))
    return (perf_counter() - t0) * 1e3


def _step_time(r: ov.InferRequest, steps: int) -> float:
    r.reset_state()
    r.infer(_inputs(r, np.arange(100, 164, dtype=np.int64)[None], 0))
    t = []
    for i in range(steps):
        t0 = perf_counter()
        r.infer(_inputs(r, np.array([[200 + i]], np.int64), 64 + i))
        t.append((perf_counter() - t0) * 1e3)
    return float(np.median(t))
