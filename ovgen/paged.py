"""Paged attention: the same IR with its KV cache in blocks that ovgen owns (`ovgen.load(..., attention="paged")`).

OpenVINO's `paged_attention_transformation` (the pass openvino-genai's continuous-batching and
prompt-lookup pipelines compile) replaces each layer's SDPA and its ReadValue/Assign state with a
PagedAttention op that reads and writes K/V in cache tensors given as inputs:

    input_ids            [t]          new tokens only
    position_ids         [t]          held .. held + t - 1
    past_lens            [1]          tokens already in the cache
    subsequence_begins   [2]          0, t
    block_indices        [blocks]     which cache blocks hold the sequence, in order
    block_indices_begins [2]          0, blocks
    max_context_len      []           held + t
    key_cache.N / value_cache.N       [capacity blocks, kv heads, block size, head dim], set once
    logits_to_keep       [1]          as in the stateful IR (ovgen's pass, on the token axis here)

What this buys a loop that rewinds (speculative decoding): dropping the last n tokens is
`past_lens -= n`, O(1) - the next infer overwrites them - so no masked holes pile up in attention; and
the CPU plugin's multi-token PagedAttention costs less than the stateful IR's SDPA with KV cache on
the same tokens (benchmarks/speculative.py measures both). Infers of up to PRESET_TOKENS tokens (decode
steps, verifications) write their inputs into tensors set on the request once, as the stateful
session's one-token fast path does (`_begin`; `Session.start_append` runs one asynchronously). What
it does not do (yet): several rows (`prefill_rows`), beam search (`reorder`), snapshot / restore /
save / load (so no prefix cache), split precision plans; each is refused naming the option
(NotImplementedError; ValueError at load). Greedy tokens equal the stateful IR's at the exact
precision (tests/test_paged.py) - the two attention kernels sum in different orders, so their logits
agree to ~1e-2, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from .backend import check_reserve, check_token_ids
from .session import Session

ATTENTIONS = ("stateful", "paged")
PRESET_TOKENS = 64  # infers of up to this many tokens run on preset input tensors (PagedSession._begin)


def check_attention(attention: str) -> str:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {list(ATTENTIONS)}, got {attention!r}")
    return attention


def to_paged(ir: ov.Model) -> ov.Model:
    """The stateful IR turned into a PagedAttention IR, in place (openvino-genai's transformation)."""
    from openvino._offline_transformations import paged_attention_transformation

    paged_attention_transformation(ir)
    return ir


class PagedSession(Session):
    """A Session over a PagedAttention IR, one row: the KV cache is a set of block tensors this
    session allocates (growing by doubling), the sequence holds blocks 0 .. n - 1."""

    reorder_kv = False  # no beam_idx: beam search needs the stateful IR
    pad_verify_to = 4  # speculative blocks of up to 4 positions padded to 1 + k (ovgen/speculative.py)
    snapshots = False
    one_row = "attention='paged' holds one row; load the model with attention='stateful' (the default)"

    def __init__(self, model):
        super().__init__(model)
        self._caches = [(p.get_any_name(), p) for p in model.compiled.inputs if "_cache." in p.get_any_name()]
        if not self._caches:
            raise ValueError(f"{model.path}: the compiled model has no key_cache / value_cache inputs")
        self.block_size = int(self._caches[0][1].get_partial_shape()[2].get_length())
        self.capacity = 0  # tokens the cache tensors hold
        self._table = np.arange(0, dtype=np.int32)
        self._preset: _PresetInputs | None = None
        self.reserve(512)

    def reserve(self, n: int) -> None:
        """Cache blocks for `n` tokens in all (the held ones are copied into the bigger tensors)."""
        check_reserve(n, self.model.max_context)
        if n <= self.capacity:
            return
        blocks = -(-max(n, 2 * self.capacity) // self.block_size)
        for name, port in self._caches:
            shape = [blocks] + [d.get_length() for d in list(port.get_partial_shape())[1:]]
            grown = ov.Tensor(port.get_element_type(), ov.Shape(shape))
            if self._len:
                old = self.request.get_tensor(name)
                head = list(old.shape)  # every old block (held or not) into the first ones of the new tensor
                old.copy_to(ov.Tensor(grown, ov.Coordinate([0] * len(shape)), ov.Coordinate(head)))
            self.request.set_tensor(name, grown)
        self.capacity = blocks * self.block_size
        self._table = np.arange(blocks, dtype=np.int32)
        if self._preset is not None:
            self._preset.installed = False  # its block_indices tensor views the old table

    def _begin(self, ids: np.ndarray, keep: int) -> dict | None:
        """Up to PRESET_TOKENS tokens (decode steps, verifications): values written into input tensors
        set on the request once (no per-infer dict of new tensors: returns None); longer prompts: the
        dict of `_inputs` (`Session._begin` turns the presets off)."""
        rows, t = ids.shape
        if rows != 1 or self.rows != 1 or t > PRESET_TOKENS:
            return super()._begin(ids, keep)
        check_token_ids(ids, self.model.vocab_size)
        past, total = self._len, self._len + t
        if total > self.capacity:
            self.reserve(total)
        p = self._preset
        if p is None:
            p = self._preset = _PresetInputs(self._has_keep)
        if not p.installed:
            p.tensors_over(self._table)
            self._install(p)
        blocks = -(-total // self.block_size)
        p.ids[:t] = ids[0]
        p.pos[:t] = np.arange(past, total)
        p.past[0], p.begins[1], p.table_begins[1], p.context[()] = past, t, blocks, total
        p.keep[0] = keep
        if t != p.t:
            p.tensors["input_ids"].set_shape([t])
            p.tensors["position_ids"].set_shape([t])
            p.t = t
        if blocks != p.blocks:
            p.tensors["block_indices"].set_shape([blocks])
            p.blocks = blocks
        self._outputs(1, keep)
        return None

    def start_step(self, token: int) -> int:
        """`Session.start_step` on the preset tensors: the decode loop's next token runs while the
        host streams the one before (the stateful one-token fast path needs beam_idx, which a paged
        IR has not)."""
        return self.start_append([token])

    def _presets_off(self) -> None:
        super()._presets_off()
        if self._preset is not None:
            self._preset.installed = False

    def _inputs(self, ids: np.ndarray, keep: int) -> dict:
        rows, t = ids.shape
        if rows != 1 or self.rows != 1:
            raise NotImplementedError("attention='paged' runs one row; batches and beams need attention='stateful'")
        past, total = self._len, self._len + t
        if total > self.capacity:
            self.reserve(total)
        blocks = -(-total // self.block_size)
        inputs = {"input_ids": ids[0], "position_ids": np.arange(past, total, dtype=np.int64),
                  "past_lens": np.array([past], np.int32), "subsequence_begins": np.array([0, t], np.int32),
                  "block_indices_begins": np.array([0, blocks], np.int32), "block_indices": self._table[:blocks],
                  "max_context_len": np.array(total, np.int32)}
        if self._has_keep:
            inputs["logits_to_keep"] = np.array([keep], np.int64)
        return inputs

    def _output_shape(self, rows: int, keep: int) -> tuple[int, int]:
        return keep, 1  # tokens first; Session._outputs keeps [1, keep, ...] views of the same memory

    def _drop_last(self, n: int) -> None:
        """Rewind's trim: O(1), the next infer writes over the dropped tokens' cache slots."""
        self._len -= n
        self.kv -= n

    def _unsupported(self, what: str):
        raise NotImplementedError(f"{what} is not available with attention='paged'; load the model with "
                                  "attention='stateful' (the default)")

    def prefill_rows(self, rows, pad_id: int = 0):
        self._unsupported("prefill_rows (a batch of prompts)")

    def reorder(self, beam_idx) -> None:
        self._unsupported("reorder (beam search)")

    def beam_records(self, ids, cfg, max_new, processors=()):
        self._unsupported("beam search")

    def snapshot(self):
        self._unsupported("snapshot")

    def restore(self, snap) -> None:
        self._unsupported("restore")

    def compact(self) -> None:
        """Nothing to do: a paged cache has no holes."""

    def save(self, path, meta=None) -> None:
        self._unsupported("save")

    def load(self, path, check=None) -> None:
        self._unsupported("load")


class _PresetInputs:
    """The paged IR's inputs for infers of up to PRESET_TOKENS tokens: NumPy buffers shared with
    tensors set on the request once; an infer writes its values and sets the shapes that changed."""

    def __init__(self, keep: bool):
        self.ids = np.zeros(PRESET_TOKENS, np.int64)
        self.pos = np.zeros(PRESET_TOKENS, np.int64)
        self.past = np.zeros(1, np.int32)
        self.begins = np.zeros(2, np.int32)
        self.table_begins = np.zeros(2, np.int32)
        self.context = np.zeros((), np.int32)
        self.keep = np.ones(1, np.int64)
        self.has_keep = keep
        self.tensors: dict[str, ov.Tensor] = {}
        self.installed = False
        self.t = self.blocks = -1  # the shapes set on input_ids / position_ids and block_indices

    def tensors_over(self, table: np.ndarray) -> None:
        """New tensors over the buffers and the session's block table (then `Session._install`)."""
        arrays = {"input_ids": self.ids, "position_ids": self.pos, "past_lens": self.past,
                  "subsequence_begins": self.begins, "block_indices_begins": self.table_begins,
                  "block_indices": table, "max_context_len": self.context}
        if self.has_keep:
            arrays["logits_to_keep"] = self.keep
        self.tensors = {name: ov.Tensor(a, shared_memory=True) for name, a in arrays.items()}
        self.t, self.blocks = PRESET_TOKENS, table.shape[0]
