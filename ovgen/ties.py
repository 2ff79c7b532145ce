"""Ties: where a precision makes two choices equal, which one each runtime takes is a convention.

ovgen's convention everywhere (greedy, the graph's top candidates, top-k/top-p ranking, beam
candidates, top log-probs): at a tie the lowest token id wins (np.argmax's rule,
`kernels.sampling.top_k_indices`). torch.topk and openvino-genai need not agree, so at a precision
that makes ties (bf16 logits carry ~3 significant digits) two exact implementations may part at a
tie and then go their own ways. These checks tell such a parting from a bug: the first divergence
must be a tie in that precision, or it is a real difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Significand bits after the leading one, per inference precision: one unit in the last place of a
# value v is 2 ** (floor(log2 |v|) - bits). f32 ties are exact equalities.
_SIGNIFICAND_BITS = {"bf16": 7, "f16": 10, "f32": None}


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32: what the CPU
    plugin's bf16 inference hands back. NaN and inf stay as they are."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isfinite(x), rounded, x)


def tie_tolerance(value: float, precision: str) -> float:
    """How far apart two values at `value` may be and still be equal in `precision` ("bf16", "f16",
    "f32"): one unit in the last place (0 for f32: ties there are exact)."""
    bits = _SIGNIFICAND_BITS.get(precision)
    if bits is None or value == 0 or not np.isfinite(value):
        return 0.0
    return float(2.0 ** (np.floor(np.log2(abs(value))) - bits))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token, None when one is a prefix of the other (or equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


@dataclass
class Divergence:
    """Where two runs first part: step, each side's choice, their values there, and whether that was a tie."""

    index: int
    ours: object
    ref: object
    values: tuple[float, float]
    tied: bool


def greedy_divergence(logits_after: Callable[[list[int]], np.ndarray], prompt: Sequence[int],
                      ours: Sequence[int], ref: Sequence[int], precision: str) -> Divergence | None:
    """None if the greedy runs agree; else their first divergence, `tied` when both tokens held the
    largest logit there (within one unit in the last place of `precision`). `logits_after(ids)`
    gives the model's last logits after `ids` (the same model and properties that chose `ours`)."""
    i = first_divergence(ours, ref)
    if i is None:
        return None
    logits = np.asarray(logits_after(list(prompt) + list(ours[:i])), dtype=np.float32)
    a, b, top = float(logits[ours[i]]), float(logits[ref[i]]), float(logits.max())
    tol = tie_tolerance(top, precision)
    return Divergence(i, int(ours[i]), int(ref[i]), (a, b), top - min(a, b) <= tol)


def beam_divergence(ours: Sequence[tuple[np.ndarray, np.ndarray]], ref: Sequence[tuple[np.ndarray, np.ndarray]],
                    precision: str) -> Divergence | None:
    """None if two beam searches chose the same top-K continuations at every step both ran; else the
    first step where they did not, `tied` when at every rank where the chosen continuation differs
    both sides' scores are equal in `precision` (a tie broken another way). Each step is
    (flat indices beam * vocab + token, accumulated scores), best first (`BeamStep.candidates`,
    `.candidate_scores`; HF's `torch.topk` over `accumulated_log_probs`)."""
    for step, ((oi, os_), (ri, rs)) in enumerate(zip(ours, ref)):
        oi, ri = np.asarray(oi).reshape(-1), np.asarray(ri).reshape(-1)
        if np.array_equal(oi, ri):
            continue
        os_, rs = np.asarray(os_, np.float64).reshape(-1), np.asarray(rs, np.float64).reshape(-1)
        diff = np.flatnonzero(oi != ri)
        tol = [tie_tolerance(max(abs(os_[j]), abs(rs[j])), precision) for j in diff]
        tied = all(abs(os_[j] - rs[j]) <= t for j, t in zip(diff, tol))
        j = int(diff[0])
        return Divergence(step, int(oi[j]), int(ri[j]), (float(os_[j]), float(rs[j])), tied)
    return None
