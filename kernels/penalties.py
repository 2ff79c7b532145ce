"""History-dependent processors: pure functions of `token_ids: [T] int64` and `logits: [vocab] float32`
(or `[rows, T]` / `[rows, vocab]` for beams), returning new logits. Masked entries become -inf.

Semantics: HF transformers (`generation/logits_process.py`) for repetition penalty, no-repeat-ngram,
bad words, min-new-tokens and sequence bias; OpenAI for presence and frequency penalties.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

NEG_INF = np.float32(-np.inf)


def _rows(token_ids: np.ndarray, logits: np.ndarray):
    """Iterate (ids_row, logits_row) pairs over a 1-D or 2-D batch, writing into a fresh copy."""
    out = np.array(logits, dtype=np.float32, copy=True)
    ids2 = np.atleast_2d(token_ids)
    out2 = out.reshape(-1, out.shape[-1])
    return out, [(ids2[r], out2[r]) for r in range(out2.shape[0])]


def _repetition_row(ids: np.ndarray, row: np.ndarray, penalty: float) -> None:
    seen = np.unique(ids)
    score = row[seen]
    row[seen] = np.where(score < 0, score * np.float32(penalty), score / np.float32(penalty))


def apply_repetition_penalty(token_ids: np.ndarray, logits: np.ndarray, penalty: float) -> np.ndarray:
    """HF RepetitionPenaltyLogitsProcessor (CTRL paper): for every token id present in `token_ids`
    (prompt included), a logit < 0 is multiplied by `penalty`, a logit >= 0 divided by it. Each token
    is penalised once, however often it occurs."""
    if logits.ndim == 1:  # the common single-sequence case, without the per-row machinery
        out = logits.copy()
        _repetition_row(token_ids, out, penalty)
        return out
    out, rows = _rows(token_ids, logits)
    for ids, row in rows:
        _repetition_row(ids, row, penalty)
    return out


def apply_repetition_penalty_on(token_ids: np.ndarray, values: np.ndarray, ids: np.ndarray, penalty: float,
                                history: set[int] | None = None) -> np.ndarray:
    """`apply_repetition_penalty` restricted to some tokens: `values[i]` is the logit of token
    `ids[i]`; `history` is set(token_ids) when the caller keeps it. Made for a few dozen values right
    after an infer, where each NumPy call costs tens of microseconds: the arithmetic runs on Python
    floats, and is exactly the float32 result - a product of two float32 is exact in float64, and
    a float64 quotient rounded to float32 is the correctly rounded float32 quotient (53 >= 2*24 + 2)."""
    history = set(token_ids.tolist()) if history is None else history
    xs = values.tolist()
    p = float(np.float32(penalty))
    hit = False
    for i, t in enumerate(ids.tolist()):
        if t in history:
            v = xs[i]
            xs[i] = v * p if v < 0 else v / p
            hit = True
    return np.array(xs, dtype=np.float32) if hit else values.copy()


def apply_presence_frequency_penalty(token_ids: np.ndarray, logits: np.ndarray, presence: float,
                                     frequency: float) -> np.ndarray:
    """OpenAI presence/frequency penalties: logit[j] -= count[j] * frequency + (count[j] > 0) * presence,
    where count[j] is how often j occurs in `token_ids` (pass the generated tokens only, as OpenAI does)."""
    out, rows = _rows(token_ids, logits)
    for ids, row in rows:
        if ids.size:
            uniq, count = np.unique(ids, return_counts=True)
            row[uniq] -= (count * frequency + presence).astype(np.float32)
    return out


def banned_ngram_tokens(ids: Sequence[int], n: int) -> list[int]:
    """HF NoRepeatNGramLogitsProcessor's rule for one sequence: the tokens that would complete an
    n-gram already present in `ids` (nothing is banned while len(ids) + 1 < n)."""
    if len(ids) + 1 < n:
        return []
    prefix = tuple(ids[len(ids) - n + 1:])
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix]


def apply_no_repeat_ngram(token_ids: np.ndarray, logits: np.ndarray, n: int) -> np.ndarray:
    """HF NoRepeatNGramLogitsProcessor: ban every token that would repeat an n-gram of `token_ids`."""
    out, rows = _rows(token_ids, logits)
    for ids, row in rows:
        banned = banned_ngram_tokens(ids.tolist(), n)
        if banned:
            row[banned] = NEG_INF
    return out


def apply_bad_words(token_ids: np.ndarray, logits: np.ndarray,
                    bad_words_ids: Iterable[Sequence[int]]) -> np.ndarray:
    """HF NoBadWordsLogitsProcessor: a one-token sequence is always banned; for a longer one, its
    last token is banned when the sequence's other tokens end `token_ids`."""
    out, rows = _rows(token_ids, logits)
    for ids, row in rows:
        tail = ids.tolist()
        for seq in bad_words_ids:
            prefix = list(seq[:-1])
            if not prefix or tail[len(tail) - len(prefix):] == prefix:
                row[seq[-1]] = NEG_INF
    return out


