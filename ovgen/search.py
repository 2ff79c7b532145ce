"""The decode loop: one TokenRecord per generated token, driven by a Session and the token-choice stage.

`decode()` is a generator (mlx-lm's `generate_step` shape); `generate()`, streaming, chat, the CLI
and the benchmarks are all consumers of it. Per token:

    logits --choice.choose (ovgen/choice.py)--> token --stopping / detok--> record --Session.step--> logits

The last token of a generation is not run through the model (nothing needs its logits), so after
`decode()` ends the Session holds the prompt and every generated token but the last.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import top_k_indices

from .choice import Choice, Greedy, Sampler, TokenChoice
from .stopping import StopStrings, Stopping
from .tokenizer import IncrementalDecoder

__all__ = ["Greedy", "Sampler", "TokenRecord", "decode", "greedy", "top_logprobs"]


@dataclass(slots=True)
class TokenRecord:
    """One generated token: what was chosen, how likely it was, and where the time went."""

    index: int  # position among the generated tokens, from 0
    token_id: int
    text: str  # the streamed text delta this token released (may be "")
    logprob: float  # log-probability under the raw model distribution
    processed_logprob: float  # log-probability under the processed (sampled-from) distribution
    finish_reason: str | None = None
    top_logprobs: list[tuple[int, float]] | None = None  # top-N (token, raw logprob), when asked
    sequence: int = 0  # which returned sequence (num_return_sequences), or batch row
    model_ns: int = 0  # infer() that produced this token's logits (the prefill, for index 0)
    process_ns: int = 0  # processor chain
    choice_ns: int = 0  # token choice + log-probabilities
    detok_ns: int = 0  # detokenisation + stop-string matching
    ready_ns: int = 0  # perf_counter_ns() when the record was complete
    stage_ns: dict[str, int] = field(default_factory=dict)  # per processor
    score: float | None = None  # beam search: the sequence's final score (None otherwise)
    infer_start_ns: int = 0  # perf_counter_ns() when that infer started
    start_ns: int = 0  # perf_counter_ns() when the loop got the logits (processing starts)
    callback_ns: int = 0  # the consumer's time with this record (on_token, streaming), until it asked for the next
    overlapped: bool = False  # the next token's infer ran during detokenisation / the callback
    top_choice: bool | None = None  # the chosen token was the model's own most likely one (None: not known cheaply)
    allowed: int | None = None  # how many tokens a grammar mask allowed at this step (None: no mask)
    subset: bool = False  # chosen on the graph's top candidates (False: on the whole vocabulary)
    accept_ns: int = 0  # the chain taking the token: a grammar advances and computes its next mask
    draft: object = None  # speculative decoding: the verification step this token opened (speculative.SpecStep)
    row: int = 0  # batched generation: which prompt of the batch this token belongs to

    @property
    def read_ns(self) -> int:
        """From the end of the infer to the start of processing: reading the outputs, the session's
        bookkeeping and, with overlap, waiting for the infer to finish."""
        return max(0, self.start_ns - self.infer_start_ns - self.model_ns) if self.infer_start_ns else 0


@dataclass(slots=True)
class Chosen:
    """A token chosen (and checked against eos / length / time) before its record is built: the
    loops choose a step's tokens, start the next infer, then build the records while it runs.
    `allowed`: the mask's count when the token was chosen (accepting it computes the next mask)."""

    token: int
    choice: Choice
    logprob: float  # under the raw model distribution
    top: list[tuple[int, float]] | None  # top-N log-probabilities, when asked
    reason: str | None  # eos / length / time (a stop string may still end it, from the text)
    start_ns: int
    chosen_ns: int
    allowed: int | None = None
    process_ns: int = 0  # set once the chain has taken the token (`taken`)
    stage_ns: dict[str, int] = field(default_factory=dict)
    accept_ns: int = 0

    def taken(self, choice: TokenChoice, accept_ns: int) -> None:
        """The chain's timings once it has taken the token (`TokenChoice.accept`)."""
        self.process_ns, self.stage_ns, self.accept_ns = choice.process_ns, dict(choice.timings_ns), accept_ns

    def record(self, index: int, text: str, reason: str | None, detok_ns: int, ready_ns: int, **where) -> TokenRecord:
        """Its TokenRecord; `where`: sequence / row, model_ns, infer_start_ns, overlapped, draft."""
        return TokenRecord(index, self.token, text, self.logprob, self.choice.logprob, reason, self.top,
                           process_ns=self.process_ns, choice_ns=self.chosen_ns - self.start_ns - self.process_ns,
                           detok_ns=detok_ns, ready_ns=ready_ns, stage_ns=self.stage_ns, start_ns=self.start_ns,
                           top_choice=self.choice.top_choice, allowed=self.allowed, subset=self.choice.subset,
                           accept_ns=self.accept_ns, **where)


