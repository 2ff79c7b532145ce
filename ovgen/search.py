"""The decode loop: one TokenRecord per generated token, driven by a Session and the token-choice stage.

`decode()` is a generator (mlx-lm's `generate_step` shape); `generate()`, streaming, chat, the CLI
and the benchmarks are all consumers of it. Per token:

    logits --choice.choose (ovgen/choice.py)--> token --stopping / detok--> record --Session.step--> logits

The last token of a generation is not run through the model (nothing needs its logits), so after
`decode()` ends the Session holds the prompt and every generated token but the last.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import top_k_indices

from .choice import Greedy, Sampler, TokenChoice
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


def greedy(logits: np.ndarray) -> int:
    """argmax; ties go to the lowest token id (torch.argmax and np.argmax agree)."""
    return int(np.argmax(logits))


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
    try:
        while True:
            t0 = perf_counter_ns()
            ch = choice.choose(session.tokens[0, skip:], logits, session.logsumexp, session.top)
            token = ch.token
            lp = float(logits[token] - session.logsumexp)
            top = top_logprobs(logits, top_n, session.logsumexp) if top_n else None
            top_choice = ch.top_choice
            if top_choice is None and (peak := session.argmax) is not None:
                top_choice = token == peak
            t2 = perf_counter_ns()
            n += 1
            reason = stopping.check(token, n, (t2 - t_start_ns) / 1e9)
            # From here on nothing reads `logits`: the next infer may write them.
            if overlap and not reason and not stop_strings.stops:
                started = session.start_step(token)
            ta = perf_counter_ns()
            choice.accept(token)
            tb = perf_counter_ns()
            text, reason = _text(detok, stop_strings, token, reason)
            if overlap and not reason and not started:
                started = session.start_step(token)
            t3 = perf_counter_ns()
            process_ns = choice.process_ns
            rec = TokenRecord(n - 1, token, text, lp, ch.logprob, reason, top, sequence, model_ns, process_ns,
                              t2 - t0 - process_ns, t3 - t2 - (tb - ta), t3, dict(choice.timings_ns), None, infer_start,
                              t0, 0, bool(started), top_choice, choice.chain.allowed, ch.subset, tb - ta)
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


def sequence_records(tokenizer, sequences, steps=None) -> Iterator[TokenRecord]:
    """One TokenRecord per token of each finished sequence, best first (beam search: they are only
    known at the end). `sequences`: objects with token_ids, logprobs, processed_logprobs,
    finish_reason and score (beam.Hypothesis); `steps[i]`, when given, holds the timings of the step
    that chose token i (beam.BeamStep)."""
    for seq, h in enumerate(sequences):
        detok = IncrementalDecoder(tokenizer)
        last = len(h.token_ids) - 1
        for i, tok in enumerate(h.token_ids):
            text = detok.push(tok) + (detok.flush() if i == last else "")
            st = steps[i] if steps else None
            yield TokenRecord(i, tok, text, h.logprobs[i], h.processed_logprobs[i],
                              h.finish_reason if i == last else None, None, seq,
                              st.model_ns if st else 0, st.process_ns if st else 0, st.choice_ns if st else 0, 0,
                              st.ready_ns if st else 0, st.stage_ns if st else {}, score=h.score)
