"""Sampling on the graph's top candidates (Session.top + Chain.run_on_candidates) must choose exactly
what the whole-vocabulary chain chooses: same tokens, same processed log-probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ovgen
from ovgen.config import GenerationConfig
from ovgen.kernels import penalties as P
from ovgen.kernels.sampling import multinomial
from ovgen.processors import build_chain
from ovgen.search import Sampler

from conftest import PROMPTS

CONFIGS = [
    {"top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1},
    {"top_k": 20, "temperature": 0.7},
    {"top_k": 40, "top_p": 0.95, "repetition_penalty": 1.3, "temperature": 1.5},
    {"top_k": 60, "repetition_penalty": 1.1},
]


def _candidates(logits: np.ndarray, m: int):
    """What the graph's topk output gives: the m largest logits, ids ascending."""
    ids = np.sort(np.argpartition(logits, logits.size - m)[-m:])
    return logits[ids], ids


@pytest.mark.parametrize("settings", CONFIGS)
def test_run_on_candidates_equals_the_whole_vocabulary_chain(settings):
    rng = np.random.default_rng(0)
    cfg = GenerationConfig(do_sample=True, **settings)
    used = fallback = 0
    for trial in range(300):
        vocab = 3000
        logits = (rng.standard_normal(vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        if trial % 3 == 0:  # ties around the 64th value
            logits = np.round(logits, 1)
        history = rng.integers(0, vocab, rng.integers(1, 400))
        if trial % 2:  # the likeliest tokens already generated: the penalty reorders the top
            history = np.concatenate([history, np.argsort(logits)[-rng.integers(1, 40):]])
        chain = build_chain(cfg, prompt_len=1)
        assert chain.top_k == settings["top_k"]
        full = chain(history, logits)
        got = chain.run_on_candidates(history, *_candidates(logits, 64))
        if got is None:
            fallback += 1
            continue
        used += 1
        values, ids = got
        np.testing.assert_array_equal(values, full[ids])  # bit-identical
        rest = np.delete(full, ids)
        assert (rest == -np.inf).all(), "a token outside the candidates survived the whole-vocabulary chain"
        a, b = Sampler(seed=trial), Sampler(seed=trial)
        assert ids[a(values)] == b(full) and a.logprob == b.logprob
    assert used > 100 and (fallback > 0 or settings.get("repetition_penalty", 1) == 1)


def test_candidates_are_refused_when_they_cannot_be_exact():
    cfg = GenerationConfig(do_sample=True, top_k=50, repetition_penalty=1.5)
    logits = np.linspace(10, 0, 1000, dtype=np.float32)
    values, ids = _candidates(logits, 64)
    # all 64 candidates generated before: penalised below the 64th raw logit, so tokens outside
    # the candidates may belong to the top 50
    assert build_chain(cfg, prompt_len=1).run_on_candidates(np.arange(64), values, ids) is None
    assert build_chain(cfg, prompt_len=1).run_on_candidates(np.array([999]), values, ids) is not None
    # fewer candidates than top_k, or an edited chain: the whole vocabulary
    assert build_chain(cfg.replace(top_k=65), prompt_len=1).run_on_candidates(np.array([999]), values, ids) is None
    chain = build_chain(cfg, prompt_len=1)
    chain.processors.reverse()
    assert chain.run_on_candidates(np.array([999]), values, ids) is None


@pytest.mark.parametrize("settings", [
    {"top_k": 0, "top_p": 0.9},  # no top-k: the nucleus may reach beyond any fixed set
    {"top_k": 50, "repetition_penalty": 0.8},  # a penalty < 1 raises logits
    {"top_k": 50, "min_p": 0.1},
    {"top_k": 50, "typical_p": 0.9},
    {"top_k": 50, "no_repeat_ngram_size": 3},
    {"top_k": 50, "do_sample": False},
])
def test_chains_that_cannot_run_on_candidates(settings):
    cfg = GenerationConfig(**{"do_sample": True, **settings})
    assert build_chain(cfg, prompt_len=1).top_k == 0
    assert build_chain(GenerationConfig(do_sample=True, top_k=50), prompt_len=1, user=[lambda i, x: x]).top_k == 0


def test_repetition_penalty_on_candidates_is_bit_identical():
    rng = np.random.default_rng(1)
    for penalty in (1.0001, 1.1, 1.3, 2.0, 7.77):
        logits = (rng.standard_normal(500) * 10 ** rng.uniform(-3, 2, 500)).astype(np.float32)
        logits[:5] = [0.0, -0.0, 1e-30, -1e-30, 3.4e37]
        history = rng.integers(0, 500, 300)
        full = P.apply_repetition_penalty(history, logits, penalty)
        ids = np.sort(rng.choice(500, 64, replace=False))
        ids[:5] = np.arange(5)
        history = np.concatenate([history, np.arange(5)])
        full = P.apply_repetition_penalty(history, logits, penalty)
        np.testing.assert_array_equal(P.apply_repetition_penalty_on(history, logits[ids], ids, penalty), full[ids])


def test_one_row_multinomial_draws_like_the_batched_path():
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = rng.dirichlet(np.full(rng.integers(1, 80), 0.3))
        p[rng.random(p.size) < 0.3] = 0
        if p.sum() == 0:
            continue
        p /= p.sum()
        seed = int(rng.integers(1 << 30))
        one = multinomial(p, np.random.default_rng(seed))
        batched = multinomial(p[None], np.random.default_rng(seed))
        assert one == int(batched[0]) and p[one] > 0


def test_graph_topk_output_holds_the_largest_logits(model):
    s = model.session()
    logits = s.prefill(model.tokenizer.encode(PROMPTS[0]))
    for _ in range(20):
        values, ids = s.top
        assert ids.size == model.top_candidates and (np.diff(ids) > 0).all()
        np.testing.assert_array_equal(values, logits[ids])
        assert np.delete(logits, ids).max() <= values.min()
        logits = s.step(int(ids[np.argmax(values)]))
    snap = s.snapshot()
    s.rewind(1)
    assert s.top is None
    s.restore(snap)
    np.testing.assert_array_equal(s.top[0], values)


@pytest.mark.parametrize("settings", CONFIGS)
def test_generation_on_candidates_matches_the_whole_vocabulary(model, settings):
    """The real model: the same seeds give the same tokens and processed log-probabilities with the
    candidates as with a model that has none (every step on the whole vocabulary)."""
    without = dataclasses.replace(model, top_candidates=0)
    for seed, prompt in enumerate(PROMPTS[:4]):
        cfg = {"do_sample": True, **settings, "seed": seed, "max_new_tokens": 64, "ignore_eos": True}
        a = ovgen.generate(model, prompt, cfg).sequences[0]
        b = ovgen.generate(without, prompt, cfg).sequences[0]
        assert a.token_ids == b.token_ids, (settings, prompt)
        assert [r.processed_logprob for r in a.records] == [r.processed_logprob for r in b.records]
