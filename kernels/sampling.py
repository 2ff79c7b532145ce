"""Distribution kernels: pure functions over `logits: [..., vocab] float32`, returning new arrays.

Masked entries are set to -inf (HF's `filter_value`). Every warper follows the HF transformers
warper of the same name (`generation/logits_process.py`); the docstrings state each rule.
"""

from __future__ import annotations

import numpy as np

NEG_INF = np.float32(-np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis, in float64 for exact sums; -inf entries get probability 0."""
    x = logits.astype(np.float64, copy=True)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, float64."""
    x = logits.astype(np.float64, copy=True)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """HF TemperatureLogitsWarper: logits / temperature (temperature > 0)."""
    return (logits / np.float32(temperature)).astype(np.float32, copy=False)


def top_k_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of 1-D `x`, largest first; ties go to the lowest index, both
    in the order and at the k-th place (ovgen's one tie rule, np.argmax's: at a tie the lowest token
    id wins). O(n) selection plus a sort of k entries."""
    n = x.shape[0]
    if k >= n:
        return np.argsort(-x, kind="stable")
    kth = np.partition(x, n - k)[n - k]
    above = np.flatnonzero(x > kth)
    chosen = np.concatenate([above, np.flatnonzero(x == kth)[:k - above.size]])
    chosen.sort()  # ascending ids, so the stable sort below keeps the lowest first among equals
    return chosen[np.argsort(-x[chosen], kind="stable")]


def kth_largest(logits: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value per row, `[..., 1]`. Exact; avoids partitioning the whole vocabulary:
    the k-th largest of a strided subsample is a lower bound, and only entries at or above it (a few
    times k) are partitioned."""
    vocab = logits.shape[-1]
    stride = 16 if vocab >= 64 * k else 1
    if logits.ndim == 1 and stride == 1:  # a short row (e.g. the top candidates): one partition
        return np.partition(logits, vocab - k)[vocab - k:vocab - k + 1]
    flat = logits.reshape(-1, vocab)
    out = np.empty((flat.shape[0], 1), flat.dtype)
    for r, row in enumerate(flat):
        sub = row[::stride]
        bound = np.partition(sub, sub.size - k)[sub.size - k] if stride > 1 else -np.inf
        cand = row[row >= bound] if stride > 1 else row
        out[r, 0] = np.partition(cand, cand.size - k)[cand.size - k]
    return out.reshape(logits.shape[:-1] + (1,))


def apply_top_k(logits: np.ndarray, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF TopKLogitsWarper: keep every token whose logit is >= the k-th largest (ties at the k-th
    value are all kept), k = min(max(top_k, min_tokens_to_keep), vocab). Partial selection only
    (see `kth_largest`), never a full sort."""
    vocab = logits.shape[-1]
    k = min(max(int(top_k), min_tokens_to_keep), vocab)
    if k >= vocab:
        return logits.copy()
    return np.where(logits < kth_largest(logits, k), NEG_INF, logits).astype(np.float32, copy=False)


def _top_p_row(row: np.ndarray, top_p: float, min_keep: int) -> np.ndarray:
    """Indices kept by top-p for one row [vocab], looking at as few top candidates as possible."""
    vocab = row.shape[0]
    finite = np.flatnonzero(row != NEG_INF)
    if finite.size == 0:  # everything masked already: nothing to keep (the loop reports it)
        return finite
    if finite.size <= 1024:  # already narrowed (e.g. by top-k): sort just the survivors
        cand = finite[np.argsort(-row[finite], kind="stable")]  # descending, lowest id first at ties
        return _nucleus(row, cand, top_p, min_keep, total=None)
    m = row.max()
    total = np.exp(row.astype(np.float64) - m).sum()  # the normaliser, once for all widenings
    n = 64
    while True:
        cand = top_k_indices(row, n)  # descending, lowest id first at ties
        kept = _nucleus(row, cand, top_p, min_keep, total=None if n == vocab else total)
        if kept is not None:
            return kept
        n = min(vocab, n * 4)


def _nucleus(row, cand, top_p, min_keep, *, total):
    """Keep candidates (sorted descending) whose mass above is < top_p. `total` is
    sum(exp(row - row.max())) over the whole row, or None when `cand` holds every unmasked token.
    Returns None if the nucleus may extend past the candidates (then the caller widens them)."""
    full = total is None
    probs = np.exp(row[cand].astype(np.float64) - row[cand[0]])
    probs /= probs.sum() if full else total
    above = np.cumsum(probs) - probs  # probability mass strictly above each candidate
    # HF keeps token i unless cumsum_ascending(i) <= 1 - top_p, i.e. unless above(i) >= top_p.
    keep = above < top_p  # above[0] == 0: the most likely token is always kept
    if min_keep > 1:
        keep |= np.arange(cand.size) < min_keep
    if not full and keep[-1]:
        return None
    return cand[keep]


def apply_top_p(logits: np.ndarray, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF TopPLogitsWarper (nucleus): sort ascending, drop tokens whose cumulative probability is
    <= 1 - top_p, always keep the `min_tokens_to_keep` most likely. Equivalently: keep a token iff the
    probability mass of the tokens ranked above it is < top_p. Sorts only the top candidates
    (64, then 4x more while the nucleus is not closed)."""
    if top_p >= 1.0:
        return logits.copy()
    out = np.full_like(logits, NEG_INF)
    if logits.ndim == 1:
        idx = _top_p_row(logits, top_p, min_tokens_to_keep)
        out[idx] = logits[idx]
        return out
    flat = logits.reshape(-1, logits.shape[-1])
    out = out.reshape(flat.shape)
    for r in range(flat.shape[0]):
        idx = _top_p_row(flat[r], top_p, min_tokens_to_keep)
        out[r, idx] = flat[r, idx]
    return out.reshape(logits.shape)


def apply_min_p(logits: np.ndarray, min_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF MinPLogitsWarper: drop tokens with probability < min_p * max probability; keep at least
    `min_tokens_to_keep` of the highest."""
    flat = logits.reshape(-1, logits.shape[-1])
    probs = softmax(flat)
    remove = probs < min_p * probs.max(axis=-1, keepdims=True)
    if min_tokens_to_keep > 1:
        for r in range(flat.shape[0]):
            remove[r, top_k_indices(flat[r], min_tokens_to_keep)] = False
    return np.where(remove, NEG_INF, flat).astype(np.float32, copy=False).reshape(logits.shape)


def apply_typical_p(logits: np.ndarray, mass: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF TypicalLogitsWarper (locally typical sampling): rank tokens by |-log p - entropy|
    ascending, keep the smallest prefix whose probability reaches `mass` (HF's rule: the prefix ends
    at the first index whose cumulative probability is >= mass, tokens tied with it kept too)."""
    if mass >= 1.0:
        return logits.copy()
    flat = logits.reshape(-1, logits.shape[-1])
    logp = log_softmax(flat)
    p = np.exp(logp)
    ent = -np.nansum(p * np.where(p > 0, logp, 0.0), axis=-1, keepdims=True)  # 0 * -inf: no NaN
    shifted = np.abs(-logp - ent)
    order = np.argsort(shifted, axis=-1, kind="stable")
    sorted_shift = np.take_along_axis(shifted, order, axis=-1)
    cum = np.cumsum(softmax(np.take_along_axis(flat, order, axis=-1)), axis=-1)
    last = np.minimum((cum < mass).sum(axis=-1, keepdims=True), flat.shape[-1] - 1)
    remove_sorted = sorted_shift > np.take_along_axis(sorted_shift, last, axis=-1)
    remove_sorted[:, :min_tokens_to_keep] = False
    remove = np.empty_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, NEG_INF, flat).astype(np.float32, copy=False).reshape(logits.shape)


def multinomial(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray | int:
    """Draw one index per row from `probs: [..., vocab]` (rows sum to 1) with one uniform each:
    the first index whose cumulative probability exceeds u * total, u ~ U[0, 1)."""
    if probs.ndim == 1:  # the same arithmetic as the batched path below, in fewer calls
        cdf = np.cumsum(probs)
        if not 0 < cdf[-1] < np.inf:  # one scalar test: NaN / inf logits make NaN probabilities
            raise ValueError(f"probabilities are not finite (the logits hold NaN or +inf): total {cdf[-1]}")
        i = min(int(cdf.searchsorted(rng.random() * cdf[-1], side="right")), probs.shape[0] - 1)
        return i if probs[i] != 0 else int(np.flatnonzero(probs)[-1])
    flat = probs.reshape(-1, probs.shape[-1])
    cdf = np.cumsum(flat, axis=-1)
    return pick(flat, cdf, rng.random(flat.shape[0]) * cdf[:, -1]).reshape(probs.shape[:-1])


def pick(probs: np.ndarray, cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """`multinomial`'s choice per row of `probs` / its cumulative sum `cdf` ([rows, n]), given `u`
    ([rows]: a uniform times the row's total): the first index whose cdf exceeds u (searchsorted's
    side="right", a NaN last as there), at most n - 1, and never a zero-probability index (possible
    only at float edges of the cdf: the last non-zero one then). The uniforms are the caller's, so
    rows may draw them from generators of their own (batched rows, ovgen/batch.py)."""
    idx = np.minimum(np.count_nonzero(~(cdf > u[:, None]), axis=1), cdf.shape[1] - 1)
    for r in np.flatnonzero(probs[np.arange(idx.size), idx] == 0).tolist():
        idx[r] = np.flatnonzero(probs[r])[-1]
    return idx


def apply_top_n_sigma(logits: np.ndarray, n: float) -> np.ndarray:
    """llama.cpp top-nσ (`llama_sampler_top_n_sigma_apply`): mask every logit below
    max - n * σ, σ the population standard deviation of the finite (not -inf) logits; n <= 0 is off."""
    if n <= 0:
        return logits.copy()
    flat = logits.reshape(-1, logits.shape[-1])
    out = flat.copy()
    for r, row in enumerate(flat):
        finite = row[row != NEG_INF]
        if finite.size <= 1:
            continue
        sigma = np.sqrt(np.mean((finite.astype(np.float64) - finite.mean(dtype=np.float64)) ** 2))
        out[r, row < np.float32(finite.max() - n * sigma)] = NEG_INF
    return out.reshape(logits.shape)


def apply_xtc(logits: np.ndarray, threshold: float, min_keep: int = 1) -> np.ndarray:
    """llama.cpp XTC, "exclude top choices" (`llama_sample_xtc_apply`), once its coin has come up:
    among the tokens with probability >= threshold, mask all but the least likely of them, unless
    fewer than two qualify or fewer than `min_keep` tokens would remain. threshold > 0.5 is off
    (at most one token can qualify). The coin (probability `xtc_probability`) is the caller's:
    `processors.XTC` owns its generator."""
    if threshold > 0.5:
        return logits.copy()
    flat = logits.reshape(-1, logits.shape[-1])
    out = flat.copy()
    probs = softmax(flat)
    for r in range(flat.shape[0]):
        above = np.flatnonzero(probs[r] >= threshold)
        if above.size < 2:
            continue
        order = above[np.argsort(-probs[r, above], kind="stable")]  # most likely first, lowest id at ties
        finite = int(np.count_nonzero(flat[r] != NEG_INF))
        if finite - (order.size - 1) >= min_keep:
            out[r, order[:-1]] = NEG_INF
    return out.reshape(logits.shape)


def _keep_top(remove: np.ndarray, flat: np.ndarray, min_keep: int) -> np.ndarray:
    """HF's min_tokens_to_keep: never remove a token scoring >= the min_keep-th largest."""
    kth = kth_largest(flat, min(min_keep, flat.shape[-1]))
    return remove & (flat < kth)


def apply_epsilon_cutoff(logits: np.ndarray, epsilon: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF EpsilonLogitsWarper (Hewitt et al. 2022): mask tokens with probability < epsilon, keeping
    the `min_tokens_to_keep` most likely."""
    flat = logits.reshape(-1, logits.shape[-1])
    remove = _keep_top(softmax(flat) < epsilon, flat, min_tokens_to_keep)
    return np.where(remove, NEG_INF, flat).astype(np.float32, copy=False).reshape(logits.shape)


def apply_eta_cutoff(logits: np.ndarray, epsilon: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """HF EtaLogitsWarper (Hewitt et al. 2022): mask tokens with probability < eta, where
    eta = min(epsilon, sqrt(epsilon) * exp(-entropy)), keeping the `min_tokens_to_keep` most likely."""
    flat = logits.reshape(-1, logits.shape[-1])
    logp = log_softmax(flat)
    p = np.exp(logp)
    entropy = -np.sum(p * np.where(p > 0, logp, 0.0), axis=-1, keepdims=True)
    eta = np.minimum(epsilon, np.sqrt(epsilon) * np.exp(-entropy))
    remove = _keep_top(p < eta, flat, min_tokens_to_keep)
    return np.where(remove, NEG_INF, flat).astype(np.float32, copy=False).reshape(logits.shape)


def mirostat_v2(logits: np.ndarray, mu: float, u: float) -> tuple[int, float]:
    """llama.cpp mirostat v2 (`llama_sampler_mirostat_v2_apply`) for one row, given the uniform `u`:
    sort by probability, drop the tokens whose surprise -log2 p exceeds `mu` (keeping at least
    one), renormalise and draw. Returns (index into `logits`, its renormalised probability); the
    caller updates mu -= eta * (-log2 p - tau)."""
    support = np.flatnonzero(logits != NEG_INF)
    if support.size == 0:
        raise ValueError("every token is masked (all logits are -inf); nothing can be sampled")
    probs = softmax(logits[support])
    order = np.argsort(-probs, kind="stable")  # most likely first, lowest id at ties
    keep = max(1, int(np.count_nonzero(-np.log2(probs[order]) <= mu)))
    kept = order[:keep]  # -log2 p grows along `order`, so the kept ones are its prefix
    p = probs[kept] / probs[kept].sum()
    cdf = np.cumsum(p)
    i = min(int(cdf.searchsorted(u * cdf[-1], side="right")), keep - 1)
    return int(support[kept[i]]), float(p[i])
