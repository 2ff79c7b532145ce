"""The token-choice stage on the graph's top candidates (Session.top) must choose exactly what it
chooses on the whole vocabulary: same tokens, same processed log-probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ovgen
from ovgen.choice import build_chain, token_choice
from ovgen.config import GenerationConfig
from ovgen.kernels import penalties as P
from ovgen.kernels.sampling import multinomial

from conftest import PROMPTS

CONFIGS = [
    {"top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1},
    {"top_k": 20, "temperature": 0.7},
    {"top_k": 40, "top_p": 0.95, "repetition_penalty": 1.3, "temperature": 1.5},
    {"top_k": 60, "repetition_penalty": 1.1},
]
# stages that close only after top-k, or lower logits token by token: exact on candidates too
MORE = [
    {"top_k": 50, "min_p": 0.1, "typical_p": 0.9, "repetition_penalty": 1.2},
    {"top_k": 30, "no_repeat_ngram_size": 2, "presence_penalty": 0.5, "frequency_penalty": 0.3},
    {"top_k": 40, "epsilon_cutoff": 0.01, "eta_cutoff": 0.01},
    {"top_k": 40, "dry_multiplier": 0.8, "dry_sequence_breakers": [[5]], "logit_bias": {3: -2.0}},
    {"top_k": 40, "xtc_probability": 0.5, "xtc_threshold": 0.05, "seed": 3},
    {"top_k": 50, "mirostat": 2, "mirostat_tau": 3.0},
]


def _candidates(logits: np.ndarray, m: int):
    """What the graph's topk output gives: the m largest logits, ids ascending."""
    ids = np.sort(np.argpartition(logits, logits.size - m)[-m:])
    return logits[ids], ids


def _choose(cfg, history, logits, top, seed):
    tc = token_choice(cfg, prompt_len=1)
    if cfg.do_sample:
        tc.chooser.rng = np.random.default_rng(seed)
    tc.chain.reset()
    return tc.choose(history, logits, np.float32(0), top)


@pytest.mark.parametrize("settings", CONFIGS + MORE)
def test_candidates_choose_what_the_whole_vocabulary_chooses(settings):
    """Random rows (a third with ties around the 64th value): whenever the stage decides on the 64
    candidates it picks the same token, with the same processed log-probability, as on the whole
    vocabulary; and it does decide often."""
    rng = np.random.default_rng(0)
    cfg = GenerationConfig(**{"do_sample": True, **settings})
    used = 0
    for trial in range(300):
        logits = (rng.standard_normal(3000) * rng.uniform(0.5, 4)).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits, 1)
        history = rng.integers(0, 3000, rng.integers(1, 400))
        if trial % 2:  # the likeliest tokens already generated: the penalty reorders the top
            history = np.concatenate([history, np.argsort(logits)[-rng.integers(1, 40):]])
        a = _choose(cfg, history, logits, _candidates(logits, 64), trial)
        b = _choose(cfg, history, logits, None, trial)
        assert (a.token, a.logprob) == (b.token, b.logprob), (settings, trial)
        used += a.subset
    assert used > 100


def test_candidates_are_refused_when_they_cannot_be_exact():
    cfg = GenerationConfig(do_sample=True, top_k=50, repetition_penalty=1.5)
    logits = np.linspace(10, 0, 1000, dtype=np.float32)
    values, ids = _candidates(logits, 64)
    chain = build_chain(cfg, prompt_len=1)
    # all 64 candidates generated before: penalised below the 64th raw logit, so tokens outside
    # the candidates may belong to the top 50
    assert chain.on_subset(np.arange(64), values, ids, float(values.min()), 1000) is None
    assert chain.on_subset(np.array([999]), values, ids, float(values.min()), 1000) is not None
    # fewer candidates than top_k, or a stage that needs the whole distribution before top-k closes it
    assert build_chain(cfg.replace(top_k=65), prompt_len=1).on_subset(np.array([999]), values, ids,
                                                                       float(values.min()), 1000) is None
    chain = build_chain(cfg.replace(top_p=0.9), prompt_len=1)
    assert chain.on_subset(np.array([999]), values, ids, float(values.min()), 1000) is not None
    chain.stages.reverse()  # top-p first: the nucleus of an open subset is not the whole vocabulary's
    assert chain.on_subset(np.array([999]), values, ids, float(values.min()), 1000) is None


