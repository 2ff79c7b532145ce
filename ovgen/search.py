"""Token choice and the decode loop: greedy and multinomial sampling, driven by a Session.

`decode()` is a generator yielding one `TokenRecord` per token (mlx-lm's `generate_step` shape);
`generate()`, streaming, the CLI and benchmarks are all consumers of it. Per token it runs:

    logits --chain--> processed --choose--> token --stopping/detok--> record --Session.step--> logits

The last token of a generation is not run through the model (nothing needs its logits), so after
`decode()` ends the Session holds the prompt and every generated token but the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import multinomial, softmax, top_k_indices

from .stopping import StopStrings, Stopping


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
    sequence: int = 0  # which returned sequence (num_return_sequences)
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

    @property
    def read_ns(self) -> int:
        """From the end of the infer to the start of processing: reading the outputs, the session's
        bookkeeping and, with overlap, waiting for the infer to finish."""
        return max(0, self.start_ns - self.infer_start_ns - self.model_ns) if self.infer_start_ns else 0


def greedy(logits: np.ndarray) -> int:
    """argmax; ties go to the lowest token id (torch.argmax and np.argmax agree)."""
    return int(np.argmax(logits))


class Sampler:
    """Multinomial sampling from softmax(logits). Owns its `np.random.Generator`: the same seed
    gives the same tokens, run after run, independent of any global RNG.

    After each call, `self.logprob` is the drawn token's log-probability under the distribution
    it was drawn from (the decode loop reports it as `processed_logprob`)."""

    def __init__(self, seed: int | None = None, rng: np.random.Generator | None = None):
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.logprob = 0.0

    def __call__(self, logits: np.ndarray) -> int:
        # logits: [vocab] float32. After top-k/top-p most entries are -inf: draw among the rest.
        support = np.flatnonzero(logits != -np.inf)
        if support.size == 0:
            raise ValueError("every token is masked (all logits are -inf); nothing can be sampled")
        probs = softmax(logits[support])
        i = int(multinomial(probs, self.rng))
        self.logprob = float(np.log(probs[i]))
        return int(support[i])


def logprob(logits: np.ndarray, token: int, scratch: np.ndarray | None = None) -> float:
    """log softmax(logits)[token], without materialising the log-softmax (`scratch`: a float32
    buffer of the same shape, reused across calls to avoid allocating per token)."""
    m = logits.max()
    if not np.isfinite(m):
        return float("-inf")
    buf = np.subtract(logits, m, out=scratch)
    np.exp(buf, out=buf)
    return float(logits[token] - m) - float(np.log(buf.sum(dtype=np.float64)))


def top_logprobs(logits: np.ndarray, n: int, logsumexp: float) -> list[tuple[int, float]]:
    """The n most likely tokens and their log-probabilities, most likely first."""
    return [(int(t), float(logits[t] - logsumexp)) for t in top_k_indices(logits, n)]


def decode(session, logits: np.ndarray, *, chain, choose: Callable[[np.ndarray], int], stopping: Stopping,
           detok, stop_strings: StopStrings, top_n: int = 0, sequence: int = 0,
           t_start_ns: int | None = None, overlap: bool = True) -> Iterator[TokenRecord]:
    """Yield one TokenRecord per generated token, from the logits of the last prefilled position.

    `chain(token_ids, logits)` processes, `choose(processed)` picks; the session advances by one
    token per yielded record (except after the last).

    `overlap`: once a token is chosen and generation goes on, the next infer starts asynchronously
    (`Session.start_step`) before detokenisation (after it when stop strings need the text) and runs
    while the consumer handles the record; the loop waits for it when the consumer asks for the next.
    """
    t_start_ns = t_start_ns or perf_counter_ns()
    model_ns, infer_start = session.infer_ns, session.infer_start_ns
    scratch = np.empty(logits.shape, np.float32)
    n = 0
    started = 0  # the id of the step started asynchronously (0: none)
    try:
        while True:
            t0 = perf_counter_ns()
            # Sampling with top-k: the chain runs on the graph's top candidates when that is exact.
            small = (chain.run_on_candidates(session.tokens[0], *session.top)
                     if chain.top_k and session.top is not None and isinstance(choose, Sampler) else None)
            processed = chain(session.tokens[0], logits) if small is None else None
            t1 = perf_counter_ns()
            if processed is not None and processed is not logits and not np.isfinite(processed.max()):
                raise ValueError("every token is masked after processing (all logits are -inf)")
            if small is not None:
                token = int(small[1][choose(small[0])])
            elif processed is logits and choose is greedy and session.argmax is not None:
                token = session.argmax  # from the graph's top candidates: same rule, no scan in NumPy
            else:
                token = choose(processed)
            lp = float(logits[token] - session.logsumexp)
            if processed is logits:
                plp = lp
            else:  # a Sampler knows the drawn token's logprob (the candidate path always has one)
                plp = choose.logprob if isinstance(choose, Sampler) else logprob(processed, token, scratch)
            top = top_logprobs(logits, top_n, session.logsumexp) if top_n else None
            t2 = perf_counter_ns()
            n += 1
            reason = stopping.check(token, n, (t2 - t_start_ns) / 1e9)
            # From here on nothing reads `logits`: the next infer may write them.
            if overlap and not reason and not stop_strings.stops:
                started = session.start_step(token)
            text, matched = stop_strings.feed(detok.push(token))
            if matched:
                reason = "stop_string"
            elif reason:  # generation ends: release everything held back
                rest, matched = stop_strings.feed(detok.flush())
                text += rest if matched else rest + stop_strings.flush()
                reason = "stop_string" if matched else reason
            if overlap and not reason and not started:
                started = session.start_step(token)
            t3 = perf_counter_ns()
            rec = TokenRecord(n - 1, token, text, lp, plp, reason, top, sequence, model_ns, t1 - t0, t2 - t1,
                              t3 - t2, t3, dict(chain.timings_ns), None, infer_start, t0, 0, bool(started))
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
