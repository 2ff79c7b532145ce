"""The token-choice stage: the one place where a step's logits become the chosen token.

    logits [vocab] ----> Candidates: the whole vocabulary, or the graph's top-64 (ids ascending)
                         with a bound every other token's score stays under
              chain ---> each processor acts on them as it declared (processors.Stage.subset);
                         one that cannot be exact on this subset sends the step to the whole vocabulary
            chooser ---> Choice(token, processed log-probability)
                         greedy | Sampler | Mirostat | any user chooser

The candidates path is taken only when every stage and the chooser said it is exact for these
values (greedy: the winner beats the bound; sampling: the subset is closed, i.e. top-k masked every
outsider), never by guessing from types or array identity. The same chain serves sampling, greedy,
beams (2-D, `beam_candidates` below chooses), speculative verification, batches and the ONNX path.

Ties go to the lowest token id everywhere (ovgen/ties.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import NEG_INF, mirostat_v2, multinomial, softmax, top_k_indices

from .backend import TOP_CANDIDATES
from .config import GenerationConfig
from .processors import Chain, Stage, as_stage, penalty_stages, warpers


@dataclass(slots=True)
class Candidates:
    """Scores over a set of tokens: `values[i]` is token `ids[i]`'s (ids ascending), or, with `ids`
    None, token i's over the whole vocabulary. Every token outside scores <= `bound` (-inf: the
    subset is closed). `logsumexp`: of the whole distribution these scores define, when known."""

    values: np.ndarray  # [n] float32
    ids: np.ndarray | None  # [n] int64 ascending, or None: the whole vocabulary
    bound: float
    logsumexp: float | None
    vocab: int

    @property
    def closed(self) -> bool:
        return self.ids is None or self.bound == NEG_INF

    def token(self, i: int) -> int:
        return int(i) if self.ids is None else int(self.ids[i])


@dataclass(slots=True)
class Choice:
    token: int
    logprob: float  # log-probability under the processed distribution it was chosen from
    subset: bool = False  # chosen from the graph's candidates (False: from the whole vocabulary)
    top_choice: bool | None = None  # it is the model's own most likely token (None: not known here)


def logprob(values: np.ndarray, i: int, scratch: np.ndarray | None = None) -> float:
    """log softmax(values)[i] without materialising it (`scratch`: a float32 buffer of the same
    shape, reused across calls)."""
    m = values.max()
    if not np.isfinite(m):
        return float("-inf")
    buf = np.subtract(values, m, out=scratch if scratch is not None and scratch.shape == values.shape else None)
    np.exp(buf, out=buf)
    return float(values[i] - m) - float(np.log(buf.sum(dtype=np.float64)))


# ---- choosers ----------------------------------------------------------------------------------------
class Chooser:
    """Picks the token. `choose(cand)` returns a Choice, or None when this subset cannot decide
    (then the stage runs the whole vocabulary). Stateful choosers also reset / clone."""

    name = "chooser"
    logprob = 0.0  # the processed log-probability of the last token `__call__` chose

    def choose(self, cand: Candidates) -> Choice | None:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray) -> int:
        """Choose from a whole-vocabulary row `logits: [vocab]`; `self.logprob` is then its processed
        log-probability (the plain-function use: `Sampler(seed=0)(logits)`)."""
        logits = np.asarray(logits, dtype=np.float32)
        choice = self.choose(Candidates(logits, None, NEG_INF, None, logits.shape[-1]))
        self.logprob = choice.logprob
        return choice.token

    def reset(self) -> None:
        pass

    def clone(self) -> "Chooser":
        return copy.deepcopy(self)

    def for_sequence(self, i: int) -> "Chooser | None":
        """The chooser of returned sequence `i` >= 1 (num_return_sequences): one with a stream of
        its own, so that the sequences run side by side as one batch (ovgen/batch.py) and each gives
        what it would alone. None: this chooser has no such stream; the sequences then run one
        after another on it (its state running on from one to the next)."""
        return None


class Greedy(Chooser):
    """argmax, lowest id on ties. On candidates it decides when the winner beats the bound."""

    name = "greedy"

    def __init__(self):
        self._scratch: np.ndarray | None = None

    def choose(self, cand):
        v = cand.values
        i = int(v.argmax())
        peak = v[i]
        if cand.ids is not None and not peak > cand.bound:
            return None
        if cand.logsumexp is not None:
            lp = float(peak - cand.logsumexp)
        elif cand.closed:
            if self._scratch is None or self._scratch.shape != v.shape:
                self._scratch = np.empty(v.shape, np.float32)
            lp = logprob(v, i, self._scratch)
        else:
            return None  # the processed distribution's mass outside is unknown
        # on the raw logits (no stage ran: logsumexp known) greedy's token is the model's top choice
        return Choice(cand.token(i), lp, cand.ids is not None, True if cand.logsumexp is not None else None)

    def clone(self):
        return Greedy()

    def for_sequence(self, i):
        return Greedy()


class Sampler(Chooser):
    """Multinomial sampling from softmax(values). Owns its `np.random.Generator`: the same seed gives
    the same tokens, run after run, on the candidates or the whole vocabulary alike."""

    name = "sample"

    def __init__(self, seed: int | None = None, rng: np.random.Generator | None = None):
        self.seed = seed
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def choose(self, cand):
        if not cand.closed:
            return None
        support = np.flatnonzero(cand.values != NEG_INF)
        if support.size == 0:
            raise ValueError("every token is masked (all logits are -inf); nothing can be sampled")
        probs = softmax(cand.values[support])
        i = int(multinomial(probs, self.rng))
        return Choice(cand.token(support[i]), float(np.log(probs[i])), cand.ids is not None)

    def reset(self):
        self.rng = np.random.default_rng(self.seed)

    def for_sequence(self, i):
        return _reseeded(self, i)


class Mirostat(Chooser):
    """llama.cpp mirostat v2 (`kernels.sampling.mirostat_v2`): target surprise `tau`, learning
    rate `eta`; mu starts at 2 * tau and follows each draw's surprise. Owns its generator."""

    name = "mirostat"

    def __init__(self, tau: float, eta: float, seed: int | None = None):
        self.tau, self.eta, self.seed = tau, eta, seed
        self.reset()

    def choose(self, cand):
        if not cand.closed:
            return None
        i, p = mirostat_v2(cand.values, self.mu, float(self.rng.random()))
        self.mu -= self.eta * (-np.log2(p) - self.tau)
        return Choice(cand.token(i), float(np.log(p)), cand.ids is not None)

    def reset(self):
        self.mu = 2.0 * self.tau
        self.rng = np.random.default_rng(self.seed)

    def for_sequence(self, i):
        return _reseeded(self, i)


