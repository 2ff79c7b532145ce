"""The onnxruntime-genai path: ovgen's loop on an ONNX model folder (genai_config.json + model.onnx),
as `onnxruntime_genai`'s model builder writes it (`ovgen prepare --flavours onnx`).

`OrtSession` keeps the Session interface the loop uses. The runtime owns the KV cache inside its
`Generator`; ovgen drives it like this:

    Session                   onnxruntime-genai
    prefill(ids) / append()   Generator.append_tokens(ids), then get_logits()   (runs the model)
    step(token)               Generator.append_tokens([token]), then get_logits()
    rewind(n)                 Generator.rewind_to(length - n)
    snapshot() / restore()    the token history + last logits; restore rewinds to the snapshot's
                              length (so it only goes back to a prefix of what the session holds)
    reorder(beam_idx)         NotImplementedError: the Generator has no public KV gather
    save() / load()           NotImplementedError: its KV cache can be neither read out nor written

ovgen's processors, samplers and stopping run unchanged on the logits. Beam search on this path is
the runtime's own (`beam_records`): ovgen's processors cannot run inside it, so a beam search with
processors other than the ones the runtime itself has (repetition_penalty, no_repeat_ngram_size,
length_penalty, diversity_penalty) is refused.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np

from .config import GenerationConfig
from .backend import ModelFiles, check_reserve, check_rewind, check_token_ids, generation_defaults, token_array
from .runtime import device_info
from .beam import Hypothesis
from .search import sequence_records
from .session import CUT_OFF, TokenHistory

RUNTIME = "onnxruntime-genai"


def is_ort_folder(path: Path) -> bool:
    return (path / "genai_config.json").is_file() and not (path / "openvino_model.xml").is_file()


@dataclass
class OrtModel(ModelFiles):
    """An onnxruntime-genai model plus what the loop needs to know about it (Model's interface)."""

    path: Path
    device: str
    og_model: Any
    config: dict[str, Any]  # genai_config.json's "model" section
    generation_config: GenerationConfig
    vocab_size: int
    max_length: int  # the Generator's KV buffer length (tokens)
    runtime: str = RUNTIME
    sliced: bool = True
    top_candidates: int = 0
    ov_config: dict[str, Any] = field(default_factory=dict)  # OpenVINO compile properties: none here
    precision: str = "onnx"  # the ONNX model's own (int4 weights, fp32 activations on CPU)
    report: dict[str, Any] = field(default_factory=dict)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def max_context(self) -> int | None:
        return self.max_length

    context_name = "the Generator's max_length"  # what max_context is, in errors

    def session(self) -> "OrtSession":
        return OrtSession(self)

    def new_generator(self, max_length: int | None = None, **search):
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.og_model)
        params.set_search_options(max_length=max_length or self.max_length, **search)
        return og.Generator(self.og_model, params)


