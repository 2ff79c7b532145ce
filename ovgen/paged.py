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
the same tokens (benchmarks/speculative.py measures both). What it does not do (yet): several rows
(`prefill_rows`), beam search (`reorder`), snapshot / restore / save / load (so no prefix cache),
split precision plans; each is refused naming the option (NotImplementedError; ValueError at load). Greedy tokens equal the stateful IR's at the exact
precision (tests/test_paged.py) - the two attention kernels sum in different orders, so their logits
agree to ~1e-2, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from .session import Session

ATTENTIONS = ("stateful", "paged")


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
    snapshots = False

    def __init__(self, model):
        super().__init__(model)
        self._caches = [(p.get_any_name(), p) for p in model.compiled.inputs if "_cache." in p.get_any_name()]
        if not self._caches:
            raise ValueError(f"{model.path}: the compiled model has no key_cache / value_cache inputs")
        self.block_size = int(self._caches[0][1].get_partial_shape()[2].get_length())
        self.capacity = 0  # tokens the cache tensors hold
        self._table = np.arange(0, dtype=np.int32)
        self.reserve(512)

    def reserve(self, n: int) -> None:
        """Cache blocks for `n` tokens in all (the held ones are copied into the bigger tensors)."""
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

    def save(self, path) -> None:
        self._unsupported("save")

    def load(self, path) -> None:
        self._unsupported("load")
