"""The samplers beyond HF's classics, each against its reference: DRY, XTC and top-nσ against the
expected numbers of llama.cpp's tests/test-sampling.cpp; ε/η against transformers (test_kernels.py);
mirostat v2 against a literal port of llama.cpp's loop and its defining property; classifier-free
guidance token-identical to transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from optimum.intel import OVModelForCausalLM
from scipy import stats
from transformers.generation.logits_process import LogitsProcessorList, UnbatchedClassifierFreeGuidanceLogitsProcessor

import ovgen
from conftest import PROMPTS
from ovgen.choice import Mirostat, token_choice
from ovgen.config import GenerationConfig
from ovgen.kernels import penalties as P
from ovgen.kernels import sampling as S
from ovgen.processors import XTC


def probs(logits):
    return S.softmax(np.asarray(logits, np.float32))


def kept(logits):
    return np.flatnonzero(np.asarray(logits) > -np.inf).tolist()


# ---- llama.cpp tests/test-sampling.cpp, case by case -------------------------------------------------
@pytest.mark.parametrize("p,history,expected,mult,base,allowed,last_n,breakers", [
    ([0.25] * 4, [0, 1], [0.25, 0.25, 0.25, 0.25], 1.0, 1.1, 2, 4, []),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, []),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, [[3]]),
    ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, []),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, []),
])
def test_dry_matches_llama_cpp(p, history, expected, mult, base, allowed, last_n, breakers):
    table = {}
    for b in breakers:
        table.setdefault(b[0], []).append(tuple(b[1:]))
    out = P.apply_dry(np.array(history), np.log(np.array(p, np.float32)), mult, base, allowed, last_n, table)
    np.testing.assert_allclose(probs(out), expected, atol=1e-5)


def test_dry_breakers_from_strings_follow_llama_cpp():
    texts = ["a", "b:", "::", "x", ' "', "q"]  # token texts
    encode = {":": [2], '"': [4], "\n": [], "*": []}.get
    table = P.dry_breakers([":", '"'], texts, lambda s: encode(s, []))
    assert table[1] == [()] and table[2] == [()]  # contain ':' -> break alone
    assert table[4] == [()]  # ' "' contains '"'
    assert 0 not in table and 3 not in table and 5 not in table
    two = P.dry_breakers(["ab"], ["xa", "b", "ab", "c"], lambda s: {"b": [1]}[s])
    assert two == {0: [(1,)], 2: [()]}  # 'xa' ends with the breaker's start: tail is 'b'


def test_dry_penalty_grows_with_the_repeat_and_is_clamped():
    hist = [5, 6, 7, 8] * 3 + [5, 6, 7]
    pen = P.dry_penalties(hist, 0.8, 1.75, 2)
    assert set(pen) == {8} and pen[8] == pytest.approx(0.8 * 1.75 ** (11 - 2))
    assert P.dry_penalties(hist, 0.8, 1.75, 2, last_n=0) == {}
    huge = P.dry_penalties([1, 2] * 400 + [1], 1.0, 2.0, 2)
    assert np.isfinite(huge[2]) and huge[2] == 2.0 ** int(88.7228391 / np.log(2.0))


@pytest.mark.parametrize("threshold,expected", [(0.09, [3]), (0.19, [2, 3]), (0.29, [1, 2, 3]), (0.39, [0, 1, 2, 3])])
def test_xtc_matches_llama_cpp(threshold, expected):
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    assert kept(S.apply_xtc(x, threshold, 0)) == expected


def test_xtc_acts_with_its_probability_and_clones_its_generator():
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    stage = XTC(0.3, 0.09, seed=5)
    acted = [kept(stage(np.arange(3), x)) == [3] for _ in range(4000)]
    assert stats.binomtest(sum(acted), 4000, 0.3).pvalue > 1e-3
    twin = stage.clone()
    assert [kept(stage(None, x)) for _ in range(50)] == [kept(twin(None, x)) for _ in range(50)]
    stage.reset()
    again = XTC(0.3, 0.09, seed=5)
    assert [kept(stage(None, x)) for _ in range(50)] == [kept(again(None, x)) for _ in range(50)]


@pytest.mark.parametrize("n,expected", [(1.0, [0.0, 0.0, 0.428571, 0.571429]), (0.0, [0.1, 0.2, 0.3, 0.4]),
                                        (3.0, [0.1, 0.2, 0.3, 0.4])])
def test_top_n_sigma_matches_llama_cpp(n, expected):
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    np.testing.assert_allclose(probs(S.apply_top_n_sigma(x, n)), expected, atol=1e-5)


def test_top_n_sigma_ignores_masked_tokens():
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    masked = np.concatenate([x, np.full(5, -np.inf, np.float32)])
    assert kept(S.apply_top_n_sigma(masked, 1.0)) == [2, 3]


# ---- mirostat v2 ---------------------------------------------------------------------------------------
def _mirostat_llama_cpp(p: np.ndarray, mu: float, u: float):
    """llama.cpp's mirostat-v2 apply, line by line on a probability vector (dist sampling with u)."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    size = next((k for k, i in enumerate(order) if -np.log2(p[i]) > mu), len(order))
    size = max(size, 1)
    q = np.array([p[i] for i in order[:size]])
    q = q / q.sum()
    cdf, acc = [], 0.0
    for v in q:
        acc += v
        cdf.append(acc)
    idx = next((k for k, c in enumerate(cdf) if u * acc < c), size - 1)
    return order[idx], q[idx]


