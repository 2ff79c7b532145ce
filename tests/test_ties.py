"""Ties: ovgen breaks every tie to the lowest token id, and where a precision makes ties, ovgen and a
reference may part only at one (ovgen/ties.py).

At the plugin's native precision on a bf16 CPU the parity tests run for real against openvino-genai
(greedy) and transformers (beam search) and accept a divergence only at a tie. Elsewhere native is f32
(the exact tests cover it) and those tests skip; the bf16 simulation (tests/bf16sim.py: every logits
tensor both sides read rounded to bfloat16) runs the same checks on every machine.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

import ovgen
from bf16sim import RoundedSession, record_topk, rounded_hf
from conftest import PROMPTS
from ovgen.beam import BeamSearch
from ovgen.config import GenerationConfig
from ovgen.kernels.sampling import apply_top_p, top_k_indices
from ovgen.runtime import has_bf16
from ovgen.search import greedy, top_logprobs
from ovgen.ties import Divergence, beam_divergence, bf16_round, greedy_divergence, tie_tolerance

NEW = 48
needs_bf16 = pytest.mark.skipif(not has_bf16(), reason="this CPU infers in f32 natively: native == exact, "
                                                       "which the exact parity tests cover")


def test_bf16_round_matches_torch_bfloat16():
    """Round to nearest, ties to even, against torch's own float32 -> bfloat16 conversion."""
    rng = np.random.default_rng(0)
    x = np.concatenate([(rng.standard_normal(20000) * 10 ** rng.uniform(-3, 3, 20000)).astype(np.float32),
                        np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 3.0e38, np.inf, -np.inf, 0.0], np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_round(x), want)
    assert bf16_round(np.array([1 + 2**-8], np.float32))[0] == 1.0  # a tie goes to the even neighbour
    assert np.isnan(bf16_round(np.array([np.nan], np.float32)))[0]


def test_tie_tolerance_is_one_unit_in_the_last_place():
    assert tie_tolerance(20.5, "bf16") == 0.125 and tie_tolerance(-1.5, "bf16") == 2**-7
    assert tie_tolerance(20.5, "f16") == 2**-6 and tie_tolerance(20.5, "f32") == 0.0


def test_top_k_indices_gives_ties_to_the_lowest_index():
    x = np.array([1, 3, 3, 2, 3, 0], np.float32)
    assert top_k_indices(x, 2).tolist() == [1, 2]
    assert top_k_indices(x, 4).tolist() == [1, 2, 4, 3]
    assert top_k_indices(x, 6).tolist() == [1, 2, 4, 3, 0, 5]
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = rng.integers(0, 5, 40).astype(np.float32)
        k = int(rng.integers(1, 41))
        assert top_k_indices(y, k).tolist() == sorted(range(40), key=lambda i: (-y[i], i))[:k]


def test_every_choice_site_breaks_ties_to_the_lowest_id():
    flat = np.zeros(300, np.float32)
    flat[[7, 40, 250]] = 5.0  # a three-way tie at the top
    assert top_logprobs(flat, 2, 0.0) == [(7, 5.0), (40, 5.0)]
    kept = np.flatnonzero(apply_top_p(np.zeros(8, np.float32), 0.3) > -np.inf)
    assert kept.tolist() == [0, 1, 2]  # 3 of 8 equal tokens reach 0.3: the lowest ids
    assert greedy(flat) == 7


def test_checks_tell_a_tie_from_a_real_divergence():
    logits = np.array([1.0, 20.5, 20.5, 19.875], np.float32)
    at = lambda ids: logits  # noqa: E731
    assert greedy_divergence(at, [0], [1, 1], [1, 1], "bf16") is None
    tie = greedy_divergence(at, [0], [1], [2], "bf16")
    assert tie == Divergence(0, 1, 2, (20.5, 20.5), True)
    assert not greedy_divergence(at, [0], [1], [3], "bf16").tied  # one bf16 step below: not a tie
    assert greedy_divergence(at, [0], [1], [3], "f32").tied is False
    steps = [(np.array([5, 9]), np.array([-1.0, -2.0]))]
    assert beam_divergence(steps, steps, "bf16") is None
    swapped = [(np.array([9, 5]), np.array([-1.0, -1.0]))]
    assert beam_divergence([(np.array([5, 9]), np.array([-1.0, -1.0]))], swapped, "bf16").tied
    assert not beam_divergence(steps, [(np.array([5, 7]), np.array([-1.0, -2.5]))], "bf16").tied


