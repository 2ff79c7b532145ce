"""Beam search over one Session with `num_beams` rows, in NumPy, with HF transformers' semantics.

Two algorithms, each a port of the transformers code a researcher already trusts:

* `num_beam_groups == 1` (beam search, and beam search with sampling = HF's beam_sample):
  transformers 4.57 `GenerationMixin._beam_search` (the vectorised rewrite), here. Per step:
  log_softmax -> processors (on log-probs, as HF does) -> add each beam's running score ->
  keep the top K = max(2, 1 + len(eos)) * num_beams continuations over all beams (or draw K without
  replacement when sampling: `choice.beam_candidates`) -> the best num_beams that did not just stop
  keep running; those of the first num_beams that did stop are scored
  `sum_logprobs / generated_len ** length_penalty` and compete for the num_beams finished slots ->
  early-stopping heuristic.
* `num_beam_groups > 1` (diverse beam search): ovgen/beam_groups.py.

The KV cache follows the beams through `Session.reorder` (the IR's `beam_idx` input): after each
step row i continues from the row its best continuation came from. The prompt is prefilled once,
on one row, and fanned out to num_beams rows by the first reorder (optimum-intel does the same).
Stateful processors (a grammar per beam) follow through `Chain.reorder` and `Chain.accept`.

`BeamSearch.steps()` yields a `BeamStep` per model step (every beam's tokens, scores and where they
came from, plus timings) so a user can watch or stop the search; `beam_search()` runs it to the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import top_k_indices

from .beam_groups import group_beam_search
from .beam_state import NEG, Beams, BeamStep, Hypothesis, StopHits, step_tops
from .choice import beam_candidates, build_chain
from .config import GenerationConfig
from .search import candidates

__all__ = ["BeamSearch", "BeamStep", "Beams", "Hypothesis", "beam_search", "check_beam_config"]

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
    if cfg.mirostat:
        raise ValueError("mirostat chooses one token; it cannot drive beam search (num_beams > 1)")


def beam_search(session, prompt_ids: Sequence[int], cfg: GenerationConfig, *, max_new_tokens: int,
                processors=(), logits=None, rng: np.random.Generator | None = None, model=None, extra=()
                ) -> tuple[list[Hypothesis], list[BeamStep]]:
    """Run the search to the end. Returns the best `num_return_sequences` hypotheses, best first,
    and the steps (timings)."""
    search = BeamSearch(session, prompt_ids, cfg, max_new_tokens=max_new_tokens, processors=processors,
                        rng=rng, model=model, extra=extra)
    steps = list(search.steps(logits))
    return search.result(), steps


class BeamSearch:
    """State of one search. `steps()` drives the session; `result()` gives the hypotheses."""

    def __init__(self, session, prompt_ids: Sequence[int], cfg: GenerationConfig, *, max_new_tokens: int,
                 processors=(), rng: np.random.Generator | None = None, model=None, extra=()):
        check_beam_config(cfg)
        self.session = session
        self.cfg = cfg
        self.prompt = np.asarray(prompt_ids, dtype=np.int64)
        self.max_new = max_new_tokens
        self.nb = cfg.num_beams
        self.top_n = cfg.top_logprobs  # each token's step keeps its top-N (token, raw log-prob)
        self.eos = frozenset() if cfg.ignore_eos else frozenset(int(e) for e in cfg.eos_token_id)
        self.eos_arr = np.fromiter(sorted(self.eos), np.int64, len(self.eos))
        keep = len(self.eos) + 1 if cfg.do_sample else 1  # HF: min_tokens_to_keep for beam sampling
        self.chain = build_chain(cfg, prompt_len=len(self.prompt), user=processors, min_tokens_to_keep=keep,
                                 model=model or getattr(session, "model", None), extra=extra)
        self.chain.reset()
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self.stops = None
        if cfg.stop_strings:
            owner = model or getattr(session, "model", None)
            if owner is None:
                raise ValueError("stop_strings in beam search need the model's tokenizer: pass model=")
            self.stops = StopHits(cfg.stop_strings, owner.tokenizer)
        self._result: list[Hypothesis] | None = None
        self.timed_out = False  # max_time ended the search (its unfinished beams end with finish_reason "time")

    # ---- driving ------------------------------------------------------------------------------
    def steps(self, logits=None) -> Iterator[BeamStep]:
        if self.max_new <= 0:
            self._result = []
            return
        t_start = perf_counter_ns()
        with candidates(self.session, False):  # beams read the whole vocabulary, never the graph's top-k
            if logits is None:
                logits = self.session.prefill(self.prompt)
            if self.cfg.num_beam_groups > 1:
                yield from group_beam_search(self, logits, t_start)
            else:
                yield from self._vectorized(logits, t_start)

    def result(self) -> list[Hypothesis]:
        if self._result is None:
            raise RuntimeError("the search has not finished; iterate steps() to the end first")
        return self._result

    def log_probs(self, logits) -> np.ndarray:
        """[num_beams, vocab] log_softmax of the last logits (the graph's logsumexp output)."""
        lse = np.asarray(self.session.logsumexp, dtype=np.float32)
        if logits.ndim == 1:  # right after the one-row prefill: every beam sees the same row
            return np.broadcast_to(logits - lse, (self.nb, logits.shape[-1]))
        return logits - lse[:, None]

    def history(self) -> np.ndarray:
        tokens = self.session.tokens
        return np.repeat(tokens, self.nb, axis=0) if tokens.shape[0] == 1 else tokens

    def advance(self, beam_idx: np.ndarray, next_tokens: np.ndarray, retire=()):
        """Reorder the KV rows (and the stateful processors) to follow the beams, then run one token per beam.
        `retire`: rows (after the reorder) whose tokens are padding for the processors (Stage.retire)."""
        s = self.session
        idx = np.zeros(self.nb, np.int32) if s.rows == 1 else beam_idx
        s.reorder(idx)
        self.chain.reorder(idx)
        if len(retire):
            self.chain.retire(retire)
        self.chain.accept(next_tokens)
        return s.step(next_tokens)

    def out_of_time(self, t_start: int) -> bool:
        late = self.cfg.max_time is not None and (perf_counter_ns() - t_start) / 1e9 >= self.cfg.max_time
        self.timed_out = self.timed_out or late
        return late

    # ---- HF 4.57 _beam_search (num_beam_groups == 1; do_sample -> beam_sample) ----------------
    def _vectorized(self, logits, t_start) -> Iterator[BeamStep]:
        state = _VectorState(self)
        model_ns = self.session.infer_ns
        for cur in range(self.max_new):
            t0 = perf_counter_ns()
            raw = self.log_probs(logits)
            processed = self.chain(self.history(), raw)
            tops = step_tops(raw, self.top_n)
            t1 = perf_counter_ns()
            cand, cand_lp, cands, hits = state.expand(raw, processed, cur, self.out_of_time(t_start), tops)
            beam_idx = state.keep_running(cand, cand_lp, cands, hits)
            state.keep_finished(cand_lp, cands, hits, cur)
            go_on = state.go_on(cur, hits)
            t2 = perf_counter_ns()
            yield BeamStep(cur, state.running.tokens[:, cur].copy(), beam_idx, state.running_scores.copy(),
                           int(state.fin_done.sum()), model_ns, t1 - t0, t2 - t1, t2, dict(self.chain.timings_ns),
                           cand, cand_lp)
            if not go_on:
                break
            logits = self.advance(beam_idx, state.running.tokens[:, cur])
            model_ns = self.session.infer_ns
        n = self.cfg.num_return_sequences
        self._result = [state.finished.hypothesis(i, int(state.fin_len[i]), state.fin_scores[i], self.eos,
                                                  late=self.timed_out and state.fin_len[i] < self.max_new,
                                                  stops=self.stops)
                        for i in range(n)]


class _VectorState:
    """The running and finished beams of HF 4.57's vectorised beam search, one method per step of it."""

    def __init__(self, search: BeamSearch):
        self.s, nb, L = search, search.nb, search.max_new
        self.k_keep = max(2, 1 + len(search.eos)) * nb
        self.running = Beams.empty(nb, L, search.top_n)
        self.running_scores = np.full(nb, NEG, np.float32)
        self.running_scores[0] = 0.0
        self.finished = Beams.empty(nb, L, search.top_n)
        self.fin_scores = np.full(nb, NEG, np.float32)
        self.fin_len = np.zeros(nb, np.int64)
        self.fin_done = np.zeros(nb, bool)
        self.heuristic_open = True
        self.top_mask = np.arange(self.k_keep) < nb

    def expand(self, raw, processed, cur: int, out_of_time: bool, tops=None):
        """(a-d) the top-K continuations over all beams, as beams, and which of them stop here
        (`tops`: each beam's top-N at this step, kept with the continuations when asked)."""
        self.vocab = vocab = processed.shape[-1]
        acc = (processed + self.running_scores[:, None]).reshape(-1)
        cand = beam_candidates(acc, self.k_keep, self.s.rng if self.s.cfg.do_sample else None)
        src, tok = cand // vocab, cand % vocab
        cands = self.running.take(src)
        cands.set_step(slice(None), cur, tok, raw[src, tok], processed[src, tok],
                       None if tops is None else (tops[0][src], tops[1][src]))
        hits = np.isin(tok, self.s.eos_arr) | (cur + 1 >= self.s.max_new) | out_of_time
        if self.s.stops is not None:  # HF: the stopping criteria (StopStringCriteria) on every candidate
            hits |= self.s.stops(cands.tokens[:, :cur + 1])
        return cand, acc[cand], cands, hits

    def keep_running(self, cand, cand_lp, cands: Beams, hits) -> np.ndarray:
        """(e) the best num_beams continuations that did not stop keep running; returns beam_idx."""
        run_lp = cand_lp + hits.astype(np.float32) * NEG
        nxt = top_k_indices(run_lp, self.s.nb)
        self.running = cands.take(nxt)
        self.running_scores = run_lp[nxt]
        return (cand[nxt] // self.vocab).astype(np.int32)

    def keep_finished(self, cand_lp, cands: Beams, hits, cur: int) -> None:
        """(f) those of the top num_beams that stopped compete for the finished slots."""
        cfg, nb = self.s.cfg, self.s.nb
        just = hits & self.top_mask
        fin_lp = cand_lp / np.float32((cur + 1) ** cfg.length_penalty)
        if self.fin_done.all() and cfg.early_stopping is True:
            fin_lp = fin_lp + NEG
        if not self.heuristic_open:
            fin_lp = fin_lp + NEG
        fin_lp = fin_lp + (~just).astype(np.float32) * NEG
        merged_scores = np.concatenate([self.fin_scores, fin_lp])
        keep = top_k_indices(merged_scores, nb)
        old = keep < nb
        self.finished = self.finished.concat(cands).take(keep)
        self.fin_len = np.where(old, self.fin_len[np.minimum(keep, nb - 1)], cur + 1)
        self.fin_scores = merged_scores[keep]
        self.fin_done = np.concatenate([self.fin_done, just])[keep]

    def go_on(self, cur: int, hits) -> bool:
        """(g) HF's early-stopping heuristic and the loop condition."""
        cfg = self.s.cfg
        lp_pow = cfg.length_penalty
        best_len = self.s.max_new if cfg.early_stopping == "never" and lp_pow > 0.0 else cur + 1
        best_possible = self.running_scores[0] / np.float32(best_len ** lp_pow)
        worst_finished = np.where(self.fin_done, self.fin_scores.min(), NEG)
        self.heuristic_open = self.heuristic_open and bool(np.any(best_possible > worst_finished))
        return self.heuristic_open and not (self.fin_done.all() and cfg.early_stopping is True) and not hits.all()
