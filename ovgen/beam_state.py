"""What beam search keeps: the beams' histories, the hypotheses it returns and the steps it shows
(shared by ovgen/beam.py and ovgen/beam_groups.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ovgen.kernels.sampling import top_k_indices

NEG = np.float32(-1.0e9)  # HF's "very large negative" score for masked beams


@dataclass
class Hypothesis:
    """A finished (or, at the end, still running) beam."""

    token_ids: list[int]  # generated tokens only (the eos token included when it ended the beam)
    score: float | None  # sum of processed log-probs / len(token_ids) ** length_penalty
    logprobs: list[float]  # each token's raw model log-probability
    processed_logprobs: list[float]  # each token's processed log-prob (they sum to the unnormalised score)
    finish_reason: str  # "stop" (eos), "stop_string", "length" or "time" (max_time)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token: its step's top-N (token, raw logprob)


@dataclass
class BeamStep:
    """One model step of the search: the running beams after it, and its timings."""

    index: int  # step number from 0 (= generated length - 1)
    tokens: np.ndarray  # [num_beams] token each running beam just appended
    beam_idx: np.ndarray  # [num_beams] which previous beam each running beam continues
    scores: np.ndarray  # [num_beams] running (unnormalised) scores
    finished: int  # finished hypotheses held so far
    model_ns: int  # the infer() that produced this step's logits (the prefill, for step 0)
    process_ns: int  # processor chain (all groups)
    choice_ns: int  # top-K / sampling and bookkeeping
    ready_ns: int  # perf_counter_ns() at the end of the step
    stage_ns: dict[str, int] = field(default_factory=dict)
    # the top-K continuations over all beams this step chose from, best first (num_beam_groups == 1):
    # flat indices beam * vocab + token, and their accumulated scores (HF's `topk_indices` / `_log_probs`)
    candidates: np.ndarray | None = None
    candidate_scores: np.ndarray | None = None


@dataclass
class Beams:
    """Per-beam token history and per-token log-probs (generated part only), gathered together; with
    `top_logprobs` N, each step's N most likely tokens and their raw log-probs too."""

    tokens: np.ndarray  # [n, max_new] int64
    raw: np.ndarray  # [n, max_new] float32
    processed: np.ndarray  # [n, max_new] float32
    top_ids: np.ndarray | None = None  # [n, max_new, N] int64 (top_logprobs)
    top_lp: np.ndarray | None = None  # [n, max_new, N] float32

    @classmethod
    def empty(cls, n: int, max_new: int, top_n: int = 0) -> "Beams":
        top = (np.zeros((n, max_new, top_n), np.int64), np.zeros((n, max_new, top_n), np.float32)) if top_n \
            else (None, None)
        return cls(np.zeros((n, max_new), np.int64), np.zeros((n, max_new), np.float32),
                   np.zeros((n, max_new), np.float32), *top)

    def _arrays(self) -> tuple:
        return self.tokens, self.raw, self.processed, self.top_ids, self.top_lp

    def take(self, idx) -> "Beams":
        return Beams(*(None if a is None else a[idx] for a in self._arrays()))

    def put(self, dst, src: "Beams", idx) -> None:
        for a, b in zip(self._arrays(), src._arrays()):
            if a is not None:
                a[dst] = b[idx]

    def set_step(self, rows, cur: int, tokens, raw, processed, top=None) -> None:
        """`top`: (ids, log-probs) [rows, N] of the rows' steps when the search keeps top_logprobs."""
        self.tokens[rows, cur], self.raw[rows, cur], self.processed[rows, cur] = tokens, raw, processed
        if self.top_ids is not None:
            self.top_ids[rows, cur], self.top_lp[rows, cur] = top

    def concat(self, other: "Beams") -> "Beams":
        return Beams(*(None if a is None else np.concatenate([a, b]) for a, b in zip(self._arrays(), other._arrays())))

    def hypothesis(self, i: int, length: int, score: float, eos: frozenset, late: bool = False,
                   stops: "StopHits | None" = None) -> Hypothesis:
        """Row i's first `length` tokens as a Hypothesis; `late`: max_time ended it before max_new_tokens;
        `stops`: the search's stop strings (a beam whose last token completed one ends on it)."""
        ids = self.tokens[i, :length].tolist()
        stopped = bool(ids) and stops is not None and bool(stops(self.tokens[i:i + 1, :length])[0])
        reason = "stop" if ids and ids[-1] in eos else "stop_string" if stopped else "time" if late else "length"
        top = None if self.top_ids is None else [list(zip(t, v)) for t, v in zip(self.top_ids[i, :length].tolist(),
                                                                                  self.top_lp[i, :length].tolist())]
        return Hypothesis(ids, float(score), self.raw[i, :length].tolist(), self.processed[i, :length].tolist(),
                          reason, top)


def step_tops(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each beam's n most likely tokens at this step and their raw log-probs (`raw`: [beams, vocab]),
    most likely first, lowest id at ties - the one-sequence loop's `top_logprobs`; None when n is 0."""
    if not n:
        return None
    ids = np.stack([top_k_indices(row, n) for row in raw])
    return ids, np.take_along_axis(raw, ids, axis=1)


class StopHits:
    """Which beams' last token completed a stop string: transformers' `StopStringCriteria` rule (the
    stop string is in the decoded text and overlaps the last token's text, so one already complete
    before it does not count again), on the generated text - what ovgen's other loops match stop
    strings against. Decodes only a window of the last tokens: a stop string of L characters that
    reaches into the last token starts within its last 4L + 1 tokens (a byte-level token holds at
    least one UTF-8 byte, a character at most four)."""

    def __init__(self, stops, tokenizer):
        self.stops, self.tok = list(stops), tokenizer
        self.window = 4 * max(len(s) for s in self.stops) + 2

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: [beams, generated] -> [beams] bool."""
        out = np.zeros(tokens.shape[0], bool)
        for i, row in enumerate(tokens[:, -self.window:].tolist()):
            text, before = self.tok.decode(row), self.tok.decode(row[:-1])
            kept = len(before) if text.startswith(before) else len(os.path.commonprefix([text, before]))
            out[i] = any((at := text.rfind(s)) >= 0 and at + len(s) > kept for s in self.stops)
        return out
