"""The precision policy: which inference precision each phase runs in, and what was really compiled.

    exact   f32 inference on every CPU (activations too: no dynamic quantization), KV cache f16.
            The default: the same prompt gives the same tokens on AVX2, AVX512-BF16 and AMX machines
            as far as f32 allows, and parity with the references holds there (they get the same
            properties).
    native  the plugin's own choice (bf16 where the CPU has it, f32 elsewhere), KV cache f16:
            openvino-genai's and optimum-intel's precision. Logits carry ~3 significant digits in
            bf16, so top candidates tie and beams may part from the references at those ties.
    fast    each phase in the precision that runs it fastest on this CPU (see ovgen/fast.py); on
            a CPU with no faster precision than f32 it is `exact`, and the report says so.

A per-phase plan names each phase's hint: "f32" (exact's: no dynamic quantization), "f32-dq" (the f32
hint with the plugin's own dynamic int8 quantization of the int4/int8 matmuls' activations: on
VNNI/AMX CPUs a decode step runs on int8 kernels, ~0.75x bf16's time on an AMX Xeon), "bf16", "f16".

`ov_config` overrides anything the policy sets. What a model runs with is read back from the
compiled model (`read_back`), never assumed: the plugin silently falls back to f32 where a hint
asks for a precision the CPU does not have. On a virtual device over the CPU (AUTO, HETERO:CPU,
MULTI:CPU) the policy reaches the CPU through DEVICE_PROPERTIES, and is read back from there: set
at the top level it would not reach it (AUTO ran bf16 under "exact").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openvino as ov

from .runtime import cpu_under, device_info, quantizes_activations

PRECISIONS = ("exact", "native", "fast")
# Compile properties ovgen sets on CPU unless `ov_config` names them. KV cache in f16 instead of the CPU
# plugin's default u8: it is the more exact cache (u8 quantises every K/V row), and on this project's
# AVX2 machine the faster one (benchmarks/kv_precision.py: decode step 0.96x at a 1,024-token context).
# It costs twice u8's KV memory: pass ov_config={"KV_CACHE_PRECISION": "u8"} for long contexts on
# large models, or to match openvino-genai / optimum-intel run with their defaults.
CPU_DEFAULTS = {"KV_CACHE_PRECISION": "f16"}
# ... and for every phase compiled with an f32 hint (`exact`, and a plan's f32 phases). An f32 hint alone
# does not make the computation f32: on CPUs with VNNI/AMX the plugin still quantises the activations
# of int4/int8-weight matmuls to int8 in groups of 32 (DYNAMIC_QUANTIZATION_GROUP_SIZE=32). Measured on an
# AVX512-BF16/VNNI EPYC with SmolLM2 int4 at the f32 hint: logits moved by up to 0.70 (group 32 vs 0), a
# decode step's logits differed from a prefill's of the same position by 0.54 and a batched row's from the
# same prompt run alone by 1.5, so greedy rows parted from their prompts run alone; with group size 0,
# 0.006 and 0.016. On an AVX2-only EPYC groups 32 and 0 gave bit-identical logits: there the key changes nothing.
F32_DEFAULTS = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
# Properties read back from a compiled model into Model.ov_config (what a reference must be given to
# run the same computation), besides every key the caller passed.
PINNED = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE")
# ... and reported with every result (ovgen inspect, --json, bench, compare).
REPORTED = PINNED + ("EXECUTION_MODE_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                     "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "RUNTIME_REQUIREMENTS")


def check_precision(precision) -> str:
    """The policy's name ("plan" for an explicit per-phase dict, ovgen/fast.py)."""
    if isinstance(precision, dict):
        return "plan"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or a per-phase plan dict), "
                         f"got {precision!r}")
    return precision


def inference_hint(precision: str, device: str) -> str | None:
    """The hint of one phase under `precision` ("exact"/"native"; None = the plugin's default), or
    a plan's ("f32", "f32-dq", "bf16", "f16"), as compile_properties takes it."""
    if not cpu_under(device):
        return None  # other devices keep their own defaults; what they chose is read back
    return {"exact": "f32", "native": None}.get(precision, precision)


