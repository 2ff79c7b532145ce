"""Diverse beam search (Vijayakumar et al. 2016, `num_beam_groups > 1`): the group beam search that
transformers shipped until 4.55 (`_group_beam_search` + `BeamSearchScorer` +
`HammingDiversityLogitsProcessor`; 4.56 moved it to the Hub). Groups choose in order; a group's
log-probs are lowered by `diversity_penalty` times how often each token was chosen this step by the
earlier groups. A finished group keeps running padded (pad = the pad token, else the first eos), as
BeamSearchScorer does - so later groups' eos pays the diversity penalty for it.

Stop strings end a candidate as eos does (4.57's beam search rule with `StopStringCriteria`, which
ovgen's plain beams follow): one whose last token completes a stop string, among a group's first
group-size candidates, finishes a hypothesis; further down it is passed over. (4.55's group search,
and the Hub's copy of it, only checked stopping criteria for the whole batch: a stop string ended
the search when every beam completed one at the same step.)

A grammar (json_schema, regex, grammar, choices) masks each group's rows with their own matchers. A
group whose live continuations run out (the grammar allows only eos) runs on -inf-scored beams, as
BeamSearchScorer does; those beams' tokens, like a finished group's padding, are not the grammar's,
so their rows are retired from it (Stage.retire) instead of consuming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import top_k_indices

from .beam_state import NEG, Beams, BeamStep, step_tops


class Hypotheses:
    """transformers' `BeamHypotheses` (<= 4.55): the n best finished beams of one group."""

    def __init__(self, n: int, length_penalty: float, early_stopping, max_new: int):
        self.n, self.lp, self.early, self.max_new = n, length_penalty, early_stopping, max_new
        self.beams: list[tuple[float, Beams, int]] = []  # (score, beam, generated length)
        self.worst = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, beam: Beams, sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len ** self.lp)
        if len(self.beams) < self.n or score > self.worst:
            self.beams.append((score, beam, generated_len))
            if len(self.beams) > self.n:
                ranked = sorted((s, i) for i, (s, _, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.beams) < self.n:
            return False
        if self.early is True:
            return True
        if self.early == "never" and self.lp > 0.0:
            best = best_sum_logprobs / self.max_new ** self.lp
        else:
            best = best_sum_logprobs / generated_len ** self.lp
        return self.worst >= best


@dataclass
class _Step:
    """What the groups chose in one step: per row the token, the row it continues, its score."""

    current: np.ndarray  # [num_beams] int64
    reorder: np.ndarray  # [num_beams] int32
    new: Beams
    dead: np.ndarray  # [num_beams] bool: padding (a finished group) or a -inf score: per-row stages retire it
    process_ns: int = 0


def group_beam_search(search, logits, t_start: int) -> Iterator[BeamStep]:
    cfg, nb, L = search.cfg, search.nb, search.max_new
    groups = cfg.num_beam_groups
    gs = nb // groups
    beams = Beams.empty(nb, L, search.top_n)
    scores = np.full(nb, NEG, np.float32)
    scores[::gs] = 0.0
    hyps = [Hypotheses(gs, cfg.length_penalty, cfg.early_stopping, L) for _ in range(groups)]
    done = [False] * groups
    model_ns = search.session.infer_ns
    for cur in range(L):
        t0 = perf_counter_ns()
        raw, history = search.log_probs(logits), search.history()
        tops = step_tops(raw, search.top_n)
        step = _Step(np.zeros(nb, np.int64), np.zeros(nb, np.int32), Beams.empty(nb, L, search.top_n),
                     np.zeros(nb, bool))
        for g in range(groups):
            _choose_group(search, g, gs, cur, raw, history, beams, scores, hyps, done, step, tops)
        beams = step.new
        t2 = perf_counter_ns()
        stop = all(done) or cur + 1 >= L or search.out_of_time(t_start)
        yield BeamStep(cur, step.current.copy(), step.reorder.copy(), scores.copy(), sum(len(h) for h in hyps),
                       model_ns, step.process_ns, t2 - t0 - step.process_ns, t2, dict(search.chain.timings_ns))
        if stop:
            break
        logits = search.advance(step.reorder, step.current, retire=np.flatnonzero(step.dead))
        model_ns = search.session.infer_ns
    search._result = _finalize(search, beams, scores, hyps, done, cur + 1)


def _choose_group(search, g, gs, cur, raw, history, beams, scores, hyps, done, step: _Step, tops=None) -> None:
    """Group g's step: diversity penalty from the earlier groups' choices, processors, the continuations
    best first; eos (or a completed stop string) among the first gs finish a hypothesis, the first gs
    others run on. `tops`: every beam's top-N at this step (top_logprobs), or None."""
    def top(rows):
        return None if tops is None else (tops[0][rows], tops[1][rows])

    rows = slice(g * gs, (g + 1) * gs)
    tp = perf_counter_ns()
    lp = raw[rows]
    if g:  # HammingDiversityLogitsProcessor: runs before the other processors in HF's list
        freq = np.bincount(step.current[:g * gs], minlength=lp.shape[-1]).astype(np.float32)
        lp = lp - np.float32(search.cfg.diversity_penalty) * freq
    processed = search.chain(history[rows], lp, rows=rows)
    step.process_ns += perf_counter_ns() - tp
    vocab = processed.shape[-1]
    acc = (processed + scores[rows, None]).reshape(-1)
    if done[g]:  # BeamSearchScorer pads a finished group and keeps running it
        cfg = search.cfg
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id[0] if cfg.eos_token_id else 0)
        chosen_src, chosen_tok, chosen_score = np.zeros(gs, np.int64), np.full(gs, pad, np.int64), np.zeros(gs, np.float32)
        step.dead[rows] = True
    else:
        chosen = []
        for rank, c in _ranked(acc, max(2, 1 + len(search.eos)) * gs):
            s, t = divmod(c, vocab)
            if t not in search.eos and not _stops(search, beams, g * gs + s, cur, t):
                chosen.append((s, t, acc[c]))
            elif rank < gs:
                ended = beams.take([g * gs + s])
                ended.set_step(0, cur, t, raw[g * gs + s, t], processed[s, t], top(g * gs + s))
                hyps[g].add(ended, float(acc[c]), cur + 1)
            if len(chosen) == gs:
                break
        chosen_src = np.array([c[0] for c in chosen], np.int64)
        chosen_tok = np.array([c[1] for c in chosen], np.int64)
        chosen_score = np.array([c[2] for c in chosen], np.float32)
        done[g] = hyps[g].is_done(float(acc.max()), cur + 1)
        step.dead[rows] = np.isneginf(chosen_score)
    scores[rows] = chosen_score
    step.new.put(rows, beams, g * gs + chosen_src)
    step.new.set_step(rows, cur, chosen_tok, raw[g * gs + chosen_src, chosen_tok], processed[chosen_src, chosen_tok],
                      top(g * gs + chosen_src))
    step.current[rows] = chosen_tok
    step.reorder[rows] = g * gs + chosen_src