@pytest.mark.parametrize("settings", [
    {"top_k": 0, "top_p": 0.9},  # no top-k: the nucleus may reach beyond any fixed set
    {"top_k": 50, "repetition_penalty": 0.8},  # a penalty < 1 raises logits before top-k closes the set
    {"top_k": 0, "min_p": 0.1},
    {"top_k": 50, "logit_bias": {7: 5.0}},  # a positive bias may lift an outsider
    {"top_k": 50, "top_n_sigma": 1.0},  # llama.cpp's σ is over every finite logit (it runs before top-k)
])
def test_chains_that_cannot_run_on_open_candidates(settings):
    cfg = GenerationConfig(**{"do_sample": True, **settings})
    values, ids = _candidates(np.linspace(10, 0, 1000, dtype=np.float32), 64)
    assert build_chain(cfg, prompt_len=1).on_subset(np.array([999]), values, ids, float(values.min()), 1000) is None


def test_greedy_after_processors_takes_the_whole_vocabulary():
    """Its record carries the processed log-probability, whose normaliser needs every token's
    processed score: on an open subset greedy declines (plain greedy decides on the candidates)."""
    logits = np.linspace(10, 0, 1000, dtype=np.float32)
    top = _candidates(logits, 64)
    assert _choose(GenerationConfig(repetition_penalty=1.3), np.array([5]), logits, top, 0).subset is False
    assert _choose(GenerationConfig(), np.array([5]), logits, top, 0).subset is True


def test_a_user_processor_runs_on_candidates_only_when_it_says_so():
    cfg = GenerationConfig(do_sample=True, top_k=50)
    values, ids = _candidates(np.linspace(10, 0, 1000, dtype=np.float32), 64)

    def ban_seven(token_ids, logits):
        logits[7] = -np.inf
        return logits

    assert build_chain(cfg, prompt_len=1, user=[ban_seven]).on_subset(np.array([1]), values, ids, 0.0, 1000) is None
    ban_seven.subset = "lowers"
    out = build_chain(cfg, prompt_len=1, user=[ban_seven]).on_subset(np.array([1]), values, ids,
                                                                      float(values.min()), 1000)
    assert out is not None and out[0][list(ids).index(7)] == -np.inf


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


