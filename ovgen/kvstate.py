"""A Session's KV state as data: snapshot / restore, trimming (holes and compaction) and save / load.

Trim. The CPU plugin's state can only be replaced whole (`VariableState.state = tensor`, a copy of
every layer's K and V: O(context); openvino-genai's `trim_kv_cache` does the same). So `rewind`
masks the dropped positions out of attention instead (`drop_last`: O(n)) and `compact` copies the
held positions into fresh tensors only once the holes are many - an amortised cost per rewound
token that does not grow with the context.

Save. `save` writes an .npz (no pickles) with a JSON header: format and version, the model's
fingerprint (sha256 of its IR files), the precision it ran at (INFERENCE_PRECISION_HINT,
KV_CACHE_PRECISION), the history, the mask, the caller's JSON `meta` if any (a Chat's messages) and a
sha256 of every array; `load` refuses a different model, a different precision, another format
version or a file whose arrays do not match their sum.
States are stored in the KV cache's own precision (f16 values survive f32 -> f16 exactly).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from .runtime import quantizes_activations

FORMAT, VERSION = "ovgen-session", 1


@dataclass(frozen=True)
class Snapshot:
    """Copies of the KV state tensors, the token history and the attention mask at one point, with the
    last logits' logsumexp and top candidates (so a restored session reports them for that point)."""

    states: dict[str, np.ndarray]
    tokens: np.ndarray
    beam_idx: np.ndarray | None
    logsumexp: np.ndarray | np.floating = np.float32(0)
    top: tuple[np.ndarray, np.ndarray] | None = None
    mask: np.ndarray = field(default_factory=lambda: np.ones((1, 0), np.int64))  # [rows, kv]
    holes: int = 0
    pad: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # [rows] left padding
    model: object = None  # the Model whose session it was taken from (restore checks it)


def _states(session) -> dict[str, np.ndarray]:
    return {s.name: np.array(s.state.data, copy=True) for s in session.request.query_state()}


def snapshot(session) -> Snapshot:
    beam = None if session._beam_idx is None else session._beam_idx.copy()
    top = None if session.top is None else (session.top[0].copy(), session.top[1].copy())
    return Snapshot(_states(session), session.tokens.copy(), beam, np.copy(session.logsumexp), top,
                    session.mask.copy(), session.holes, session.pad.copy(), session.model)


@contextmanager
def changing(session):
    """Around a change of several state tensors and the history: cut off half-way (a Ctrl-C between two
    layers' copies) it would leave layers of two contexts, or a history the state does not hold, and
    the session would go on from that (an OpenVINO error, or wrong tokens). It starts afresh instead
    (Session._recover), as after a cut-off infer, and the exception goes on."""
    try:
        yield
    except BaseException:
        session._recover()
        raise


def _check_states(session, states: dict[str, np.ndarray]) -> None:
    for s in session.request.query_state():
        if s.name not in states:
            raise ValueError(f"the saved state has no tensor named {s.name!r}; it is from another model")


def _put_states(session, states: dict[str, np.ndarray]) -> None:
    held = session.request.query_state()
    if all(states[s.name].size == 0 for s in held):
        # an empty state (a session that had run nothing): its tensors have batch 0, and set as they are
        # the next infer fails (beam_idx 0 out of a batch of 0); the IR's own initial state is the empty one
        session.request.reset_state()
        return
    for s in held:
        s.state = ov.Tensor(np.ascontiguousarray(states[s.name], dtype=np.float32))


def restore(session, snap: Snapshot) -> None:
    if snap.model is not None and not interchangeable(snap.model, session.model):
        raise ValueError(f"the snapshot was taken on another model ({model_label(snap.model)}); this session's "
                         f"is {model_label(session.model)}")
    _check_states(session, snap.states)
    with changing(session):
        _put_states(session, snap.states)
        session.tokens = snap.tokens.copy()
        session._beam_idx = None if snap.beam_idx is None else snap.beam_idx.copy()
        session.logsumexp = np.copy(snap.logsumexp)
        session.top = None if snap.top is None else (snap.top[0].copy(), snap.top[1].copy())
        _put_mask(session, snap.mask, snap.holes)
        session.pad = snap.pad.copy()


def _put_mask(session, mask: np.ndarray, holes: int) -> None:
    rows, kv = mask.shape
    buf = np.ones((rows, max(1024, 2 * kv)), np.int64)
    buf[:, :kv] = mask
    session._set_mask(buf)
    session.kv, session.holes = kv, holes


def drop_last(session, n: int) -> None:
    """Mask out each row's last n held positions (they become holes) and drop them from the history."""
    with changing(session):
        for r in range(session._mask.shape[0]):
            held = np.flatnonzero(session._mask[r, :session.kv])
            session._mask[r, held[-n:]] = 0
        session._len -= n
        session.holes += n


def seq_axis(shape, length: int) -> int:
    """The KV tensor's sequence axis: [batch, kv_heads, seq, head_dim] puts it at 2; fall back to
    whichever non-batch axis has the state's length."""
    if len(shape) == 4 and shape[2] == length:
        return 2
    for axis in range(1, len(shape)):
        if shape[axis] == length:
            return axis
    raise RuntimeError(f"cannot find the sequence axis of a KV state of shape {shape} (length {length})")


