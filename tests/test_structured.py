"""Structured output (ovgen/structured.py, llguidance): every output of every schema, regex and grammar
parses and validates, in every decoding mode; the mask follows the matcher (EOS exactly when it
accepts, rollback, beams); errors name the field before any inference."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

import ovgen
from conftest import require_flavour
from ovgen.cli import main
from ovgen.structured import grammar_stage
from structured_cases import ARITHMETIC, REGEXES, SCHEMAS

SAMPLED = {"do_sample": True, "seed": 0, "temperature": 0.6}


def _valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("name,prompt,schema", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_every_schema_output_parses_and_validates(model, name, prompt, schema):
    for mode in ({}, SAMPLED):
        res = ovgen.generate(model, [{"role": "user", "content": prompt}],
                             {"max_new_tokens": 300, "json_schema": schema, **mode})
        seq = res.sequences[0]
        assert seq.finish_reason == "stop", (mode, seq.text)
        _valid(seq.text, schema)
        assert all(r.allowed is not None and r.allowed >= 1 for r in seq.records)


def test_there_are_twenty_real_world_schemas():
    assert len(SCHEMAS) >= 20
    text = json.dumps([s[2] for s in SCHEMAS])
    for keyword in ("$ref", "anyOf", "oneOf", "enum", "format", "minItems", "maxItems", "pattern", "const"):
        assert keyword in text


@pytest.mark.parametrize("name,prompt,pattern", REGEXES, ids=[r[0] for r in REGEXES])
def test_regex_outputs_match(model, name, prompt, pattern):
    for mode in ({}, SAMPLED):
        seq = ovgen.generate(model, prompt, {"max_new_tokens": 60, "regex": pattern, **mode}).sequences[0]
        assert seq.finish_reason == "stop" and re.fullmatch(pattern, seq.text), (mode, seq.text)


def test_lark_grammar_outputs_parse(model):
    for mode in ({}, SAMPLED, {"do_sample": True, "seed": 5}):
        seq = ovgen.generate(model, "Write an arithmetic expression:", {"max_new_tokens": 60, "grammar": ARITHMETIC,
                                                                         **mode}).sequences[0]
        assert seq.finish_reason == "stop"
        assert re.fullmatch(r"[0-9()+\-*]+", seq.text) and _balanced(seq.text), seq.text
        eval(compile(seq.text, "<expr>", "eval"), {"__builtins__": {}})  # Python parses it too (digits, + - * / ( ))


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_warmup_with_a_constraint_builds_the_grammar_tokenizer_first(model_dir):
    fresh = ovgen.load(model_dir)  # its own tokenizer: nothing cached yet
    fresh.warmup()
    assert "llguidance" not in fresh.tokenizer.cache  # no constraint asked: none built
    fresh.warmup(config={"regex": "[0-9]+"})
    built = fresh.tokenizer.cache["llguidance"]
    out = ovgen.generate(fresh, "Count: 1, 2,", {"max_new_tokens": 6, "regex": "[0-9]+"}).sequences[0].text
    assert re.fullmatch("[0-9]+", out) and fresh.tokenizer.cache["llguidance"] is built  # reused, not rebuilt
    with pytest.raises(ValueError, match="regex: llguidance cannot compile it"):
        fresh.warmup(config={"regex": "("})  # a bad constraint fails in the warm-up, before any answer


def test_choices(model):
    for mode in ({}, SAMPLED):
        seq = ovgen.generate(model, "Is Paris in France? Answer:", {"max_new_tokens": 10,
                                                                    "choices": ["yes", "no", "not sure"], **mode}
                             ).sequences[0]
        assert seq.text in ("yes", "no", "not sure") and seq.finish_reason == "stop"


def test_beam_search_keeps_a_matcher_per_beam(model):
    name, prompt, schema = SCHEMAS[7]  # an array of objects
    res = ovgen.generate(model, [{"role": "user", "content": prompt}],
                         {"max_new_tokens": 200, "json_schema": schema, "num_beams": 3, "num_return_sequences": 3})
    assert len(res.sequences) == 3
    for seq in res.sequences:
        assert seq.finish_reason == "stop"
        _valid(seq.text, schema)


def test_beam_sampling_under_a_constraint_that_forces_tokens(model):
    """A schema forces tokens (`{"`, keys, quotes: one allowed token, fewer than the 2 x num_beams
    continuations a beam sample draws): the sampled search goes on through them (it stopped with
    "needs 6 candidates with non-zero probability" at the first), every sequence valid, the same
    sequences again for the same seed."""
    name, prompt, schema = SCHEMAS[0]
    cfg = {"max_new_tokens": 120, "json_schema": schema, "num_beams": 3, "num_return_sequences": 2,
           "do_sample": True, "top_k": 20, "seed": 5}
    runs = [ovgen.generate(model, [{"role": "user", "content": prompt}], cfg) for _ in range(2)]
    for seq in runs[0].sequences:
        assert seq.finish_reason == "stop"
        _valid(seq.text, schema)
    assert [s.token_ids for s in runs[0].sequences] == [s.token_ids for s in runs[1].sequences]
    choice = ovgen.generate(model, "Is the sky blue? Answer:", {"choices": ["yes", "no"], "num_beams": 2,
                                                                "do_sample": True, "seed": 1})
    assert {s.text for s in choice.sequences} <= {"yes", "no"}


def test_onnx_path_is_constrained_too():
    onnx = ovgen.load(require_flavour("onnx"))
    for name, prompt, schema in SCHEMAS[:3]:
        seq = ovgen.generate(onnx, [{"role": "user", "content": prompt}],
                             {"max_new_tokens": 200, "json_schema": schema}).sequences[0]
        assert seq.finish_reason == "stop"
        _valid(seq.text, schema)


def test_eos_is_allowed_exactly_when_the_grammar_accepts(model):
    schema = SCHEMAS[0][2]
    seq = ovgen.generate(model, "Person:", {"max_new_tokens": 100, "json_schema": schema}).sequences[0]
    stage = grammar_stage(model, model.generation_config.replace(json_schema=schema))
    eos = model.generation_config.eos_token_id[0]
    saw_accepting = 0
    for token in seq.token_ids:
        eos_allowed = bool((stage.bitmask[0][eos >> 5] >> (eos & 31)) & 1)
        assert eos_allowed == stage.accepting
        saw_accepting += stage.accepting
        stage.accept(token)
    assert seq.token_ids[-1] == eos and saw_accepting >= 1


def test_rollback_and_clone_restore_the_mask(model):
    schema = SCHEMAS[5][2]
    seq = ovgen.generate(model, "Person with address:", {"max_new_tokens": 100, "json_schema": schema}).sequences[0]
    stage = grammar_stage(model, model.generation_config.replace(json_schema=schema))
    masks = [stage.bitmask.copy()]
    for token in seq.token_ids[:10]:
        stage.accept(token)
        masks.append(stage.bitmask.copy())
    twin = stage.clone()
    stage.rollback(4)
    np.testing.assert_array_equal(stage.bitmask, masks[6])
    np.testing.assert_array_equal(twin.bitmask, masks[10])  # the clone did not move
    for token in seq.token_ids[6:10]:
        stage.accept(token)
    np.testing.assert_array_equal(stage.bitmask, masks[10])


def test_retired_rows_follow_their_beams_and_a_reorder_revives_them(model):
    """Per-row state for diverse beam search: `rows=` masks with a group's own slice of matchers; a
    retired row skips the tokens it is given (padding, a -inf beam's pick) and stays retired through
    a reorder; a place refilled from a live row follows the grammar again."""
    stage = grammar_stage(model, model.generation_config.replace(regex="(cat [0-9]|dog [a-z])"), rows=3)
    (cat,), (dog,), (space,), (seven,), (x,) = (model.tokenizer.encode(w) for w in ("cat", "dog", " ", "7", "x"))
    eos = model.generation_config.eos_token_id[0]
    stage.accept([cat, dog, dog])
    stage.accept([space] * 3)  # row 0 now takes a digit, rows 1 and 2 a letter
    logits = np.zeros((2, model.vocab_size), np.float32)
    first, group = stage(None, logits), stage(None, logits, rows=slice(1, 3))
    assert np.isfinite(first[:, [seven, x]]).tolist() == [[True, False], [False, True]]
    assert np.isfinite(group[:, [seven, x]]).tolist() == [[False, True], [False, True]]
    stage.retire([1])
    stage.reorder([1, 0, 2])  # the retired "dog " row moves to place 0
    assert stage.retired.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="regex: token 2 is not allowed here"):
        stage.clone().accept([eos, eos, x])  # a live row mid-grammar refuses eos
    stage.accept([eos, seven, x])  # the retired place skips its eos
    assert stage.accepting
    stage.reorder([1, 1, 2])  # place 0 refilled from the live "cat 7" row
    assert not stage.retired.any() and stage.accepting
    stage.accept([eos] * 3)


def test_the_mask_does_not_change_unconstrained_choices_it_allows(model):
    """Where the model's own top token is allowed, greedy takes it: the record says so."""
    seq = ovgen.generate(model, [{"role": "user", "content": "Name a city."}],
                         {"max_new_tokens": 40, "json_schema": SCHEMAS[1][2]}).sequences[0]
    forced = [r for r in seq.records if not r.top_choice]
    assert 0 < len(forced) < len(seq.records)  # the grammar forced some steps, not all
    assert all(r.allowed >= 1 for r in forced)


@pytest.mark.parametrize("changes,message", [
    ({"json_schema": {"type": "object", "properties": {"d": {"type": "string", "format": "weird"}}}},
     "json_schema: llguidance cannot compile it: .*weird"),
    ({"json_schema": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
     "json_schema: llguidance cannot compile it: Unimplemented keys: .*uniqueItems"),
    ({"regex": "(unclosed"}, "regex: llguidance cannot compile it"),
    ({"grammar": "start: undefined_rule"}, "grammar: llguidance cannot compile it"),
    ({"regex": "[^\\x00-\\U0010FFFF]"}, r"^regex: no text matches it \(llguidance: NoExtensionBias\)$"),
    ({"json_schema": "{not json"}, "json_schema: "),
    ({"regex": "a", "choices": ["x"]}, "exclusive"),
    ({"choices": []}, "choices must be a non-empty list"),
    ({"regex": "a", "ignore_eos": True}, "ignore_eos cannot be combined with regex"),
    ({"response_format": {"type": "xml"}}, "response_format must be"),
])
def test_bad_constraints_fail_before_inference(model, changes, message):
    session = model.session()
    with pytest.raises(ValueError, match=message):
        ovgen.generate(model, "hello", {"max_new_tokens": 5, **changes}, session=session)
    assert session.length == 0


def test_openai_response_format(model):
    schema = SCHEMAS[0][2]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    seq = ovgen.generate(model, "Person:", {"max_new_tokens": 100, "response_format": fmt}).sequences[0]
    _valid(seq.text, schema)
    obj = ovgen.generate(model, "Data:", {"max_new_tokens": 100, "response_format": {"type": "json_object"}})
    assert isinstance(json.loads(obj.text), dict)


def test_cli_constraints(model_dir, tmp_path, capsys):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMAS[0][2]))
    assert main(["generate", "-m", str(model_dir), "--chat", "--json-schema", str(path), "--max-new-tokens", "80",
                 "Describe a person."]) == 0
    _valid(capsys.readouterr().out.strip(), SCHEMAS[0][2])
    assert main(["generate", "-m", str(model_dir), "--regex", "[0-9]{3}", "--max-new-tokens", "10", "Number:"]) == 0
    assert re.fullmatch("[0-9]{3}", capsys.readouterr().out.strip())
    assert main(["generate", "-m", str(model_dir), "--choices", "red", "green", "--max-new-tokens", "5", "Colour:"]) == 0
    assert capsys.readouterr().out.strip() in ("red", "green")
    assert main(["generate", "-m", str(model_dir), "--json-schema", str(tmp_path / "missing.json"), "x"]) == 2
    assert "--json-schema: cannot read" in capsys.readouterr().err