def test_mirostat_v2_matches_llama_cpp_step_by_step():
    rng = np.random.default_rng(0)
    for trial in range(300):
        p = rng.dirichlet(np.full(int(rng.integers(2, 60)), 0.4))
        mu, u = float(rng.uniform(0.5, 12)), float(rng.random())
        got = S.mirostat_v2(np.log(p).astype(np.float32), mu, u)
        want = _mirostat_llama_cpp(S.softmax(np.log(p).astype(np.float32)), mu, u)
        assert got[0] == want[0] and got[1] == pytest.approx(want[1], rel=1e-9)


def test_mirostat_holds_the_observed_surprise_at_tau():
    """Its defining property: mu follows the error, so the mean surprise of the drawn tokens is tau."""
    ranks = np.arange(1, 2001)
    logits = np.log(1.0 / ranks ** 1.1).astype(np.float32)  # Zipf-like
    for tau in (2.0, 4.0):
        m = Mirostat(tau, 0.1, seed=1)
        p = S.softmax(logits)
        surprise = [-np.log2(p[m(logits)]) for _ in range(3000)]
        assert m.mu != 2 * tau
        # truncation raises the kept tokens' probability: the renormalised surprise is what is held at tau
        twin = Mirostat(tau, 0.1, seed=1)
        held = []
        for _ in range(3000):
            twin(logits)
            held.append(-np.log2(np.exp(twin.logprob)))
        assert abs(np.mean(held[500:]) - tau) < 0.1, (tau, np.mean(held[500:]))
        assert np.mean(surprise) > 0


# ---- classifier-free guidance ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_pair(model):
    def load():
        return OVModelForCausalLM.from_pretrained(model.path, compile=True, ov_config=model.ov_config)
    return load(), load()  # the second runs the unconditional sequence: its own request and state