def _ranked(acc, k: int) -> Iterator[tuple[int, int]]:
    """(rank, index) of `acc`'s entries, best first (ties: lowest index): the top k, then - when a
    group's candidates ran out because stop strings ended more of them than eos could - the next
    ones, doubling (HF takes max(2, 1 + eos ids) x group size and counts on eos ending no more)."""
    done = 0
    while done < acc.size:
        k = min(k, acc.size)
        cand = top_k_indices(acc, k).tolist()
        for rank in range(done, k):
            yield rank, cand[rank]
        done, k = k, 2 * k


def _stops(search, beams: Beams, row: int, cur: int, token: int) -> bool:
    """Whether beam `row` continued by `token` completes a stop string (beam_state.StopHits)."""
    if search.stops is None:
        return False
    return bool(search.stops(np.append(beams.tokens[row, :cur], token)[None])[0])


def _finalize(search, beams: Beams, scores, hyps, done, length: int):
    """Groups not done add their running beams, then the best over all groups win."""
    gs = search.nb // search.cfg.num_beam_groups
    for g, group in enumerate(hyps):
        if not done[g]:
            for r in range(g * gs, (g + 1) * gs):
                group.add(beams.take([r]), float(scores[r]), length)
    pool = sorted((h for group in hyps for h in group.beams), key=lambda h: h[0])
    best = [pool.pop() for _ in range(min(search.cfg.num_return_sequences, len(pool)))]
    return [b.hypothesis(0, n, score, search.eos, late=search.timed_out and n < search.max_new, stops=search.stops)
            for score, b, n in best]
