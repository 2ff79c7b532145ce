"""Every processor: a tiny hand-computed case, and a differential test against the transformers
processor of the same name on random logits (the reference runs in the same test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from ovgen.kernels import penalties as P
from ovgen.kernels import sampling as S

INF = np.inf


def probs_of(logits):
    return S.softmax(np.asarray(logits, dtype=np.float32))


# ---- tiny exact tables (llama.cpp style) ---------------------------------------------------------
def test_top_k_table():
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    np.testing.assert_allclose(probs_of(S.apply_top_k(x, 3)), [0, 2 / 9, 3 / 9, 4 / 9], rtol=1e-6)
    np.testing.assert_allclose(probs_of(S.apply_top_k(x, 1)), [0, 0, 0, 1])
    np.testing.assert_allclose(probs_of(S.apply_top_k(x, 0 + 10)), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)


def test_top_k_keeps_ties():
    x = np.array([1.0, 2.0, 2.0, 0.5], np.float32)
    assert np.isfinite(S.apply_top_k(x, 2)).tolist() == [False, True, True, False]


def test_top_p_table():
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    # mass above 0.4 is 0 < p, above 0.3 is 0.4 < p=0.7, above 0.2 is 0.7: not < 0.7 -> dropped
    np.testing.assert_allclose(probs_of(S.apply_top_p(x, 0.7)), [0, 0, 3 / 7, 4 / 7], rtol=1e-6)
    np.testing.assert_allclose(probs_of(S.apply_top_p(x, 0.71)), [0, 2 / 9, 3 / 9, 4 / 9], rtol=1e-6)
    np.testing.assert_allclose(probs_of(S.apply_top_p(x, 0.01)), [0, 0, 0, 1])


def test_min_p_table():
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    # threshold 0.6 * 0.4 = 0.24: keep 0.3, 0.4
    np.testing.assert_allclose(probs_of(S.apply_min_p(x, 0.6)), [0, 0, 3 / 7, 4 / 7], rtol=1e-6)


def test_temperature_table():
    np.testing.assert_allclose(S.apply_temperature(np.array([1.0, -2.0], np.float32), 0.5), [2.0, -4.0])


def test_repetition_penalty_table():
    x = np.array([2.0, -2.0, 1.0, -1.0], np.float32)
    out = P.apply_repetition_penalty(np.array([0, 1, 1]), x, 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, -1.0])
    assert x[0] == 2.0  # input not mutated


def test_presence_frequency_table():
    x = np.zeros(4, np.float32)
    out = P.apply_presence_frequency_penalty(np.array([1, 1, 3]), x, presence=0.5, frequency=0.25)
    np.testing.assert_allclose(out, [0, -(0.5 + 2 * 0.25), 0, -(0.5 + 0.25)])


def test_no_repeat_ngram_table():
    x = np.zeros(5, np.float32)
    # 2-grams so far: (1,2) (2,3) (3,1); last token 1 -> 2 would repeat (1,2)
    out = P.apply_no_repeat_ngram(np.array([1, 2, 3, 1]), x, 2)
    assert np.isinf(out).tolist() == [False, False, True, False, False]


def test_bad_words_table():
    x = np.zeros(5, np.float32)
    out = P.apply_bad_words(np.array([4, 1]), x, [[3], [1, 2], [0, 4]])
    assert np.isinf(out).tolist() == [False, False, True, True, False]  # 3 always; 2 after [1]


def test_typical_p_table():
    # H = 0.8018; |-ln p - H| = 0.445 (0.7), 0.808 (0.2), 1.501 (0.1): ranked 0.7, 0.2, 0.1,
    # cumulative 0.7, 0.9, 1.0 -> mass 0.5 keeps {0.7}; mass 0.8 keeps {0.7, 0.2}
    x = np.log(np.array([0.7, 0.2, 0.1], np.float32))
    np.testing.assert_allclose(probs_of(S.apply_typical_p(x, 0.5)), [1, 0, 0])
    np.testing.assert_allclose(probs_of(S.apply_typical_p(x, 0.8)), [7 / 9, 2 / 9, 0], rtol=1e-6)


def test_logit_bias_allowed_banned():
    x = np.zeros(4, np.float32)
    np.testing.assert_allclose(P.apply_logit_bias(x, {1: 2.5, 3: -1.0}), [0, 2.5, 0, -1.0])
    assert np.isfinite(P.apply_allowed_tokens(x, np.array([0, 2]))).tolist() == [True, False, True, False]
    assert np.isfinite(P.apply_banned_tokens(x, np.array([0]))).tolist() == [False, True, True, True]


# ---- differential tests against transformers ------------------------------------------------------
VOCAB = 1000


def random_case(seed, rows=1):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, VOCAB)) * rng.uniform(0.5, 4)).astype(np.float32)
    ids = rng.integers(0, 40, size=(rows, 30))  # small id range: repeats and n-grams recur
    return ids, logits


def hf_apply(proc, ids, logits):
    return proc(torch.from_numpy(ids), torch.from_numpy(logits.copy())).numpy()


def assert_same(ours, ref):
    assert np.array_equal(np.isinf(ours), np.isinf(ref)), "different masks"
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-6, atol=1e-6)


CASES = [
    ("temperature", lambda: hf.TemperatureLogitsWarper(0.7), lambda i, x: S.apply_temperature(x, 0.7)),
    ("top_k", lambda: hf.TopKLogitsWarper(37), lambda i, x: S.apply_top_k(x, 37)),
    ("top_k_keep", lambda: hf.TopKLogitsWarper(1, min_tokens_to_keep=3), lambda i, x: S.apply_top_k(x, 1, 3)),
    ("top_p", lambda: hf.TopPLogitsWarper(0.9), lambda i, x: S.apply_top_p(x, 0.9)),
    ("top_p_small", lambda: hf.TopPLogitsWarper(0.05, min_tokens_to_keep=2), lambda i, x: S.apply_top_p(x, 0.05, 2)),
    ("top_p_big", lambda: hf.TopPLogitsWarper(0.999), lambda i, x: S.apply_top_p(x, 0.999)),
    ("min_p", lambda: hf.MinPLogitsWarper(0.1), lambda i, x: S.apply_min_p(x, 0.1)),
    ("min_p_keep", lambda: hf.MinPLogitsWarper(0.9, min_tokens_to_keep=3), lambda i, x: S.apply_min_p(x, 0.9, 3)),
    ("typical_p", lambda: hf.TypicalLogitsWarper(0.8), lambda i, x: S.apply_typical_p(x, 0.8)),
    ("typical_p_keep", lambda: hf.TypicalLogitsWarper(0.2, min_tokens_to_keep=4),
     lambda i, x: S.apply_typical_p(x, 0.2, 4)),
    ("repetition", lambda: hf.RepetitionPenaltyLogitsProcessor(1.3),
     lambda i, x: P.apply_repetition_penalty(i, x, 1.3)),
    ("repetition_lt1", lambda: hf.RepetitionPenaltyLogitsProcessor(0.8),
     lambda i, x: P.apply_repetition_penalty(i, x, 0.8)),
    ("no_repeat_2", lambda: hf.NoRepeatNGramLogitsProcessor(2), lambda i, x: P.apply_no_repeat_ngram(i, x, 2)),
    ("no_repeat_3", lambda: hf.NoRepeatNGramLogitsProcessor(3), lambda i, x: P.apply_no_repeat_ngram(i, x, 3)),
    ("bad_words", lambda: hf.NoBadWordsLogitsProcessor([[5], [7, 8], [1, 2, 3]], eos_token_id=999),
     lambda i, x: P.apply_bad_words(i, x, [[5], [7, 8], [1, 2, 3]])),
    ("sequence_bias", lambda: hf.SequenceBiasLogitsProcessor({(3,): 2.0, (9,): -1.5}),
     lambda i, x: P.apply_logit_bias(x, {3: 2.0, 9: -1.5})),
    ("suppress", lambda: hf.SuppressTokensLogitsProcessor([2, 11]),
     lambda i, x: P.apply_banned_tokens(x, np.array([2, 11]))),
    ("epsilon", lambda: hf.EpsilonLogitsWarper(0.01), lambda i, x: S.apply_epsilon_cutoff(x, 0.01)),
    ("epsilon_keep", lambda: hf.EpsilonLogitsWarper(0.2, min_tokens_to_keep=3),
     lambda i, x: S.apply_epsilon_cutoff(x, 0.2, 3)),
    ("eta", lambda: hf.EtaLogitsWarper(0.01), lambda i, x: S.apply_eta_cutoff(x, 0.01)),
    ("eta_keep", lambda: hf.EtaLogitsWarper(0.3, min_tokens_to_keep=2), lambda i, x: S.apply_eta_cutoff(x, 0.3, 2)),
]


@pytest.mark.parametrize("name,make_ref,ours", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", range(8))
def test_matches_transformers(name, make_ref, ours, seed):
    ids, logits = random_case(seed, rows=2)
    if name == "bad_words" and seed % 2:
        ids[:, -1] = 7  # make the multi-token bad word's prefix match
    if name == "no_repeat_3":
        ids[0, -2:] = ids[0, 3:5]  # force an n-gram prefix to recur
    ref = hf_apply(make_ref(), ids, logits)
    assert_same(ours(ids, logits), ref)
    assert_same(np.stack([ours(ids[r], logits[r]) for r in range(2)]), ref)  # 1-D path too


@pytest.mark.parametrize("seed", range(5))
def test_min_new_tokens_matches_transformers(seed):
    from ovgen.config import GenerationConfig
    from ovgen.choice import build_chain

    ids, logits = random_case(seed)
    cfg = GenerationConfig(min_new_tokens=5, eos_token_id=[3, 7])
    for prompt_len in (26, 25):  # 4 generated (< 5): eos banned; 5 generated: allowed
        ref = hf_apply(hf.MinNewTokensLengthLogitsProcessor(prompt_len, 5, [3, 7]), ids, logits)
        assert_same(build_chain(cfg, prompt_len=prompt_len)(ids[0], logits[0])[None], ref)


def test_top_p_uses_partial_sort_only(monkeypatch):
    """A peaked distribution is resolved from the 64 first candidates: no full argsort of the vocab."""
    x = np.full(49152, -10.0, np.float32)
    x[:5] = [5, 4, 3, 2, 1]
    sizes = []
    real = np.argsort
    monkeypatch.setattr(np, "argsort", lambda a, *k, **kw: sizes.append(np.size(a)) or real(a, *k, **kw))
    out = S.apply_top_p(x, 0.9)
    assert max(sizes) == 64 and np.isfinite(out).sum() <= 5


def test_kernels_do_not_mutate_inputs():
    ids, logits = random_case(0)
    before = logits.copy()
    for _, _, fn in CASES:
        fn(ids, logits)
    assert np.array_equal(logits, before)
