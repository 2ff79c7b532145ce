"""attention="paged" (ovgen/paged.py): the PagedAttention IR with KV blocks the session owns.
Greedy tokens equal openvino-genai's own paged pipeline (ATTENTION_BACKEND="PA", same IR and
properties) and the stateful IR's; prompt lookup on it equals plain greedy; a rewind is O(1) and
continues like a fresh run; the cache grows past its first allocation; what it does not do says so."""

from __future__ import annotations

import numpy as np
import openvino_genai
import pytest

import ovgen
from conftest import PROMPTS
from ovgen.cli import main
from test_parity_genai import genai_greedy
from test_speculative import GROUNDED


@pytest.fixture(scope="module")
def paged(model_dir):
    return ovgen.load(model_dir, attention="paged")


def _greedy(model, prompt, n=48, **kw):
    return ovgen.generate(model, prompt, {"max_new_tokens": n, "ignore_eos": True, **kw}).sequences[0].token_ids


@pytest.fixture(scope="module")
def genai_pa(paged):
    return openvino_genai.LLMPipeline(str(paged.path), "CPU", ATTENTION_BACKEND="PA", **paged.ov_config)


@pytest.mark.parametrize("prompt", PROMPTS[:6])
def test_greedy_matches_openvino_genai_paged(paged, genai_pa, prompt):
    ids = paged.tokenizer.encode(prompt)
    assert _greedy(paged, ids, 64) == genai_greedy(genai_pa, ids, 64)


@pytest.mark.parametrize("prompt", GROUNDED + PROMPTS[:3])
def test_paged_greedy_and_prompt_lookup_equal_the_stateful_greedy(model, paged, prompt):
    plain = _greedy(model, prompt)
    assert _greedy(paged, prompt) == plain
    assert _greedy(paged, prompt, prompt_lookup=True, num_assistant_tokens=8) == plain


def test_verifications_are_padded_to_one_width(model, paged, monkeypatch):
    """On the paged IR every verification runs 1 + k positions when that is at most 4 (a shape change
    re-plans the graph), to the end of the generation: short or empty proposals are padded, and so
    are the last ones, when fewer than k tokens are left to generate; the padding is never kept, the
    tokens stay greedy's. Wider blocks (k = 8) and the stateful IR (where a padded position would leave a
    hole) keep each proposal's own width."""
    from ovgen.paged import PagedSession

    widths, begin = [], PagedSession._begin  # every infer's, run now or overlapped (start_append)
    monkeypatch.setattr(PagedSession, "_begin", lambda self, ids, keep: widths.append((ids.shape[1], keep))
                        or begin(self, ids, keep))
    cfg = {"max_new_tokens": 40, "ignore_eos": True, "prompt_lookup": True, "num_assistant_tokens": 3}
    padded = short_end = 0
    for prompt in GROUNDED + PROMPTS[:2]:
        widths.clear()
        res = ovgen.generate(paged, prompt, cfg)
        steps = [r.draft for r in res.sequences[0].records if r.draft is not None]
        assert len(widths) == len(steps) + 1  # the prompt, then one infer per verification
        emitted = 1  # the prompt's token
        for (t, keep), step in zip(widths[1:], steps):
            room = 40 - emitted - 1  # what the block may hold after its first token
            assert t == keep == 4 == 1 + len(step.proposed) + step.padded
            assert len(step.proposed) <= room  # drafts beyond max_new_tokens are never proposed
            short_end += room < 3
            assert step.accepted <= len(step.proposed)  # a padded position is never kept
            emitted += step.accepted + 1
        padded += sum(s.padded for s in steps)
        assert res.sequences[0].token_ids == _greedy(model, prompt, 40)
    assert padded > 0 and short_end > 0  # some proposals were short or empty; some came with < k tokens left
    stateful = ovgen.generate(model, GROUNDED[0], cfg).sequences[0].records
    assert all(r.draft.padded == 0 for r in stateful if r.draft is not None)
    wide = ovgen.generate(paged, GROUNDED[0], {**cfg, "num_assistant_tokens": 8}).sequences[0].records
    steps = [r.draft for r in wide if r.draft is not None]
    assert all(s.padded == 0 for s in steps) and min(len(s.proposed) for s in steps) < 8