def choose(choice: TokenChoice, history, logits, lse, top, top_n: int, stopping: Stopping, n: int,
           t_start_ns: int, peak=None) -> Chosen:
    """Choose the n-th token (from 1) of a sequence: the chain and chooser, its log-probabilities,
    and whether eos / length / time end the sequence there. `peak`: a callable giving the model's
    most likely token or None (asked only when the chooser could not tell `top_choice`)."""
    t0 = perf_counter_ns()
    ch = choice.choose(history, logits, lse, top)
    if ch.top_choice is None and peak is not None and (p := peak()) is not None:
        ch.top_choice = ch.token == p
    return chosen(ch, choice, logits, lse, top_n, stopping, n, t_start_ns, t0)


def chosen(ch: Choice, choice: TokenChoice, logits, lse, top_n: int, stopping: Stopping, n: int, t_start_ns: int,
           t0: int) -> Chosen:
    """The n-th token's Chosen from its Choice (made since `t0`; speculative decoding's accept-or-correct
    makes its own): log-probabilities, the mask's count, whether eos / length / time end it there."""
    lp = float(logits[ch.token] - lse)
    tl = top_logprobs(logits, top_n, lse) if top_n else None
    allowed = choice.chain.allowed
    t2 = perf_counter_ns()
    return Chosen(ch.token, ch, lp, tl, stopping.check(ch.token, n, (t2 - t_start_ns) / 1e9), t0, t2, allowed)


def greedy(logits: np.ndarray) -> int:
    """argmax; ties go to the lowest token id (torch.argmax and np.argmax agree)."""
    return int(np.argmax(logits))


@contextmanager
def candidates(session, on: bool):
    """The graph's top-k candidates on or off (`Session.want_top`) for the infers started inside;
    as they were afterwards (a session that outlives the loop: a chat, the user's own)."""
    was = getattr(session, "want_top", True)
    session.want_top = on
    try:
        yield
    finally:
        session.want_top = was


def top_logprobs(logits: np.ndarray, n: int, logsumexp: float) -> list[tuple[int, float]]:
    """The n most likely tokens and their log-probabilities, most likely first (lowest id at ties)."""
    return [(int(t), float(logits[t] - logsumexp)) for t in top_k_indices(logits, n)]