@pytest.mark.parametrize("scale,negative", [(1.5, "Answer rudely and briefly."), (3.0, None)])
def test_guidance_matches_transformers(model, hf_pair, scale, negative):
    hf, uncond = hf_pair
    for prompt in PROMPTS[:3]:
        ids = model.tokenizer.encode(prompt)
        neg = model.tokenizer.encode(negative) if negative else None
        proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(
            scale, uncond, unconditional_ids=torch.tensor([neg]) if neg else None)
        t = torch.tensor([ids])
        ref = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=24, do_sample=False,
                          logits_processor=LogitsProcessorList([proc]), eos_token_id=None, pad_token_id=0)
        ours = ovgen.generate(model, ids, {"max_new_tokens": 24, "ignore_eos": True, "guidance_scale": scale,
                                           "negative_prompt": negative})
        assert ours.sequences[0].token_ids == ref[0, len(ids):].tolist(), prompt
    plain = ovgen.generate(model, ids, {"max_new_tokens": 24, "ignore_eos": True}).sequences[0].token_ids
    assert plain != ours.sequences[0].token_ids  # the guidance did act


def test_guidance_refuses_beams_before_inference(model):
    with pytest.raises(ValueError, match="guidance_scale .* num_beams must be 1"):
        ovgen.generate(model, "Hi", {"guidance_scale": 2.0, "num_beams": 2})


def test_new_samplers_generate_on_the_real_model(model):
    """Each new sampler in a real generation: valid tokens, reproducible by seed."""
    for extra in ({"dry_multiplier": 0.8}, {"xtc_probability": 0.5, "xtc_threshold": 0.1},
                  {"top_n_sigma": 1.0, "top_k": 0}, {"epsilon_cutoff": 3e-4}, {"eta_cutoff": 3e-4},
                  {"mirostat": 2, "top_k": 0, "mirostat_tau": 3.0}):
        cfg = {"do_sample": True, "seed": 11, "max_new_tokens": 24, **extra}
        a = ovgen.generate(model, "Once upon a time", cfg).sequences[0]
        b = ovgen.generate(model, "Once upon a time", cfg).sequences[0]
        assert a.token_ids == b.token_ids and len(a.token_ids) > 0, extra


def test_dry_stops_a_verbatim_loop(model):
    """A prompt the model continues by repeating itself: DRY (llama.cpp defaults) breaks the loop."""
    text = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat."
    loop = "The cat sat on the mat."
    plain = ovgen.generate(model, text, {"max_new_tokens": 30, "ignore_eos": True}).text
    dry = ovgen.generate(model, text, {"max_new_tokens": 30, "ignore_eos": True, "dry_multiplier": 0.8}).text
    assert plain.count(loop) >= 3
    assert dry.count(loop) < plain.count(loop)


def test_sampler_settings_are_validated_with_one_message_shape():
    for field, value, msg in [("dry_multiplier", -1.0, r"dry_multiplier must be in \[0, inf\)"),
                              ("dry_base", 0.5, r"dry_base must be in \[1, inf\)"),
                              ("dry_penalty_last_n", -2, "dry_penalty_last_n must be an integer >= -1"),
                              ("dry_sequence_breakers", [""], "dry_sequence_breakers must hold"),
                              ("xtc_probability", 1.5, r"xtc_probability must be in \[0, 1\]"),
                              ("top_n_sigma", -1.0, r"top_n_sigma must be in \[0, inf\)"),
                              ("epsilon_cutoff", 1.0, r"epsilon_cutoff must be in \(0, 1\)"),
                              ("eta_cutoff", -0.1, r"eta_cutoff must be in \(0, 1\)"),
                              ("mirostat", 1, "mirostat must be 0 .* or 2"),
                              ("mirostat_tau", 0.0, r"mirostat_tau must be in \(0, inf\)"),
                              ("guidance_scale", float("nan"), "guidance_scale must be a finite number"),
                              ("negative_prompt", 5, "negative_prompt must be text or a list of token ids")]:
        with pytest.raises(ValueError, match=msg):
            GenerationConfig(**{field: value}).validate()


def test_mirostat_chooses_and_cannot_drive_beams(model):
    tc = token_choice(GenerationConfig(do_sample=True, mirostat=2), prompt_len=1)
    assert isinstance(tc.chooser, Mirostat)
    with pytest.raises(ValueError, match="mirostat"):
        ovgen.generate(model, "Hi", {"do_sample": True, "mirostat": 2, "num_beams": 2})
