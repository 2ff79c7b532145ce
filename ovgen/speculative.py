"""Speculative decoding on ovgen's loop: propose k tokens, verify them in one infer, keep the accepted
ones and roll the KV state back past the rest (`Session.rewind`: an O(k) trim, ovgen/kvstate.py).

    pending token t (chosen, not yet run) --proposer--> d1..dk
    Session.append([t, d1..dk], logits_to_keep=k + 1) -> the target's logits after t, d1, .., dk
    position i: the token-choice stage (ovgen/choice.py) on logits i with the history it would
    have without speculation -> keep d(i+1) while it agrees, else emit the stage's own token and stop;
    all k kept -> the last logits choose one more. Rewind the rejected drafts.

Greedy: a draft token is kept when it is the stage's own choice there, so the output is plain
greedy's (up to the last bits a multi-token infer computes differently, as any chunking does).
Sampling: Leviathan et al. (arXiv 2211.17192, Alg. 1) with the proposal q a point mass (prompt
lookup, a greedy draft model): keep d with probability min(1, p(d) / q(d)) = p(d), else draw from
normalise(max(0, p - q)) = p without d; so every emitted token has the target's distribution p.
Processors see exactly the histories they would see without speculation; each emitted token is
`accept`ed in order, so stateful stages (a grammar, the repetition cache) follow the emitted text.

One verify width: a session with `pad_verify_to = W` (the paged one: 4) gets every block of up to
W positions padded to 1 + k (k the proposer's `num_tokens`), as openvino-genai's prompt lookup pads
its candidates, up to the last verification (fewer tokens left than k: padded all the same): the
CPU plugin re-plans the whole graph whenever an input's shape changes (+4-5 ms on a 13 ms infer of
SmolLM2 on benchmarks/FIGURES.md's AVX512-BF16 EPYC; +1-3 ms on a 10.5 ms one on a Zen 5 EPYC), more than
padding up to 4 positions computes (4 positions cost 1.2-1.35x one on the CPUs measured) but less
than padding to 11 (~2x).
Padded positions are never kept (the token after the real drafts is the stage's own choice, as
without padding) and are rewound with the rejected drafts, so the tokens do not change.

Proposers (`propose(tokens, k) -> list[int]`, `feedback(proposed, accepted)`): `PromptLookup`
(transformers' PromptLookupCandidateGenerator) and `DraftModel` (AssistedCandidateGenerator: a
second, smaller model drafting greedily, k adapted +2 / -1 by the heuristic schedule). Any object
with those two methods can propose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from .choice import Choice, TokenChoice
from .search import TokenRecord, _text, candidates, chosen
from .stopping import StopStrings, Stopping


@dataclass
class SpecStep:
    """One verification: what was proposed, how many were kept, and the time each part took."""

    proposed: list[int]
    accepted: int
    propose_ns: int
    verify_ns: int
    padded: int = 0  # positions added after the drafts to keep the verify width (never kept)


def adapt(num_tokens: int, schedule: str, proposed: list[int], accepted: int) -> int:
    """transformers' "heuristic" schedule for the number of draft tokens: +2 after a fully accepted
    draft, -1 (at least 1) otherwise; "constant" keeps it."""
    if schedule != "heuristic" or not proposed:
        return num_tokens
    return num_tokens + 2 if accepted == len(proposed) else max(1, num_tokens - 1)


class PromptLookup:
    """transformers' PromptLookupCandidateGenerator: the longest n-gram (max_ngram_size down to 1)
    ending the sequence is looked up in it, first match left to right; the tokens after the match
    (at most k) are the proposal, cut before an eos token. `schedule="heuristic"` adapts k as the
    draft model's schedule does.

    The search is `bytes.find` over the history's int64 bytes (a match counts at a token boundary
    only): it runs right after each verification, on the critical path between two infers, where
    the infer has just evicted the host's caches - a dozen NumPy calls cost ~115 us there (cold)
    against ~15 us warm; this costs a few."""

    def __init__(self, max_ngram_size: int = 3, num_tokens: int = 10, eos_token_ids=(), schedule: str = "constant"):
        self.max_ngram_size, self.num_tokens, self.schedule = max_ngram_size, num_tokens, schedule
        self.eos = frozenset(int(e) for e in eos_token_ids)

    def propose(self, tokens: np.ndarray, k: int) -> list[int]:
        n_all, k = tokens.shape[0], min(k, self.num_tokens)
        if k <= 0:
            return []
        buf = np.asarray(tokens, np.int64).tobytes()  # 8 bytes a token
        end = 8 * (n_all - 1)  # a match starts before the tail's own n-gram: it ends by the last token
        for n in range(min(self.max_ngram_size, n_all - 1), 0, -1):
            tail = buf[8 * (n_all - n):]
            i = buf.find(tail, 0, end)
            while i > 0 and i % 8:  # a match across token boundaries: look further
                i = buf.find(tail, i + 1, end)
            if i >= 0:
                found = tokens[i // 8 + n:i // 8 + n + k].tolist()
                for j, t in enumerate(found):
                    if t in self.eos:
                        return found[:j]
                return found
        return []

    def feedback(self, proposed: list[int], accepted: int) -> None:
        self.num_tokens = adapt(self.num_tokens, self.schedule, proposed, accepted)


class DraftModel:
    """A draft model proposing greedily on its own Session (transformers' AssistedCandidateGenerator):
    it catches up with the target's tokens (rewinding what was rejected), then drafts k tokens.
    `schedule="heuristic"`: k grows by 2 after a fully accepted draft and shrinks by 1 otherwise."""

    def __init__(self, assistant, num_tokens: int = 5, schedule: str = "constant"):
        self.session = assistant.session() if hasattr(assistant, "session") else assistant
        self.num_tokens, self.schedule = num_tokens, schedule

    def propose(self, tokens: np.ndarray, k: int) -> list[int]:
        s = self.session
        held = s.tokens[0] if s.length else np.zeros(0, np.int64)
        common = int(np.argmin(np.append(held[:tokens.shape[0]] == tokens[:held.shape[0]], False)))
        common = min(common, tokens.shape[0] - 1)  # re-run at least one token: its logits start the draft
        s.rewind(s.length - common)
        out = []
        with candidates(s, False):  # drafts are np.argmax of the whole row
            logits = s.append(tokens[common:])
            for _ in range(min(k, self.num_tokens)):
                out.append(int(np.argmax(logits)))
                if len(out) < min(k, self.num_tokens):
                    logits = s.step(out[-1])
        return out

    def feedback(self, proposed: list[int], accepted: int) -> None:
        self.num_tokens = adapt(self.num_tokens, self.schedule, proposed, accepted)


def _accept_or_correct(choice: TokenChoice, history, logits, lse, draft: int | None):
    """The Choice at one verified position and whether it is the draft. Greedy (the stage's
    chooser decides): the stage's own choice, kept when it equals the draft. Sampling: the draft
    with probability p(draft), else a draw from p without it (point-mass q); no draft: a draw."""
    sampler = getattr(choice.chooser, "rng", None) if choice.chooser.name == "sample" else None
    if sampler is None or draft is None:
        ch = choice.choose(history, logits, lse)
        return ch, draft is not None and ch.token == draft
    ids, p = choice.distribution(history, logits, lse)
    pos = int(np.searchsorted(ids, draft)) if ids is not None else draft
    pd = float(p[pos]) if ids is None or (pos < ids.size and ids[pos] == draft) else 0.0
    if sampler.random() < pd:
        return Choice(draft, float(np.log(pd))), True
    rest = p.copy()
    if pd:
        rest[pos] = 0.0
    i = int(np.searchsorted(np.cumsum(rest), sampler.random() * rest.sum(), side="right"))
    i = min(i, rest.size - 1)
    token = int(ids[i]) if ids is not None else i
    return Choice(token, float(np.log(p[i]))), False


def speculative_decode(session, logits: np.ndarray, *, choice: TokenChoice, proposer, stopping: Stopping, detok,
                       stop_strings: StopStrings, top_n: int = 0, sequence: int = 0, t_start_ns: int | None = None,
                       max_draft: int = 32, overlap: bool = True) -> Iterator[TokenRecord]:
    """Like `search.decode`, verifying the proposer's drafts; the first record of each verification
    carries its `SpecStep` in `record.draft`. The session ends holding every token but the last.

    Each verification's tokens are chosen first (each accepted by the chain before the next is
    chosen); with `overlap` and no stop strings (which need the text to tell whether generation goes
    on) the next verification then starts (`Session.start_append`) and runs while those tokens are
    detokenised and the consumer handles their records."""
    t_start_ns = t_start_ns or perf_counter_ns()
    emitted, model_ns, infer_start = 0, session.infer_ns, session.infer_start_ns
    rows = [(logits, session.logsumexp)]  # the logits to choose from, with their logsumexp
    prop = _Proposal([], [], 0, 0, session.length)  # the block those logits came from (here: the prompt's)
    step = None
    started = 0  # the id of the verification started asynchronously (0: none)
    with candidates(session, False):  # the verified rows are chosen on the whole vocabulary
        try:
            while True:
                emits = []
                for i, (row, lse) in enumerate(rows):
                    t0 = perf_counter_ns()
                    draft = prop.drafts[i] if i < len(prop.drafts) else None
                    ch, kept = _accept_or_correct(choice, session.tokens[0, :prop.base + i], row, lse, draft)
                    token = ch.token
                    emitted += 1
                    c = chosen(ch, choice, row, lse, top_n, stopping, emitted, t_start_ns, t0)
                    ta = perf_counter_ns()
                    choice.accept(token)
                    tb = perf_counter_ns()
                    c.taken(choice, tb - ta)
                    text, reason = None, c.reason  # (the text, when stop strings need it to decide)
                    if stop_strings.stops:
                        text, reason = _text(detok, stop_strings, token, reason)
                    emits.append((c, text, reason, perf_counter_ns() - tb if text is not None else 0))
                    if reason or not kept:
                        break
                # all but the last emitted token were kept drafts; the last is pending (not in the KV state)
                kept_drafts = len(emits) - 1
                if step is not None:
                    step.accepted = kept_drafts
                    proposer.feedback(step.proposed, kept_drafts)
                if session.length > prop.base + kept_drafts:
                    session.rewind(session.length - prop.base - kept_drafts)
                # From here on nothing reads the verified logits: the next verification may write them.
                if not reason:
                    prop = _propose(session, proposer, token, stopping, emitted, max_draft)
                    if overlap and not stop_strings.stops:
                        started = session.start_append(prop.block, logits_to_keep=len(prop.block))
                for i, (c, text, reason, detok_ns) in enumerate(emits):
                    if text is None:
                        td = perf_counter_ns()
                        text, reason = _text(detok, stop_strings, c.token, c.reason)
                        detok_ns = perf_counter_ns() - td
                    t3 = perf_counter_ns()
                    rec = c.record(emitted - len(emits) + i, text, reason, detok_ns, t3, sequence=sequence,
                                   model_ns=model_ns if i == 0 else 0, infer_start_ns=infer_start if i == 0 else 0,
                                   overlapped=bool(started), draft=step if i == 0 else None)
                    yield rec
                    rec.callback_ns = perf_counter_ns() - t3
                if reason:
                    return
                out = session.finish_step() if started else session.append(prop.block, logits_to_keep=len(prop.block))
                started = 0
                step, rows = prop.verified(session, out)
                model_ns, infer_start = session.infer_ns, session.infer_start_ns
        finally:
            if started:  # the consumer stopped early: the running verification finishes before anyone reuses
                session.settle(started)  # the session (unless another call already did)


@dataclass
class _Proposal:
    """The block one verification runs: the pending token, the drafts, the padding."""
    block: list[int]
    drafts: list[int]
    pads: int
    propose_ns: int
    base: int  # tokens in the KV state before the block's drafts (the pending token's included)

    def verified(self, session, out):
        """(SpecStep, the rows to choose from: (logits, logsumexp) per position) once the block has run
        (`out`: its logits)."""
        if len(self.block) > 1:
            lse = session.kept_logsumexp
            rows = [(out[j], lse[j]) for j in range(len(self.drafts) + 1)]
        else:
            rows = [(out, session.logsumexp)]
        return SpecStep(list(self.drafts), 0, self.propose_ns, session.infer_ns, self.pads), rows


def _propose(session, proposer, token: int, stopping: Stopping, emitted: int, max_draft: int) -> _Proposal:
    """The proposer's drafts after the pending `token`, as a block to run through the target in one infer."""
    tokens = session.tokens_then(token)  # (a view: np.append's copy costs ~25 us at this point)
    limit = session.model.max_context
    fits = limit - tokens.shape[0] - 1 if limit else max_draft  # positions the context holds after the block's first
    room = min(stopping.max_new_tokens - emitted - 1, fits)  # the token after the drafts must fit too
    tp = perf_counter_ns()
    drafts = proposer.propose(tokens, min(max_draft, room)) if room > 0 else []
    drafts = drafts[:max(room, 0)]
    tv = perf_counter_ns()
    # the width stays 1 + k up to the last verification (fewer tokens left to generate than k: padded
    # too, as genai pads): only the context's end narrows it
    width = 1 + max(len(drafts), min(getattr(proposer, "num_tokens", 0), max_draft, fits))
    pads = width - 1 - len(drafts) if width <= getattr(session, "pad_verify_to", 0) else 0
    block = [token, *drafts] + [token] * pads  # any valid id pads: those positions are never kept
    return _Proposal(block, drafts, pads, tv - tp, session.length + 1)


def accepted_counts(records) -> tuple[int, int]:
    """(proposed, accepted) over a generation's records (each verification's SpecStep)."""
    steps = [r.draft for r in records if getattr(r, "draft", None) is not None]
    return sum(len(s.proposed) for s in steps), sum(s.accepted for s in steps)