@pytest.mark.parametrize("vocab", [49152, 32064, 16385])
def test_block_topk_keeps_the_k_largest_as_a_flat_topk_does(vocab):
    """kernels.graph._block_topk (the candidates over a large vocabulary): ids ascending, values the
    logits at those ids, and the same values as the k largest (a flat TopK's, and NumPy's) - with
    ties at the k-th place, more than k tied maxima, the largest logits in the -inf-padded last
    block, several rows and positions; all NaN in a row holding a NaN logit."""
    import openvino as ov
    from openvino import opset11, opset13

    from ovgen.kernels.graph import BLOCK, top_candidates

    k = 64
    assert -(-vocab // BLOCK) >= 4 * k  # the block path, not the flat fallback
    x = opset13.parameter([-1, -1, vocab], ov.Type.f32)
    flat = opset11.topk(x, np.array(k, np.int64), -1, "max", "index", "i64", stable=False)
    core = ov.Core()
    block = core.compile_model(ov.Model([opset13.result(p) for p in top_candidates(x.output(0), k)], [x]), "CPU")
    plain = core.compile_model(ov.Model([opset13.result(p) for p in flat.outputs()], [x]), "CPU")
    rng = np.random.default_rng(vocab)
    for trial in range(12):
        rows, positions = [(1, 1), (16, 1), (3, 5), (2, 11)][trial % 4]
        logits = (rng.standard_normal((rows, positions, vocab)) * 3).astype(np.float32)
        if trial % 3 == 1:
            logits = np.round(logits)  # thousands of ties, at the k-th place too
        if trial % 3 == 2:
            logits[..., rng.integers(0, vocab, 100)] = logits.max() + 1  # ~100 tied maxima: more than k
        if trial % 4 == 3:
            logits[..., -3:] = logits.max() + 2  # the largest in the last block (padded when vocab % BLOCK)
        if trial % 6 == 5:  # a NaN, which ReduceMax passes over: the row's candidates are all NaN
            logits[0, 0, rng.integers(0, vocab, 3)] = np.nan
        values, ids = (a.copy() for a in block(logits).values())
        ref = plain(logits)[1]
        for r in range(rows):
            for t in range(positions):
                row = logits[r, t]
                if np.isnan(row).any():  # the stage then refuses the candidates (test below)
                    assert np.isnan(values[r, t]).all()
                    continue
                assert (np.diff(ids[r, t]) > 0).all() and ids[r, t].max() < vocab
                np.testing.assert_array_equal(values[r, t], row[ids[r, t]])
                np.testing.assert_array_equal(np.sort(values[r, t]), np.sort(row)[-k:])
                np.testing.assert_array_equal(np.sort(values[r, t]), np.sort(row[ref[r, t]]))


@pytest.mark.parametrize("settings", [{"do_sample": False}, *CONFIGS[:2]])
def test_nan_candidates_leave_the_choice_to_the_whole_row(settings):
    """A row holding a NaN logit gets NaN candidates from the graph (`_block_topk`): the stage refuses
    them and meets the NaN on the whole row, as without candidates - the same error, or for greedy
    np.argmax's token."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(49152).astype(np.float32)
    logits[[17, 30000]] = np.nan
    cfg = GenerationConfig(**settings)
    history = np.array([1, 2, 3], np.int64)
    top = (np.full(64, np.nan, np.float32), np.sort(rng.choice(49152, 64, replace=False)))
    outcomes = []
    for candidates in (top, None):
        try:
            outcomes.append(("token", _choose(cfg, history, logits, candidates, 0).token))
        except ValueError as e:
            outcomes.append(("error", str(e)))
    assert outcomes[0] == outcomes[1]
    if not cfg.do_sample:
        assert outcomes[0] == ("token", int(np.argmax(logits)))


@pytest.mark.parametrize("settings", CONFIGS + MORE[:2])
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


def test_the_top_k_gate_computes_the_candidates_only_when_asked():
    """kernels.graph.add_topk_output(gate=...): with the gate on, the outputs of the ungated TopK;
    off, zeros of the same shapes; the logits are the same either way."""
    import openvino as ov
    from openvino import opset13

    from ovgen.kernels.graph import add_topk_output

    def graph(gate):
        x = opset13.parameter([-1, -1, 12], ov.Type.f32, name="x")
        out = opset13.result(opset13.multiply(x, np.float32(2)))
        out.output(0).get_tensor().set_names({"logits"})
        m = ov.Model([out], [x])
        add_topk_output(m, 4, gate=gate)
        return ov.Core().compile_model(m, "CPU")

    plain, gated = graph(None), graph("on")
    assert [p.any_name for p in gated.inputs] == ["x", "on"]
    x = np.random.default_rng(0).standard_normal((3, 2, 12)).astype(np.float32)
    ref = plain(x)
    on = gated({"x": x, "on": np.array(True)})
    off = gated({"x": x, "on": np.array(False)})
    for name in ("logits", "topk_values", "topk_ids"):
        np.testing.assert_array_equal(on[gated.output(name)], ref[plain.output(name)])
        assert off[gated.output(name)].shape == ref[plain.output(name)].shape
    np.testing.assert_array_equal(off[gated.output("logits")], ref[plain.output("logits")])
    assert not off[gated.output("topk_values")].any() and not off[gated.output("topk_ids")].any()


def test_the_gate_leaves_logits_and_logsumexp_as_they_are(model):
    """A session whose infers alternate candidates on and off computes, bit for bit, the logits and
    logsumexp of one that always has them on; `top` is None after an infer that ran without them."""
    ids = model.tokenizer.encode(PROMPTS[1])
    a, b = model.session(), model.session()
    la, lb = a.prefill(ids).copy(), b.prefill(ids)
    for i in range(12):
        np.testing.assert_array_equal(la, lb)
        assert a.logsumexp == b.logsumexp
        assert (b.top is None) == (i > 0 and i % 2 == 0) and a.top is not None
        token = int(np.argmax(la))
        b.want_top = i % 2 == 0
        la, lb = a.step(token).copy(), b.step(token)


def _gate_log(monkeypatch):
    """The want_top every infer of a Session started with, in order."""
    from ovgen.session import Session

    log, arm = [], Session._arm

    def spy(self):
        arm(self)
        log.append(self._top_on)
    monkeypatch.setattr(Session, "_arm", spy)
    return log


def test_greedy_runs_without_the_candidates_and_chooses_the_same(model, monkeypatch):
    """Greedy without processors turns the top-k off after the prefill (TokenChoice.wants_top) and
    gives the tokens, log-probabilities and top-choice flags of the same run with them on."""
    from ovgen.choice import TokenChoice

    log = _gate_log(monkeypatch)
    cfg = {"max_new_tokens": 24, "ignore_eos": True}
    for prompt in PROMPTS[:3]:
        log.clear()
        off = ovgen.generate(model, prompt, cfg).sequences[0]
        assert log[0] and not any(log[1:]) and len(log) == 24  # the prefill keeps them (a session's default)
        with monkeypatch.context() as m:
            m.setattr(TokenChoice, "wants_top", property(lambda self: True))
            log.clear()
            on = ovgen.generate(model, prompt, cfg).sequences[0]
            assert all(log)
        assert off.token_ids == on.token_ids
        assert [r.logprob for r in off.records] == [r.logprob for r in on.records]
        assert [r.top_choice for r in off.records] == [r.top_choice for r in on.records]
        assert any(r.subset for r in on.records) and not any(r.subset for r in off.records[1:])


def test_each_loop_asks_for_the_candidates_it_uses(model, monkeypatch):
    """Sampling and processors keep the top-k on; beam search and speculative verification (which
    choose on whole rows) turn it off; a batch keeps it on when any row uses it; a session passed in
    gets its own setting back afterwards."""
    log = _gate_log(monkeypatch)
    greedy = {"max_new_tokens": 6, "ignore_eos": True}
    sample = {**greedy, "do_sample": True, "top_k": 20, "seed": 0}
    cases = [(PROMPTS[0], sample, True), (PROMPTS[0], {**sample, "top_k": 0, "top_p": 0.9}, False),
             (PROMPTS[0], {**greedy, "repetition_penalty": 1.2}, False),
             (PROMPTS[0], {**greedy, "num_beams": 3}, False), (PROMPTS[:2], greedy, False),
             (PROMPTS[0], {**sample, "prompt_lookup": True, "num_assistant_tokens": 3}, False)]
    for prompt, cfg, want in cases:
        log.clear()
        ovgen.generate(model, prompt, cfg, **({"batch_size": 2} if isinstance(prompt, list) else {}))
        assert set(log[1:]) == {want}, cfg
    log.clear()
    ovgen.generate(model, PROMPTS[:2], greedy, batch_size=2, configs=[{}, sample])  # rows of their own settings
    assert log[0] and all(log[:6]), log  # both rows in the batch: on while the sampling row needs it
    s = model.session()
    s.want_top = False
    ovgen.generate(model, PROMPTS[0], sample, session=s)
    assert s.want_top is False


@pytest.mark.parametrize("settings, closes", [
    ({"do_sample": True, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1}, True),
    ({"do_sample": True, "top_k": 63, "min_p": 0.1}, True),
    ({"do_sample": True, "top_k": 64}, False),  # its 64th largest cannot beat the 64th candidate
    ({"do_sample": True, "top_k": 0, "top_p": 0.9}, False),  # top-p needs the subset closed first
    ({"do_sample": True, "top_k": 20, "mirostat": 2}, True),
    ({"repetition_penalty": 1.3}, False),  # greedy after a processor: the mass outside is unknown
])
def test_the_loops_want_the_candidates_only_where_they_can_decide(settings, closes):
    """TokenChoice.wants_top against what the stage does on candidates: when it says no, 200 random
    rows never decide on them; when it says yes, they decide on most."""
    cfg = GenerationConfig(**settings)
    assert token_choice(cfg, prompt_len=1).wants_top is closes
    rng = np.random.default_rng(1)
    decided = 0
    for trial in range(200):
        logits = (rng.standard_normal(3000) * 3).astype(np.float32)
        tc = token_choice(cfg, prompt_len=1)
        tc.chain.reset()
        decided += tc.choose(np.array([5, 6, 7]), logits, np.float32(0), _candidates(logits, 64)).subset
    assert (decided > 150) if closes else decided == 0, decided


def test_plain_greedy_does_not_want_the_candidates():
    """Greedy without processors could decide on the candidates, but reads the argmax and its
    log-probability from the whole row in microseconds: the loops skip the graph's TopK for it."""
    assert not token_choice(GenerationConfig(top_k=20), prompt_len=1).wants_top