def compact(session) -> None:
    """Keep only the positions some row attends to, in fresh state tensors."""
    keep = np.flatnonzero(session.mask.any(axis=0))
    if keep.size == session.kv:
        session.holes = 0
        return
    with changing(session):
        for s in session.request.query_state():
            data = s.state.data
            s.state = ov.Tensor(np.ascontiguousarray(np.take(data, keep, axis=seq_axis(data.shape, session.kv))))
        _put_mask(session, session.mask[:, keep], 0)


# ---- save / load --------------------------------------------------------------------------------------
_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(model) -> str:
    """sha256 over the model's IR files (cached per file size and mtime)."""
    files = [model.path / "openvino_model.xml", model.path / "openvino_model.bin"]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def precision_of(model) -> dict[str, str]:
    """The properties its KV states depend on; a split plan's (ovgen/fast.py) prefill precision too, when
    it differs from its decode's: the prompt's states are the prefill compile's."""
    out = {k: model.ov_config.get(k, "") for k in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION")}
    # int8 activations give other K/V: named only when on (exact's files stay as they were), and only where
    # the CPU quantizes at all (on an AVX2-only CPU native's group size 32 computes exact's states)
    acts = quantizes_activations(model.report)
    keys = ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE") if acts else ("INFERENCE_PRECISION_HINT",)
    dq = model.ov_config.get("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0")
    if dq != "0" and acts:
        out["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = dq
    pre = model.report.get("prefill_properties", {})
    for k in keys:
        if pre.get(k) and pre[k] != model.report["properties"].get(k):
            out["PREFILL_" + k] = pre[k]
    return out


def model_id_of(model) -> tuple:
    """What makes two loads' KV states interchangeable: the IR (its files' sha256, wherever they lie) and
    the precision it runs at; an onnxruntime-genai model: its folder."""
    if not hasattr(model, "compiled"):
        return str(model.path), "onnxruntime-genai"
    return fingerprint(model), tuple(precision_of(model).items())


def interchangeable(a, b) -> bool:
    """Whether models `a` and `b` compute the same KV states (the same load, or model_id_of agrees)."""
    return a is b or model_id_of(a) == model_id_of(b)


def model_label(model) -> str:
    """A model as errors name it: its folder, the start of its IR's sha256 and its precision."""
    if not hasattr(model, "compiled"):
        return f"{model.path} (onnxruntime-genai)"
    props = ", ".join(f"{k}={v}" for k, v in precision_of(model).items())
    return f"{model.path} (sha256 {fingerprint(model)[:12]}, {props})"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def save(session, path, meta: dict | None = None) -> None:
    if session._beam_idx is not None:
        raise ValueError("save: a reorder is pending (beam search mid-step); save after the next step")
    store = np.float16 if session.model.ov_config.get("KV_CACHE_PRECISION") == "f16" else np.float32
    arrays = {f"state:{name}": a.astype(store) for name, a in _states(session).items()}
    arrays["tokens"], arrays["mask"] = session.tokens.copy(), session.mask.copy()
    if meta is not None:  # the caller's JSON (a Chat's messages), under the same checksum as the arrays
        try:
            text = json.dumps(meta, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"save: meta must be JSON data (dicts, lists, text, numbers): {e}") from None
        arrays["meta"] = np.frombuffer(text.encode(), np.uint8)
    header = {"format": FORMAT, "version": VERSION, "model": fingerprint(session.model),
              "precision": precision_of(session.model), "holes": session.holes, "sha256": _digest(arrays)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
        os.replace(tmp, path)  # never a half-written file under the final name
    except BaseException as e:  # (a full disk, or a Ctrl-C: no temporary file left behind)
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"save: cannot write {path} ({e.strerror})") from None
        raise


def load(session, path, check=None) -> dict | None:
    """Replace the session's state with the file's; returns the `meta` it was saved with (None: none).
    `check(meta)` runs once the file is verified and before anything changes: raise to refuse it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved session there")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a saved ovgen session ({type(e).__name__}: {e})") from None
    _check_header(path, header, session.model)
    if _digest(arrays) != header["sha256"]:
        raise ValueError(f"{path}: corrupt (its arrays do not match the checksum in its header)")
    meta = json.loads(bytes(arrays.pop("meta")).decode()) if "meta" in arrays else None
    states = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("state:")}
    _check_states(session, states)
    if check is not None:
        check(meta)
    with changing(session):
        _put_states(session, states)
        session.tokens = arrays["tokens"]
        session._beam_idx, session.top, session.logsumexp = None, None, np.float32(0)
        _put_mask(session, arrays["mask"], int(header["holes"]))
    return meta


def _check_header(path: Path, header: dict, model) -> None:
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a saved ovgen session (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: saved session format version {header.get('version')}, this ovgen reads {VERSION}")
    if header.get("model") != fingerprint(model):
        raise ValueError(f"{path}: saved from another model (fingerprint {str(header.get('model'))[:12]}..., "
                         f"{model.path} is {fingerprint(model)[:12]}...)")
    if header.get("precision") != precision_of(model):
        raise ValueError(f"{path}: saved at precision {header.get('precision')}, this model runs at {precision_of(model)}")