def _reseeded(chooser, i: int):
    """A copy of a seeded chooser (its class and settings kept: a user's subclass stays itself),
    reset onto returned sequence i's seed."""
    twin = chooser.clone()
    twin.seed = sequence_seed(chooser.seed, i)
    twin.reset()
    return twin


def sequence_seed(seed, i: int) -> np.random.SeedSequence:
    """Returned sequence i's seed: child i of `seed`'s SeedSequence (what `SeedSequence(seed).spawn`
    gives as its i-th child, computed directly), so sequence i draws the same tokens whether the
    sequences run batched or one at a time; sequence 0 keeps `seed` itself (num_return_sequences=1's
    stream). Unseeded: fresh entropy."""
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i))
    return np.random.SeedSequence(seed, spawn_key=(i,))


class FunctionChooser(Chooser):
    """A user callable `fn(logits [vocab]) -> token id` on the processed whole vocabulary (its
    processed log-probability is computed for it); an object with `choose(cand)` is used as it is."""

    def __init__(self, fn: Callable[[np.ndarray], int]):
        self.fn = fn
        self.name = getattr(fn, "__name__", None) or type(fn).__name__

    def choose(self, cand):
        if cand.ids is not None:
            return None
        token = int(self.fn(cand.values))
        if not 0 <= token < cand.vocab:
            raise ValueError(f"chooser {self.name!r} returned token {token}, outside the vocabulary [0, {cand.vocab})")
        return Choice(token, logprob(cand.values, token))

    def reset(self):
        getattr(self.fn, "reset", lambda: None)()

    def clone(self):
        return FunctionChooser(self.fn.clone()) if hasattr(self.fn, "clone") else self

    def for_sequence(self, i):
        fn = getattr(self.fn, "for_sequence", None)
        return FunctionChooser(fn(i)) if fn is not None else None


