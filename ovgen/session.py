"""Session: one InferRequest, its KV state and the token history - the only owner of state.

The IR is stateful: the KV cache lives inside the InferRequest (`query_state()`), one row per batch
entry. `tokens: [rows, T] int64` always equals the tokens the KV state holds; the state may also hold
*holes*: positions a `rewind` dropped, masked out of attention by the attention mask instead of being
copied away (a trim independent of the context; `kvstate.compact` removes them once they are
many). So per infer:

    input_ids      [rows, t]             new tokens only
    attention_mask [rows, kv + t]        1 over held tokens and the new ones, 0 over holes
    position_ids   [rows, t]             each row's held tokens .. + t - 1 (holes and left padding take none)
    beam_idx       [rows]                which row of the previous state each row continues from
    logits_to_keep [1]                   how many last positions get logits (1; k + 1 to verify k drafts)

Masked positions contribute exactly nothing (exp(-inf) = 0: tested bit for bit against different
garbage in the holes); the attention kernels' blocking does see the longer physical length, so
logits after a trim may differ from a never-trimmed run's in the last bits, as a multi-token infer's do.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from time import perf_counter_ns
from typing import NamedTuple

import numpy as np
import openvino as ov

from . import kvstate
from .backend import TOP_GATE, check_rewind, check_token_ids, token_array
from .fast import copy_states


class TokenHistory:
    """The token history a session keeps beside its KV state: `[rows, length]` int64 in a buffer
    that grows by doubling (one row for runtimes that hold one; see ort.OrtSession)."""

    def __init__(self):
        self._hist = np.zeros((1, 256), dtype=np.int64)  # token history buffer; `tokens` views it
        self._len = 0
        self.owner = None  # the generation running on this session (see owned())
        self.edits = 0  # counts changes to the state (infers, rewinds, resets, ...): owned() watches it

    @property
    def tokens(self) -> np.ndarray:
        """[rows, length] int64: what the KV state holds (a view, valid until the session changes)."""
        return self._hist[:, :self._len]

    @tokens.setter
    def tokens(self, value) -> None:
        value = np.asarray(value, dtype=np.int64)
        self._hist = np.zeros((value.shape[0], max(256, 2 * value.shape[1])), dtype=np.int64)
        self._hist[:, :value.shape[1]] = value
        self._len = value.shape[1]

    @property
    def length(self) -> int:
        """Tokens held in the KV state (per row)."""
        return self._len

    def _push(self, ids: np.ndarray) -> None:
        """Append `ids: [rows, t]` to the history (amortised O(t))."""
        n, t = self._len, ids.shape[1]
        if n + t > self._hist.shape[1]:
            self._grow(n + t)
        self._hist[:, n:n + t] = ids
        self._len = n + t

    def _grow(self, need: int) -> None:
        grown = np.zeros((self._hist.shape[0], 2 * need), dtype=np.int64)
        grown[:, :self._len] = self._hist[:, :self._len]
        self._hist = grown

    def tokens_then(self, token: int) -> np.ndarray:
        """`[length + 1]` int64: row 0's history, then `token` - written into the buffer past the held
        tokens, so no copy (a speculative proposer reads it right after each verification); a
        read-only view, valid until the session changes."""
        vocab = getattr(getattr(self, "model", None), "vocab_size", None) or 2 ** 63  # (a bare history: no model)
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab:
            check_token_ids(token_array([token]), vocab)  # names it
        if self._len + 1 > self._hist.shape[1]:
            self._grow(self._len + 1)
        self._hist[0, self._len] = token
        view = self._hist[0, :self._len + 1]
        view.flags.writeable = False
        return view


# settle()'s warning when it finds an infer that an exception cut off outside the handlers (see _recover)
CUT_OFF = ("an infer on this session was interrupted before its tokens were recorded: the session was reset "
           "(its KV state and history are empty)")


def owned(session, records: Generator):
    """Yield `records`, a generation on `session`, which it claims when it starts. A session runs
    one generation at a time: if another one (a `generate` / `stream` / `Chat.send` on the same
    session) started while this one waited between two records, or the user changed the state
    (`session.edits`: a step, rewind, ...), it stops with a RuntimeError instead of going on from a
    state it did not make (which would give wrong tokens silently). Reading the state between two
    records (`snapshot`, `save`) is fine: it finishes a started step, which the stream then takes."""
    session.owner = mine = object()
    try:
        for rec in records:
            edits = session.edits
            yield rec
            if session.owner is not mine:
                raise RuntimeError("another generation used this session since this stream's last record "
                                   "(a session runs one generation at a time): this stream cannot go on; "
                                   "give each concurrent stream its own session")
            if session.edits != edits:
                raise RuntimeError("this session's state was changed (a step, append, rewind, reset, restore, "
                                   "load or reorder) since this stream's last record: the stream cannot go on "
                                   "from a state it did not make; close it first (or snapshot / save, which "
                                   "leave the state as it is)")
    finally:
        records.close()  # the loop's own clean-up (a started step is settled only if it is still its own)


class _Buffers(NamedTuple):
    """A request's preset output buffers as [rows, keep, ...] views (Session._outputs)."""
    rows: int
    keep: int
    logits: np.ndarray  # [rows, keep, vocab]
    logsumexp: np.ndarray  # [rows, keep, 1]
    top: tuple | None  # row 0's last-position candidates (values, ids)
    top_rows: tuple | None  # every row's last-position candidates ([rows, k] values, ids)


