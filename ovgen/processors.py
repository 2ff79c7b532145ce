"""The processors of the token-choice stage: built-ins from a GenerationConfig, user callables,
transformers' processors, and the chain that runs them (ovgen/choice.py runs the chain and the chooser).

A processor takes `token_ids: [T] int64` (the whole sequence so far, prompt included) and
`logits: [vocab] float32` (`[rows, T]` / `[rows, vocab]` for beams) and returns logits - edited in
place, a new array, any float dtype: whatever it returns is what the next stage sees.

Every stage says how it acts on a subset of the vocabulary (`Stage.subset`), so the chain can run
on the graph's top-64 candidates exactly when every stage allows it, and never by guessing:

    lowers        token by token, never raises a logit (penalties >= 1, masks): exact on any subset
    monotone      the same increasing map for every token (temperature): exact, the bound mapped too
    tokenwise     token by token, may raise a logit: exact once the subset is closed
    distribution  needs every surviving token (top-p, min-p, typical, ε, η, XTC, top-nσ): closed only
    top_k         keeps the k largest: exact when the k-th largest candidate beats every outsider;
                  it closes the subset (everything outside is masked)
    opaque        the whole vocabulary only (a user callable that declares nothing, HF processors, CFG)

A user callable declares itself with attributes: `fn.subset = "lowers"` (or "tokenwise"), and
optionally `fn.on_subset(token_ids, values, ids) -> values` (else it runs on a -inf-filled vocabulary
holding the candidates). Stateful stages implement `reset()` (a new generation), `accept(token)`
(after each choice), `clone()` (beams, speculative rollback) and `reorder(beam_idx)`; with state per
row (beams), `per_row = True` (`__call__` then takes `rows=`) and `retire(rows)`.

Default order (HF transformers' `_get_logits_processor`, OpenAI penalties and llama.cpp's DRY beside
HF's penalties, a grammar mask last before the user's):

    guidance (CFG) -> logit_bias -> repetition_penalty -> presence/frequency -> dry -> no_repeat_ngram
    -> bad_words -> allowed_tokens -> min_new_tokens -> grammar -> [user processors]
    -> temperature -> top_n_sigma -> top_k -> top_p -> min_p -> typical_p -> epsilon -> eta -> xtc
                                                                        (the last nine: sampling only)
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from time import perf_counter_ns

import numpy as np

from ovgen.kernels import penalties as P
from ovgen.kernels import sampling as S

from .config import GenerationConfig

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]
SUBSET_KINDS = ("lowers", "monotone", "tokenwise", "distribution", "top_k", "opaque")


class Stage:
    """One processor of the chain (see the module docstring). Stateless by default."""

    name = "stage"
    subset = "opaque"
    user = False  # written outside ovgen: its output is checked, it gets a private copy of the logits
    mask = False  # a mask stage (a grammar): reports `allowed`, how many tokens it allowed at the last step
    allowed: int | None = None
    # state per row (a grammar's matchers): `__call__` also takes `rows`, which of its rows the 2-D logits
    # are (a group of diverse beam search sees a slice of them; None: the first logits.shape[0])
    per_row = False

    def __call__(self, token_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def on_subset(self, token_ids: np.ndarray, values: np.ndarray, ids: np.ndarray, vocab: int) -> np.ndarray:
        """The stage on candidates: `values[i]` scores token `ids[i]`. Token-wise stages run on a
        -inf-filled vocabulary holding the candidates; the others on the values themselves."""
        if self.subset in ("lowers", "tokenwise"):
            full = np.full(vocab, S.NEG_INF, np.float32)
            full[ids] = values
            return np.asarray(self(token_ids, full), dtype=np.float32)[ids]
        return self(token_ids, values)

    def map_bound(self, bound: float) -> float:
        """Where a score `bound` lands after this stage (monotone stages map it)."""
        return bound

    def reset(self) -> None:
        pass

    def accept(self, token) -> None:
        pass

    def reorder(self, beam_idx: np.ndarray) -> None:
        pass

    def retire(self, rows) -> None:
        """Rows whose tokens are padding from now on (a finished group of diverse beam search, a beam
        whose score is -inf): per-row state stops following them, until a reorder fills them again."""

    def clone(self) -> "Stage":
        return self


class Kernel(Stage):
    """A stateless built-in: `fn(token_ids, logits) -> logits`, with its subset kind."""

    def __init__(self, name: str, subset: str, fn: Processor, on_subset=None, map_bound=None):
        self.name, self.subset, self.fn = name, subset, fn
        self._on_subset, self._map_bound = on_subset, map_bound

    def __call__(self, token_ids, logits):
        return self.fn(token_ids, logits)

    def on_subset(self, token_ids, values, ids, vocab):
        if self._on_subset is not None:
            return self._on_subset(token_ids, values, ids)
        return super().on_subset(token_ids, values, ids, vocab)

    def map_bound(self, bound):
        return self._map_bound(bound) if self._map_bound is not None else bound


class UserProcessor(Stage):
    """A user callable `fn(token_ids, logits) -> logits` (opaque unless it declares `fn.subset`)."""

    user = True

    def __init__(self, fn: Processor):
        self.fn = fn
        self.name = getattr(fn, "__name__", None) or type(fn).__name__
        self.subset = getattr(fn, "subset", "opaque")
        if self.subset not in ("lowers", "tokenwise", "opaque"):
            raise ValueError(f"processor {self.name!r}: subset must be 'lowers', 'tokenwise' or 'opaque', "
                             f"got {self.subset!r}")

    def __call__(self, token_ids, logits):
        return self.fn(token_ids, logits)

    def on_subset(self, token_ids, values, ids, vocab):
        if hasattr(self.fn, "on_subset"):
            return self.fn.on_subset(token_ids, values, ids)
        return super().on_subset(token_ids, values, ids, vocab)

    def reset(self):
        getattr(self.fn, "reset", lambda: None)()

    def clone(self):
        return UserProcessor(self.fn.clone()) if hasattr(self.fn, "clone") else self


class HFProcessor(Stage):
    """A transformers `LogitsProcessor` / `LogitsWarper`, or anything shaped like one:
    `proc(input_ids [rows, T], scores [rows, vocab]) -> scores`. Arrays go in as torch tensors
    when torch is already loaded (the processor's process imported it; ovgen never does), else as
    NumPy arrays. Opaque: the whole vocabulary."""

    user = True

    def __init__(self, proc, name: str | None = None):
        self.proc = proc
        self.name = name or type(proc).__name__

    def __call__(self, token_ids, logits):
        torch = sys.modules.get("torch")
        convert = torch.from_numpy if torch is not None else (lambda a: a)
        ids2 = np.ascontiguousarray(np.atleast_2d(token_ids), dtype=np.int64)
        scores2 = np.array(np.atleast_2d(logits), dtype=np.float32)  # a copy the processor may edit
        out = self.proc(convert(ids2), convert(scores2))
        out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        return out.reshape(logits.shape) if out.size == logits.size else out

    def clone(self):
        return HFProcessor(copy.deepcopy(self.proc), self.name)


def hf_processor(proc, name: str | None = None) -> HFProcessor:
    """Wrap a transformers-style processor (`__call__(input_ids, scores)` on 2-D arrays) as a stage."""
    return HFProcessor(proc, name)


def as_stage(p) -> Stage:
    """A Stage as is; a transformers LogitsProcessor (when transformers is loaded) through
    `HFProcessor`; any other callable as a `UserProcessor`."""
    if isinstance(p, Stage):
        return p
    hf = sys.modules.get("transformers.generation.logits_process")
    if hf is not None and isinstance(p, hf.LogitsProcessor):
        return HFProcessor(p)
    if not callable(p):
        raise TypeError(f"a processor must be callable (token_ids, logits) -> logits, got {type(p).__name__}")
    return UserProcessor(p)


# ---- the chain ---------------------------------------------------------------------------------------
class Chain:
    """Stages in order. `__call__` runs them on the whole vocabulary (1-D or beams' 2-D) and times
    each; `on_subset` runs them on candidates when every stage allows it (see the module docstring)."""

    def __init__(self, stages: Sequence = ()):
        self.stages: list[Stage] = [as_stage(s) for s in stages]
        self.timings_ns: dict[str, int] = {}
        self._masks = [s for s in self.stages if s.mask]

    @property
    def allowed(self) -> int | None:
        """How many tokens the mask stages allowed at the last step (None: no mask stage)."""
        return min(s.allowed for s in self._masks) if self._masks else None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def __call__(self, token_ids: np.ndarray, logits: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """`rows`: which rows of the per-row stages these 2-D logits are (Stage.per_row)."""
        shape, owned = logits.shape, False
        for st in self.stages:
            t0 = perf_counter_ns()
            if st.user:
                x = logits if owned else logits.copy()  # in-place edits take effect, never on the caller's array
                logits = _checked(st.name, st(token_ids, x), shape)
            elif st.per_row:
                logits = st(token_ids, logits, rows=rows)
            else:
                logits = st(token_ids, logits)
            owned = True
            self.timings_ns[st.name] = perf_counter_ns() - t0
        return logits

    def on_subset(self, token_ids, values: np.ndarray, ids: np.ndarray, bound: float, vocab: int):
        """(values, bound) after every stage, or None when some stage cannot be exact on these
        candidates (then the caller runs the whole vocabulary). `bound`: every other token's score
        is <= bound (-inf: closed, the others are masked)."""
        for st in self.stages:
            t0 = perf_counter_ns()
            kind = st.subset
            if kind == "opaque" or (bound > S.NEG_INF and kind in ("tokenwise", "distribution")):
                return None
            if kind == "top_k" and bound > S.NEG_INF:
                if values.size < st.width or S.kth_largest(values, st.width)[0] <= bound:
                    return None  # a token outside could be among the k largest
                bound = S.NEG_INF
            values = st.on_subset(token_ids, values, ids, vocab)
            if st.user:
                values = _checked(st.name, values, ids.shape)
            if kind == "monotone":
                bound = st.map_bound(bound)
            self.timings_ns[st.name] = perf_counter_ns() - t0
        return values, bound

    def closes(self, n: int) -> bool:
        """Whether `on_subset` can pass n candidates through every stage closed (a top-k stage of
        k < n masks every outsider - its k-th largest must beat the n-th - and no stage needs the
        whole vocabulary): only then can a sampler - or greedy after processors - decide on them."""
        closed = False
        for st in self.stages:
            if st.subset == "opaque" or (not closed and st.subset in ("tokenwise", "distribution")):
                return False
            if st.subset == "top_k" and not closed:
                if st.width >= n:
                    return False
                closed = True
        return closed

    def culprit(self, token_ids: np.ndarray, logits: np.ndarray) -> str:
        """The first stage after which every token is masked (for the error message)."""
        for st in self.stages:
            logits = st(token_ids, logits if not st.user else logits.copy())
            if not np.isfinite(np.max(logits)):
                return st.name
        return "the logits as the model gave them"

    def reset(self) -> None:
        for st in self.stages:
            st.reset()

    def accept(self, token) -> None:
        for st in self.stages:
            st.accept(token)

    def reorder(self, beam_idx) -> None:
        for st in self.stages:
            st.reorder(beam_idx)

    def retire(self, rows) -> None:
        for st in self.stages:
            st.retire(rows)

    def clone(self) -> "Chain":
        return Chain([st.clone() for st in self.stages])


def _checked(name: str, out, shape: tuple) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"processor {name!r} returned {type(out).__name__}, expected a numpy array")
    if out.shape != shape:
        raise ValueError(f"processor {name!r} returned logits of shape {out.shape}, expected {shape}")
    if not np.issubdtype(out.dtype, np.floating):
        raise TypeError(f"processor {name!r} returned {out.dtype} logits, expected floating point")
    if np.isnan(out).any():
        raise ValueError(f"processor {name!r} returned NaN logits")
    return out if out.dtype == np.float32 else out.astype(np.float32)


# ---- building the chain from a config --------------------------------------------------------------------
def penalty_stages(c: GenerationConfig, prompt_len: int, model=None) -> list[Stage]:
    """logit_bias -> repetition -> presence/frequency -> dry -> no_repeat_ngram -> bad_words ->
    allowed_tokens -> min_new_tokens, each when the config asks for it."""
    out: list[Stage] = []
    if c.logit_bias:
        bias = dict(c.logit_bias)
        out.append(Kernel("logit_bias", "lowers" if max(bias.values()) <= 0 else "tokenwise",
                          lambda ids, x: P.apply_logit_bias(x, bias)))
    if c.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(c.repetition_penalty))
    if c.presence_penalty or c.frequency_penalty:
        pres, freq = c.presence_penalty, c.frequency_penalty
        out.append(Kernel("presence_frequency_penalty", "lowers" if pres >= 0 and freq >= 0 else "tokenwise",
                          lambda ids, x: P.apply_presence_frequency_penalty(ids[..., prompt_len:], x, pres, freq)))
    if c.dry_multiplier:
        out.append(DRY(c, model))
    if c.no_repeat_ngram_size > 0:
        n = c.no_repeat_ngram_size
        out.append(Kernel("no_repeat_ngram", "lowers", lambda ids, x: P.apply_no_repeat_ngram(ids, x, n)))
    if c.bad_words_ids:
        # HF's NoBadWordsLogitsProcessor drops an eos id given as a one-token bad word (min_new_tokens
        # is how to hold eos back)
        eos = {int(e) for e in c.eos_token_id}
        bad = [list(map(int, s)) for s in c.bad_words_ids if not (len(s) == 1 and int(s[0]) in eos)]
        out.append(Kernel("bad_words", "lowers", lambda ids, x: P.apply_bad_words(ids, x, bad)))
    if c.allowed_token_ids is not None:
        allowed = np.asarray(c.allowed_token_ids, dtype=np.int64)
        out.append(Kernel("allowed_tokens", "lowers", lambda ids, x: P.apply_allowed_tokens(x, allowed),
                          lambda ids, v, cand: np.where(np.isin(cand, allowed), v, S.NEG_INF)))
    if c.min_new_tokens > 0 and c.eos_token_id:
        eos_arr, min_len = np.asarray(c.eos_token_id, dtype=np.int64), prompt_len + c.min_new_tokens
        out.append(Kernel("min_new_tokens", "lowers",
                          lambda ids, x: P.apply_banned_tokens(x, eos_arr) if ids.shape[-1] < min_len else x))
    return out


def warpers(c: GenerationConfig, min_tokens_to_keep: int = 1) -> list[Stage]:
    """The sampling warpers: temperature -> top_n_sigma -> top_k -> top_p -> min_p -> typical_p ->
    epsilon -> eta -> xtc (HF's order for HF's; llama.cpp's top-nσ beside temperature, whose threshold
    scales with it; XTC last, on the distribution that would be sampled)."""
    keep = min_tokens_to_keep
    out: list[Stage] = []
    if c.temperature != 1.0:
        out.append(Temperature(c.temperature))
    if c.top_n_sigma > 0:
        n = c.top_n_sigma
        out.append(Kernel("top_n_sigma", "distribution", lambda ids, x: S.apply_top_n_sigma(x, n)))
    if c.top_k:
        out.append(TopK(c.top_k, keep))
    if c.top_p < 1.0:
        out.append(TopP(c.top_p, keep))
    if c.min_p is not None:
        out.append(MinP(c.min_p, keep))
    if c.typical_p < 1.0:
        out.append(Kernel("typical_p", "distribution", lambda ids, x, m=c.typical_p: S.apply_typical_p(x, m, keep)))
    if c.epsilon_cutoff > 0:
        out.append(Kernel("epsilon", "distribution",
                          lambda ids, x, e=c.epsilon_cutoff: S.apply_epsilon_cutoff(x, e, keep)))
    if c.eta_cutoff > 0:
        out.append(Kernel("eta", "distribution", lambda ids, x, e=c.eta_cutoff: S.apply_eta_cutoff(x, e, keep)))
    if c.xtc_probability > 0:
        out.append(XTC(c.xtc_probability, c.xtc_threshold, keep, c.seed))
    return out


# ---- stages with parameters or state ----------------------------------------------------------------
class Temperature(Stage):
    """HF TemperatureLogitsWarper (`kernels.sampling.apply_temperature`); monotone: the bound maps too."""

    name, subset = "temperature", "monotone"

    def __init__(self, temperature: float):
        self.temperature = np.float32(temperature)

    def __call__(self, token_ids, logits):
        return S.apply_temperature(logits, self.temperature)

    def map_bound(self, bound):
        return float(np.float32(bound) / self.temperature)


class TopK(Stage):
    """HF TopKLogitsWarper (`kernels.sampling.apply_top_k`)."""

    name, subset = "top_k", "top_k"

    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        self.k, self.keep = int(k), min_tokens_to_keep
        self.width = max(self.k, min_tokens_to_keep)  # how many it keeps (ties at the last place aside)

    def __call__(self, token_ids, logits):
        return S.apply_top_k(logits, self.k, self.keep)

    def on_subset(self, token_ids, values, ids, vocab):
        return S.apply_top_k(values, self.k, self.keep)


class Cutoff(Stage):
    """A warper masking the unlikely tokens by a threshold `p` (keeping `min_tokens_to_keep` at least):
    `kernel(logits, p, keep)`."""

    subset = "distribution"

    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        self.p, self.keep = p, min_tokens_to_keep

    def __call__(self, token_ids, logits):
        return self.kernel(logits, self.p, self.keep)


class TopP(Cutoff):
    """HF TopPLogitsWarper (`kernels.sampling.apply_top_p`)."""

    name, kernel = "top_p", staticmethod(S.apply_top_p)


class MinP(Cutoff):
    """HF MinPLogitsWarper (`kernels.sampling.apply_min_p`)."""

    name, kernel = "min_p", staticmethod(S.apply_min_p)


class RepetitionPenalty(Stage):
    """HF RepetitionPenaltyLogitsProcessor (`kernels.penalties.apply_repetition_penalty`). On
    candidates it keeps set(token_ids) between steps: built on the first call after `reset()` (or
    whenever the ids stop extending what it has seen) and extended by `accept`, so a chain reused
    for another prompt, or rolled back, never sees a stale history."""

    name = "repetition_penalty"

    def __init__(self, penalty: float):
        self.penalty = penalty
        self.subset = "lowers" if penalty >= 1.0 else "tokenwise"
        self._seen: set[int] | None = None
        self._n = 0  # len(token_ids) that _seen covers

    def __call__(self, token_ids, logits):
        return P.apply_repetition_penalty(token_ids, logits, self.penalty)

    def on_subset(self, token_ids, values, ids, vocab):
        if self._seen is None or token_ids.shape[0] != self._n:
            self._seen, self._n = set(token_ids.tolist()), token_ids.shape[0]
        return P.apply_repetition_penalty_on(token_ids, values, ids, self.penalty, self._seen)

    def accept(self, token):
        if self._seen is not None and np.ndim(token) == 0:
            self._seen.add(int(token))
            self._n += 1

    def reset(self):
        self._seen, self._n = None, 0

    def clone(self):
        twin = RepetitionPenalty(self.penalty)
        twin._seen = None if self._seen is None else set(self._seen)
        twin._n = self._n
        return twin


class DRY(Stage):
    """llama.cpp DRY (`kernels.penalties.dry_penalties`): multiplier, base, allowed length, the last
    `penalty_last_n` tokens (-1: all; prompt included), sequence breakers given as strings (split
    into token sequences from the model's vocabulary as llama.cpp does, cached per tokenizer) or as
    token-id lists."""

    name, subset = "dry", "lowers"

    def __init__(self, c: GenerationConfig, model=None, breakers=None):
        self.args = (c.dry_multiplier, c.dry_base, c.dry_allowed_length, c.dry_penalty_last_n)
        self.breakers = breakers if breakers is not None else _breakers(c.dry_sequence_breakers, model)

    def __call__(self, token_ids, logits):
        return P.apply_dry(token_ids, logits, *self.args, self.breakers)

    def on_subset(self, token_ids, values, ids, vocab):
        pen = P.dry_penalties(token_ids.tolist(), *self.args, self.breakers)
        if not pen:
            return values
        sub = np.fromiter((pen.get(t, 0.0) for t in ids.tolist()), np.float32, ids.size)
        return values - sub


def _breakers(items, model) -> dict:
    """DRY sequence breakers: token-id lists are taken as they are; strings need the model's tokenizer."""
    out: dict[int, list[tuple]] = {}
    strings = [b for b in items if isinstance(b, str)]
    for seq in (b for b in items if not isinstance(b, str)):
        out.setdefault(int(seq[0]), []).append(tuple(int(t) for t in seq[1:]))
    if strings:
        if model is None:
            raise ValueError("dry_sequence_breakers given as strings need the model's tokenizer")
        tok = model.tokenizer
        cache = tok.cache.setdefault("dry_breakers", {})
        key = tuple(strings)
        if key not in cache:
            cache[key] = P.dry_breakers(strings, tok.token_texts(), tok.encode)
        for head, tails in cache[key].items():
            out.setdefault(head, []).extend(tails)
    return out


class XTC(Stage):
    """llama.cpp XTC (`kernels.sampling.apply_xtc`): with probability `probability` per step, mask
    every token with probability >= threshold except the least likely of them. Owns its generator
    (seeded from the config's seed, its own stream), so a seed reproduces a run."""

    name, subset = "xtc", "distribution"

    def __init__(self, probability: float, threshold: float, min_keep: int = 1, seed: int | None = None):
        self.probability, self.threshold, self.keep, self.seed = probability, threshold, min_keep, seed
        self.rng = np.random.default_rng(None if seed is None else [seed, 0x58_54_43])  # "XTC"

    def __call__(self, token_ids, logits):
        if self.rng.random() >= self.probability:
            return logits
        return S.apply_xtc(logits, self.threshold, self.keep)

    def reset(self):
        self.rng = np.random.default_rng(None if self.seed is None else [self.seed, 0x58_54_43])

    def clone(self):
        twin = XTC(self.probability, self.threshold, self.keep, self.seed)
        twin.rng = copy.deepcopy(self.rng)
        return twin