def _allowed_before_each_token(model, schema, token_ids) -> list[int]:
    """How many tokens llguidance's mask allows before each token is chosen, replayed on a fresh stage."""
    stage = grammar_stage(model, model.generation_config.replace(json_schema=schema))
    counts = []
    for token in token_ids:
        counts.append(stage.allowed)
        stage.accept(token)
    return counts


@pytest.mark.parametrize("mode", ["decode", "batched", "prompt_lookup"])
def test_each_record_reports_the_mask_its_token_was_chosen_under(model, mode):
    """`record.allowed` is the mask of the token's own step (not the next one, which accepting the
    token computes), in the one-row loop, batched rows and speculative verification."""
    schema = SCHEMAS[0][2]
    cfg = {"max_new_tokens": 60, "json_schema": schema, "prompt_lookup": mode == "prompt_lookup"}
    prompts = ["Person:", "A person, as JSON:"]
    if mode == "batched":
        seqs = [r.sequences[0] for r in ovgen.generate(model, prompts, cfg)]
    else:
        seqs = [ovgen.generate(model, prompts[0], cfg).sequences[0]]
    for seq in seqs:
        assert [r.allowed for r in seq.records] == _allowed_before_each_token(model, schema, seq.token_ids)
        assert len(set(r.allowed for r in seq.records)) > 2  # the masks differ from step to step