def _greedy_ref(hf, ids, n):
    t = torch.tensor([ids])
    out = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, do_sample=False, eos_token_id=None,
                      pad_token_id=0)  # no eos: n tokens, as ignore_eos
    return out[0, len(ids):].tolist()


def _top_ties(session, ids, tokens) -> int:
    """Steps of a greedy run whose two largest logits are equal."""
    logits, ties = session.prefill(ids), 0
    for t in tokens:
        top2 = np.partition(logits, logits.size - 2)[-2:]
        ties += int(top2[0] == top2[1])
        logits = session.step(t)
    return ties


@pytest.fixture(scope="module")
def sim_hf(model):
    return rounded_hf(model)


def test_simulated_bf16_greedy_parts_from_transformers_only_at_ties(model, sim_hf):
    ties = parted = 0
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        ours = ovgen.generate(model, ids, {"max_new_tokens": NEW, "ignore_eos": True},
                              session=RoundedSession(model)).sequences[0].token_ids
        ref = _greedy_ref(sim_hf, ids, NEW)
        d = greedy_divergence(lambda x: RoundedSession(model).prefill(x).copy(), ids, ours, ref, "bf16")
        assert d is None or d.tied, (prompt, d)
        parted += d is not None
        ties += _top_ties(RoundedSession(model), ids, ours)
    assert ties > 0  # the simulation does make ties (else this test could not tell the rules apart)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_simulated_bf16_beam_search_parts_from_transformers_only_at_ties(model, sim_hf, num_beams):
    cfg = GenerationConfig(num_beams=num_beams, num_return_sequences=2, max_new_tokens=32,
                           eos_token_id=model.generation_config.eos_token_id)
    for prompt in PROMPTS[:6]:
        ids = model.tokenizer.encode(prompt)
        search = BeamSearch(RoundedSession(model), ids, cfg, max_new_tokens=32)
        ours = [(s.candidates, s.candidate_scores) for s in search.steps()]
        sim_hf.topk_steps.clear()
        t = torch.tensor([ids])
        out = sim_hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=32, num_beams=num_beams,
                              num_return_sequences=2, do_sample=False)
        d = beam_divergence(ours, sim_hf.topk_steps, "bf16")
        assert d is None or d.tied, (prompt, d)
        if d is None:  # the same steps give the same sequences
            eos = model.generation_config.eos_token_id[0]
            ref = [row[len(ids):].tolist() for row in out]
            ref = [r[:r.index(eos) + 1] if eos in r else r for r in ref]
            assert [h.token_ids for h in search.result()] == ref


# ---- the real thing, on a CPU whose native precision is bf16 -------------------------------------------
@pytest.fixture(scope="module")
def native(model_dir):
    return ovgen.load(model_dir, precision="native")


@needs_bf16
def test_native_greedy_parts_from_openvino_genai_only_at_ties(native):
    import openvino_genai as og

    assert native.ov_config["INFERENCE_PRECISION_HINT"] == "bf16"
    pipe = og.LLMPipeline(str(native.path), "CPU", ATTENTION_BACKEND="SDPA", **native.ov_config)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.ignore_eos, cfg.do_sample = NEW, True, False
    for prompt in PROMPTS:
        ids = native.tokenizer.encode(prompt)
        inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
        ref = [int(t) for t in pipe.generate(inputs, cfg).tokens[0]]
        ours = ovgen.generate(native, ids, {"max_new_tokens": NEW, "ignore_eos": True}).sequences[0].token_ids
        d = greedy_divergence(lambda x: native.session().prefill(x).copy(), ids, ours, ref, "bf16")
        assert d is None or d.tied, (prompt, d)


@needs_bf16
def test_native_beam_search_parts_from_transformers_only_at_ties(native):
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoConfig

    from ovgen.model import build_ir

    ir, *_ = build_ir(native.path, keep_input=False)
    hf = record_topk(OVModelForCausalLM(ir, config=AutoConfig.from_pretrained(native.path),
                                        ov_config=native.ov_config, model_save_dir=native.path))
    cfg = GenerationConfig(num_beams=4, num_return_sequences=2, max_new_tokens=32,
                           eos_token_id=native.generation_config.eos_token_id)
    for prompt in PROMPTS[:6]:
        ids = native.tokenizer.encode(prompt)
        search = BeamSearch(native.session(), ids, cfg, max_new_tokens=32)
        ours = [(s.candidates, s.candidate_scores) for s in search.steps()]
        hf.topk_steps.clear()
        t = torch.tensor([ids])
        hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=32, num_beams=4, num_return_sequences=2)
        d = beam_divergence(ours, hf.topk_steps, "bf16")
        assert d is None or d.tied, (prompt, d)
