"""Find an IR folder's files, read the IR, apply graph passes, compile it with `openvino.Core`.

`load()` accepts a folder as `optimum-cli export openvino --task text-generation-with-past` writes
it, or as `ovgen prepare` builds it: openvino_model.xml/.bin, config.json, generation_config.json,
tokenizer.json (or the openvino_tokenizer IRs). Every check runs before anything is compiled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov

from ovgen.kernels.graph import add_logsumexp_output, add_topk_output, slice_last_position

from .config import GenerationConfig

REQUIRED_INPUTS = ("input_ids", "attention_mask")
TOP_CANDIDATES = 64  # width of the graph's top-k candidate output (see kernels.graph.add_topk_output)
# Compile properties ovgen sets on CPU unless `ov_config` names them. KV cache in f16 instead of the CPU
# plugin's default u8: it is the more exact cache (u8 quantises every K/V row), and on this project's
# AVX2 machine the faster one (benchmarks/kv_precision.py: decode step 0.96x at a 1,024-token context).
# It costs twice u8's KV memory: pass ov_config={"KV_CACHE_PRECISION": "u8"} for long contexts on
# large models, or to match openvino-genai / optimum-intel run with their defaults.
CPU_DEFAULTS = {"KV_CACHE_PRECISION": "f16"}
_CORE: ov.Core | None = None


def core() -> ov.Core:
    """One process-wide Core (creating one loads every device plugin: slow)."""
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


@dataclass
class Model:
    """A compiled decoder IR plus what the loop needs to know about it."""

    path: Path
    device: str
    compiled: ov.CompiledModel
    config: dict[str, Any]
    generation_config: GenerationConfig
    input_names: frozenset[str]
    vocab_size: int
    sliced: bool
    top_candidates: int = 0  # k of the topk_values/topk_ids outputs (0: none)
    ov_config: dict[str, Any] = field(default_factory=dict)
    _tokenizer: Any = None
    tokenizer_backend: str = "hf"

    @property
    def max_context(self) -> int | None:
        return self.config.get("max_position_embeddings")

    @property
    def tokenizer(self):
        """The model folder's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.path, backend=self.tokenizer_backend)
            if self._tokenizer.vocab_size > self.vocab_size:
                raise ValueError(
                    f"{self.path}: tokenizer has {self._tokenizer.vocab_size} tokens but the model's logits "
                    f"are {self.vocab_size} wide; tokenizer and model do not match"
                )
        return self._tokenizer

    def session(self):
        """A new Session (its own InferRequest and KV state) over this compiled model."""
        from .session import Session

        return Session(self)


def resolve_model_dir(path: str | Path | None) -> Path:
    """`path`, or the prepared default model; FileNotFoundError naming what is missing."""
    if path is None:
        from .prepare import default_model_dir

        path = default_model_dir()
        if not (path / "openvino_model.xml").is_file():
            raise FileNotFoundError(f"the default model is not prepared ({path} is missing); run `ovgen prepare`")
    path = Path(path)
    if path.is_file() and path.suffix == ".xml":
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    return path


