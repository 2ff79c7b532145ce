"""Beam search parity: ovgen against transformers' `generate()` running the same IR through
optimum-intel's `OVModelForCausalLM` (the OpenVINO Phi-3 sample's path), with the same prompt ids.

Sequences must be token-identical and scores (`sequences_scores`) within 1e-4. Diverse beam search
left transformers for the Hub in 4.56 (not reachable here), so its reference is the 4.55 group
beam search loop driven by the parts transformers still ships: `BeamSearchScorer` and
`HammingDiversityLogitsProcessor` (`hf_group_beam_search` below).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from optimum.intel import OVModelForCausalLM
from transformers.generation.beam_search import BeamSearchScorer
from transformers.generation.logits_process import HammingDiversityLogitsProcessor, LogitsProcessorList

import ovgen
from conftest import PROMPTS
from ovgen.generate import prompt_ids
from structured_cases import REGEXES, SCHEMAS

EOS = 2  # <|im_end|>; also the pad token, so HF pads finished beams with it
MAX_NEW = 32


@pytest.fixture(scope="module")
def hf(model):
    return OVModelForCausalLM.from_pretrained(model.path, compile=True, ov_config=model.ov_config)


@pytest.fixture(scope="module")
def prompts(model):
    """8 prompts: 4 chat turns (the instruct model ends them with eos, so finished hypotheses,
    length penalty and early stopping all act) and 4 raw continuations (beams run to the length limit)."""
    chat = [prompt_ids(model, [{"role": "user", "content": p}]) for p in PROMPTS[:4]]
    raw = [model.tokenizer.encode(p) for p in PROMPTS[6:10]]
    return chat + raw


def trim(seq: list[int], eos=(EOS,)) -> list[int]:
    """HF pads shorter returned beams with pad (= eos here): cut after the first eos id."""
    ends = [i for i, t in enumerate(seq) if t in eos]
    return seq[:ends[0] + 1] if ends else seq


def hf_beam(hf, ids, **kw):
    t = torch.tensor([ids])
    out = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=MAX_NEW, do_sample=False,
                      output_scores=True, return_dict_in_generate=True, **kw)
    seqs = [trim(row[len(ids):].tolist()) for row in out.sequences]
    scores = out.sequences_scores.tolist() if kw.get("num_beams", 1) > 1 else None
    return seqs, scores


def ours(model, ids, **kw):
    res = ovgen.generate(model, ids, {"max_new_tokens": MAX_NEW, "do_sample": False, **kw})
    return res


def assert_same(res, ref_seqs, ref_scores):
    assert [s.token_ids for s in res.sequences] == ref_seqs
    if ref_scores is not None:
        np.testing.assert_allclose([s.score for s in res.sequences], ref_scores, rtol=0, atol=1e-4)


def test_greedy_matches_transformers(model, hf, prompts):
    for ids in prompts:
        ref, _ = hf_beam(hf, ids)
        assert_same(ours(model, ids), ref, None)


GRID = list(itertools.product([2, 4], [0.5, 1.0, 2.0], [True, False, "never"]))


@pytest.mark.parametrize("cell", range(len(GRID)), ids=[f"beams{b}-lp{lp}-es{es}" for b, lp, es in GRID])
def test_beam_grid_matches_transformers(model, hf, prompts, cell):
    """Each cell on 4 of the 8 prompts (2 chat, 2 raw, rotating), so every prompt meets the grid."""
    num_beams, length_penalty, early_stopping = GRID[cell]
    kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
              num_return_sequences=2)
    for i in (cell % 4, (cell + 1) % 4, 4 + cell % 4, 4 + (cell + 1) % 4):
        ref, scores = hf_beam(hf, prompts[i], **kw)
        assert_same(ours(model, prompts[i], **kw), ref, scores)


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 3},
                                   {"repetition_penalty": 1.2, "no_repeat_ngram_size": 2}],
                         ids=["plain", "repetition", "ngram", "both"])
def test_beam_search_on_eight_prompts(model, hf, prompts, extra):
    kw = dict(num_beams=4, num_return_sequences=2, **extra)
    for ids in prompts:
        ref, scores = hf_beam(hf, ids, **kw)
        assert_same(ours(model, ids, **kw), ref, scores)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_ends_both_ways_by_construction(model, hf, prompts, num_beams):
    """Every hypothesis ends with eos when eos is pushed to the top of every step's log-probs (HF's
    sequence_bias = ovgen's logit_bias, +30 on eos), and none does when eos is held back for the
    whole length (min_new_tokens = max_new_tokens):
    finished-hypothesis bookkeeping and the length limit are each compared with transformers,
    whatever this CPU's model prefers."""
    for ids in (prompts[0], prompts[5]):
        base = dict(num_beams=num_beams, num_return_sequences=2)
        ref, scores = hf_beam(hf, ids, sequence_bias={(EOS,): 30.0}, **base)
        res = ours(model, ids, logit_bias={EOS: 30.0}, **base)
        assert_same(res, ref, scores)
        assert {s.finish_reason for s in res.sequences} == {"stop"}
        ref, scores = hf_beam(hf, ids, min_new_tokens=MAX_NEW, **base)
        res = ours(model, ids, min_new_tokens=MAX_NEW, **base)
        assert_same(res, ref, scores)
        assert {s.finish_reason for s in res.sequences} == {"length"}
        assert all(len(s.token_ids) == MAX_NEW for s in res.sequences)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_stop_strings_end_beams_as_in_transformers(model, hf, prompts, num_beams):
    """transformers' beam search ends a candidate whose last token completes a stop string
    (`StopStringCriteria`, given the tokenizer) as it ends one on eos: it competes for the finished
    slots with its score. Same sequences and scores on the eight prompts with stop strings that end
    some beams in one token ("."), across tokens ("\n\n") and inside a token (","); ovgen's text
    ends before the stop string, finish_reason "stop_string". HF pads a stopped sequence with eos
    (its pad token), so trailing eos are set aside on both sides; the scores tell the two apart.
    (transformers' criterion also sees the prompt, ovgen's only the generated text: the two would
    differ on an answer starting with "\n" after a chat prompt's closing "\n", which this model does
    not write.)"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.path)
    stops = [".", "\n\n", ","]
    kw = dict(num_beams=num_beams, num_return_sequences=2)
    ended = 0
    for ids in prompts:
        ref, scores = hf_beam(hf, ids, stop_strings=stops, tokenizer=tok, **kw)
        res = ours(model, ids, stop_strings=stops, **kw)
        assert [untrail(s.token_ids) for s in res.sequences] == [untrail(r) for r in ref]
        np.testing.assert_allclose([s.score for s in res.sequences], scores, rtol=0, atol=1e-4)
        for s in res.sequences:
            full = model.tokenizer.decode(s.token_ids)
            if s.finish_reason == "stop_string":
                ended += 1
                assert any(full.startswith(s.text + stop) for stop in stops) and not any(x in s.text for x in stops)
            else:
                assert s.text == full
    assert ended >= len(prompts)  # the stop strings did end beams, on most prompts


def untrail(seq: list[int]) -> list[int]:
    while seq and seq[-1] == EOS:
        seq = seq[:-1]
    return seq


def hf_group_beam_search(hf, ids, *, num_beams, groups, penalty, length_penalty=1.0, early_stopping=False,
                         num_return_sequences=2, eos=(EOS,), processors=()):
    """transformers 4.55 `_group_beam_search` (batch 1, the diversity processor, then `processors`), on
    the OV model; `eos`: the eos ids (the first pads finished groups and shorter sequences)."""
    gs, plen = num_beams // groups, len(ids)
    scorer = BeamSearchScorer(batch_size=1, num_beams=num_beams, device="cpu", length_penalty=length_penalty,
                              do_early_stopping=early_stopping, num_beam_hyps_to_keep=num_return_sequences,
                              num_beam_groups=groups, max_length=plen + MAX_NEW)
    procs = LogitsProcessorList([HammingDiversityLogitsProcessor(penalty, num_beams, groups), *processors])
    input_ids = torch.tensor([ids] * num_beams)
    beam_scores = torch.full((num_beams,), -1e9)
    beam_scores[::gs] = 0
    hf._first_iter_beam_search = True  # what OVModelForCausalLM.generate sets: one-row prefill
    past = None
    while True:
        out = hf(input_ids=input_ids if past is None else input_ids[:, -1:],
                 attention_mask=torch.ones_like(input_ids), past_key_values=past)
        past = out.past_key_values
        vocab = out.logits.shape[-1]
        current = torch.zeros(num_beams, dtype=torch.long)
        reorder = torch.zeros(num_beams, dtype=torch.long)
        for g in range(groups):
            rows = list(range(g * gs, (g + 1) * gs))
            group_ids = input_ids[rows]
            lp = torch.log_softmax(out.logits[rows, -1, :].float(), dim=-1)
            lp = procs(group_ids, lp, current_tokens=current, beam_group_idx=g)
            nxt = (lp + beam_scores[rows].unsqueeze(-1)).view(1, gs * vocab)
            nxt, tok = torch.topk(nxt, max(2, 1 + len(eos)) * gs, dim=1, largest=True, sorted=True)
            o = scorer.process(group_ids, nxt, tok % vocab, tok // vocab, pad_token_id=EOS, eos_token_id=list(eos),
                               group_index=g, decoder_prompt_len=plen)
            beam_scores[rows] = o["next_beam_scores"].view(-1)
            idx = o["next_beam_indices"].view(-1)
            input_ids[rows] = group_ids[idx]
            current[rows] = o["next_beam_tokens"].view(-1)
            reorder[rows] = g * gs + idx % gs
        input_ids = torch.cat([input_ids, current.unsqueeze(-1)], dim=-1)
        hf._reorder_cache(past, reorder)
        if scorer.is_done or input_ids.shape[-1] >= plen + MAX_NEW:
            break
    fin = scorer.finalize(input_ids, beam_scores, None, None, pad_token_id=EOS, eos_token_id=list(eos),
                          max_length=plen + MAX_NEW, decoder_prompt_len=plen)
    return [trim(r[plen:].tolist(), eos) for r in fin["sequences"]], fin["sequence_scores"].tolist()


@pytest.mark.parametrize("num_beams,groups,penalty,early_stopping",
                         [(4, 2, 1.0, False), (6, 3, 0.5, True), (4, 4, 2.0, "never")])
def test_diverse_beam_search_matches_transformers(model, hf, prompts, num_beams, groups, penalty, early_stopping):
    for ids in prompts:
        ref, scores = hf_group_beam_search(hf, ids, num_beams=num_beams, groups=groups, penalty=penalty,
                                           early_stopping=early_stopping)
        res = ours(model, ids, num_beams=num_beams, num_beam_groups=groups, diversity_penalty=penalty,
                   early_stopping=early_stopping, num_return_sequences=2)
        assert_same(res, ref, scores)


@pytest.mark.parametrize("num_beams,groups,penalty,stop", [(4, 2, 1.0, "."), (6, 3, 0.5, "."), (4, 2, 1.0, "e")])
def test_diverse_beams_end_on_stop_strings_as_on_eos(model, hf, prompts, num_beams, groups, penalty, stop):
    """Diverse beams with stop strings: a candidate whose last token completes one ends as an eos
    would (the rule of transformers' beam search with `StopStringCriteria`, which the plain beams
    match above). A one-character ASCII stop string is completed exactly by the tokens whose text
    holds that character, so the reference is transformers' group beam search loop with those
    tokens as eos ids: `BeamSearchScorer` then ends those beams, ranks and finalises them. Same
    sequences and scores; ovgen's text ends before the stop string, finish_reason "stop_string" ("e"
    ends most candidates: a group then looks past its first candidates for ones that run on). (The
    scorer keeps a finished hypothesis without its last token and writes the first eos id there: a
    stopped sequence's last token is compared as that.)"""
    dots = sorted(t for t in range(model.vocab_size) if stop in model.tokenizer.decode([t]))
    assert len(dots) > 10
    ended = 0
    for ids in prompts:
        ref, scores = hf_group_beam_search(hf, ids, num_beams=num_beams, groups=groups, penalty=penalty,
                                           eos=[EOS, *dots])
        res = ours(model, ids, num_beams=num_beams, num_beam_groups=groups, diversity_penalty=penalty,
                   num_return_sequences=2, stop_strings=[stop])
        got = [s.token_ids[:-1] + [EOS] if s.finish_reason == "stop_string" else s.token_ids for s in res.sequences]
        assert got == ref
        np.testing.assert_allclose([s.score for s in res.sequences], scores, rtol=0, atol=1e-4)
        for s in res.sequences:
            full = model.tokenizer.decode(s.token_ids)
            if s.finish_reason == "stop_string":
                ended += 1
                assert s.token_ids[-1] in dots and full.startswith(s.text + stop) and stop not in s.text
            else:
                assert s.text == full and not set(s.token_ids) & set(dots)
    assert ended >= len(prompts) // 2  # the stop string did end beams (7 of 16 sequences at 4 beams)


class PrefixGrammar:
    """A grammar as transformers' `prefix_allowed_tokens_fn` applies one: stateless, each row's mask
    from a fresh llguidance matcher fed that row's generated tokens (no matcher follows a beam). A row
    the grammar cannot follow - a finished group's eos padding, a beam run on at -inf - is left
    unmasked: its scores never count."""

    def __init__(self, model, field, value, prompt_len):
        from llguidance import LLMatcher

        from ovgen.structured import grammar_text, ll_tokenizer

        self.template = LLMatcher(ll_tokenizer(model), grammar_text(field, value))
        self.plen, self.vocab = prompt_len, model.vocab_size

    def __call__(self, input_ids, scores):
        from llguidance.numpy import fill_next_token_bitmask

        bits = np.full((1, (self.vocab + 31) // 32), -1, np.int32)
        for r, row in enumerate(input_ids[:, self.plen:].tolist()):
            m = self.template.deep_copy()
            if all(m.consume_token(t) for t in row):
                fill_next_token_bitmask(m, bits, 0)
                allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:scores.shape[-1]].astype(bool)
                scores[r, torch.from_numpy(~allowed)] = -float("inf")
        return scores


GRAMMARS = [("choices", ["yes", "no", "maybe so"], "Is the sky blue? Answer in a few words."),
            ("regex", "(cat|dog|bird) [0-9]", "Name a pet and a number."),
            ("regex", REGEXES[3][2], REGEXES[3][1]),  # groups finish apart: a finished one pads mid-grammar
            ("json_schema", SCHEMAS[7][2], SCHEMAS[7][1])]  # a group's only continuations are eos: -inf beams


@pytest.mark.parametrize("num_beams,groups,penalty,early_stopping", [(4, 2, 1.0, True), (6, 3, 0.5, False)])
def test_diverse_beams_under_a_grammar_match_a_stateless_mask(model, hf, num_beams, groups, penalty, early_stopping,
                                                             monkeypatch):
    """Diverse beams with choices / regex / JSON Schema: each group masks its own rows with matchers that
    follow its beams; the same sequences and scores as transformers' group beam search with the
    grammar as a stateless per-row mask (`PrefixGrammar`), wherever the reference's score is finite.
    A finished group's eos padding and the beams a group runs on at -inf take tokens the grammar does
    not allow there: those rows are retired from the grammar (counted here: rows that were mid-grammar
    when retired; with retire a no-op the search raised "token 2 / 0 is not allowed here")."""
    from ovgen.structured import GrammarMask

    mid_grammar = 0
    real = GrammarMask.accept

    def accept(self, token):
        nonlocal mid_grammar
        mid_grammar += sum(1 for r in np.flatnonzero(self.retired) if not self.matchers[r].is_stopped())
        return real(self, token)

    monkeypatch.setattr(GrammarMask, "accept", accept)
    for field, value, question in GRAMMARS:
        ids = prompt_ids(model, [{"role": "user", "content": question}])
        ref, scores = hf_group_beam_search(hf, ids, num_beams=num_beams, groups=groups, penalty=penalty,
                                           early_stopping=early_stopping, num_return_sequences=num_beams,
                                           processors=[PrefixGrammar(model, field, value, len(ids))])
        res = ours(model, ids, num_beams=num_beams, num_beam_groups=groups, diversity_penalty=penalty,
                   early_stopping=early_stopping, num_return_sequences=num_beams, **{field: value})
        finite = [i for i, s in enumerate(scores) if np.isfinite(s)]
        assert len(finite) >= 2
        assert [res.sequences[i].token_ids for i in finite] == [ref[i] for i in finite]
        np.testing.assert_allclose([res.sequences[i].score for i in finite], [scores[i] for i in finite],
                                   rtol=0, atol=1e-4)
        for s in res.sequences:
            if s.finish_reason == "stop" and field != "json_schema":
                assert s.text in value if field == "choices" else re.fullmatch(value, s.text), s.text
    assert mid_grammar > 0
