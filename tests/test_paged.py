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
    with pytest.raises(ValueError, match="rewind n must be in"):
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