class Session(TokenHistory):
    """Prefill, step, snapshot/restore, rewind, reorder, save/load over one InferRequest.

    `prefill`, `append` and `step` return a NumPy view of the last position's logits, valid until
    the next call that runs the model: `[vocab]` with one row, `[rows, vocab]` otherwise
    (`append(ids, logits_to_keep=k)`: the last k positions', `[k, vocab]` / `[rows, k, vocab]`).
    """

    reorder_kv = True  # the IR's beam_idx input gathers KV rows inside the next infer
    pad_verify_to = 0  # speculative blocks keep their own width (a padded position would leave a hole)
    snapshots = True  # snapshot / restore / save / load work (a prefix cache needs them)
    one_row = ""  # (batches of prompts: prefill_rows)
    max_hole_fraction = 0.5  # compact the KV state when holes exceed this share of it (and 256 positions)

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.request = model.compiled.create_infer_request()
        self._has_positions = "position_ids" in model.input_names
        self._has_beam_idx = "beam_idx" in model.input_names
        self._has_keep = "logits_to_keep" in model.input_names
        # The graph's top-k candidates are computed only in infers started while `want_top` is true
        # (an If on the IR's topk_on input): the loops turn it off where their stage would not decide
        # on them (TokenChoice.wants_top: greedy, beams, speculative verification), saving the TopK.
        self.want_top = True
        self._gate = np.ones((), np.bool_) if TOP_GATE in model.input_names else None
        self._top_on = True  # want_top as the last started infer saw it
        self._beam_idx: np.ndarray | None = None  # pending reorder, applied by the next infer
        self.infer_ns = 0  # wall time of the last infer() call
        # log(sum(exp(logits))) of the last position, per row (a graph output: see kernels.graph)
        self.logsumexp: np.ndarray | np.floating = np.float32(0)
        # (values, ids) of the model.top_candidates largest last logits, ids ascending, one row only,
        # None otherwise (every other logit is <= values.min()): a graph output, see kernels.graph
        self.top: tuple[np.ndarray, np.ndarray] | None = None
        self.kv = 0  # positions in the KV state: held tokens plus holes
        self.holes = 0
        self.pad = np.zeros(1, np.int64)  # [rows] left padding per row (prefill_rows): masked, no position
        # (values, ids) of every row's top candidates, [rows, k] each, when the session has several rows
        self.top_rows: tuple[np.ndarray, np.ndarray] | None = None
        self._mask = np.ones((1, 1024), np.int64)  # attention mask over the KV positions, [rows, capacity]
        self._fast: _FastStep | None = None  # preset tensors for one-token steps (see _step_one)
        self._rows_preset: _RowsStep | None = None  # preset tensors for one token per row (see start_rows)
        self._out: _Buffers | None = None  # preset output buffers (see _outputs)
        self._pending = None  # the token of a step started by start_step() ((ids, inputs, keep): by _start())
        self._step_id = 0  # counts started steps (start_step returns it)
        self._settled = None  # (step id, logits) of a started step that settle() finished for its caller
        # an infer ran (or is running) whose tokens are not recorded yet: true from _arm to the end of
        # _end / _after_one. Still true with nothing pending: an exception (Ctrl-C) cut it off, see _recover
        self._flux = False
        self.infer_start_ns = 0  # perf_counter_ns() when the last infer started
        self._prefill_request = None  # on the prefill compile of a split plan (ovgen/fast.py), made on first use
        self._prefill_out = None
        self.handover_ns = 0  # the last prefill's KV handover to the decode compile (0: none, or not yet run)
        self._handover_due = False  # the prefill compile holds the prompt's KV, the decode request not yet
        self._set_gate(self.request)

    @property
    def rows(self) -> int:
        return self._hist.shape[0]

    @property
    def argmax(self) -> int | None:
        """The last logits' largest token, lowest id on ties (np.argmax's rule), read from the top
        candidates (`top`, ids ascending) instead of scanning the vocabulary; None when it cannot be
        told from them (no candidates, or all of them tie: then tokens outside may tie too)."""
        if self.top is None:
            return None
        values, ids = self.top
        i = values.argmax()
        peak = values[i]  # (the end values first: a scalar read costs less than a reduction)
        return int(ids[i]) if peak > values[0] or peak > values[-1] or peak > values.min() else None

    @property
    def mask(self) -> np.ndarray:
        """[rows, kv] the attention mask over the KV state (0 at holes)."""
        return self._mask[:, :self.kv]

    # ---- running the model --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: empty KV state, empty history."""
        self._handover_due = False  # (nothing to hand over: the state goes)
        self.settle()
        self._changed()
        with kvstate.changing(self):  # (cut off between the state and the history: reset again)
            self.request.reset_state()
            self.tokens = np.zeros((1, 0), dtype=np.int64)
            self._beam_idx = None
            self.top = None
            self.kv = self.holes = 0
            self.pad = np.zeros(1, np.int64)
            self.top_rows = None
            if self._mask.shape[0] != 1:
                self._set_mask(np.ones((1, self._mask.shape[1]), np.int64))

    def reserve(self, n: int) -> None:
        """Room for `n` tokens in all: nothing to do, the IR's KV state grows as needed (runtimes
        that allocate theirs whole size it here, see ort.OrtSession)."""

    def prefill(self, token_ids) -> np.ndarray:
        """Reset, then run the prompt `token_ids: [T]` (or `[rows, T]`). Returns last-position logits.
        With a split plan (precision "fast" on a bf16 CPU, or an explicit plan), a prompt of at least
        `model.min_prefill_tokens` runs on the prefill compile and its KV state is handed over."""
        ids = self._append_ids(token_ids, 1, rows=False)  # bad ids leave the session as it was
        check_token_ids(ids, self.model.vocab_size)
        self.reset()
        self.handover_ns = 0
        if self.model.prefill_compiled is not None and ids.shape[-1] >= self.model.min_prefill_tokens:
            return self._prefill_handover(ids)
        return self._infer(ids, 1)

    def _prefill_handover(self, ids: np.ndarray) -> np.ndarray:
        """The prompt on the prefill compile's request. Its KV state is copied into this session's
        (decode) request when the session is next used (`settle`): O(prompt), once, after the first
        token is out rather than before it (the first decode step does not overlap the host's work on
        the first record, `start_step`)."""
        if self._prefill_request is None:
            self._prefill_request = self.model.prefill_compiled.create_infer_request()
            self._set_gate(self._prefill_request)
        decode = (self.request, self._out, self._fast)
        self._prefill_request.reset_state()
        self.request, self._out, self._fast = self._prefill_request, self._prefill_out, None
        try:
            logits = self._infer(ids, 1)
        finally:
            self._prefill_out = self._out
            self.request, self._out, self._fast = decode
        self._handover_due = True
        return logits

    def _handover(self) -> None:
        """The deferred handover: the history holds the prompt, the decode request not yet; flagged
        before the copy (a Ctrl-C lands right after one) until the decode request holds it all."""
        self._handover_due = False
        self._flux = True
        try:
            t0 = perf_counter_ns()
            copy_states(self._prefill_request, self.request)
        except BaseException:
            self._recover()
            raise
        self._flux = False
        self.handover_ns = perf_counter_ns() - t0

    def prefill_rows(self, rows, pad_id: int = 0) -> np.ndarray:
        """Reset, then run several prompts of any lengths as one batch: left-padded with `pad_id`,
        the padding masked and given no position, so each row computes what it would alone (as
        optimum-intel and openvino-genai batch a stateful IR). Returns [rows, vocab]."""
        if isinstance(rows, (str, bytes, int, np.integer)) or not hasattr(rows, "__len__"):
            raise TypeError(f"prefill_rows takes a list of rows of token ids, got {type(rows).__name__}")
        rows = [np.atleast_1d(token_array(r)) for r in rows]  # (a row of one token may be the id itself)
        # checked before the reset: bad rows change nothing
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise ValueError(f"prefill_rows: row {i} must be a [T] list of token ids, got shape {list(r.shape)}")
        if not rows or min(r.size for r in rows) == 0:
            raise ValueError("prefill_rows needs at least one row, each with at least one token")
        for r in rows:
            check_token_ids(r, self.model.vocab_size)
        check_token_ids([pad_id], self.model.vocab_size, "pad_id")
        width = max(r.size for r in rows)
        ids = np.full((len(rows), width), pad_id, np.int64)
        for i, r in enumerate(rows):
            ids[i, width - r.size:] = r
        self.reset()
        self.tokens = np.zeros((len(rows), 0), np.int64)
        self._set_mask(np.ones((len(rows), max(1024, 2 * width)), np.int64))
        self.pad = np.array([width - r.size for r in rows], np.int64)
        return self._infer(ids, 1)

    def append(self, token_ids, logits_to_keep: int = 1) -> np.ndarray:
        """Run `token_ids: [T]` (or `[rows, T]`) after what the session holds (chat turns, forced
        text, verifying proposed tokens: `logits_to_keep = T` gives every position's logits)."""
        self.settle()
        return self._infer(self._append_ids(token_ids, logits_to_keep), logits_to_keep)

    def _append_ids(self, token_ids, logits_to_keep: int, rows: bool = True) -> np.ndarray:
        """`append`'s arguments checked: the ids as [rows, T] int64 (`rows`: as many rows as the
        session holds, once it holds any or a reorder has set them)."""
        ids = token_array(token_ids)
        ids = ids[None, :] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError("token_ids is empty; a prompt needs at least one token" if ids.ndim == 2 else
                             f"token_ids must be [T] or [rows, T], got shape {list(ids.shape)}")
        if rows and ids.shape[0] != self.rows and (self.kv or self._beam_idx is not None):
            raise ValueError(f"token_ids has {ids.shape[0]} row(s); the session holds {self.rows} (one row of ids "
                             f"per row)")
        if (isinstance(logits_to_keep, (bool, np.bool_)) or not isinstance(logits_to_keep, (int, np.integer))
                or not 1 <= logits_to_keep <= ids.shape[1]):
            raise ValueError(f"logits_to_keep must be an integer in [1, {ids.shape[1]}], got {logits_to_keep!r}")
        if logits_to_keep > 1 and not self._has_keep:
            raise NotImplementedError("this model has no logits_to_keep input (loaded with last_logits_only=False?): "
                                      "it cannot return several positions' logits")
        return ids

    def step(self, token_ids) -> np.ndarray:
        """Run one token per row: `token_ids` is an int (one row) or `[rows]`."""
        self.settle()
        if isinstance(token_ids, (int, np.integer)) and not isinstance(token_ids, bool) and self._fast_ok():
            return self._step_one(int(token_ids))
        ids = self._append_ids(token_array(token_ids).reshape(-1, 1), 1)
        if ids.shape[0] > 1 and self._rows_ok(ids) and self.start_rows(ids):  # its preset tensors, waited for
            return self.finish_step()
        return self._infer(ids, 1)

    # ---- the attention mask -------------------------------------------------------------------------
    def _set_mask(self, mask: np.ndarray) -> None:
        self._mask = np.ascontiguousarray(mask)
        self._fast = None  # its mask tensor viewed the old buffer

    def _open(self, t: int) -> None:
        """Mark the next t KV positions held (growing the mask buffer as needed)."""
        need = self.kv + t
        if need > self._mask.shape[1]:
            grown = np.ones((self._mask.shape[0], max(2 * need, 1024)), np.int64)
            grown[:, :self.kv] = self._mask[:, :self.kv]
            self._set_mask(grown)
        self._mask[:, self.kv:need] = 1

    # ---- the one-token fast path ----------------------------------------------------------------
    # Right after infer() the weights streamed through the caches have evicted Python's working set,
    # so every tensor created or set per token costs tens of microseconds. The common decode step
    # (one row, one token, no pending reorder) therefore writes two scalars into input tensors set
    # on the request once, grows a preset attention mask (a view of `_mask`) with set_shape, and
    # reads the logits from output buffers set once (see _outputs).
    def _fast_ok(self) -> bool:
        return (self.rows == 1 and self._beam_idx is None and self._len > 0 and self._has_positions
                and self._has_beam_idx and self.model.sliced)

    def _step_one(self, token: int) -> np.ndarray:
        self._prepare_one(token)
        self._arm()
        try:
            self.infer_start_ns = t0 = perf_counter_ns()
            self._run(None)
            self.infer_ns = perf_counter_ns() - t0
            return self._after_one(token)
        except BaseException:  # (Ctrl-C lands right after the wait: see _recover)
            self._recover()
            raise

    def _run(self, inputs: dict | None) -> None:
        """One infer, waited for (inputs None: the preset tensors hold them). `start_async()` + `wait()`
        rather than `infer()` on the calling thread: on a Zen 5 EPYC a decode step took 0.982 / 0.983 /
        0.993 of the synchronous call's time at B = 1 / 4 / 16, prefills 1.002 (12 interleaved rounds,
        one request); whole greedy generations without overlap 0.990 / 0.982 (two runs)."""
        if inputs is None:
            self.request.start_async()
        else:
            self.request.start_async(inputs, share_inputs=True)
        self.request.wait()

    def _prepare_one(self, token: int) -> None:
        if not 0 <= token < self.model.vocab_size:
            check_token_ids([token], self.model.vocab_size)
        if self.kv + 1 > self._mask.shape[1]:
            self._open(1)
        f = self._fast
        if f is None:
            f = self._fast = _FastStep(self._mask, self._has_keep)
        if not f.installed:
            self._install(f)
        f.ids[0, 0] = token
        f.pos[0, 0] = self._len - self.pad[0]
        self._mask[0, self.kv] = 1
        f.mask.set_shape([1, self.kv + 1])
        self._outputs(1, 1)

    def _after_one(self, token: int) -> np.ndarray:
        logits, lse, cand = self._out.logits, self._out.logsumexp, self._out.top
        self.top = cand if self._top_on else None
        if self._len + 1 > self._hist.shape[1]:
            self._push(np.array([[token]], dtype=np.int64))
        else:
            self._hist[0, self._len] = token
            self._len += 1
        self.kv += 1
        self.logsumexp = lse[0, 0, 0]
        self._flux = False
        return logits[0, 0]

    # ---- overlap: the next step runs while the host streams the current token ------------------------
    def start_step(self, token: int) -> int:
        """Start running one token asynchronously; `finish_step()` waits and returns its logits
        (what `step(token)` returns). Until then the logits buffers are being written: read nothing
        from the previous step's logits. Returns the step's id (> 0); only the one-token fast path
        runs asynchronously, otherwise nothing starts and it returns 0 - then call `step()`. Any
        other Session call finishes a pending step first."""
        if self._flux and self._pending is None:
            self.settle()  # (a step an exception cut off: see _recover)
        if self._pending is not None or self._handover_due or not self._fast_ok():
            return 0  # (a due handover runs in step(), after the caller's work on the prompt's token)
        self._prepare_one(int(token))
        return self._start(None, None, 1, one=int(token))

    def start_rows(self, token_ids) -> int:
        """`start_step` for a session of several rows: one token per row (`[rows]`, after any
        `reorder`), run asynchronously; `finish_step()` returns the `[rows, vocab]` logits. Returns
        the step's id, or 0 when nothing started (a step already pending: call `step()`)."""
        if self._pending is not None:
            return 0
        self.settle()  # (a step an exception cut off: see _recover)
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)
        if self._rows_ok(ids):
            self._prepare_rows(ids)  # values into tensors set on the request once
            return self._start(ids, None, 1)
        return self._start(ids, self._begin(ids, 1), 1)

    def _rows_ok(self, ids: np.ndarray) -> bool:
        """Whether one token per row (`ids` [rows, 1]) can run on the preset row tensors
        (`_prepare_rows`). `step()` passed them as arrays (a tensor set on the request per input per
        infer): batched greedy without overlap took 1.04x / 1.05x the time that way at B = 8 / 16
        (AVX2 EPYC, 10 interleaved pairs, same tokens); beam steps showed no difference."""
        return (ids.shape[0] == self.rows and bool(self._len) and self._has_positions and self._has_beam_idx
                and self.model.sliced)

    def start_append(self, token_ids, logits_to_keep: int = 1) -> int:
        """`append` run asynchronously (a speculative verification while the host streams the
        tokens before it): `finish_step()` waits and returns what `append` returns. Returns the
        step's id, or 0 when nothing started (a step already pending: call `append()`)."""
        if self._pending is not None:
            return 0
        self.settle()  # (a step an exception cut off: see _recover)
        ids = self._append_ids(token_ids, logits_to_keep)
        if ids.size == 1 and self._fast_ok():
            return self.start_step(int(ids[0, 0]))
        return self._start(ids, self._begin(ids, logits_to_keep), logits_to_keep)

    def _start(self, ids: np.ndarray | None, inputs: dict | None, keep: int, one: int | None = None) -> int:
        """Start the infer `_begin` prepared (inputs None: preset tensors hold them); `finish_step` ends it.
        `one`: the token of a one-token fast-path step (`_prepare_one` set its inputs)."""
        self._arm()
        # pending (holding the inputs, which the infer reads until it ends) before the infer starts:
        # an exception (Ctrl-C) right after start_async must not free them under the running infer
        self._pending = one if one is not None else (ids, inputs, keep)
        self._step_id += 1
        try:
            self.infer_start_ns = perf_counter_ns()
            if inputs is None:
                self.request.start_async()
            else:
                self.request.start_async(inputs, share_inputs=True)
        except BaseException:
            self._recover()  # (waits for the infer if it started)
            raise
        return self._step_id

    def _prepare_rows(self, ids: np.ndarray) -> None:
        """`_inputs` for one token per row, written into preset tensors: the ids, each row's position
        (after its left padding), beam_idx (a pending reorder, else 0 .. rows - 1), and a contiguous
        copy of the attention mask in a buffer whose shape is set per step."""
        check_token_ids(ids, self.model.vocab_size)
        rows, n = ids.shape[0], self.kv + 1
        self._open(1)
        p = self._rows_preset
        if p is None or p.ids.shape[0] < rows or p.mask.size < rows * n:
            p = self._rows_preset = _RowsStep(rows, max(2 * n, 1024), self._has_keep)
        if not p.installed:
            self._install(p)
            p.shape = None
        p.ids[:rows] = ids
        # each row's next position: its held tokens after its left padding (_positions, with t = 1:
        # the padding is narrower than the prompt batch, so no row's is below 0; one ufunc call is
        # ~45 us cheaper right after an infer than _positions' arange, broadcast and maximum)
        np.subtract(self._len, self.pad, out=p.pos[:rows, 0])
        if self._beam_idx is not None:
            p.beam[:rows] = self._beam_idx
            p.ordered = False
        elif not p.ordered:
            p.beam[:] = np.arange(p.beam.size, dtype=np.int32)  # every row continues from itself
            p.ordered = True
        p.mask[:rows * n].reshape(rows, n)[:] = self._mask[:, :n]
        if p.shape != (rows, n):
            if p.shape is None or p.shape[0] != rows:
                for name in ("input_ids", "position_ids"):
                    p.tensors[name].set_shape([rows, 1])
                p.tensors["beam_idx"].set_shape([rows])
            p.tensors["attention_mask"].set_shape([rows, n])
            p.shape = (rows, n)
        self._outputs(rows, 1)

    def _set_gate(self, request) -> None:
        """Put the topk_on tensor (a view of `_gate`) on a request once; `_arm` writes it per infer."""
        if self._gate is not None:
            request.set_tensor(TOP_GATE, ov.Tensor(self._gate, shared_memory=True))

    def _arm(self) -> None:
        """Right before an infer starts: the top-k candidates run in it as `want_top` says."""
        self._flux = True
        self.edits += 1
        self._settled = None
        self._top_on = bool(self.want_top)
        if self._gate is not None:
            self._gate[()] = self._top_on

    def _install(self, preset) -> None:
        """Set a preset's input tensors (`preset.tensors`) on the request; the others are off."""
        self._presets_off()
        for name, tensor in preset.tensors.items():
            self.request.set_tensor(name, tensor)
        preset.installed = True

    def _presets_off(self) -> None:
        """Before other tensors are set on the request's inputs: the preset ones are no longer there."""
        for preset in (self._fast, self._rows_preset):
            if preset is not None:
                preset.installed = False

    def finish_step(self) -> np.ndarray:
        if self._pending is None:
            settled, self._settled = self._settled, None
            if settled is not None and settled[0] == self._step_id:
                return settled[1]  # settle() finished it (a snapshot / save between two records)
            raise RuntimeError("finish_step() without a started step")
        pending, self._pending = self._pending, None
        try:
            self.request.wait()
            # start_async -> the host sees it done (as infer() is timed); not the request's `latency`
            # property, whose read costs ~15 us here, between two infers
            self.infer_ns = perf_counter_ns() - self.infer_start_ns
            return self._end(pending[0], pending[2]) if isinstance(pending, tuple) else self._after_one(pending)
        except BaseException:
            self._recover()
            raise

    def settle(self, step_id: int | None = None) -> None:
        """Finish the pending step, if any (only if it is `step_id`, when given: a generation that
        was abandoned must not finish a step that a later one started). Its logits stay for the
        `finish_step()` of whoever started it, until the next infer or state change. A split plan's
        KV handover that is due runs here (every call that uses the state settles first)."""
        if self._handover_due:
            self._handover()
        if self._pending is not None and step_id in (None, self._step_id):
            self._settled = (self._step_id, self.finish_step())
        elif self._flux and self._pending is None:  # (an exception that landed outside the handlers)
            warnings.warn(CUT_OFF, RuntimeWarning, stacklevel=2)
            self._recover()

    def _recover(self) -> None:
        """An exception cut an infer off before its tokens were recorded - a KeyboardInterrupt (Ctrl-C)
        lands right after the wait - and the KV state holds tokens the history does not: whatever
        ran next would fail on a mask of the wrong length or decode from the wrong context. Nothing
        tells how far it got, so the session starts afresh, empty (a chat recomputes its history
        once). The exception goes on to the caller."""
        self.request.wait()  # (returns at once unless the infer still runs; _pending keeps its inputs alive)
        self._flux = False
        self._pending = None
        self.reset()

    def _outputs(self, rows: int, keep: int):
        """Output buffers (logits, logsumexp, top candidates) set on the request in the shape the IR
        writes (`_output_shape`), kept as [rows, keep, ...] views of the same memory and reused while
        the shape holds: reading them costs no get_tensor()."""
        if self._out is None or (self._out.rows, self._out.keep) != (rows, keep):
            shape, k = self._output_shape(rows, keep), self.model.top_candidates
            bufs = {"logits": np.empty((*shape, self.model.vocab_size), np.float32),
                    "logsumexp": np.empty((*shape, 1), np.float32)}
            if k:
                bufs.update(topk_values=np.empty((*shape, k), np.float32), topk_ids=np.empty((*shape, k), np.int64))
            for name, buf in bufs.items():
                self.request.set_tensor(name, ov.Tensor(buf, shared_memory=True))
            view = {name: buf.reshape(rows, keep, -1) for name, buf in bufs.items()}
            cand = (view["topk_values"][0, -1], view["topk_ids"][0, -1]) if k else None
            per_row = (view["topk_values"][:, -1], view["topk_ids"][:, -1]) if k else None
            self._out = _Buffers(rows, keep, view["logits"], view["logsumexp"], cand, per_row)
        return self._out

    def _output_shape(self, rows: int, keep: int) -> tuple[int, int]:
        """The leading dimensions of the IR's outputs: [rows, keep] (a paged IR writes [tokens, 1])."""
        return rows, keep

    def _inputs(self, ids: np.ndarray, keep: int) -> dict:
        rows, t = ids.shape
        past = self._len
        if self._beam_idx is None and rows != self.rows:
            if self.rows != 1:
                raise ValueError(f"{rows} rows of token ids for a session of {self.rows} rows; "
                                 "use reorder() to change the number of rows")
            self.tokens = np.repeat(self.tokens, rows, axis=0)  # fan out one row: beam_idx = zeros
            self._set_mask(np.repeat(self._mask, rows, axis=0))
            self.pad = np.repeat(self.pad, rows)
            if past:
                self._beam_idx = np.zeros(rows, dtype=np.int32)
        self._open(t)
        if past == 0 and self.pad.any():  # left padding (prefill_rows): masked
            for i, p in enumerate(self.pad.tolist()):
                self._mask[i, :p] = 0
        mask = self._mask[:, :self.kv + t]
        inputs = {"input_ids": ids, "attention_mask": mask if rows == 1 else np.ascontiguousarray(mask)}
        if self._has_positions:
            if self.pad.any():
                inputs["position_ids"] = self._positions(past, t)
            else:
                inputs["position_ids"] = np.broadcast_to(np.arange(past, past + t, dtype=np.int64), (rows, t))
        if self._has_beam_idx:
            inputs["beam_idx"] = self._beam_idx if self._beam_idx is not None else np.arange(rows, dtype=np.int32)
        if self._has_keep:
            inputs["logits_to_keep"] = np.array([keep], np.int64)
        return inputs

    def _positions(self, past: int, t: int) -> np.ndarray:
        """[rows, t] positions of the next t tokens, each row counting from its first real token
        (left padding gets no position)."""
        return np.maximum(np.arange(past, past + t, dtype=np.int64)[None, :] - self.pad[:, None], 0)

    def _infer(self, ids: np.ndarray, keep: int) -> np.ndarray:
        # ids: [rows, t] int64
        inputs = self._begin(ids, keep)
        self._arm()
        try:
            self.infer_start_ns = t0 = perf_counter_ns()
            self._run(inputs)
            self.infer_ns = perf_counter_ns() - t0
            return self._end(ids, keep)
        except BaseException:
            self._recover()
            raise

    def _begin(self, ids: np.ndarray, keep: int) -> dict | None:
        """Check `ids`, open their KV positions and set the output buffers: the inputs of one infer
        (None from a subclass whose preset input tensors already hold them: PagedSession)."""
        check_token_ids(ids, self.model.vocab_size)
        inputs = self._inputs(ids, keep)
        if self.model.sliced:
            self._outputs(ids.shape[0], keep)
        self._presets_off()  # infer(inputs) replaces the request's input tensors
        return inputs

    def _end(self, ids: np.ndarray, keep: int) -> np.ndarray:
        """After the infer of `ids`: history, KV length, logsumexp and candidates; the logits."""
        rows, t = ids.shape
        self._beam_idx = None
        self._push(ids)
        self.kv += t
        per_row = None
        if self.model.sliced:
            logits, lse, cand, per_row = self._out.logits, self._out.logsumexp, self._out.top, self._out.top_rows
        else:
            logits = self.request.get_tensor("logits").data  # [rows, t, vocab], a view
            lse = self.request.get_tensor("logsumexp").data  # [rows, t, 1]
            cand = None
            if self.model.top_candidates and self._top_on:
                cand = tuple(self.request.get_tensor(n).data[0, -1] for n in ("topk_values", "topk_ids"))
        self.logsumexp = lse[0, -1, 0] if rows == 1 else lse[:, -1, 0]
        self.top = cand if rows == 1 and self._top_on else None
        self.top_rows = per_row if rows > 1 and self._top_on else None
        self._flux = False
        if keep > 1:
            self.kept_logsumexp = lse[..., 0] if rows > 1 else lse[0, :, 0]  # [keep] (or [rows, keep])
            return logits[0, -keep:] if rows == 1 else logits[:, -keep:]
        return logits[0, -1] if rows == 1 else logits[:, -1]

    # ---- state management (ovgen/kvstate.py) ------------------------------------------------------------
    def snapshot(self) -> kvstate.Snapshot:
        """Copy the KV state and history (restore() returns to exactly this point)."""
        self.settle()
        return kvstate.snapshot(self)

    def restore(self, snap: kvstate.Snapshot) -> None:
        """Put back a snapshot taken from a session over the same compiled model."""
        if not isinstance(snap, kvstate.Snapshot):
            raise TypeError(f"restore takes a Snapshot (session.snapshot()), got {type(snap).__name__}")
        self.settle()
        kvstate.restore(self, snap)
        self._changed()

    def rewind(self, n: int) -> None:
        """Drop the last `n` tokens (0 <= n <= length): O(n), they become holes in the attention
        mask; the KV state is compacted once holes pass `max_hole_fraction` of it."""
        self.settle()
        n = check_rewind(n, self.length)
        if n == 0:
            return
        if n == self.length:
            self.reset()
            return
        self._changed()
        self._drop_last(n)
        self.top = None  # the logits of the new last position are not known until the next run

    def _drop_last(self, n: int) -> None:
        """Rewind's trim of 0 < n < length tokens: holes, compacted once they are many."""
        kvstate.drop_last(self, n)
        if self.holes > 256 and self.holes > self.max_hole_fraction * self.kv:
            kvstate.compact(self)

    def _changed(self) -> None:
        """The state changes other than by an infer (`_arm` counts those): a stream waiting between two
        records will not go on (owned()), and a settled step's logits no longer apply."""
        self.edits += 1
        self._settled = None

    def compact(self) -> None:
        """Copy the held positions into fresh state tensors, leaving no holes: O(length)."""
        self.settle()
        kvstate.compact(self)

    def save(self, path, meta: dict | None = None) -> None:
        """Write the KV state and history to `path` (ovgen/kvstate.py: a versioned .npz that names
        the model and its precision; `load` refuses anything else), with `meta` (any JSON) if given."""
        self.settle()
        kvstate.save(self, path, meta)

    def load(self, path, check=None) -> dict | None:
        """Replace this session's state with one `save` wrote for the same model and precision;
        returns its `meta`. `check(meta)` may refuse the file before anything changes."""
        self.settle()
        meta = kvstate.load(self, path, check)
        self._changed()
        return meta

    def reorder(self, beam_idx) -> None:
        """Make row i continue from current row beam_idx[i] (beam search). The KV gather happens
        inside the next infer (the IR's beam_idx input); the history and mask are reordered now."""
        self.settle()
        try:
            idx = token_array(beam_idx)  # integers (no bools, floats or text)
        except (TypeError, ValueError):
            idx = None
        if idx is None or idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= self.rows:
            raise ValueError(f"beam_idx must be a [rows] vector of integers in [0, {self.rows}), got "
                             f"{beam_idx.tolist() if isinstance(beam_idx, np.ndarray) else beam_idx!r}")
        idx = idx.astype(np.int32)
        if not self._has_beam_idx:
            raise NotImplementedError("this IR has no beam_idx input; its KV state cannot be reordered")
        self._changed()
        prev = self._beam_idx
        self._beam_idx = idx if prev is None else prev[idx]  # compose with a pending reorder
        self.tokens = self.tokens[idx]
        if self._mask.shape[0] > 1 or idx.size > 1:
            self._set_mask(self._mask[np.minimum(idx, self._mask.shape[0] - 1)])
        self.pad = self.pad[np.minimum(idx, self.pad.size - 1)]
        self.top = self.top_rows = None