def check_device(device: str) -> None:
    """A device that is not there: ValueError listing Core().available_devices."""
    if device.split(":")[0] in ("AUTO", "HETERO", "MULTI", "BATCH"):
        return
    available = core().available_devices
    if device not in available and device not in {d.split(".")[0] for d in available}:
        raise ValueError(f"device {device!r} is not available; available devices: {available}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_ir(folder: Path) -> ov.Model:
    """Read openvino_model.xml/.bin; clear errors for missing or corrupt files and wrong I/O."""
    xml, bin_ = folder / "openvino_model.xml", folder / "openvino_model.bin"
    for f in (xml, bin_):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing (expected an OpenVINO IR: openvino_model.xml + .bin, or an "
                                    "onnxruntime-genai folder: genai_config.json + model.onnx)")
    try:
        model = core().read_model(str(xml))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{xml}: cannot be read as an OpenVINO IR ({first})") from None
    names = {n for port in model.inputs for n in port.get_names()}
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    outputs = {n for port in model.outputs for n in port.get_names()}
    if missing or "logits" not in outputs:
        raise ValueError(
            f"{xml}: not a text-generation IR: inputs {sorted(names)} (need {list(REQUIRED_INPUTS)}), "
            f"outputs {sorted(outputs)} (need 'logits')"
        )
    if not model.get_sinks():
        raise NotImplementedError(
            f"{xml}: stateless IR (KV cache as inputs/outputs); ovgen needs a stateful IR - export with "
            "`optimum-cli export openvino --task text-generation-with-past` (stateful is its default)"
        )
    return model


def load(path: str | Path | None = None, device: str = "CPU", ov_config: dict[str, Any] | None = None, *,
         tokenizer: str = "hf", last_logits_only: bool = True, max_length: int | None = None):
    """Load and compile a decoder IR folder (default: the prepared SmolLM2-135M-Instruct).

    `ov_config` holds OpenVINO properties passed to `compile_model` as they are (PERFORMANCE_HINT,
    NUM_STREAMS, CACHE_DIR, INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION, ...), on top of
    `CPU_DEFAULTS` on CPU; `Model.ov_config` is what was compiled with, so a reference runtime can be
    given the same properties. `tokenizer` is "hf"
    (tokenizer.json through `tokenizers`) or "openvino" (the openvino_tokenizer IRs).
    `last_logits_only` slices the hidden state to the last position before the LM head, so the
    logits output is [batch, 1, vocab] whatever the prompt length.

    A folder with genai_config.json and no IR is an onnxruntime-genai model: it loads as an
    `ort.OrtModel` (same loop, same results schema; `max_length` sizes its KV buffer, default the
    context length; see ovgen/ort.py for what that runtime cannot do).
    """
    if tokenizer not in ("hf", "openvino"):
        raise ValueError(f"tokenizer must be 'hf' or 'openvino', got {tokenizer!r}")
    folder = resolve_model_dir(path)
    from . import ort

    if ort.is_ort_folder(folder):
        if ov_config:
            raise ValueError("ov_config applies to OpenVINO IRs; this folder is an onnxruntime-genai model")
        return ort.load(folder, device, max_length=max_length)
    if max_length is not None:
        raise ValueError("max_length applies to onnxruntime-genai folders; an OpenVINO IR's KV cache grows as needed")
    check_device(device)
    config = _read_json(folder / "config.json")
    gen_config = GenerationConfig.from_model_dir(folder)
    if not gen_config.eos_token_id and config.get("eos_token_id") is not None:
        eos = config["eos_token_id"]
        gen_config.eos_token_id = [eos] if isinstance(eos, int) else list(eos)
    ir = read_ir(folder)
    sliced = slice_last_position(ir) if last_logits_only else False
    add_logsumexp_output(ir)  # the loop reads each token's log-probability in O(1)
    vocab = ir.output("logits").get_partial_shape()[-1]
    if not vocab.is_static:
        raise ValueError(f"{folder / 'openvino_model.xml'}: logits' last dimension (vocab) is not static")
    top = TOP_CANDIDATES if vocab.get_length() > 4 * TOP_CANDIDATES else 0
    if top:  # sampling with top-k runs on these candidates (processors.Chain), greedy takes its token
        add_topk_output(ir, top)  # from them (Session.argmax): no scan of the vocabulary in NumPy
    props = {**(CPU_DEFAULTS if device.split(":")[0] == "CPU" else {}), **(ov_config or {})}
    try:
        compiled = core().compile_model(ir, device, props)
    except RuntimeError as e:  # a key or value the plugin refuses: its message names it (and the choices)
        reason = str(e).strip().splitlines()[-1]
        if "propert" not in reason.lower():
            raise
        raise ValueError(f"ov_config: {reason}") from None
    return Model(path=folder, device=device, compiled=compiled, config=config, generation_config=gen_config,
                 input_names=frozenset(n for p in ir.inputs for n in p.get_names()),
                 vocab_size=vocab.get_length(), sliced=sliced, top_candidates=top, ov_config=props, tokenizer_backend=tokenizer)