def decode(session, logits: np.ndarray, *, choice: TokenChoice, stopping: Stopping, detok,
           stop_strings: StopStrings, top_n: int = 0, sequence: int = 0, t_start_ns: int | None = None,
           overlap: bool = True, done: int = 0, skip: int = 0) -> Iterator[TokenRecord]:
    """Yield one TokenRecord per generated token, from the logits of the last prefilled position.

    The session advances by one token per yielded record (except after the last). `overlap`: once a
    token is chosen and generation goes on, the next infer starts asynchronously
    (`Session.start_step`) before the chain's `accept` (a grammar computes its next mask then) and
    detokenisation (after them when stop strings need the text), and runs while the consumer
    handles the record; the loop waits for it when the consumer asks for the next.
    `done`: tokens this sequence has already generated (a batch row going on alone, ovgen/batch.py);
    `skip`: positions at the start of the session's row that are not the row's history (left padding).
    """
    t_start_ns = t_start_ns or perf_counter_ns()
    model_ns, infer_start = session.infer_ns, session.infer_start_ns
    n, started = done, 0  # tokens so far; the id of the step started asynchronously (0: none)

    def peak():  # the model's own top token (when the chooser did not tell): from the graph's candidates,
        top = session.argmax  # else from the row (the candidates are off, or all of them tie)
        return top if top is not None else greedy(logits)

    with candidates(session, choice.wants_top):
        try:
            while True:
                n += 1
                c = choose(choice, session.tokens[0, skip:], logits, session.logsumexp, session.top, top_n, stopping, n,
                           t_start_ns, peak)
                token = c.token
                # From here on nothing reads `logits`: the next infer may write them.
                if overlap and not c.reason and not stop_strings.stops:
                    started = session.start_step(token)
                ta = perf_counter_ns()
                choice.accept(token)
                tb = perf_counter_ns()
                c.taken(choice, tb - ta)
                text, reason = _text(detok, stop_strings, token, c.reason)
                if overlap and not reason and not started:
                    started = session.start_step(token)
                t3 = perf_counter_ns()
                rec = c.record(n - 1, text, reason, t3 - c.chosen_ns - (tb - ta), t3, sequence=sequence,
                               model_ns=model_ns, infer_start_ns=infer_start, overlapped=bool(started))
                yield rec
                rec.callback_ns = perf_counter_ns() - t3
                if reason:
                    return
                logits = session.finish_step() if started else session.step(token)
                started = 0
                model_ns, infer_start = session.infer_ns, session.infer_start_ns
        finally:
            if started:  # the consumer stopped early: let the running infer finish before anyone reuses the
                session.settle(started)  # session (unless another call already did)


def _text(detok, stop_strings: StopStrings, token: int, reason: str | None) -> tuple[str, str | None]:
    """The text delta `token` releases, and the finish reason (a stop string may end it here)."""
    text, matched = stop_strings.feed(detok.push(token))
    if matched:
        return text, "stop_string"
    if reason:  # generation ends: release everything held back
        rest, matched = stop_strings.feed(detok.flush())
        text += rest if matched else rest + stop_strings.flush()
        return text, "stop_string" if matched else reason
    return text, reason


def sequence_records(tokenizer, sequences, steps=None, stop_strings: Sequence[str] = (),
                     include_stop_str_in_output: bool = False) -> Iterator[TokenRecord]:
    """One TokenRecord per token of each finished sequence, best first (beam search: they are only
    known at the end). `sequences`: objects with token_ids, logprobs, processed_logprobs,
    finish_reason and score (beam.Hypothesis); `steps[i]`, when given, holds the timings of the step
    that chose token i (beam.BeamStep). With stop strings the text ends at the first one, as in the
    one-sequence loop (after it with `include_stop_str_in_output`)."""
    for seq, h in enumerate(sequences):
        detok, stops, matched = IncrementalDecoder(tokenizer), StopStrings(stop_strings, include_stop_str_in_output), False
        last = len(h.token_ids) - 1
        for i, tok in enumerate(h.token_ids):
            if matched:  # past the stop string (a beam kept running with a stopped score): no more text
                text = ""
            else:
                text, reason = _text(detok, stops, tok, h.finish_reason if i == last else None)
                matched = reason == "stop_string"
            st = steps[i] if steps else None
            timings = {"model_ns": st.model_ns, "process_ns": st.process_ns, "choice_ns": st.choice_ns,
                       "ready_ns": st.ready_ns, "stage_ns": st.stage_ns} if st else {}
            top = getattr(h, "top_logprobs", None)
            yield TokenRecord(i, tok, text, h.logprobs[i], h.processed_logprobs[i],
                              ("stop_string" if matched else h.finish_reason) if i == last else None,
                              top_logprobs=top[i] if top else None, sequence=seq, score=h.score, **timings)