class _FastStep:
    """Input tensors for one-token steps: ids and positions [1, 1], beam_idx [1], logits_to_keep [1]
    and the attention mask - a view of the session's mask buffer whose shape is set per step."""

    def __init__(self, mask: np.ndarray, keep: bool):
        self.ids = np.zeros((1, 1), dtype=np.int64)
        self.pos = np.zeros((1, 1), dtype=np.int64)
        self.beam = np.zeros(1, dtype=np.int32)
        self.mask = ov.Tensor(mask[:1], shared_memory=True)
        self.tensors = {"input_ids": ov.Tensor(self.ids, shared_memory=True),
                        "position_ids": ov.Tensor(self.pos, shared_memory=True),
                        "beam_idx": ov.Tensor(self.beam, shared_memory=True), "attention_mask": self.mask}
        if keep:
            self.tensors["logits_to_keep"] = ov.Tensor(np.ones(1, np.int64), shared_memory=True)
        self.installed = False


class _RowsStep:
    """Input tensors for one token per row (`start_rows`): ids and positions [rows, 1], beam_idx
    [rows], logits_to_keep [1] and the attention mask, a flat buffer viewed as [rows, kv + 1]."""

    def __init__(self, rows: int, width: int, keep: bool):
        self.ids = np.zeros((rows, 1), np.int64)
        self.pos = np.zeros((rows, 1), np.int64)
        self.beam = np.arange(rows, dtype=np.int32)
        self.ordered = True  # beam holds 0 .. rows - 1 (no reorder pending)
        self.mask = np.zeros(rows * width, np.int64)
        self.tensors = {"input_ids": ov.Tensor(self.ids, shared_memory=True),
                        "position_ids": ov.Tensor(self.pos, shared_memory=True),
                        "beam_idx": ov.Tensor(self.beam, shared_memory=True),
                        "attention_mask": ov.Tensor(self.mask.reshape(rows, width), shared_memory=True)}
        if keep:
            self.tensors["logits_to_keep"] = ov.Tensor(np.ones(1, np.int64), shared_memory=True)
        self.installed = False
        self.shape: tuple[int, int] | None = None  # (rows, kv + 1) last set on the tensors
