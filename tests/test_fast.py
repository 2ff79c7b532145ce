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
from ovgen.fast import choose_plan
from ovgen.precision import label
from ovgen.runtime import cpu_flags, has_bf16

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
        with pytest.raises(ValueError, match=r"another model \(.*PREFILL_INFERENCE_PRECISION_HINT=bf16[,)]"):
            exact.restore(s.snapshot())
        assert exact.length == 0
    else:
        exact.restore(s.snapshot())
        assert exact.tokens[0].tolist() == s.tokens[0].tolist()


@pytest.mark.parametrize("device", ["AUTO", "HETERO:CPU"])
def test_a_split_plan_on_a_virtual_device(model, model_dir, device):
    """Both compiles and the handover through a virtual device over the CPU: exact's tokens."""
    m = ovgen.load(model_dir, device, precision=SAME)
    assert m.prefill_compiled is not None and m.report["plan"]["split"]
    s = m.session()
    got = ovgen.generate(m, PROMPTS[4], {"max_new_tokens": 12, "ignore_eos": True}, session=s).sequences[0].token_ids
    assert s.handover_ns > 0 and got == _greedy(model, PROMPTS[4], 12)


def test_short_prompts_skip_the_handover(split):
    s = split.session()
    s.prefill([1, 2, 3])
    s.step(4)
    assert s.handover_ns == 0
    s.prefill(split.tokenizer.encode(PROMPTS[4]))
    s.settle()
    assert s.handover_ns > 0 and s.length == len(split.tokenizer.encode(PROMPTS[4]))


def test_the_handover_runs_after_the_first_token(model, split):
    """The first record is out before the KV copy (it does not count in the TTFT); the copy runs when
    the session is next used, and a reset before then drops it."""
    ids = split.tokenizer.encode(PROMPTS[4])
    s = split.session()
    seen = []
    for rec in ovgen.stream(split, ids, {"max_new_tokens": 4, "ignore_eos": True}, session=s):
        seen.append((rec.token_id, s.handover_ns))
    assert seen[0][1] == 0 and all(h > 0 for _, h in seen[1:])
    assert [t for t, _ in seen] == _greedy(model, ids, 4)
    s.prefill(ids)
    s.reset()
    assert s.handover_ns == 0 and s.length == 0
    assert [int(np.argmax(s.prefill(ids)))] == _greedy(model, ids, 1)


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


@pytest.mark.parametrize("device", ["CPU", "AUTO"])
def test_fast_is_measured_or_exact(model_dir, device):
    """A virtual device over a bf16 CPU is calibrated as the CPU is (it ran f32, "fast = exact", there)."""
    fast = ovgen.load(model_dir, device, precision="fast")
    plan = fast.report["plan"]
    assert has_bf16(device) == has_bf16()
    if has_bf16() or any(f in cpu_flags() for f in ("avx_vnni", "avx512_vnni")):
        assert plan["source"].startswith("calibrated")
    else:  # nothing faster than f32 here: one compile, and the report says why
        assert not plan["split"] and fast.prefill_compiled is None
        assert plan["source"] == ("fast = exact: this CPU has no inference precision faster than f32 (no bf16, "
                                  "and no VNNI for the plugin's int8 activations)")
        assert fast.ov_config["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.parametrize("plan,message", [
    ({"prefill": "int4", "decode": "f32"}, "prefill must be one of f32, f32-dq, bf16, f16"),
    ({"prefill": "bf16", "decode": "f32", "prefill_kv": "i8"}, "prefill_kv must be one of f32, f16, bf16, u8"),
    ({"prefill": "f32"}, "decode must be one of"),
    ({"prefill": "f32", "decode": "f32", "min_prefill_tokens": -1}, "min_prefill_tokens must be an integer >= 0"),
    ({"prefill": "f32", "decode": "f32", "batch": 2}, r"unknown field\(s\) \['batch'\]"),
])
def test_bad_plans_are_refused_before_compiling(model_dir, plan, message):
    with pytest.raises(ValueError, match=message):
        ovgen.load(model_dir, precision=plan)