def load(folder: Path, device: str = "CPU", *, max_length: int | None = None) -> OrtModel:
    """Load an onnxruntime-genai folder. Every file is checked (and named) before the runtime reads it."""
    if device != "CPU":
        raise ValueError(f"device {device!r}: the onnxruntime-genai path runs on CPU only here")
    cfg_path = folder / "genai_config.json"
    try:
        genai = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = genai["model"]
        decoder = model_cfg["decoder"]
        vocab, context = int(model_cfg["vocab_size"]), int(model_cfg["context_length"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: not an onnxruntime-genai config (missing {e})") from None
    onnx = folder / decoder.get("filename", "model.onnx")
    for f in (onnx, folder / "tokenizer.json"):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing (an onnxruntime-genai folder needs genai_config.json, "
                                    f"{onnx.name} and tokenizer.json)")
    if max_length is not None and not 0 < max_length <= context:
        raise ValueError(f"max_length must be in [1, {context}] (context_length), got {max_length}")
    import onnxruntime_genai as og

    try:
        og_model = og.Model(str(folder))
    except Exception as e:  # the runtime raises RuntimeError/OrtException with a multi-line text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{folder}: onnxruntime-genai cannot load this model ({first})") from None
    report = {"precision": "onnx", "runtime": RUNTIME, "version": og.__version__, **device_info(device)}
    return OrtModel(folder, device, og_model, model_cfg, generation_defaults(folder, model_cfg), vocab,
                    max_length or context, report=report)


@dataclass(frozen=True)
class OrtSnapshot:
    tokens: np.ndarray
    logits: np.ndarray | None
    logsumexp: np.floating


class OrtSession(TokenHistory):
    """Session's interface over an onnxruntime-genai Generator (one row)."""

    rows = 1
    reorder_kv = False  # the Generator has no KV gather: beam search is the runtime's own (beam_records)
    snapshots = True  # restore() goes back to an earlier point of the same sequence (a prompt's sequences)
    snapshots_travel = False  # ... and only there: not into another session (a prefix cache needs that)
    one_row = f"{RUNTIME} sessions hold one row (the Generator has no KV row gather); use an OpenVINO IR"
    argmax = None  # no graph outputs on this path: the loop scans the logits in NumPy
    top = None
    want_top = True  # (no candidates to skip here)

    def __init__(self, model: OrtModel):
        super().__init__()
        self.model = model
        self.generator = None
        self.capacity = 0  # the generator's max_length
        self._logits: np.ndarray | None = None
        self.infer_ns = self.infer_start_ns = 0
        self.logsumexp = np.float32(0)
        self._flux = False  # append_tokens ran, its tokens not recorded yet (see Session._recover)

    def reset(self) -> None:
        self.edits += 1  # (see session.owned)
        if self.generator is not None and (self._len or self._flux):
            self._flux = True  # (until the history follows it)
            try:
                self.generator.rewind_to(0)
            except BaseException:  # (Ctrl-C lands right after rewind_to: reset again, _flux says so)
                self.reset()
                raise
        self._len, self._logits, self._flux = 0, None, False

    def settle(self, step_id: int | None = None) -> None:
        """No asynchronous steps here; an append an exception cut off within its own handler is
        settled by a reset (as Session.settle)."""
        if self._flux:
            warnings.warn(CUT_OFF, RuntimeWarning, stacklevel=2)
            self.reset()

    def reserve(self, n: int) -> None:
        """Make room for `n` tokens in all. The Generator's KV buffer is allocated whole (a full
        context of 8,192 tokens costs ~30 ms and ~380 MB), so it is sized to what is asked for;
        growing it later re-runs the held tokens through a bigger Generator (one prefill)."""
        check_reserve(n, self.model.max_length, "the generator's max_length")
        if n <= self.capacity:
            return
        held = self.tokens[0].copy()
        grown = self.model.new_generator(n)
        # one statement (no call between its stores, so no Ctrl-C): the old Generator and history stay until
        # the new one takes over, empty; re-running the held tokens is then an append (which resets if cut off)
        self.generator, self.capacity, self._len, self._logits, self._flux = grown, n, 0, None, False
        if held.size:
            self.append(held)

    def prefill(self, token_ids) -> np.ndarray:
        self._ids(token_ids)  # bad ids leave the session as it was
        self.reset()
        return self.append(token_ids)

    def _ids(self, token_ids) -> np.ndarray:
        ids = token_array(token_ids)
        if ids.ndim > 2 or ids.ndim == 2 and ids.shape[0] != 1:
            raise NotImplementedError(f"{RUNTIME} sessions hold one row; got token_ids of shape {list(ids.shape)}")
        ids = ids.reshape(-1)
        if ids.size == 0:
            raise ValueError("token_ids is empty; a prompt needs at least one token")
        return check_token_ids(ids, self.model.vocab_size)

    def append(self, token_ids) -> np.ndarray:
        self.settle()
        ids = self._ids(token_ids)
        need = self._len + ids.size
        if need > self.model.max_length:
            raise ValueError(f"{self._len} + {ids.size} tokens exceed the generator's max_length "
                             f"{self.model.max_length}")
        if need > self.capacity:
            self.reserve(min(self.model.max_length, max(need, 2 * self.capacity, 256)))
        self.edits += 1
        self.infer_start_ns = t0 = perf_counter_ns()
        self._flux = True
        try:
            self.generator.append_tokens(ids.astype(np.int32))
            logits = self.generator.get_logits()
            self.infer_ns = perf_counter_ns() - t0
            self._push(ids[None, :])
        except BaseException:  # (Ctrl-C lands right after append_tokens: the Generator is ahead)
            self.reset()
            raise
        self._flux = False
        self._logits = logits.reshape(-1)
        m = self._logits.max()
        self.logsumexp = np.float32(m + np.log(np.exp(self._logits - m).sum(dtype=np.float64)))
        return self._logits

    def start_step(self, token: int) -> int:
        """No asynchronous steps on this path (the Generator runs inside append_tokens): returns 0,
        so the loop calls step()."""
        return 0

    def start_append(self, token_ids, logits_to_keep: int = 1) -> int:
        """No asynchronous appends either: returns 0, so the loop calls append()."""
        return 0

    def step(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids).reshape(-1)
        if ids.size != 1:
            raise NotImplementedError(f"{RUNTIME} sessions hold one row; got {ids.size} tokens for one step")
        return self.append(ids)

    def rewind(self, n: int) -> None:
        self.settle()
        n = check_rewind(n, self._len)
        if n == 0:
            return
        if n == self._len:
            self.reset()
            return
        self.edits += 1
        try:
            self.generator.rewind_to(self._len - n)
        except BaseException:  # (Ctrl-C lands right after rewind_to: the Generator is behind the history)
            self.reset()
            raise
        self._len -= n
        self._logits = None

    def snapshot(self) -> OrtSnapshot:
        self.settle()
        logits = None if self._logits is None else self._logits.copy()
        return OrtSnapshot(self.tokens.copy(), logits, np.float32(self.logsumexp))

    def restore(self, snap: OrtSnapshot) -> None:
        """Go back to a snapshot of this session whose tokens are a prefix of what it holds now."""
        if not isinstance(snap, OrtSnapshot):
            raise TypeError(f"restore takes a snapshot of this session (session.snapshot()), got {type(snap).__name__}")
        n = snap.tokens.shape[1]
        if n > self._len or not np.array_equal(self.tokens[:, :n], snap.tokens):
            raise NotImplementedError(f"{RUNTIME} sessions restore only to an earlier point of the same "
                                      "sequence (the Generator's KV cache cannot be copied)")
        self.rewind(self._len - n)
        self._logits, self.logsumexp = snap.logits, snap.logsumexp

    def save(self, path, meta=None) -> None:
        raise NotImplementedError(f"{RUNTIME} sessions cannot be saved (the Generator's KV cache cannot be read out)")

    def load(self, path, check=None) -> None:
        raise NotImplementedError(f"{RUNTIME} sessions cannot load a saved KV state (the Generator's cache cannot "
                                  "be written)")

    def reorder(self, beam_idx) -> None:
        raise NotImplementedError(f"{RUNTIME} has no way to reorder its Generator's KV cache rows "
                                  "(no beam_idx input); beam search on this path is the runtime's own")

    def beam_records(self, ids: list[int], cfg: GenerationConfig, max_new: int, processors=()):
        """The runtime's own beam search; one TokenRecord per token of each returned sequence, best
        first. The runtime reports no per-token log-probabilities or scores: those fields are NaN/None."""
        unsupported = [n for n in ("logit_bias", "presence_penalty", "frequency_penalty", "bad_words_ids",
                                   "allowed_token_ids", "min_new_tokens", "dry_multiplier", "json_schema", "regex",
                                   "grammar", "choices", "stop_strings", "top_logprobs") if getattr(cfg, n)]
        if processors or unsupported or cfg.do_sample or cfg.num_beam_groups > 1:
            what = ", ".join(unsupported + ["processors"] * bool(processors) + ["do_sample"] * cfg.do_sample
                             + ["num_beam_groups"] * (cfg.num_beam_groups > 1))
            raise NotImplementedError(f"beam search on the {RUNTIME} path is the runtime's own; it cannot run "
                                      f"ovgen's {what}")
        t0 = perf_counter_ns()
        gen = self.model.new_generator(
            len(ids) + max_new, num_beams=cfg.num_beams, num_return_sequences=cfg.num_return_sequences,
            length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping is True,
            repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            do_sample=False)
        gen.append_tokens(np.asarray(ids, np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        ready = perf_counter_ns()
        # the search ran on a generator of its own: the session's next append builds a new one (reserve)
        self.generator, self.capacity, self._len, self._logits = None, 0, 0, None
        self.edits += 1
        eos, nan = set(cfg.eos_token_id), float("nan")
        seqs = []
        for seq in range(cfg.num_return_sequences):
            out = [int(t) for t in gen.get_sequence(seq)[len(ids):]]
            seqs.append(Hypothesis(out, None, [nan] * len(out), [nan] * len(out),
                                   "stop" if out and out[-1] in eos else "length"))
        for rec in sequence_records(self.model.tokenizer, seqs):
            rec.ready_ns, rec.model_ns = ready, ready - t0 if rec.index == 0 else 0
            yield rec