def as_chooser(c) -> Chooser:
    if isinstance(c, Chooser) or hasattr(c, "choose"):
        return c
    if callable(c):
        return FunctionChooser(c)
    raise TypeError(f"a chooser is a Chooser or a callable logits -> token id, got {type(c).__name__}")


# ---- the stage ---------------------------------------------------------------------------------------
class TokenChoice:
    """The chain and the chooser of one generation. `choose()` per step, `accept()` once the token is
    final, `reset()` for a new sequence, `clone()` for a rollback point (speculation, beams)."""

    def __init__(self, chain: Chain, chooser: Chooser):
        self.chain, self.chooser = chain, as_chooser(chooser)
        self.process_ns = 0  # time in the chain during the last choose()

    @property
    def timings_ns(self) -> dict[str, int]:
        return self.chain.timings_ns

    @property
    def wants_top(self) -> bool:
        """Whether the graph's top-k candidates can decide this stage's tokens; when not, the loops
        skip the graph's TopK (Session.want_top). They can when the chain closes them (a top-k of
        k < 64 before any stage that needs the whole vocabulary), or for a chooser object of the
        user's. Greedy without processors could decide on them too, but takes the argmax and its
        log-probability from the whole vocabulary in microseconds; after processors it never can
        (the mass outside them is unknown)."""
        if isinstance(self.chooser, FunctionChooser):
            return False
        if not isinstance(self.chooser, (Greedy, Sampler, Mirostat)):
            return True
        return self.chain.closes(TOP_CANDIDATES)

    def choose(self, token_ids: np.ndarray, logits: np.ndarray, logsumexp, top=None) -> Choice:
        """`token_ids: [T]` the sequence so far; `logits: [vocab]` the model's (not written to);
        `logsumexp` theirs; `top`: (values, ids ascending) of the largest logits, every other one
        <= values.min() (the graph's candidates), or None."""
        self.process_ns = 0
        if top is not None:
            choice = self._on_subset(token_ids, top, logsumexp, logits.shape[-1])
            if choice is not None:
                return choice
        return self._on_vocab(token_ids, logits, logsumexp)

    def _on_subset(self, token_ids, top, logsumexp, vocab) -> Choice | None:
        values, ids = top
        # Every outsider is <= values.min() <= the smaller end value: without stages that looser
        # bound does (greedy's winner beats it unless the top values all tie), read without a reduction.
        lo, hi = float(values[0]), float(values[-1])
        bound, lse = lo if lo < hi else hi, logsumexp
        if self.chain.stages:
            bound = float(values.min())
            t0 = perf_counter_ns()
            out = self.chain.on_subset(token_ids, values, ids, bound, vocab)
            self.process_ns += perf_counter_ns() - t0
            if out is None:
                return None
            values, bound = out
            lse = None
            if not values.max() > bound:
                return None  # every candidate masked: the answer (or the error) is outside them
        return self.chooser.choose(Candidates(values, ids, bound, lse, vocab))

    def _on_vocab(self, token_ids, logits, logsumexp) -> Choice:
        lse = logsumexp
        if self.chain.stages:
            t0 = perf_counter_ns()
            logits = self.chain(token_ids, logits)
            self.process_ns += perf_counter_ns() - t0
            lse = None
            peak = logits.max()
            if peak == NEG_INF:
                raise ValueError(f"every token is masked after processing (all logits are -inf; the last "
                                 f"stage to mask them all: {self.chain.culprit(token_ids, logits)})")
        choice = self.chooser.choose(Candidates(logits, None, NEG_INF, lse, logits.shape[-1]))
        if choice is None:
            raise RuntimeError(f"chooser {self.chooser.name!r} declined the whole vocabulary")
        return choice

    def distribution(self, token_ids: np.ndarray, logits: np.ndarray, logsumexp) -> tuple[np.ndarray, np.ndarray]:
        """The processed distribution a sampler draws from at this step: (token ids ascending,
        probabilities, float64), over the tokens the chain left unmasked (speculative sampling)."""
        if self.chain.stages:
            t0 = perf_counter_ns()
            logits = self.chain(token_ids, logits)
            self.process_ns = perf_counter_ns() - t0
        support = np.flatnonzero(logits != NEG_INF)
        if support.size == 0:
            raise ValueError("every token is masked after processing (all logits are -inf)")
        return support, softmax(logits[support])

    def accept(self, token) -> None:
        self.chain.accept(token)

    def reset(self) -> None:
        self.chain.reset()
        self.chooser.reset()

    def clone(self) -> "TokenChoice":
        return TokenChoice(self.chain.clone(), self.chooser.clone())

    def for_sequence(self, i: int) -> "TokenChoice | None":
        """Returned sequence `i` >= 1's stage: the chain cloned and reset, the chooser's
        `for_sequence(i)`; None when the chooser has none (Chooser.for_sequence)."""
        make = getattr(self.chooser, "for_sequence", None)
        chooser = make(i) if make is not None else None
        if chooser is None:
            return None
        chain = self.chain.clone()
        chain.reset()
        return TokenChoice(chain, chooser)