def test_a_plan_names_each_phases_hint_kv_and_quantization(model, model_dir):
    """"f32-dq" is the f32 hint with the plugin's dynamic quantization left on (exact's f32 turns it off);
    the prefill compile keeps its KV at the plan's prefill_kv. Both read back from the compiled models."""
    m = ovgen.load(model_dir, precision={"prefill": "f32", "decode": "f32-dq", "min_prefill_tokens": 4,
                                         "prefill_kv": "u8"})
    decode, prefill = m.report["properties"], m.report["prefill_properties"]
    assert decode["INFERENCE_PRECISION_HINT"] == prefill["INFERENCE_PRECISION_HINT"] == "f32"
    assert decode["DYNAMIC_QUANTIZATION_GROUP_SIZE"] != "0" and prefill["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    assert decode["KV_CACHE_PRECISION"] == "f16" and prefill["KV_CACHE_PRECISION"] == "u8"
    assert m.report["plan"]["prefill_kv"] == "u8"
    # as ovgen bench / compare print it
    vnni = any(f in cpu_flags() for f in ("avx_vnni", "avx512_vnni"))  # where the quantization acts at all
    assert label(m.report) == f"plan (prefill f32, KV u8 from 4 tokens; decode {'f32-dq' if vnni else 'f32'}, KV f16)"
    assert label(model.report) == "exact (f32, KV f16)"
    ids = m.tokenizer.encode(PROMPTS[4])
    out = _greedy(m, ids, 8)  # the u8 state handed over to an f16 cache: a generation goes on from it
    assert len(out) == 8 and m.session().prefill(ids).shape == (m.vocab_size,)


def _times(prefill: dict, step: dict) -> dict:
    return {**{(h, n): t for h, row in prefill.items() for n, t in zip((32, 256, 1024), row)},
            **{(h, "step"): t for h, t in step.items()}}


def test_calibration_picks_each_phase_and_where_the_split_pays():
    """choose_plan on the medians an AMX Xeon measured (2026-12-06): bf16 prefills, f32-dq decodes, the
    handover from a u8 prefill cache is the cheap one, and at 32 tokens the split does not pay."""
    med = _times({"f32": (77.0, 382.0, 2079.0), "f32-dq": (47.5, 224.7, 1642.7), "bf16": (47.2, 105.7, 418.8)},
                 {"f32": 21.6, "f32-dq": 15.5, "bf16": 20.4})
    asked = []

    def handover(prefill, decode, kv):
        asked.append((prefill, decode, kv))
        return {"f32": 97.0, "u8": 15.0}[kv]

    plan = choose_plan(med, (32, 256, 1024), handover)
    assert (plan.prefill, plan.decode, plan.prefill_kv, plan.min_prefill_tokens, plan.split) == \
        ("bf16", "f32-dq", "u8", 256, True)
    assert asked == [("bf16", "f32-dq", "f32"), ("bf16", "f32-dq", "u8")]
    assert "handover of 1024: KV f32 97.0 / KV u8 15.0 ms" in plan.source
    # bf16 fastest in both phases (the bf16 Xeon and EPYCs of the README): one compile, no handover timed
    both = choose_plan(_times({"f32": (48, 293, 1980), "f32-dq": (40, 250, 1700), "bf16": (30, 157, 981)},
                              {"f32": 13.9, "f32-dq": 12.0, "bf16": 10.2}), (32, 256, 1024), handover)
    assert (both.prefill, both.decode, both.split, len(asked)) == ("bf16", "bf16", False, 2)
    # a handover dearer than what the prefill saves at every length: one compile at the decode's hint
    dear = choose_plan(med, (32, 256, 1024), lambda p, d, kv: 5000.0)
    assert (dear.prefill, dear.decode, dear.split) == ("f32-dq", "f32-dq", False)


def test_a_hint_the_plugin_cannot_compile_is_named(model_dir):
    """On an AMX Xeon (OpenVINO 2026.4.1) an f16 hint fails to compile the exported IR itself ("object is
    not initialized"); the error names the device and the properties asked. Elsewhere it compiles (or the
    plugin falls back to what it has) and reads back what runs."""
    try:
        m = ovgen.load(model_dir, precision={"prefill": "f16", "decode": "f16"})
    except RuntimeError as e:
        assert "could not compile the model for CPU with {'INFERENCE_PRECISION_HINT': 'f16'" in str(e)
    else:
        assert m.report["properties"]["INFERENCE_PRECISION_HINT"] in ("f16", "f32", "bf16")