def compile_properties(hint: str | None, device: str, ov_config: Mapping[str, Any] | None) -> dict:
    """What `compile_model` gets: the policy's hint and ovgen's CPU defaults, under `ov_config`.
    "f32-dq" is the f32 hint without F32_DEFAULTS (the plugin's dynamic quantization stays on)."""
    cpu: dict[str, Any] = {}
    if cpu_under(device):
        cpu.update(CPU_DEFAULTS)
        if hint is not None:
            cpu["INFERENCE_PRECISION_HINT"] = "f32" if hint == "f32-dq" else hint
        if hint == "f32":
            cpu.update(F32_DEFAULTS)
    user = dict(ov_config or {})
    if device.split(":")[0] == "CPU" or not cpu:
        return {**cpu, **user}
    under = {k: dict(v) for k, v in user.pop("DEVICE_PROPERTIES", {}).items()}  # the caller's, per device
    under["CPU"] = {**cpu, **under.get("CPU", {})}
    return {**user, "DEVICE_PROPERTIES": under}


def _text(value) -> str:
    """A property value as the string one would pass back to compile_model ("f32", "PERFORMANCE")."""
    if isinstance(value, ov.Type):
        return value.to_string()
    if isinstance(value, bool):
        return "YES" if value else "NO"
    return str(getattr(value, "name", value))  # enums (ExecutionMode.PERFORMANCE) by their name


def read_back(compiled: ov.CompiledModel, keys) -> dict[str, str]:
    """The compiled model's own values of `keys` (those it can report), as strings."""
    supported = set(compiled.get_property("SUPPORTED_PROPERTIES"))
    out = {k: _text(compiled.get_property(k)) for k in keys if k in supported and k != "DEVICE_PROPERTIES"}
    if "DEVICE_PROPERTIES" in supported:  # a virtual device: what its CPU runs with
        cpu = compiled.get_property("DEVICE_PROPERTIES").get("CPU", {})
        out.update({k: _text(cpu[k]) for k in keys if k in cpu and k not in out})
    return out


def pinned_config(compiled: ov.CompiledModel, requested: Mapping[str, Any]) -> dict[str, str]:
    """Model.ov_config: every requested key plus PINNED, with the values the compiled model runs
    with (a reference given this dict compiles the same computation)."""
    under = requested.get("DEVICE_PROPERTIES", {}).get("CPU", {})  # a virtual device's CPU (compile_properties)
    requested = {k: v for k, v in {**under, **requested}.items() if k != "DEVICE_PROPERTIES"}
    keys = list(dict.fromkeys([*PINNED, *requested]))
    out = read_back(compiled, keys)
    out.update({k: str(v) for k, v in requested.items() if k not in out})  # write-only keys, as asked
    return out


def describe(precision: str, device: str, phases: Mapping[str, Mapping[str, str]], plan: dict | None = None) -> dict:
    """The report every result carries: policy, device and CPU, and each phase's read-back properties.
    `phases`: {"prefill": props, "decode": props} (the same dict twice for a single compile); `plan`:
    a per-phase plan (ovgen/fast.py) with where it came from."""
    return {"precision": precision, **device_info(device), "properties": dict(phases["decode"]),
            **({"prefill_properties": dict(phases["prefill"])} if phases["prefill"] != phases["decode"] else {}),
            **({"plan": plan} if plan else {})}


def phase_label(props: Mapping[str, str], quantizes: bool = True) -> str:
    """One phase's read-back properties in a plan's words: "f32-dq, KV u8" (an f32 hint with dynamic
    quantization on, on a CPU where it acts: `quantizes`, runtime.quantizes_activations)."""
    hint = props.get("INFERENCE_PRECISION_HINT", "?")
    if hint == "f32" and quantizes and props.get("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0") != "0":
        hint = "f32-dq"
    return f"{hint}, KV {props.get('KV_CACHE_PRECISION', '?')}"


def label(report: Mapping[str, Any]) -> str:
    """What a model runs each phase in, from its report: "exact (f32, KV f16)", "fast (prefill bf16,
    KV u8 from 32 tokens; decode f32-dq, KV f16)"."""
    acts = quantizes_activations(report)
    decode = phase_label(report.get("properties", {}), acts)
    if "prefill_properties" in report:
        n = report.get("plan", {}).get("min_prefill_tokens", 0)
        return f"{report['precision']} (prefill {phase_label(report['prefill_properties'], acts)} from {n} tokens; " \
               f"decode {decode})"
    return f"{report['precision']} ({decode})"
