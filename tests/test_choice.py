"""The token-choice stage (ovgen/choice.py): whatever a processor does takes effect, errors name the
processor, state never leaks between prompts, clones are independent, user choosers plug in, and
transformers' own processors join the chain token-identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from optimum.intel import OVModelForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

import ovgen
from conftest import PROMPTS
from ovgen.choice import Candidates, Choice, Chooser, FunctionChooser, Greedy, Mirostat, Sampler, token_choice
from ovgen.config import GenerationConfig
from ovgen.processors import hf_processor

PROMPT = "The capital of France is"


def _tokens(model, processors=(), **cfg):
    res = ovgen.generate(model, PROMPT, {"max_new_tokens": 4, **cfg}, processors=processors)
    return res.sequences[0].token_ids


def test_an_in_place_edit_takes_effect_under_greedy(model):
    """The case that was silently ignored: a ban written into the logits it was given."""
    plain = _tokens(model)
    t = plain[0]

    def ban_in_place(ids, logits):
        logits[t] = -np.inf
        return logits

    def ban_on_copy(ids, logits):
        out = logits.copy()
        out[t] = -np.inf
        return out

    def ban_returning_nothing_new(ids, logits):  # edits and returns a float64 copy
        out = logits.astype(np.float64)
        out[t] = -np.inf
        return out

    banned = _tokens(model, [ban_in_place])
    assert banned[0] != t
    assert banned == _tokens(model, [ban_on_copy]) == _tokens(model, [ban_returning_nothing_new])
    assert _tokens(model) == plain  # the session's logits buffer was not written


@pytest.mark.parametrize("bad,message", [
    (lambda ids, x: x[:10], "returned logits of shape"),
    (lambda ids, x: np.full_like(x, np.nan), "returned NaN"),
    (lambda ids, x: list(x), "returned list"),
    (lambda ids, x: x.astype(np.int32), "returned int32"),
    (lambda ids, x: np.full_like(x, -np.inf), "every token is masked .* <lambda>"),
])
def test_a_bad_processor_is_named_and_the_session_survives(model, bad, message):
    session = model.session()
    with pytest.raises((ValueError, TypeError), match=message):
        ovgen.generate(model, PROMPT, {"max_new_tokens": 3}, processors=[bad], session=session)
    assert ovgen.generate(model, PROMPT, {"max_new_tokens": 4}, session=session).sequences[0].token_ids == _tokens(model)


def test_a_reused_stage_never_sees_the_previous_prompts_history():
    """RepetitionPenalty keeps set(token_ids) between steps on candidates: two prompts of the same
    length ending in the same token must still be penalised by their own history."""
    cfg = GenerationConfig(do_sample=True, top_k=10, repetition_penalty=5.0)
    logits = np.linspace(10, 0, 500, dtype=np.float32)
    top = (logits[:64].copy(), np.arange(64))
    shared = token_choice(cfg, prompt_len=1)
    a, b = np.array([0, 1, 2, 9]), np.array([3, 4, 5, 9])  # same length, same last token
    for ids in (a, b, a):
        shared.reset()
        fresh = token_choice(cfg, prompt_len=1)
        shared.chooser.rng = np.random.default_rng(0)
        fresh.chooser.rng = np.random.default_rng(0)
        assert shared.choose(ids, logits, np.float32(0), top) == fresh.choose(ids, logits, np.float32(0), top)
        assert shared.chain.on_subset(ids, *top, float(top[0].min()), 500)[0][ids[0]] < 0  # its own history


def test_clones_are_independent_and_replay_the_same_draws():
    cfg = GenerationConfig(do_sample=True, top_k=20, seed=3, xtc_probability=0.5, xtc_threshold=0.05,
                           repetition_penalty=1.3)
    rng = np.random.default_rng(1)
    rows = [(rng.standard_normal(300) * 3).astype(np.float32) for _ in range(30)]
    tc = token_choice(cfg, prompt_len=1)
    ids = np.array([1, 2, 3])
    for x in rows[:10]:
        tc.accept(tc.choose(ids, x, np.float32(0)).token)
    twin = tc.clone()
    first = [tc.choose(ids, x, np.float32(0)) for x in rows[10:]]
    second = [twin.choose(ids, x, np.float32(0)) for x in rows[10:]]
    assert first == second


@pytest.mark.parametrize("make", [lambda seed: Sampler(seed), lambda seed: Mirostat(5.0, 0.1, seed)],
                         ids=["sampler", "mirostat"])
def test_each_returned_sequence_draws_from_its_own_child_of_the_seed(make):
    """Sequence i >= 1's chooser (for_sequence) draws what numpy's SeedSequence(seed).spawn gives as child i
    (sequence 0 keeps the seed's own stream); the sequences' draws differ; a chooser mid-stream gives
    the same children; unseeded, every call gives a fresh stream."""
    rows = [(np.random.default_rng(5).standard_normal(300) * 2).astype(np.float32) for _ in range(12)]
    children = np.random.SeedSequence(11).spawn(4)

    def draws(chooser):
        return [chooser.choose(Candidates(x, None, float("-inf"), None, 300)).token for x in rows]

    parent = make(11)
    first = draws(parent)
    seqs = [draws(parent.for_sequence(i)) for i in (1, 2, 3)]
    assert seqs == [draws(make(children[i])) for i in (1, 2, 3)]
    assert len({tuple(d) for d in [first, *seqs]}) == 4
    assert draws(make(11).for_sequence(2)) == seqs[1]
    assert draws(make(None).for_sequence(1)) != draws(make(None).for_sequence(1))
    assert type(Greedy().for_sequence(1)) is Greedy

    class Mine(type(parent)):  # a user's subclass stays itself for every sequence
        pass

    mine = Mine.__new__(Mine)
    mine.__dict__.update(make(11).__dict__)
    assert type(mine.for_sequence(1)) is Mine and draws(mine.for_sequence(1)) == seqs[0]
    assert FunctionChooser(lambda x: 0).for_sequence(1) is None  # no stream of its own: sequences in turn


def test_a_user_chooser_plugs_in(model):
    class SecondBest(Chooser):
        name = "second_best"

        def choose(self, cand: Candidates):
            if cand.ids is not None:
                return None  # only on the whole vocabulary
            order = np.argsort(-cand.values, kind="stable")
            return Choice(int(order[1]), 0.0)

    res = ovgen.generate(model, PROMPT, {"max_new_tokens": 6}, chooser=SecondBest())
    s = model.session()
    logits = s.prefill(model.tokenizer.encode(PROMPT))
    want = []
    for _ in range(6):
        want.append(int(np.argsort(-logits, kind="stable")[1]))
        logits = s.step(want[-1])
    assert res.sequences[0].token_ids == want
    plain_fn = ovgen.generate(model, PROMPT, {"max_new_tokens": 6}, chooser=lambda x: int(np.argsort(-x)[1]))
    assert plain_fn.sequences[0].token_ids == want


def test_records_say_where_the_token_came_from(model):
    recs = ovgen.generate(model, PROMPT, {"max_new_tokens": 6}).sequences[0].records
    # plain greedy: the prefill's candidates decide the first token; then the loop turns them off
    # (TokenChoice.wants_top) and the whole vocabulary decides
    assert recs[0].subset and not any(r.subset for r in recs[1:]) and all(r.top_choice for r in recs)
    recs = ovgen.generate(model, PROMPT, {"max_new_tokens": 6, "repetition_penalty": 1.1}).sequences[0].records
    assert not any(r.subset for r in recs)  # greedy after a processor: the mass outside them is unknown
    recs = ovgen.generate(model, PROMPT, {"max_new_tokens": 6, "do_sample": True, "top_k": 0, "seed": 1}
                          ).sequences[0].records
    assert not any(r.subset for r in recs) and all(r.top_choice in (True, False) for r in recs)


# ---- transformers' processors in ovgen's chain ----------------------------------------------------------
class BanLastToken(LogitsProcessor):
    """A user-written transformers processor: never repeat the previous token."""

    def __call__(self, input_ids, scores):
        return scores.scatter(1, input_ids[:, -1:], float("-inf"))


@pytest.fixture(scope="module")
def hf(model):
    return OVModelForCausalLM.from_pretrained(model.path, compile=True, ov_config=model.ov_config)


@pytest.mark.parametrize("make", [
    lambda ids, eos: MinLengthLogitsProcessor(len(ids) + 12, eos),
    lambda ids, eos: NoBadWordsLogitsProcessor([[253], [216, 34], [4590]], eos_token_id=eos),
    lambda ids, eos: SequenceBiasLogitsProcessor({(13,): -4.0, (30,): 3.0, (1589, 30): -10.0}),
    lambda ids, eos: BanLastToken(),
], ids=["min_length", "no_bad_words", "sequence_bias", "user_written"])
def test_transformers_processors_are_token_identical(model, hf, make):
    eos = model.generation_config.eos_token_id[0]
    changed = 0
    for prompt in PROMPTS[:4]:
        ids = model.tokenizer.encode(prompt)
        t = torch.tensor([ids])
        ref = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=24, do_sample=False,
                          logits_processor=LogitsProcessorList([make(ids, eos)]))
        ref = ref[0, len(ids):].tolist()
        ref = ref[:ref.index(eos) + 1] if eos in ref else ref
        auto = ovgen.generate(model, ids, {"max_new_tokens": 24}, processors=[make(ids, eos)])
        wrapped = ovgen.generate(model, ids, {"max_new_tokens": 24}, processors=[hf_processor(make(ids, eos))])
        assert auto.sequences[0].token_ids == wrapped.sequences[0].token_ids == ref, prompt
        changed += ref != ovgen.generate(model, ids, {"max_new_tokens": 24}).sequences[0].token_ids
    assert changed  # the processor acted on some prompt, so the comparison could tell