SPEC_CONFIGS = [
    {"max_new_tokens": 40, "ignore_eos": True, "prompt_lookup": True, "num_assistant_tokens": 3},
    {"max_new_tokens": 40, "ignore_eos": True, "prompt_lookup": True, "num_assistant_tokens": 8,
     "do_sample": True, "top_k": 20, "seed": 11},
    {"max_new_tokens": 40, "prompt_lookup": True, "num_assistant_tokens": 3, "stop_strings": ["fib(n - 2)"],
     "include_stop_str_in_output": True},
]


@pytest.mark.parametrize("attention", ["stateful", "paged"])
def test_a_speculative_stream_survives_a_read_and_stops_at_a_user_rewind(request, attention):
    """Between two records of a prompt-lookup stream (a verification may be running: overlap) a
    settle() changes nothing - the same tokens as alone - while a rewind by the user stops the
    stream with a clear error instead of verifying on from a state it did not make."""
    model = request.getfixturevalue("model" if attention == "stateful" else "paged")
    cfg = SPEC_CONFIGS[0]
    alone = ovgen.generate(model, GROUNDED[0], cfg).sequences[0].token_ids
    s = model.session()
    got = []
    for rec in ovgen.stream(model, GROUNDED[0], cfg, session=s):
        got.append(rec.token_id)
        s.settle()
    assert got == alone
    stream = ovgen.stream(model, GROUNDED[0], cfg, session=s)
    for _ in range(12):
        next(stream)
    s.rewind(3)
    with pytest.raises(RuntimeError, match="state was changed"):
        next(stream)


@pytest.mark.parametrize("attention", ["stateful", "paged"])
@pytest.mark.parametrize("cfg", SPEC_CONFIGS)
def test_overlapped_verification_changes_nothing_but_timing(request, attention, cfg):
    """With overlap (the default) each verification after the first runs while the records of the one
    before are detokenised and consumed: the same tokens, texts, logprobs, proposals, acceptances
    and final session as without; with stop strings (the text decides whether generation goes on)
    nothing overlaps."""
    model = request.getfixturevalue("model" if attention == "stateful" else "paged")
    out = []
    for overlap in (True, False):
        s = model.session()
        seq = ovgen.generate(model, GROUNDED[0], cfg, session=s, overlap=overlap).sequences[0]
        steps = [(r.index, r.draft.proposed, r.draft.accepted, r.draft.padded) for r in seq.records if r.draft]
        out.append((seq.token_ids, seq.text, seq.logprobs, seq.finish_reason, steps, s.tokens.tolist()))
        recs = seq.records
        last = max(i for i, r in enumerate(recs) if r.draft is not None)  # the last verification's first record
        flags = [r.overlapped for r in recs]
        assert all(r.infer_start_ns and r.model_ns for r in recs if r.draft is not None)  # the verification's infer
        if overlap and not cfg.get("stop_strings"):
            assert all(flags[:last]) and not any(flags[last:])
        else:
            assert not any(flags)
    assert out[0] == out[1]
    assert len(out[0][4]) > 3 and sum(a for _, _, a, _ in out[0][4]) > 0  # drafts were proposed and kept


@pytest.mark.parametrize("cfg", [{"max_new_tokens": 24, "ignore_eos": True},
                                 {"max_new_tokens": 24, "do_sample": True, "top_k": 40, "top_p": 0.9, "seed": 3}])
def test_paged_decode_overlaps_and_changes_nothing_but_timing(paged, cfg):
    """One token per infer on the paged IR: with overlap each next infer runs while the record is
    made and consumed (start_step on the preset tensors); the same tokens, logprobs and session as
    without."""
    out = []
    for overlap in (True, False):
        s = paged.session()
        seq = ovgen.generate(paged, GROUNDED[1], cfg, session=s, overlap=overlap).sequences[0]
        out.append((seq.token_ids, seq.logprobs, s.tokens.tolist()))
        flags = [r.overlapped for r in seq.records]
        assert flags == [overlap] * (len(flags) - 1) + [False]
    assert out[0] == out[1]


