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

from ovgen.kernels.graph import add_logsumexp_output, add_topk_output, slice_last_position, slice_logits_to_keep

from . import precision as P
from .backend import TOP_CANDIDATES, TOP_GATE, ModelFiles, generation_defaults
from .config import GenerationConfig
from .runtime import check_device, core

REQUIRED_INPUTS = ("input_ids", "attention_mask")


@dataclass
class Model(ModelFiles):
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
    ov_config: dict[str, Any] = field(default_factory=dict)  # read back from `compiled` (precision.pinned_config)
    tokenizer_backend: str = "hf"
    precision: str = "exact"
    report: dict[str, Any] = field(default_factory=dict)  # precision.describe(): policy, CPU, properties
    # fast / per-phase plans (ovgen/fast.py): prompts of at least min_prefill_tokens prefill on this
    # second compile, whose KV state Session.prefill hands to `compiled` (None: one compile)
    prefill_compiled: ov.CompiledModel | None = None
    min_prefill_tokens: int = 0
    attention: str = "stateful"  # or "paged": a PagedAttention IR whose KV blocks the session owns (ovgen/paged.py)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def max_context(self) -> int | None:
        return self.config.get("max_position_embeddings")

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token of one row holds at the least: layers x (K and V) x KV heads x head
        size in the compiled KV precision, from config.json (0 when it does not tell). The CPU plugin
        grows its state in larger steps, so a session may hold more."""
        c = self.config
        heads = c.get("num_key_value_heads") or c.get("num_attention_heads")
        size = c.get("head_dim") or (c["hidden_size"] // c["num_attention_heads"]
                                     if c.get("hidden_size") and c.get("num_attention_heads") else None)
        layers = c.get("num_hidden_layers")
        element = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1, "i8": 1, "u4": 0.5}.get(
            str(self.ov_config.get("KV_CACHE_PRECISION", "f32")).lower(), 4)
        if not all(isinstance(v, int) and v > 0 for v in (heads, size, layers)):
            return 0.0
        return float(layers * 2 * heads * size * element)

    def session(self):
        """A new Session (its own InferRequest and KV state) over this compiled model."""
        if self.attention == "paged":
            from .paged import PagedSession

            return PagedSession(self)
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
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file, not a model folder (an IR's folder, or its openvino_model.xml)")
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    return path


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
         precision: str = "exact", tokenizer: str = "hf", last_logits_only: bool = True,
         max_length: int | None = None, attention: str = "stateful"):
    """Load and compile a decoder IR folder (default: the prepared SmolLM2-135M-Instruct).

    `precision` is the policy (ovgen/precision.py): "exact" (f32 inference on every CPU, the
    default) or "native" (the plugin's own choice: bf16 where the CPU has it). `ov_config` holds
    OpenVINO properties passed to `compile_model` as they are (PERFORMANCE_HINT, NUM_STREAMS,
    CACHE_DIR, INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION, ...) over the policy's and
    `precision.CPU_DEFAULTS`; `Model.ov_config` is read back from the compiled model, so a reference
    runtime can be given the same properties, and `Model.report` names the CPU and the policy. `tokenizer` is "hf"
    (tokenizer.json through `tokenizers`) or "openvino" (the openvino_tokenizer IRs).
    `last_logits_only` slices the hidden state to the last position before the LM head, so the
    logits output is [batch, 1, vocab] whatever the prompt length.

    A folder with genai_config.json and no IR is an onnxruntime-genai model: it loads as an
    `ort.OrtModel` (same loop, same results schema; `max_length` sizes its KV buffer, default the
    context length; see ovgen/ort.py for what that runtime cannot do).

    `attention="paged"` compiles the IR turned into a PagedAttention IR (openvino-genai's
    transformation) whose KV cache blocks the session owns: an O(1) rewind and a cheaper multi-token
    infer, for one row; see ovgen/paged.py for what it leaves out.
    """
    from .paged import check_attention

    if path is not None and not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a model folder (str or Path), got {type(path).__name__}")
    if not isinstance(device, str):
        raise TypeError(f"device must be a device name such as 'CPU', got {type(device).__name__}")
    if not isinstance(last_logits_only, bool):
        raise ValueError(f"last_logits_only must be True or False, got {last_logits_only!r}")
    P.check_precision(precision)
    if check_attention(attention) == "paged" and (precision == "fast" or isinstance(precision, dict)):
        raise ValueError(f"precision {precision!r} plans per-phase compiles that hand over a stateful KV state; "
                         "attention='paged' takes precision 'exact' or 'native'")
    if isinstance(precision, dict):
        from .fast import plan_from

        plan_from(precision)  # a bad plan fails before anything is read or compiled
    if tokenizer not in ("hf", "openvino"):
        raise ValueError(f"tokenizer must be 'hf' or 'openvino', got {tokenizer!r}")
    if ov_config is not None and not isinstance(ov_config, dict):
        raise ValueError(f"ov_config must be a dict of OpenVINO properties, got {type(ov_config).__name__}")
    folder = resolve_model_dir(path)
    from . import ort

    if ort.is_ort_folder(folder):
        if attention != "stateful":
            raise ValueError("attention='paged' applies to OpenVINO IRs; this folder is an onnxruntime-genai model")
        if ov_config:
            raise ValueError("ov_config applies to OpenVINO IRs; this folder is an onnxruntime-genai model")
        if precision != "exact":  # exact: the default, which the runtime's own precision stands in for
            raise ValueError(f"precision {precision!r} applies to OpenVINO IRs; an onnxruntime-genai model runs at its "
                             "own (int4 weights, f32 activations)")
        if tokenizer != "hf":
            raise ValueError(f"tokenizer {tokenizer!r}: an onnxruntime-genai folder has tokenizer.json only ('hf')")
        return ort.load(folder, device, max_length=max_length)
    if max_length is not None:
        raise ValueError("max_length applies to onnxruntime-genai folders; an OpenVINO IR's KV cache grows as needed")
    check_device(device)
    config = _read_json(folder / "config.json")
    gen_config = generation_defaults(folder, config)
    ir, sliced, vocab, top = build_ir(folder, last_logits_only, attention=attention)
    name = P.check_precision(precision)
    plan = _plan(precision, folder, device, lambda hint, kv=None: compile_ir(
        ir, device, P.compile_properties(hint, device, _kv_config(device, ov_config, kv))))
    hint = plan.decode if plan else P.inference_hint(precision, device)
    props = P.compile_properties(hint, device, ov_config)
    compiled = compile_ir(ir, device, props)
    prefill = compile_ir(ir, device, P.compile_properties(plan.prefill, device, _kv_config(device, ov_config,
                                                                                           plan.prefill_kv))) \
        if plan and plan.split else None
    phases = {"prefill": P.read_back(prefill or compiled, P.REPORTED), "decode": P.read_back(compiled, P.REPORTED)}
    report = {**P.describe(name, device, phases, plan.describe if plan else None), "attention": attention}
    return Model(path=folder, device=device, compiled=compiled, config=config, generation_config=gen_config,
                 input_names=frozenset(n for p in ir.inputs for n in p.get_names()),
                 vocab_size=vocab, sliced=sliced, top_candidates=top, ov_config=P.pinned_config(compiled, props),
                 tokenizer_backend=tokenizer, precision=name, report=report, prefill_compiled=prefill,
                 min_prefill_tokens=plan.min_prefill_tokens if plan and plan.split else 0, attention=attention)


def _kv_config(device: str, ov_config: dict | None, kv: str | None) -> dict:
    """ov_config with KV_CACHE_PRECISION `kv` (None: as it is) unless ov_config pins it: a split plan's
    prefill compile keeps its KV state at the plan's `prefill_kv`, the precision the handover reads
    fastest on this CPU (ovgen/fast.py); the decode compile stores it at its own KV precision."""
    if kv is None or device.split(":")[0] != "CPU":
        return dict(ov_config or {})
    return {"KV_CACHE_PRECISION": kv, **(ov_config or {})}


def _plan(precision, folder: Path, device: str, compile_fn):
    """The per-phase plan of "fast" or an explicit dict (ovgen/fast.py); None for exact / native."""
    from . import fast

    if isinstance(precision, dict):
        return fast.plan_from(precision)
    if precision == "fast":
        return fast.fast_plan(folder, device, compile_fn)
    return None


def build_ir(folder: Path, last_logits_only: bool = True, *, keep_input: bool = True, attention: str = "stateful"
             ) -> tuple[ov.Model, bool, int, int]:
    """The IR as ovgen compiles it: (ir, sliced, vocab, top candidates). Graph passes: the LM head on
    the last position(s) only (`last_logits_only`; with `keep_input` their number is the
    `logits_to_keep` input, 1 but when proposed tokens are verified), a logsumexp output (each
    token's log-probability in O(1)), and the top-64 logits as candidates (sampling with top-k and
    top-p read them instead of scanning the vocabulary in NumPy), computed only in the infers whose
    `topk_on` input is true (`Session.want_top`). `keep_input=False` gives the IR with the inputs an
    exporter wrote (for references such as optimum-intel's model class; its candidates always on).
    `attention="paged"`: the PagedAttention IR (ovgen/paged.py), its logits_to_keep on the token axis."""
    if attention == "paged" and not (last_logits_only and keep_input):
        raise ValueError("attention='paged' needs last_logits_only=True (its logits_to_keep input)")
    ir = read_ir(folder)
    if attention == "paged":
        from .paged import to_paged

        sliced = slice_logits_to_keep(to_paged(ir), axis=0)
    else:
        slicer = slice_logits_to_keep if keep_input else slice_last_position
        sliced = slicer(ir) if last_logits_only else False
    add_logsumexp_output(ir)
    vocab = ir.output("logits").get_partial_shape()[-1]
    if not vocab.is_static:
        raise ValueError(f"{folder / 'openvino_model.xml'}: logits' last dimension (vocab) is not static")
    top = TOP_CANDIDATES if vocab.get_length() > 4 * TOP_CANDIDATES else 0
    if top:
        add_topk_output(ir, top, gate=TOP_GATE if keep_input else None)
    return ir, sliced, vocab.get_length(), top


def compile_ir(ir: ov.Model, device: str, props: dict) -> ov.CompiledModel:
    """compile_model; a property key or value the plugin refuses is a ValueError in its own words."""
    try:
        return core().compile_model(ir, device, props)
    except RuntimeError as e:  # a key or value the plugin refuses: its message names it (and the choices)
        reason = str(e).strip().splitlines()[-1]
        named = any(f"{v}" in reason for v in props.values() if len(f"{v}") > 1)  # "... from str: lots; stoi"
        if "propert" not in reason.lower() and not named:  # e.g. a hint this CPU's plugin cannot build the
            asked = {k: props[k] for k in P.PINNED if k in props}  # graph in: name what was asked
            raise RuntimeError(f"OpenVINO could not compile the model for {device} with {asked}: {reason}") from e
        raise ValueError(f"ov_config: {reason}") from None
