"""Beam search over one Session with `num_beams` rows, in NumPy, with HF transformers' semantics.

Two algorithms, each a line-by-line port of the transformers code a researcher already trusts:

* `num_beam_groups == 1` (beam search, and beam search with sampling = HF's beam_sample):
  transformers 4.57 `GenerationMixin._beam_search` (the vectorised rewrite). Per step:
  log_softmax -> processors (on log-probs, as HF does) -> add each beam's running score ->
  keep the top K = max(2, 1 + len(eos)) * num_beams continuations over all beams (or draw K without
  replacement when sampling) -> the best num_beams that did not just stop keep running; those of
  the first num_beams that did stop are scored `sum_logprobs / generated_len ** length_penalty`
  and compete for the num_beams finished slots -> early-stopping heuristic.
* `num_beam_groups > 1` (diverse beam search, Vijayakumar et al. 2016): the group beam search that
  transformers shipped until 4.55 (`_group_beam_search` + `BeamSearchScorer` +
  `HammingDiversityLogitsProcessor`; 4.56 moved it to the Hub). Groups choose in order; a group's
  log-probs are lowered by `diversity_penalty` times how often each token was chosen this step by
  the earlier groups.

The KV cache follows the beams through `Session.reorder` (the IR's `beam_idx` input): after each
step row i continues from the row its best continuation came from. The prompt is prefilled once,
on one row, and fanned out to num_beams rows by the first reorder (optimum-intel does the same).

`beam_steps()` yields a `BeamStep` per model step (every beam's tokens, scores and where they came
from, plus timings) so a user can watch or stop the search; `beam_search()` runs it to the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import softmax, top_k_indices

from .config import GenerationConfig
from .processors import build_chain

NEG = np.float32(-1.0e9)  # HF's "very large negative" score for masked beams


@dataclass
class Hypothesis:
    """A finished (or, at the end, still running) beam."""

    token_ids: list[int]  # generated tokens only (the eos token included when it ended the beam)
    score: float  # sum of processed log-probs / len(token_ids) ** length_penalty
    logprobs: list[float]  # each token's raw model log-probability
    processed_logprobs: list[float]  # each token's processed log-prob (they sum to the unnormalised score)
    finish_reason: str  # "stop" (eos) or "length"


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
class _Beams:
    """Per-beam token history and per-token log-probs (generated part only), gathered together."""

    tokens: np.ndarray  # [n, max_new] int64
    raw: np.ndarray  # [n, max_new] float32
    processed: np.ndarray  # [n, max_new] float32

    @classmethod
    def empty(cls, n: int, max_new: int) -> "_Beams":
        return cls(np.zeros((n, max_new), np.int64), np.zeros((n, max_new), np.float32),
                   np.zeros((n, max_new), np.float32))

    def take(self, idx) -> "_Beams":
        return _Beams(self.tokens[idx], self.raw[idx], self.processed[idx])

    def put(self, dst, src: "_Beams", idx) -> None:
        self.tokens[dst], self.raw[dst], self.processed[dst] = src.tokens[idx], src.raw[idx], src.processed[idx]

    def hypothesis(self, i: int, length: int, score: float, eos: frozenset) -> Hypothesis:
        ids = self.tokens[i, :length].tolist()
        reason = "stop" if ids and ids[-1] in eos else "length"
        return Hypothesis(ids, float(score), self.raw[i, :length].tolist(), self.processed[i, :length].tolist(),
                          reason)


def check_beam_config(cfg: GenerationConfig) -> None:
    """Beam-specific rules, checked before any inference (HF's own checks, plus ovgen's limits)."""
    if cfg.num_beams < 2:
        raise ValueError(f"num_beams must be >= 2 for beam search, got {cfg.num_beams}")
    if cfg.num_beam_groups > 1:
        if cfg.do_sample:
            raise ValueError("num_beam_groups > 1 (diverse beam search) cannot be combined with do_sample=True")
        if cfg.diversity_penalty == 0.0:
            raise ValueError("num_beam_groups > 1 needs diversity_penalty > 0 (with 0 the groups are plain "
                             "beam searches over num_beams / num_beam_groups beams)")
    elif cfg.diversity_penalty:
        raise ValueError(f"diversity_penalty ({cfg.diversity_penalty}) needs num_beam_groups > 1")
    if cfg.stop_strings:
        raise ValueError("stop_strings are not supported with beam search (num_beams > 1)")
    if cfg.top_logprobs:
        raise ValueError("top_logprobs is not supported with beam search (num_beams > 1)")


def beam_search(session, prompt_ids: Sequence[int], cfg: GenerationConfig, *, max_new_tokens: int,
                processors=(), logits=None, rng: np.random.Generator | None = None
                ) -> tuple[list[Hypothesis], list[BeamStep]]:
    """Run the search to the end. Returns the best `num_return_sequences` hypotheses, best first,
    and the steps (timings)."""
    search = BeamSearch(session, prompt_ids, cfg, max_new_tokens=max_new_tokens, processors=processors,
                        rng=rng)
    steps = list(search.steps(logits))
    return search.result(), steps


class BeamSearch:
    """State of one search. `steps()` drives the session; `result()` gives the hypotheses."""

    def __init__(self, session, prompt_ids: Sequence[int], cfg: GenerationConfig, *, max_new_tokens: int,
                 processors=(), rng: np.random.Generator | None = None):
        check_beam_config(cfg)
        self.session = session
        self.cfg = cfg
        self.prompt = np.asarray(prompt_ids, dtype=np.int64)
        self.max_new = max_new_tokens
        self.nb = cfg.num_beams
        self.eos = frozenset() if cfg.ignore_eos else frozenset(int(e) for e in cfg.eos_token_id)
        self.eos_arr = np.fromiter(sorted(self.eos), np.int64, len(self.eos))
        keep = len(self.eos) + 1 if cfg.do_sample else 1  # HF: min_tokens_to_keep for beam sampling
        self.chain = build_chain(cfg, prompt_len=len(self.prompt), user=processors, min_tokens_to_keep=keep)
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self._finished: list = []  # filled by the algorithm
        self._result: list[Hypothesis] | None = None

    # ---- driving ------------------------------------------------------------------------------
    def steps(self, logits=None) -> Iterator[BeamStep]:
        if self.max_new <= 0:
            self._result = []
            return
        t_start = perf_counter_ns()
        if logits is None:
            logits = self.session.prefill(self.prompt)
        algo = self._grouped if self.cfg.num_beam_groups > 1 else self._vectorized
        yield from algo(logits, t_start)

    def result(self) -> list[Hypothesis]:
        if self._result is None:
            raise RuntimeError("the search has not finished; iterate steps() to the end first")
        return self._result

    def _log_probs(self, logits) -> np.ndarray:
        """[num_beams, vocab] log_softmax of the last logits (the graph's logsumexp output)."""
        lse = np.asarray(self.session.logsumexp, dtype=np.float32)
        if logits.ndim == 1:  # right after the one-row prefill: every beam sees the same row
            return np.broadcast_to(logits - lse, (self.nb, logits.shape[-1]))
        return logits - lse[:, None]

    def _history(self) -> np.ndarray:
        tokens = self.session.tokens
        return np.repeat(tokens, self.nb, axis=0) if tokens.shape[0] == 1 else tokens

    def _advance(self, beam_idx: np.ndarray, next_tokens: np.ndarray):
        """Reorder the KV rows to follow the beams, then run one token per beam."""
        s = self.session
        s.reorder(np.zeros(self.nb, np.int32) if s.rows == 1 else beam_idx)
        logits = s.step(next_tokens)
        return logits

    # ---- HF 4.57 _beam_search (num_beam_groups == 1; do_sample -> beam_sample) ----------------
    def _vectorized(self, logits, t_start) -> Iterator[BeamStep]:
        cfg, nb, L = self.cfg, self.nb, self.max_new
        k_keep = max(2, 1 + len(self.eos)) * nb
        running = _Beams.empty(nb, L)
        running_scores = np.zeros(nb, np.float32)
        running_scores[1:] = NEG
        finished = _Beams.empty(nb, L)
        fin_scores = np.full(nb, NEG, np.float32)
        fin_len = np.zeros(nb, np.int64)
        fin_done = np.zeros(nb, bool)
        heuristic_open = True
        model_ns = self.session.infer_ns
        lp_pow = cfg.length_penalty
        top_mask = np.arange(k_keep) < nb
        for cur in range(L):
            t0 = perf_counter_ns()
            raw = self._log_probs(logits)
            processed = self.chain(self._history(), raw)
            t1 = perf_counter_ns()
            vocab = processed.shape[-1]
            acc = (processed + running_scores[:, None]).reshape(-1)
            if cfg.do_sample:
                cand = _sample_without_replacement(acc, k_keep, self.rng)
            else:
                cand = top_k_indices(acc, k_keep)
            cand_lp = acc[cand]
            src, tok = cand // vocab, cand % vocab
            cands = running.take(src)
            cands.tokens[:, cur] = tok
            cands.raw[:, cur] = raw[src, tok]
            cands.processed[:, cur] = processed[src, tok]
            elapsed = (perf_counter_ns() - t_start) / 1e9
            out_of_time = cfg.max_time is not None and elapsed >= cfg.max_time
            hits = np.isin(tok, self.eos_arr) | (cur + 1 >= L) | out_of_time
            # e. the best num_beams continuations that did not stop keep running
            run_lp = cand_lp + hits.astype(np.float32) * NEG
            nxt = top_k_indices(run_lp, nb)
            running = cands.take(nxt)
            running_scores = run_lp[nxt]
            beam_idx = src[nxt].astype(np.int32)
            # f. those of the top num_beams that stopped compete for the finished slots
            just = hits & top_mask
            fin_lp = cand_lp / np.float32((cur + 1) ** lp_pow)
            if fin_done.all() and cfg.early_stopping is True:
                fin_lp = fin_lp + NEG
            if not heuristic_open:
                fin_lp = fin_lp + NEG
            fin_lp = fin_lp + (~just).astype(np.float32) * NEG
            merged_scores = np.concatenate([fin_scores, fin_lp])
            keep = top_k_indices(merged_scores, nb)
            old = keep < nb
            merged = _Beams(np.concatenate([finished.tokens, cands.tokens]),
                            np.concatenate([finished.raw, cands.raw]),
                            np.concatenate([finished.processed, cands.processed]))
            finished = merged.take(keep)
            fin_len = np.where(old, fin_len[np.minimum(keep, nb - 1)], cur + 1)
            fin_scores = merged_scores[keep]
            fin_done = np.concatenate([fin_done, just])[keep]
            # g. early-stopping heuristic and the loop condition
            gen_len = cur + 1
            if cfg.early_stopping == "never" and lp_pow > 0.0:
                best_len = L
            else:
                best_len = gen_len
            best_possible = running_scores[0] / np.float32(best_len ** lp_pow)
            worst_finished = np.where(fin_done, fin_scores.min(), NEG)
            heuristic_open = heuristic_open and bool(np.any(best_possible > worst_finished))
            go_on = heuristic_open and not (fin_done.all() and cfg.early_stopping is True) and not hits.all()
            t2 = perf_counter_ns()
            yield BeamStep(cur, running.tokens[:, cur].copy(), beam_idx, running_scores.copy(), int(fin_done.sum()),
                           model_ns, t1 - t0, t2 - t1, t2, dict(self.chain.timings_ns), cand, cand_lp)
            if not go_on:
                break
            logits = self._advance(beam_idx, running.tokens[:, cur])
            model_ns = self.session.infer_ns
        n = self.cfg.num_return_sequences
        self._result = [finished.hypothesis(i, int(fin_len[i]), fin_scores[i], self.eos) for i in range(n)]

    # ---- transformers <= 4.55 _group_beam_search (diverse beam search) -------------------------
    def _grouped(self, logits, t_start) -> Iterator[BeamStep]:
        cfg, nb, L = self.cfg, self.nb, self.max_new
        groups = cfg.num_beam_groups
        gs = nb // groups
        k_keep = max(2, 1 + len(self.eos)) * gs
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id[0] if cfg.eos_token_id else 0)
        beams = _Beams.empty(nb, L)
        scores = np.full(nb, NEG, np.float32)
        scores[::gs] = 0.0
        hyps = [_Hypotheses(gs, cfg.length_penalty, cfg.early_stopping, L) for _ in range(groups)]
        done = [False] * groups
        model_ns = self.session.infer_ns
        for cur in range(L):
            t0 = perf_counter_ns()
            raw = self._log_probs(logits)
            history = self._history()
            current = np.zeros(nb, np.int64)
            reorder = np.zeros(nb, np.int32)
            new = _Beams.empty(nb, L)
            process_ns = 0
            for g in range(groups):
                rows = slice(g * gs, (g + 1) * gs)
                tp = perf_counter_ns()
                lp = raw[rows]
                if g:  # HammingDiversityLogitsProcessor: runs before the other processors in HF's list
                    freq = np.bincount(current[:g * gs], minlength=lp.shape[-1]).astype(np.float32)
                    lp = lp - np.float32(cfg.diversity_penalty) * freq
                processed = self.chain(history[rows], lp)
                process_ns += perf_counter_ns() - tp
                vocab = processed.shape[-1]
                acc = (processed + scores[rows, None]).reshape(-1)
                cand = top_k_indices(acc, k_keep)
                src, tok = cand // vocab, cand % vocab
                if done[g]:  # BeamSearchScorer pads a finished group and keeps running it
                    chosen_src = np.zeros(gs, np.int64)
                    chosen_tok = np.full(gs, pad, np.int64)
                    chosen_score = np.zeros(gs, np.float32)
                else:
                    chosen_src, chosen_tok, chosen_score = [], [], []
                    for rank in range(k_keep):
                        s, t = int(src[rank]), int(tok[rank])
                        if t in self.eos:
                            if rank >= gs:
                                continue
                            b = self._group_beam(beams, g * gs + s, cur, t, raw[g * gs + s, t], processed[s, t])
                            hyps[g].add(b, float(acc[cand[rank]]), cur + 1)
                        else:
                            chosen_src.append(s)
                            chosen_tok.append(t)
                            chosen_score.append(acc[cand[rank]])
                        if len(chosen_src) == gs:
                            break
                    chosen_src = np.asarray(chosen_src, np.int64)
                    chosen_tok = np.asarray(chosen_tok, np.int64)
                    chosen_score = np.asarray(chosen_score, np.float32)
                    done[g] = hyps[g].is_done(float(acc[cand].max()), cur + 1)
                scores[rows] = chosen_score
                new.put(rows, beams, g * gs + chosen_src)
                new.tokens[rows, cur] = chosen_tok
                new.raw[rows, cur] = raw[g * gs + chosen_src, chosen_tok]
                new.processed[rows, cur] = processed[chosen_src, chosen_tok]
                current[rows] = chosen_tok
                reorder[rows] = g * gs + chosen_src
            beams = new
            t2 = perf_counter_ns()
            stop = all(done) or cur + 1 >= L or (cfg.max_time is not None
                                                 and (t2 - t_start) / 1e9 >= cfg.max_time)
            yield BeamStep(cur, current.copy(), reorder.copy(), scores.copy(), sum(len(h) for h in hyps),
                           model_ns, process_ns, t2 - t0 - process_ns, t2, dict(self.chain.timings_ns))
            if stop:
                break
            logits = self._advance(reorder, current)
            model_ns = self.session.infer_ns
        # finalize: groups not done add their running beams, then the best over all groups win
        length = cur + 1
        for g in range(groups):
            if done[g]:
                continue
            for r in range(g * gs, (g + 1) * gs):
                hyps[g].add(beams.take([r]), float(scores[r]), length)
        pool = [h for group in hyps for h in group.beams]
        pool.sort(key=lambda h: h[0])
        best = [pool.pop() for _ in range(min(cfg.num_return_sequences, len(pool)))]
        self._result = [b.hypothesis(0, n, score, self.eos) for score, b, n in best]

    @staticmethod
    def _group_beam(beams: _Beams, row: int, cur: int, tok: int, raw: float, processed: float) -> _Beams:
        """The beam `row` ended by eos `tok` at step `cur` (a one-row copy with the eos appended)."""
        b = beams.take([row])
        b.tokens[0, cur], b.raw[0, cur], b.processed[0, cur] = tok, raw, processed
        return b


class _Hypotheses:
    """transformers' `BeamHypotheses` (<= 4.55): the n best finished beams of one group."""

    def __init__(self, n: int, length_penalty: float, early_stopping, max_new: int):
        self.n, self.lp, self.early, self.max_new = n, length_penalty, early_stopping, max_new
        self.beams: list[tuple[float, _Beams, int]] = []  # (score, beam, generated length)
        self.worst = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, beam: _Beams, sum_logprobs: float, generated_len: int) -> None:
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


def _sample_without_replacement(acc: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw k distinct indices, in draw order, from softmax(acc) (torch.multinomial with
    replacement=False), by the Gumbel-top-k trick: argsort(log p + Gumbel noise) has the law of
    successive draws without replacement."""
    p = softmax(acc)
    with np.errstate(divide="ignore"):
        keys = np.log(p) + rng.gumbel(size=p.shape).astype(np.float32)
    if np.count_nonzero(p) < k:
        raise ValueError(f"beam sampling needs {k} candidates with non-zero probability, only "
                         f"{np.count_nonzero(p)} remain after processing (raise top_k / top_p or lower num_beams)")
    return top_k_indices(keys, k)