def test_a_consumer_leaving_a_speculative_stream_early(paged):
    """The consumer stops while the next verification runs: the session finishes it first, and the
    next generation on that session equals a fresh session's."""
    cfg = {"max_new_tokens": 40, "ignore_eos": True, "prompt_lookup": True, "num_assistant_tokens": 3}
    s = paged.session()
    for n, rec in enumerate(ovgen.stream(paged, GROUNDED[0], cfg, session=s), 1):
        if n >= 5 and rec.overlapped:
            break
    assert rec.overlapped and s._pending is None
    again = ovgen.generate(paged, GROUNDED[1], cfg, session=s).sequences[0].token_ids
    assert again == ovgen.generate(paged, GROUNDED[1], cfg).sequences[0].token_ids


def test_preset_inputs_compute_what_a_dict_of_inputs_does(paged, monkeypatch):
    """Short infers write into preset input tensors (PagedSession._begin); the same calls with every
    infer given a dict of new tensors (PRESET_TOKENS = 0) return the same logits, bit for bit,
    through steps, a verification, a rewind and a prompt longer than the preset tensors."""
    from ovgen import paged as paged_mod

    def run():
        s = paged.session()
        out = [s.prefill(paged.tokenizer.encode(PROMPTS[1])).copy()]
        for t in (11, 12, 13):
            out.append(s.step(t).copy())
        out.append(s.append([21, 22, 23, 24], logits_to_keep=4).copy())
        s.rewind(3)
        out.append(s.step(31).copy())
        out.append(s.prefill(list(range(100, 266))).copy())  # 166 tokens: more than PRESET_TOKENS
        out.append(s.step(41).copy())
        return out

    preset = run()
    monkeypatch.setattr(paged_mod, "PRESET_TOKENS", 0)
    for a, b in zip(preset, run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rewind_is_constant_and_continues_like_fresh(paged):
    ids = paged.tokenizer.encode(PROMPTS[4])
    s = paged.session()
    first = s.prefill(ids).copy()
    kept = s.append([1000, 2000, 3000], logits_to_keep=3).copy()
    s.rewind(3)  # drop all three, re-run them: the same kernel on the same data, bit for bit
    np.testing.assert_array_equal(s.append([1000, 2000, 3000], logits_to_keep=3), kept)
    for n in (1, 2):  # re-run the last n alone: another chunking of the same tokens, equal to the last bits
        s.rewind(n)
        out = s.append([1000, 2000, 3000][3 - n:], logits_to_keep=n).reshape(n, -1)
        np.testing.assert_allclose(out, kept[3 - n:], rtol=0, atol=2e-3)
        assert (out.argmax(-1) == kept[3 - n:].argmax(-1)).all()
    s.rewind(3)
    assert s.length == len(ids) and s.kv == len(ids)
    fresh = paged.session()
    np.testing.assert_allclose(fresh.prefill(ids), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rewind n must be an integer in"):
        s.rewind(len(ids) + 1)


def test_the_cache_grows_past_its_first_allocation(model, paged):
    ids = (paged.tokenizer.encode(" ".join(PROMPTS)) * 8)[:600]
    s = paged.session()
    assert s.capacity < len(ids) + 40
    s.prefill(ids[:300])
    s.append(ids[300:])  # past the first 512 tokens: the held blocks are copied into bigger tensors
    assert s.capacity >= len(ids)
    ref = model.session()
    assert int(np.argmax(s.append([7]))) == int(np.argmax(ref.prefill(ids + [7])))
    assert abs(float(s.logsumexp) - float(ref.logsumexp)) < 1e-2


def test_what_paged_does_not_do_says_so(model_dir, paged):
    s = paged.session()
    s.prefill([1, 2, 3])
    for call in (lambda: s.snapshot(), lambda: s.save("x.npz"), lambda: s.reorder([0, 0]),
                 lambda: s.prefill_rows([[1, 2], [3]])):
        with pytest.raises(NotImplementedError, match="attention='paged'"):
            call()
    with pytest.raises(NotImplementedError, match="attention='stateful'"):
        ovgen.generate(paged, PROMPTS[0], {"max_new_tokens": 4, "num_beams": 2})
    with pytest.raises(NotImplementedError, match="attention='stateful'"):
        ovgen.generate(paged, PROMPTS[:2], {"max_new_tokens": 4})
    from ovgen.prefix import PrefixCache

    with pytest.raises(NotImplementedError, match="attention='stateful'"):
        ovgen.generate(paged, PROMPTS[0], {"max_new_tokens": 4}, prefix_cache=PrefixCache())
    with pytest.raises(ValueError, match="attention must be one of"):
        ovgen.load(model_dir, attention="flash")
    with pytest.raises(ValueError, match="attention='paged' takes precision"):
        ovgen.load(model_dir, attention="paged", precision="fast")


def test_cli_attention_paged(model_dir, capsys, tmp_path):
    assert main(["generate", "-m", str(model_dir), "--attention", "paged", "--max-new-tokens", "12", "--ignore-eos",
                 "--prompt-lookup", "--json", GROUNDED[1][0]["content"]]) == 0
    out = capsys.readouterr().out
    assert '"token_ids"' in out
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": 1, "prompt": "Hi"}\n')
    assert main(["batch", str(rows), "--output", str(tmp_path / "out.jsonl"), "--attention", "paged"]) == 2
    assert "--attention paged runs one row" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_verification_with_a_bad_id_is_refused_before_inference(paged):
    ids = paged.tokenizer.encode(PROMPTS[2])
    s = paged.session()
    s.prefill(ids)
    for block in ([5, 49152, 6, 7], [-1, 5, 6, 7]):
        with pytest.raises(ValueError, match=rf"\[{block[0] if block[0] < 0 else block[1]}\] are outside the vocabulary"):
            s.start_append(block, logits_to_keep=4)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            s.append(block, logits_to_keep=4)
    assert s.length == len(ids) and s._pending is None
    fresh = paged.session()
    fresh.prefill(ids)
    np.testing.assert_array_equal(s.append([5, 6, 7, 8], logits_to_keep=4), fresh.append([5, 6, 7, 8], logits_to_keep=4))


def test_reserve_takes_a_token_count_within_the_context(paged):
    """reserve(10**20) tried to allocate cache blocks for it (OpenVINO: 'Cannot allocate memory for type:
    f16 and shape: [3125000000000000000, 3, 32, 64]'); -1, 1.5 and None went through or failed unnamed."""
    ids = paged.tokenizer.encode(PROMPTS[2])
    s = paged.session()
    s.prefill(ids)
    for n, message in ((10**20, r"100000000000000000000 tokens exceed the model's context \(8192\)"),
                       (8193, r"8193 tokens exceed the model's context"), (-1, "reserve n must be an integer >= 0"),
                       (1.5, "got 1.5"), (None, "got None"), (True, "got True")):
        with pytest.raises(ValueError, match=message):
            s.reserve(n)
    assert s.length == len(ids)
    s.reserve(8192)  # the whole context is allowed, and the held tokens carry over
    fresh = paged.session()
    fresh.prefill(ids)
    assert int(np.argmax(s.append([7]))) == int(np.argmax(fresh.append([7])))


def test_a_prompts_sampled_sequences_run_in_turn(paged):
    """num_return_sequences > 1 on a paged session (which takes no snapshot and cannot fork its KV row)
    raised NotImplementedError ('snapshot is not available') after the prompt had run, where the README
    promised the sequences one after another. Each further sequence now runs the prompt again: every
    sequence is the one drawn alone from its seed (sequence i: child i of the seed's SeedSequence)."""
    from ovgen.choice import Sampler

    cfg = {"do_sample": True, "seed": 5, "top_k": 50, "top_p": 0.95, "max_new_tokens": 12, "ignore_eos": True}
    got = ovgen.generate(paged, PROMPTS[1], {**cfg, "num_return_sequences": 3}).sequences
    assert len(got) == 3
    for i, seq in enumerate(got):
        seed = np.random.SeedSequence(cfg["seed"], spawn_key=(i,)) if i else cfg["seed"]
        alone = ovgen.generate(paged, PROMPTS[1], cfg, chooser=Sampler(seed)).sequences[0]
        assert seq.token_ids == alone.token_ids, i
    assert len({tuple(s.token_ids) for s in got}) == 3
