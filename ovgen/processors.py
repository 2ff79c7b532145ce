"""The logits-processor chain: built-in processors from a GenerationConfig, and user callables.

A processor is any callable ``fn(token_ids, logits) -> logits`` with NumPy arrays
(`token_ids: [T] int64` is the whole sequence so far, prompt included; `logits: [vocab] float32`;
for beam search `[beams, T]` and `[beams, vocab]`). Built-ins and user processors share that
signature and sit in one plain list, `Chain.processors`, of `(name, fn)` pairs the user may reorder.

Default order (HF transformers' `_get_logits_processor`, plus OpenAI penalties beside HF's):

    logit_bias -> repetition_penalty -> presence/frequency -> no_repeat_ngram -> bad_words
    -> allowed_tokens -> min_new_tokens -> [user processors]
    -> temperature -> top_k -> top_p -> min_p -> typical_p          (the last five: sampling only)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter_ns

import numpy as np

from ovgen.kernels import penalties as P
from ovgen.kernels import sampling as S

from .config import GenerationConfig

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Chain:
    """An ordered list of named processors. `__call__` runs them and records each one's time.

    `top_k > 0` means the chain may also run on the model's top candidates only
    (`run_on_candidates`); `build_chain` sets it for the chains where that is exact."""

    processors: list[tuple[str, Processor]] = field(default_factory=list)
    check_output: bool = False
    timings_ns: dict[str, int] = field(default_factory=dict)
    top_k: int = 0
    _plan: list[tuple[str, Processor]] | None = None  # the processors top_k was set for
    _on_candidates: dict[str, Callable] = field(default_factory=dict)  # candidate versions, by name

    def __call__(self, token_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        shape = logits.shape
        for name, fn in self.processors:
            t0 = perf_counter_ns()
            logits = fn(token_ids, logits)
            self.timings_ns[name] = perf_counter_ns() - t0
            if self.check_output:
                _check(name, logits, shape)
        return logits

    def run_on_candidates(self, token_ids: np.ndarray, values: np.ndarray,
                          ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The chain on candidates only: `values[i]` is the logit of token `ids[i]` (ids ascending),
        and every other token's logit is <= values.min() (the graph's topk output, see Session.top).

        Returns `(processed, ids)`, masked entries -inf, equal to what `__call__`
        gives those tokens on the whole vocabulary while every other token ends masked - or None
        when that is not guaranteed (then run `__call__`). Set up only for chains of
        repetition_penalty (> 1: it only lowers logits) -> temperature -> top_k -> top_p; the
        guarantee is checked per call: the k-th largest value before top_k must exceed the bound
        that every non-candidate still satisfies."""
        if not self.top_k or values.size < self.top_k or self.processors != self._plan:
            return None
        x = values
        bound = np.array([values.min()], np.float32)  # non-candidates are <= bound, processed alike
        for name, fn in self.processors:
            t0 = perf_counter_ns()
            if name == "top_k" and S.kth_largest(x, self.top_k)[0] <= bound[0]:
                return None
            if name in self._on_candidates:
                x = self._on_candidates[name](token_ids, x, ids)
            else:
                x = fn(token_ids, x)
                if name == "temperature":
                    bound = fn(token_ids, bound)
            self.timings_ns[name] = perf_counter_ns() - t0
        return x, ids