def build_chain(config: GenerationConfig, *, prompt_len: int, user: Sequence = (), min_tokens_to_keep: int = 1,
                model=None, extra: Sequence[Stage] = ()) -> Chain:
    """The processor chain for one generation, in ovgen/processors.py's documented order.
    `prompt_len` tells min_new_tokens and the OpenAI penalties where generation starts;
    `min_tokens_to_keep` is HF's (beam sampling keeps len(eos) + 1); `model` gives DRY its
    tokenizer and CFG its session; `extra` are stages that sit before the user's (a grammar mask)."""
    from .guidance import guidance_stage

    c = config
    stages: list[Stage] = []
    if c.guidance_scale != 1.0:
        stages.append(guidance_stage(c, model))
    stages += penalty_stages(c, prompt_len, model)
    stages += list(extra)
    stages += [as_stage(p) for p in user]
    if c.do_sample and c.temperature > 0:
        stages += warpers(c, min_tokens_to_keep)
    return Chain(stages)


def default_chooser(config: GenerationConfig) -> Chooser:
    """greedy without do_sample (or at temperature 0), mirostat v2 when asked, else the Sampler."""
    if not config.do_sample or config.temperature == 0:
        return Greedy()
    if config.mirostat == 2:
        return Mirostat(config.mirostat_tau, config.mirostat_eta, config.seed)
    return Sampler(config.seed)


def token_choice(config: GenerationConfig, *, prompt_len: int, processors: Sequence = (), model=None,
                 chooser=None, extra: Sequence[Stage] = ()) -> TokenChoice:
    """The token-choice stage of one generation: `build_chain` and the chooser (`chooser`, else
    `default_chooser(config)`)."""
    chain = build_chain(config, prompt_len=prompt_len, user=processors, model=model, extra=extra)
    return TokenChoice(chain, chooser if chooser is not None else default_chooser(config))


# ---- beams: the top-K continuations over all beams ---------------------------------------------------
def beam_candidates(acc: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The K continuations beam search keeps from `acc: [beams * vocab]` (each beam's running score
    plus its processed log-probs, flattened): the K best, best first, lowest index at ties
    (torch.topk's role in HF), or - with `rng`, beam sampling - K distinct draws from softmax(acc) in
    draw order (torch.multinomial without replacement), by the Gumbel-top-k trick.

    When fewer than K continuations have non-zero probability (a grammar that allows one token, a
    small top_k or top_p, the first step's unstarted beams), every one of them is drawn and the rest
    are the best of the others by `acc`, as beam search without sampling takes them (their scores
    are -inf or the unstarted beams' -1e9, so they never win over a drawn one). transformers'
    torch.multinomial raises there instead: a constrained beam sample would stop at the first forced
    token."""
    if rng is None:
        return top_k_indices(acc, k)
    p = softmax(acc)
    with np.errstate(divide="ignore"):
        keys = np.log(p) + rng.gumbel(size=p.shape).astype(np.float32)
    nonzero = int(np.count_nonzero(p))
    if nonzero >= k:
        return top_k_indices(keys, k)
    drawn = top_k_indices(keys, nonzero)
    others = np.ones(acc.size, bool)
    others[drawn] = False
    others = np.flatnonzero(others)  # ascending, so ties still go to the lowest index
    return np.concatenate([drawn, others[top_k_indices(acc[others], k - nonzero)]])