def apply_logit_bias(logits: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    """Add `bias[token]` to that token's logit (OpenAI logit_bias; HF SequenceBias for 1-token keys)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    out[..., ids] += np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return out


def apply_allowed_tokens(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Mask every token not in `allowed` (int array of token ids)."""
    out = np.full_like(logits, NEG_INF, dtype=np.float32)
    out[..., allowed] = logits[..., allowed]
    return out


def apply_banned_tokens(logits: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """Mask the tokens in `banned` (HF SuppressTokensLogitsProcessor; min-new-tokens uses it on EOS)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    out[..., banned] = NEG_INF
    return out


# ---- DRY ("don't repeat yourself"), llama.cpp `llama_sampler_dry_apply` --------------------------------
_FLOAT_MAX_LOG = 88.7228391  # log(FLT_MAX): pow(base, exponent) is clamped below it, as llama.cpp does


def _repeat_limit(hist: Sequence[int], breakers: Mapping[int, Sequence[Sequence[int]]]) -> int:
    """llama.cpp DRY step 1: the latest sequence breaker (a head token and the tail tokens after it)
    bounds how far back a repeat may reach: `i - len(tail)` for a breaker whose head is `i` tokens
    from the end (the longest tail matching there)."""
    n = len(hist)
    for i in range(n):
        tails = breakers.get(hist[n - 1 - i])
        if tails is None:
            continue
        longest = -1
        for tail in tails:
            if longest < len(tail) <= i and all(tail[o] == hist[n - i + o] for o in range(len(tail))):
                longest = len(tail)
        if longest >= 0:
            return i - longest
    return n


def _suffix_matches(hist: np.ndarray, limit: int) -> np.ndarray:
    """`z[k - 1]` for k = 1..n-1: how many tokens ending k tokens before the end equal the tokens
    ending at the end (the reversed sequence's Z-array, llama.cpp DRY step 2), at most `limit`."""
    r = hist[::-1]
    n = r.size
    z = np.zeros(max(n - 1, 0), np.int64)
    active = np.arange(1, n)
    m = 0
    while active.size and m < limit:
        active = active[active + m < n]
        active = active[r[active + m] == r[m]]
        z[active - 1] += 1
        m += 1
    return z


def dry_penalties(token_ids: Sequence[int], multiplier: float, base: float, allowed_length: int,
                  last_n: int = -1, breakers: Mapping[int, Sequence[Sequence[int]]] | None = None) -> dict[int, float]:
    """llama.cpp DRY: the logit penalty of every token that would extend a repeat. Over the last
    `last_n` tokens (-1: all, 0: off), a token that would continue a sequence already seen, whose
    repeated part is L >= allowed_length tokens long (the longest such L), costs
    multiplier * base ** (L - allowed_length). `breakers` maps a head token to the tails that
    complete a sequence breaker after it (an empty tail: the token alone breaks): a repeat never
    reaches back across one, and a single-token breaker is never penalised."""
    if multiplier == 0.0 or base < 1.0 or last_n == 0:
        return {}
    breakers = breakers or {}
    hist = list(token_ids[-last_n:] if last_n > 0 else token_ids)
    n = len(hist)
    if n <= allowed_length:
        return {}
    limit = _repeat_limit(hist, breakers)
    if limit < allowed_length:
        return {}
    z = _suffix_matches(np.asarray(hist, np.int64), limit)
    longest: dict[int, int] = {}
    for i in np.flatnonzero(z[::-1] >= allowed_length).tolist():  # position i's repeat ends at hist[i]
        length = int(z[n - 2 - i])
        token = hist[i + 1]  # emitting it would extend that repeat
        if longest.get(token, -1) < length:
            longest[token] = length
    max_exp = int(_FLOAT_MAX_LOG / np.log(base)) if base > 1.000001 else 0
    out = {}
    for token, length in longest.items():
        if any(len(tail) == 0 for tail in breakers.get(token, ())):
            continue
        exp = length - allowed_length
        if max_exp > 0:
            exp = min(exp, max_exp)
        out[token] = float(multiplier * base ** exp)
    return out


def apply_dry(token_ids: np.ndarray, logits: np.ndarray, multiplier: float, base: float, allowed_length: int,
              last_n: int = -1, breakers: Mapping[int, Sequence[Sequence[int]]] | None = None) -> np.ndarray:
    """Subtract `dry_penalties` from the logits (per row for `[rows, T]` / `[rows, vocab]`)."""
    out, rows = _rows(token_ids, logits)
    for ids, row in rows:
        pen = dry_penalties(ids.tolist(), multiplier, base, allowed_length, last_n, breakers)
        if pen:
            keys = np.fromiter(pen.keys(), np.int64, len(pen))
            row[keys] -= np.fromiter(pen.values(), np.float32, len(pen))
    return out


def dry_breakers(strings: Sequence[str], token_texts: Sequence[str], encode) -> dict[int, list[tuple[int, ...]]]:
    """llama.cpp's `get_overlapping_token_sequences` for DRY's sequence breakers: a token whose text
    contains a breaker breaks alone (empty tail); a token whose text ends with the start of a
    breaker is a head, with the rest of the breaker tokenised (`encode`, at most 20 tokens) as its
    tail. Breakers are cut to 40 characters. `token_texts[i]` is token i's text."""
    out: dict[int, list[tuple[int, ...]]] = {}
    for s in strings:
        s = s[:40]
        if not s:
            continue
        for token, word in enumerate(token_texts):
            if s in word:
                out.setdefault(token, []).append(())
                continue
            pos = word.find(s[0])
            while pos != -1:
                tail_from = min(len(s), len(word) - pos)
                if word[pos:pos + tail_from] == s[:tail_from]:
                    tail = tuple(encode(s[tail_from:])[:20])
                    if tail not in out.setdefault(token, []):
                        out[token].append(tail)
                pos = word.find(s[0], pos + 1)
    return out