def _check(name: str, out, shape: tuple) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"processor {name!r} returned {type(out).__name__}, expected a numpy array")
    if out.shape != shape:
        raise ValueError(f"processor {name!r} returned logits of shape {out.shape}, expected {shape}")
    if not np.issubdtype(out.dtype, np.floating):
        raise TypeError(f"processor {name!r} returned {out.dtype} logits, expected floating point")
    if np.isnan(out).any():
        raise ValueError(f"processor {name!r} returned NaN logits")


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def build_chain(config: GenerationConfig, *, prompt_len: int, user: Sequence[Processor] = (),
                min_tokens_to_keep: int = 1) -> Chain:
    """The processor chain for one generation (see the module docstring for the order).

    `prompt_len` tells min_new_tokens and the OpenAI penalties where generation starts.
    `min_tokens_to_keep` is HF's: beam search with sampling keeps len(eos) + 1.
    """
    c = config
    procs: list[tuple[str, Processor]] = []
    if c.logit_bias:
        procs.append(("logit_bias", lambda ids, x, b=dict(c.logit_bias): P.apply_logit_bias(x, b)))
    if c.repetition_penalty != 1.0:
        procs.append(("repetition_penalty",
                      partial(_by_keyword, P.apply_repetition_penalty, penalty=c.repetition_penalty)))
    if c.presence_penalty or c.frequency_penalty:
        procs.append(("presence_frequency_penalty", partial(
            _generated_only, prompt_len, P.apply_presence_frequency_penalty,
            presence=c.presence_penalty, frequency=c.frequency_penalty)))
    if c.no_repeat_ngram_size > 0:
        procs.append(("no_repeat_ngram", partial(_by_keyword, P.apply_no_repeat_ngram, n=c.no_repeat_ngram_size)))
    if c.bad_words_ids:
        # HF's NoBadWordsLogitsProcessor drops an eos id given as a one-token bad word (min_new_tokens
        # is how to hold eos back)
        eos = {int(e) for e in c.eos_token_id}
        bad = [list(map(int, s)) for s in c.bad_words_ids if not (len(s) == 1 and int(s[0]) in eos)]
        procs.append(("bad_words", partial(_by_keyword, P.apply_bad_words, bad_words_ids=bad)))
    if c.allowed_token_ids is not None:
        allowed = np.asarray(c.allowed_token_ids, dtype=np.int64)
        procs.append(("allowed_tokens", lambda ids, x: P.apply_allowed_tokens(x, allowed)))
    if c.min_new_tokens > 0 and c.eos_token_id:
        eos = np.asarray(c.eos_token_id, dtype=np.int64)
        procs.append(("min_new_tokens", partial(_min_new_tokens, prompt_len + c.min_new_tokens, eos)))
    procs += [(_name(fn), fn) for fn in user]
    if c.do_sample and c.temperature > 0:
        procs += warpers(c, min_tokens_to_keep)
    chain = Chain(procs, check_output=bool(user))
    if (c.do_sample and c.top_k and c.repetition_penalty >= 1.0 and min_tokens_to_keep <= c.top_k
            and {n for n, _ in procs} <= {"repetition_penalty", "temperature", "top_k", "top_p"}):
        chain.top_k, chain._plan = c.top_k, list(procs)
        chain._on_candidates["repetition_penalty"] = _RepetitionOn(c.repetition_penalty)
    return chain


def warpers(c: GenerationConfig, min_tokens_to_keep: int = 1) -> list[tuple[str, Processor]]:
    """HF's sampling warpers, in HF's order: temperature -> top_k -> top_p -> min_p -> typical_p."""
    out: list[tuple[str, Processor]] = []
    keep = min_tokens_to_keep
    if c.temperature != 1.0:
        out.append(("temperature", lambda ids, x, t=c.temperature: S.apply_temperature(x, t)))
    if c.top_k:
        out.append(("top_k", lambda ids, x, k=c.top_k: S.apply_top_k(x, k, keep)))
    if c.top_p < 1.0:
        out.append(("top_p", lambda ids, x, p=c.top_p: S.apply_top_p(x, p, keep)))
    if c.min_p is not None:
        out.append(("min_p", lambda ids, x, p=c.min_p: S.apply_min_p(x, p, keep)))
    if c.typical_p < 1.0:
        out.append(("typical_p", lambda ids, x, m=c.typical_p: S.apply_typical_p(x, m, keep)))
    return out


def _by_keyword(kernel, token_ids, logits, **kw):
    return kernel(token_ids, logits, **kw)


class _RepetitionOn:
    """The repetition penalty on candidates, keeping set(token_ids) across the steps of a decode
    (token_ids only grows there; anything else rebuilds the set)."""

    def __init__(self, penalty: float):
        self.penalty = penalty
        self.n, self.last, self.history = 0, None, set()

    def __call__(self, token_ids, values, ids):
        n = token_ids.shape[0]
        if n < self.n or (self.n and int(token_ids[self.n - 1]) != self.last):
            self.n, self.history = 0, set()
        if n > self.n:
            self.history.update(token_ids[self.n:].tolist())
            self.n, self.last = n, int(token_ids[n - 1])
        return P.apply_repetition_penalty_on(token_ids, values, ids, self.penalty, self.history)


def _generated_only(prompt_len: int, kernel, token_ids, logits, **kw):
    return kernel(token_ids[..., prompt_len:], logits, **kw)


def _min_new_tokens(min_len: int, eos: np.ndarray, token_ids, logits):
    return P.apply_banned_tokens(logits, eos) if token_ids.shape[-1] < min_len else logits


def chain_of(fns: Iterable[Processor]) -> Chain:
    """A chain of user callables in the given order (for users who build the whole chain)."""
    return Chain([(_name(fn), fn) for fn in fns], check_output=True)
