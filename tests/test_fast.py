"""Fast mode's mechanics (ovgen/fast.py): a split plan prefills on one compile and hands the KV state
to the other; everything after the handover (steps, rewind, snapshot, beams, chat, threads) behaves
as on one compile. A plan of the same precision twice makes the handover testable on any CPU, and
must give exactly the single compile's tokens."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ovgen
from conftest import PROMPTS
from ovgen.chat import Chat
from ovgen.runtime import has_bf16

SAME = {"prefill": "f32", "decode": "f32", "min_prefill_tokens": 4}


@pytest.fixture(scope="module")
def split(model_dir):
    return ovgen.load(model_dir, precision=SAME)


def _greedy(model, prompt, n=24, **kw):
    return ovgen.generate(model, prompt, {"max_new_tokens": n, "ignore_eos": True, **kw}).sequences[0].token_ids


def test_a_split_plan_compiles_twice_and_reports_both(split):
    assert split.prefill_compiled is not None and split.min_prefill_tokens == 4
    assert split.report["precision"] == "plan" and split.report["plan"]["split"]
    assert split.report["plan"]["source"] == "explicit"


@pytest.mark.parametrize("prompt", PROMPTS[:5])
def test_the_handover_changes_no_token(model, split, prompt):
    assert _greedy(split, prompt) == _greedy(model, prompt)
    assert _greedy(split, prompt, do_sample=True, seed=3, top_k=30) == _greedy(model, prompt, do_sample=True, seed=3,
                                                                               top_k=30)


def test_a_bf16_prefills_states_are_not_restored_into_an_exact_session(model, model_dir):
    """A split plan's prompt KV comes from its prefill compile; its decode precision alone matched the exact
    model's, so its snapshots restored into exact sessions (and its saved files loaded) as if f32. Where
    the CPU has bf16 they are refused; elsewhere the plugin runs f32 in both, the same states, taken."""
    mixed = ovgen.load(model_dir, precision={"prefill": "bf16", "decode": "f32", "min_prefill_tokens": 4})
    s = mixed.session()
    s.prefill(model.tokenizer.encode(PROMPTS[4]))
    exact = model.session()
    if has_bf16():
        with pytest.raises(ValueError, match=r"another model \(.*PREFILL_INFERENCE_PRECISION_HINT=bf16\)"):
            exact.restore(s.snapshot())
        assert exact.length == 0
    else:
        exact.restore(s.snapshot())
        assert exact.tokens[0].tolist() == s.tokens[0].tolist()


def test_short_prompts_skip_the_handover(split):
    s = split.session()
    s.prefill([1, 2, 3])
    assert s.handover_ns == 0
    s.prefill(split.tokenizer.encode(PROMPTS[4]))
    assert s.handover_ns > 0 and s.length == len(split.tokenizer.encode(PROMPTS[4]))


def test_rewind_snapshot_and_beams_after_the_handover(model, split):
    ids = split.tokenizer.encode(PROMPTS[8])
    fresh = _greedy(model, ids, 16)
    s = split.session()
    s.prefill(ids)
    snap = s.snapshot()
    for t in fresh[:6]:
        s.step(t)
    s.rewind(3)  # holes after the handover
    s.restore(snap)
    s.rewind(1)
    logits = s.append([ids[-1]])
    out = []
    for _ in range(16):
        out.append(int(np.argmax(logits)))
        logits = s.step(out[-1])
    assert out == fresh
    beams = ovgen.generate(split, ids, {"max_new_tokens": 16, "num_beams": 3, "num_return_sequences": 2})
    ref = ovgen.generate(model, ids, {"max_new_tokens": 16, "num_beams": 3, "num_return_sequences": 2})
    assert [x.token_ids for x in beams.sequences] == [x.token_ids for x in ref.sequences]


def test_speculation_and_batches_after_the_handover(model, split):
    ids = split.tokenizer.encode("def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return")
    assert _greedy(split, ids, prompt_lookup=True) == _greedy(model, ids)
    batch = ovgen.generate(split, PROMPTS[:3], {"max_new_tokens": 12, "ignore_eos": True})
    assert [r.sequences[0].token_ids for r in batch] == [_greedy(model, p, 12) for p in PROMPTS[:3]]


def test_chat_and_two_threads_on_a_split_model(model, split):
    a, b = Chat(split, {"max_new_tokens": 12}), Chat(model, {"max_new_tokens": 12})
    for msg in ("Hi!", "What is 2 + 2?"):
        assert [r.token_id for r in a.send(msg)] == [r.token_id for r in b.send(msg)]
    want = {p: _greedy(split, p, 16) for p in PROMPTS[:4]}
    got = {}

    def work(p):
        got[p] = _greedy(split, p, 16)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_fast_is_measured_or_exact(model_dir):
    fast = ovgen.load(model_dir, precision="fast")
    plan = fast.report["plan"]
    if has_bf16():
        assert plan["source"].startswith("calibrated")
    else:  # nothing faster than f32 here: one compile, and the report says why
        assert not plan["split"] and fast.prefill_compiled is None
        assert plan["source"] == "fast = exact: this CPU has no inference precision faster than f32"
        assert fast.ov_config["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.parametrize("plan,message", [
    ({"prefill": "int4", "decode": "f32"}, "prefill must be one of f32, bf16, f16"),
    ({"prefill": "f32"}, "decode must be one of"),
    ({"prefill": "f32", "decode": "f32", "min_prefill_tokens": -1}, "min_prefill_tokens must be an integer >= 0"),
    ({"prefill": "f32", "decode": "f32", "batch": 2}, r"unknown field\(s\) \['batch'\]"),
])
def test_bad_plans_are_refused_before_compiling(model_dir, plan, message):
    with pytest.raises(ValueError, match=message):
        ovgen.load(model_dir, precision=plan)
