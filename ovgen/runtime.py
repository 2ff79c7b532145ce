"""The OpenVINO runtime this process uses: one Core, the devices it sees, and what the CPU can do.

Every module that compiles or reads a model takes its Core from here (model, tokenizer, precision),
so none of them imports another for it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import openvino as ov

# /proc/cpuinfo flags that decide which inference precisions the CPU plugin can use and how fast.
PRECISION_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16",
                   "amx_int8")
# ... of them, those the plugin's dynamic int8 quantization of matmul activations needs on x86 (intel_cpu's
# DnnlFCPrimitive::useDynamicQuantizationImpl: oneDNN's avx2_vnni or avx512_core_vnni)
VNNI_FLAGS = ("avx_vnni", "avx512_vnni")


@functools.lru_cache(maxsize=1)
def core() -> ov.Core:
    """One process-wide Core (creating one loads every device plugin: slow). openvino_tokenizers is
    imported first: it adds its string ops to Cores created after its import, and only to those."""
    import openvino_tokenizers  # noqa: F401

    return ov.Core()


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")  # devices over other devices ("HETERO:CPU")


def check_device(device: str) -> None:
    """A device that is not there: ValueError listing Core().available_devices."""
    if device.split(":")[0] in VIRTUAL_DEVICES:
        return
    available = core().available_devices
    if device not in available and device not in {d.split(".")[0] for d in available}:
        raise ValueError(f"device {device!r} is not available; available devices: {available}")


def cpu_under(device: str) -> bool:
    """The device is the CPU, or a virtual device that may run on it: AUTO (when the CPU is one of
    the machine's devices), HETERO:CPU, MULTI:GPU,CPU, BATCH:CPU(4), ..."""
    kind, _, parts = device.partition(":")
    if kind not in VIRTUAL_DEVICES:
        return kind == "CPU"
    names = [p.split("(")[0].split(".")[0] for p in parts.split(",")] if parts else core().available_devices
    return "CPU" in names


@functools.lru_cache(maxsize=None)
def device_info(device: str = "CPU") -> dict:
    """What a figure or a result must name: the device's full name, which CPU it is (`cpu_model`: two
    CPUs of one name and flags, a Zen 4 and a Zen 5 EPYC, decode at very different speeds), the CPU's
    precision-relevant flags and the precisions the plugin can infer in ("BF16", "FP16" in
    OPTIMIZATION_CAPABILITIES)."""
    kind, _, parts = device.partition(":")
    try:
        full = str(core().get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:  # "You can only get_property of the HETERO itself": name the devices under it
        if kind not in VIRTUAL_DEVICES or not parts:
            raise
        full = f"{kind} on " + ", ".join(str(core().get_property(p.split("(")[0], "FULL_DEVICE_NAME"))
                                         for p in parts.split(","))
    info = {"device": device, "name": full}
    if cpu_under(device):
        caps = [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        info["capabilities"] = caps
        info["cpu_model"] = cpu_model()
        info["cpu_flags"] = cpu_flags()
        info["machine"] = platform.machine()
    return info


def _first_cpu(cpuinfo: Path) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (empty where it is not readable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The PRECISION_FLAGS this CPU has (empty where /proc/cpuinfo is not readable)."""
    flags = set(_first_cpu(cpuinfo).get("flags", "").split())
    return [f for f in PRECISION_FLAGS if f in flags]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Which CPU this is beyond its marketing name: vendor, family and model as /proc/cpuinfo gives
    them ("AuthenticAMD family 25 model 17"; "" where it does not say)."""
    f = _first_cpu(cpuinfo)
    if "cpu family" not in f:
        return ""
    return f"{f.get('vendor_id', '?')} family {f['cpu family']} model {f.get('model', '?')}"


def quantizes_activations(info: dict) -> bool:
    """Whether DYNAMIC_QUANTIZATION_GROUP_SIZE changes anything on the CPU a device_info / report names:
    on x86 only with VNNI (an AVX2-only EPYC gave bit-identical logits at group sizes 32 and 0); where
    the flags are unknown, or on another architecture (ARM quantizes with its dot-product instructions),
    assumed so."""
    flags = info.get("cpu_flags")
    if info.get("machine") not in ("x86_64", "AMD64") or not flags:
        return True
    return any(f in flags for f in VNNI_FLAGS)


def describe_cpu(report: dict) -> str:
    """One line naming the CPU of a model's report: name, vendor/family/model, precision flags."""
    ident = f" [{report['cpu_model']}]" if report.get("cpu_model") else ""
    flags = ", ".join(report.get("cpu_flags", [])) or "no precision flags"
    return f"{report.get('name', report.get('device', '?'))}{ident} ({flags})"


def has_bf16(device: str = "CPU") -> bool:
    """The CPU plugin infers in bf16 by default on this device, or on the CPU under a virtual one
    (AUTO, HETERO:CPU, ...): its capabilities list BF16."""
    return cpu_under(device) and "BF16" in device_info(device).get("capabilities", [])
