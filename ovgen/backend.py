"""What a backend provides to the loop: the Model and Session protocols, and the parts every
backend shares (the folder's tokenizer and generation defaults, the vocabulary check).

Two backends implement them: `model.Model` / `session.Session` (an OpenVINO IR, state inside the
InferRequest) and `ort.OrtModel` / `ort.OrtSession` (onnxruntime-genai's Generator). Search,
beams, speculation and batching talk to these protocols only, so a third backend plugs in by
providing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import GenerationConfig, check_token_ids, past_int64  # noqa: F401 - part of the backend API

def token_array(token_ids) -> np.ndarray:
    """`token_ids` as an int64 array; text, floats, bools or other non-integers are refused by name
    (np.asarray(..., dtype=np.int64) would truncate 5.7 to 5 or fail on its int() of a text)."""
    arr = np.asarray(token_ids)
    if arr.dtype.kind not in "iu" and arr.size:
        values = arr.ravel().tolist()
        if arr.dtype == object and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"token ids {past_int64(values)[:5]} are outside the vocabulary (past int64)")
        raise TypeError(f"token_ids must be integer token ids, got {arr.dtype} values ({values[0]!r})")
    return arr.astype(np.int64, copy=False)


def check_rewind(n, length: int) -> int:
    """`rewind(n)`'s n, checked before anything changes: an integer in [0, length]."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 0 <= n <= length:
        raise ValueError(f"rewind n must be an integer in [0, {length}], got {n!r}")
    return int(n)


def check_reserve(n, limit: int | None, what: str = "the model's context") -> None:
    """`reserve(n)`'s n: an integer in [0, limit] (a huge one tried to allocate its cache whole)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"reserve n must be an integer >= 0, got {n!r}")
    if limit and n > limit:
        raise ValueError(f"{n} tokens exceed {what} ({limit})")


TOP_CANDIDATES = 64  # width of the graph's top-k candidate output (see kernels.graph.add_topk_output)
TOP_GATE = "topk_on"  # the IR input that turns the graph's top-k candidates on per infer (Session.want_top)


@runtime_checkable
class SessionLike(Protocol):
    """One sequence state (KV cache + token history) that the loop drives."""

    rows: int  # batch rows held (beams, batched prompts)
    length: int  # tokens held per row
    tokens: np.ndarray  # [rows, length] int64, what the KV state holds
    logsumexp: Any  # log(sum(exp(last logits))) per row
    top: tuple[np.ndarray, np.ndarray] | None  # (values, ids ascending) of the largest last logits, or None
    want_top: bool  # compute `top` in the next runs (False: the loop will not read it; a runtime may skip it)
    infer_ns: int  # wall time of the last model run
    infer_start_ns: int  # perf_counter_ns() when it started
    reorder_kv: bool  # reorder() works (False: beam search is the runtime's own, see `beam_records`)
    snapshots: bool  # snapshot() / restore() work (a prefix cache needs them)
    # (optional; True when absent) a snapshot restores into another session of the model, as a prefix cache does
    one_row: str  # why it holds one row only (a list of prompts cannot run as one batch); "" if it can batch

    def reserve(self, n: int) -> None: ...
    def reset(self) -> None: ...
    def prefill(self, token_ids) -> np.ndarray: ...
    def append(self, token_ids) -> np.ndarray: ...
    def step(self, token_ids) -> np.ndarray: ...
    def start_step(self, token: int) -> int: ...
    def start_append(self, token_ids, logits_to_keep: int = 1) -> int: ...
    def finish_step(self) -> np.ndarray: ...
    def settle(self, step_id: int | None = None) -> None: ...
    def rewind(self, n: int) -> None: ...
    def snapshot(self): ...
    def restore(self, snap) -> None: ...
    def reorder(self, beam_idx) -> None: ...


@runtime_checkable
class ModelLike(Protocol):
    """A loaded model: what the loop reads about it, and sessions over it."""

    path: Path
    device: str
    vocab_size: int
    generation_config: GenerationConfig
    top_candidates: int  # width of the candidate output Session.top reads (0: none)
    ov_config: dict[str, Any]  # compile properties read back (empty where none apply)
    precision: str
    report: dict[str, Any]  # policy, device, CPU and properties: every result carries it

    @property
    def tokenizer(self): ...
    @property
    def max_context(self) -> int | None: ...
    def session(self) -> SessionLike: ...


class ModelFiles:
    """What every backend's model shares: its folder's tokenizer (loaded on first use, checked
    against the logits' width), its generation_config.json (eos ids from config.json when it has
    none) and `warmup`. `ort.OrtModel` and `Model` both build on it."""

    path: Path
    vocab_size: int
    tokenizer_backend: str = "hf"

    def warmup(self, prompt_tokens: int = 32, new_tokens: int = 2, config=None) -> float:
        """One throwaway generation with the model's default settings, on its own session: a prompt
        of `prompt_tokens` ids (and one of `min_prefill_tokens` when a second compile prefills long
        prompts, precision "fast"), so that what the runtime does the first time it meets a prompt
        and a one-token step is paid now, not by the first answer. On SmolLM2 through OpenVINO's
        CPU plugin the first prefill of a process costs ~+270 ms and the first one-token step
        ~+240 ms whatever the prompt's length; one 32-token warm-up removes both for prompts of 8
        to 400 tokens (benchmarks/first_call.py; llama.cpp warms up at load likewise).
        A first multi-position infer (a speculative verify) still costs a little extra (~+15-20 ms
        for 2-11 positions here). `config`: the settings the answers will use; a structured-output
        constraint in it is compiled now too (the first one builds llguidance's tokenizer, ~+350 ms
        here, then cached on the model's tokenizer). Returns the milliseconds it took; no session
        or cache of the caller's is touched."""
        from time import perf_counter_ns

        from .generate import constraint_stages, generate, resolve_config

        t0 = perf_counter_ns()
        if config is not None:
            constraint_stages(self, resolve_config(self, config))
        lengths = {prompt_tokens}
        if getattr(self, "prefill_compiled", None) is not None:
            lengths.add(self.min_prefill_tokens)
        limit = self.max_context
        for n in sorted(lengths):
            n = max(1, min(n, limit - new_tokens) if limit else n)
            generate(self, [1 + i % (self.vocab_size - 1) for i in range(n)],
                     {"max_new_tokens": new_tokens, "ignore_eos": True})
        return (perf_counter_ns() - t0) / 1e6

    @property
    def tokenizer(self):
        if getattr(self, "_tokenizer", None) is None:
            from .tokenizer import Tokenizer

            tok = Tokenizer(self.path, backend=self.tokenizer_backend)
            if tok.vocab_size > self.vocab_size:
                raise ValueError(f"{self.path}: tokenizer has {tok.vocab_size} tokens but the model's logits "
                                 f"are {self.vocab_size} wide; tokenizer and model do not match")
            self._tokenizer = tok
        return self._tokenizer


def generation_defaults(folder: Path, config: dict) -> GenerationConfig:
    """generation_config.json, with eos ids from `config` (config.json / genai_config.json's model
    section) where it names none."""
    gen = GenerationConfig.from_model_dir(folder)
    if not gen.eos_token_id and config.get("eos_token_id") is not None:
        eos = config["eos_token_id"]
        gen.eos_token_id = [eos] if isinstance(eos, int) else list(eos)
    return gen


