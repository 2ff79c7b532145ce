"""`precision="fast"`: each phase in the inference precision that runs it fastest on this CPU.

No single precision is best for a whole generation on a bf16 CPU. On an AMX Xeon (2026-12-06,
SmolLM2 int4) bf16 prefills 1,024 tokens ~4.7x faster than f32, while a decode step runs fastest at
the f32 hint with the plugin's dynamic int8 quantization of the activations ("f32-dq": int8 AMX
kernels, ~0.75x bf16's step) and exact's f32 (no quantization) is the slowest of the three. A `Plan`
says which hint prefills (prompts of at least `min_prefill_tokens`) and which decodes; when they
differ the model is compiled twice and the KV state is handed from the prefill request to the
decode request once, after the prompt (`Session.prefill`; the copy runs when the session is next
used, so the first token does not wait for it): O(prompt) copied once. The prefill compile keeps
its KV state at `prefill_kv`, the precision the CPU plugin hands out fastest (measured: f32 on an
AVX2 EPYC, 25 ms for 1,024 tokens where f16 took 124; u8 on the AMX Xeon, 9 ms where f32 took 88).

The plan for "fast" is measured, not assumed: on a CPU whose plugin lists BF16 (or, without it, whose
VNNI lets the plugin quantize activations: f32 against f32-dq), `calibrate` times
prefill at a few prompt lengths and a decode step at each hint (~40 s, once per CPU, OpenVINO
version and model; cached under $OVGEN_HOME/fast/), the handover at each prefill KV precision when
the phases' winners differ, and picks per phase, with the prompt length from which the split pays
for its handover. On a CPU with neither there is nothing faster than f32 (dynamic quantization
changes nothing on x86 without VNNI: runtime.quantizes_activations): fast is exact, and the report
says so. An explicit plan,
`precision={"prefill": "bf16", "decode": "f32-dq", "min_prefill_tokens": 64}`, skips the
measurement (and splits even when both are the same, which is how the handover is tested on any CPU).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import openvino as ov

from .backend import TOP_GATE
from .runtime import cpu_under, device_info, has_bf16, quantizes_activations

HINTS = ("f32", "f32-dq", "bf16", "f16")  # see ovgen/precision.py
KV_PRECISIONS = ("f32", "f16", "bf16", "u8")
CANDIDATES = ("f32", "f32-dq", "bf16")  # what calibrate times (the CPU plugin has no f16 kernels on x86 CPUs
# short of AMX-FP16, and on an AMX Xeon an f16 hint failed to compile the exported IR)
HANDOVER_KV = ("f32", "u8")  # the prefill compile's KV precisions calibrate tries for the handover
CALIBRATION = 3


@dataclass(frozen=True)
class Plan:
    prefill: str  # INFERENCE_PRECISION_HINT of the prefill compile
    decode: str  # ... of the decode compile (the one every other call runs on)
    min_prefill_tokens: int = 0  # shorter prompts prefill on the decode compile
    split: bool = True  # two compiled models (False: one, both phases in `decode`)
    source: str = "explicit"  # "explicit", "calibrated (...)" or why it is a single compile
    prefill_kv: str = "f32"  # KV_CACHE_PRECISION of the prefill compile (what the handover reads)

    @property
    def describe(self) -> dict:
        return asdict(self)


def plan_from(value: dict) -> Plan:
    """An explicit plan from `precision={...}`; ValueError naming the field."""
    unknown = set(value) - {"prefill", "decode", "min_prefill_tokens", "prefill_kv"}
    if unknown:
        raise ValueError(f"precision plan: unknown field(s) {sorted(unknown)}; use prefill, decode, "
                         "min_prefill_tokens, prefill_kv")
    for phase in ("prefill", "decode"):
        if value.get(phase) not in HINTS:
            raise ValueError(f"precision plan: {phase} must be one of {', '.join(HINTS)}, got {value.get(phase)!r}")
    n = value.get("min_prefill_tokens", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"precision plan: min_prefill_tokens must be an integer >= 0, got {n!r}")
    kv = value.get("prefill_kv", "f32")
    if kv not in KV_PRECISIONS:
        raise ValueError(f"precision plan: prefill_kv must be one of {', '.join(KV_PRECISIONS)}, got {kv!r}")
    return Plan(value["prefill"], value["decode"], n, prefill_kv=kv)


def fast_plan(folder: Path, device: str, compile_fn) -> Plan:
    """The plan "fast" means on this device: f32 throughout on a CPU without bf16 or VNNI, else calibrated
    (cached). A virtual device over such a CPU (AUTO, HETERO:CPU) is calibrated too, compiled as itself."""
    bf16, dq = has_bf16(device), cpu_under(device) and quantizes_activations(device_info(device))
    if not bf16 and not dq:
        return Plan("f32", "f32", 0, split=False,
                    source="fast = exact: this CPU has no inference precision faster than f32 (no bf16, and no "
                           "VNNI for the plugin's int8 activations)")
    path = _cache_path(folder, device)
    if path.is_file():
        return Plan(**json.loads(path.read_text()))
    plan = calibrate(folder, device, compile_fn, hints=CANDIDATES if bf16 else ("f32", "f32-dq"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(plan)))
    return plan


def _cache_path(folder: Path, device: str) -> Path:
    from .prepare import ovgen_home

    info = device_info(device)
    # CALIBRATION names what a cached plan was measured with (3: f32-dq a candidate, the prefill KV chosen);
    # a virtual device over the CPU (AUTO, HETERO:CPU) is timed as itself
    key = [CALIBRATION, info.get("name"), info.get("cpu_model"), info.get("cpu_flags"), ov.get_version(),
           str(folder.resolve()), (folder / "openvino_model.bin").stat().st_size, *([device] if device != "CPU" else [])]
    return ovgen_home() / "fast" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16] + ".json")


def calibrate(folder: Path, device: str, compile_fn, lengths=(32, 256, 1024), steps: int = 16,
              hints=CANDIDATES) -> Plan:
    """Median times (3 interleaved rounds) of prefill at `lengths` and of a decode step at each of
    `hints` (CANDIDATES; f32 and f32-dq on a CPU with VNNI but no bf16). Decode takes the fastest step;
    prefill the fastest hint at the longest length. When the two differ, the handover of that length is
    timed from a prefill compile at each HANDOVER_KV precision and the cheapest taken; the split then
    starts at the shortest length where prefill + handover (scaled to the length) beats prefilling on
    the decode compile, else it is one compile. `compile_fn(hint, kv=None)` compiles the IR at a hint (and a KV precision)."""
    from tqdm import tqdm

    reqs = {h: compile_fn(h).create_infer_request() for h in hints}
    times = {(h, n): [] for h in reqs for n in (*lengths, "step")}
    # ~40 s once per CPU: a bar on a terminal (disable=None: none when stderr is not one)
    with tqdm(total=len(times) * 3, desc="ovgen: timing each precision on this CPU (once)", unit="run",
              file=sys.stderr, disable=None, leave=False) as bar:
        for r in range(3):
            order = list(reqs) if r % 2 == 0 else list(reqs)[::-1]
            for n in (*lengths, "step"):
                for h in order:
                    times[h, n].append(_prefill_time(reqs[h], n) if n != "step" else _step_time(reqs[h], steps))
                    bar.update()
    med = {k: float(np.median(v)) for k, v in times.items()}
    return choose_plan(med, lengths, lambda prefill, decode, kv: _handover_time(compile_fn(prefill, kv), reqs[decode],
                                                                                 lengths[-1]))


def choose_plan(med: dict, lengths, handover_ms) -> Plan:
    """calibrate's choice from the median times `med[(hint, length or "step")]` (ms);
    `handover_ms(prefill, decode, kv)`: the handover of `lengths[-1]` tokens from a compile at hint
    `prefill` and KV precision `kv` to one at hint `decode`."""
    hints = sorted({h for h, _ in med}, key=CANDIDATES.index)
    detail = "; ".join(f"{n}: " + " / ".join(f"{h} {med[h, n]:.1f}" for h in hints) + " ms" for n in (*lengths, "step"))
    decode = min(hints, key=lambda h: med[h, "step"])
    prefill = min(hints, key=lambda h: med[h, lengths[-1]])
    if prefill == decode:
        return Plan(decode, decode, 0, split=False, source=f"calibrated ({detail})")
    kv_ms = {kv: handover_ms(prefill, decode, kv) for kv in HANDOVER_KV}
    kv = min(kv_ms, key=kv_ms.get)
    per_token = kv_ms[kv] / lengths[-1]
    wins = [n for n in lengths if med[prefill, n] + per_token * n < med[decode, n]]
    detail += f"; handover of {lengths[-1]}: " + " / ".join(f"KV {k} {v:.1f}" for k, v in kv_ms.items()) + " ms"
    if not wins:
        return Plan(decode, decode, 0, split=False, source=f"calibrated ({detail})")
    return Plan(prefill, decode, min(wins), source=f"calibrated ({detail})", prefill_kv=kv)


def copy_states(src: ov.InferRequest, dst: ov.InferRequest) -> None:
    """The KV handover: every state of `src` into `dst`'s state of the same name (converted to its
    KV precision by the plugin)."""
    states = {s.name: s for s in dst.query_state()}
    for s in src.query_state():
        states[s.name].state = s.state


def _handover_time(compiled: ov.CompiledModel, dst: ov.InferRequest, n: int) -> float:
    src = compiled.create_infer_request()
    out = []
    for _ in range(3):
        _prefill_time(src, n)
        t0 = perf_counter()
        copy_states(src, dst)
        out.append((perf_counter() - t0) * 1e3)
    return float(np.median(out))


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


def _step_time(r: ov.InferRequest, steps: int, context: int = 64) -> float:
    """Median ms of `steps` one-token steps after a `context`-token prompt."""
    r.reset_state()
    r.infer(_inputs(r, (np.arange(context, dtype=np.int64) % 1000 + 100)[None], 0))
    t = []
    for i in range(steps):
        t0 = perf_counter()
        r.infer(_inputs(r, np.array([[200 + i]], np.int64), context + i))
        t.append((perf_counter() - t0) * 1e3)
    return float(np.median(t))
