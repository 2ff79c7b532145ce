"""The OpenVINO Phi-3 sample's model family on the phi3-tiny flavour (a random-weight Phi3ForCausalLM
exported by optimum-cli with the sample's exact int4 flags): prompt ids, greedy parity with
transformers' generate through optimum-intel on the same IR with the sample's ov_config, <|end|>
stopping and skip_special_tokens decoding."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import ovgen
from ovgen import phi3

PROMPTS = [
    phi3.SEED_PROMPT,
    "<|user|>What is the capital of France?<|end|><|assistant|>",
    "<|system|>Answer in one word.<|end|><|user|>Name a colour.<|end|><|assistant|>",
    "def fibonacci(n):",
    "Привет! 你好 🙂",
]


@pytest.fixture(scope="module")
def phi3_dir():
    from conftest import require_flavour

    return require_flavour("phi3-tiny")


@pytest.fixture(scope="module")
def ours(phi3_dir):
    return ovgen.load(phi3_dir, ov_config=phi3.SEED_OV_CONFIG)


@pytest.fixture(scope="module")
def hf_tok(phi3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(phi3_dir)


@pytest.fixture(scope="module")
def reference(phi3_dir, ours):
    """The sample's own path: OVModelForCausalLM.from_pretrained(model_dir, device, ov_config), given
    the properties ovgen compiled with (the sample's ov_config plus ovgen's f16 KV cache)."""
    from optimum.intel import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(phi3_dir, device="CPU", ov_config=ours.ov_config)


def _hf_generate(reference, hf_tok, prompt: str, **kw) -> list[int]:
    enc = hf_tok(prompt, add_special_tokens=False, return_tensors="pt")
    out = reference.generate(**enc, do_sample=False, **kw)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_ir_is_exported_with_the_samples_flags(phi3_dir, ours):
    ir = ov.Core().read_model(str(phi3_dir / "openvino_model.xml"))
    flags = {k: ir.get_rt_info(["nncf", "weight_compression", k]).astype(str) for k in ("mode", "group_size", "ratio")}
    assert flags == {"mode": "int4_sym", "group_size": "128", "ratio": "0.6"}
    assert ours.vocab_size == phi3.VOCAB_SIZE
    assert set(ours.generation_config.eos_token_id) >= {32000, 32007}


def test_prompt_ids_match_the_tokenizer(ours, hf_tok):
    for prompt in PROMPTS:
        assert ours.tokenizer.encode(prompt) == hf_tok(prompt, add_special_tokens=False).input_ids
    ids = ours.tokenizer.encode(phi3.SEED_PROMPT)
    assert ids[0] == 32006 and ids[-1] == 32001 and ids.count(32007) == 2 and 32010 in ids
    for token_id, text in phi3.SPECIAL_TOKENS.items():
        assert hf_tok.convert_tokens_to_ids(text) == token_id


def test_chat_template_renders_the_samples_prompt_format(ours, hf_tok):
    messages = [{"role": "system", "content": "You are a helpful AI assistant."},
                {"role": "user", "content": "can you introduce yourself?"}]
    ours_text = ours.tokenizer.apply_chat_template(messages)
    assert ours_text == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours_text.replace("\n", "") == phi3.SEED_PROMPT


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_optimum_intel_generate(ours, hf_tok, reference, prompt):
    got = ovgen.generate(ours, prompt, {"do_sample": False, "max_new_tokens": 48}).sequences[0]
    want = _hf_generate(reference, hf_tok, prompt, max_new_tokens=48)
    assert got.token_ids == want
    # skip_special_tokens decoding, as the sample's batch_decode does
    assert got.text == hf_tok.batch_decode([want], skip_special_tokens=True)[0]


def test_end_token_stops_generation(ours, hf_tok, reference):
    """Give <|end|> a bias that makes it win at one step mid-way (computed from the model's own
    margins); both implementations must stop right there, <|end|> being an eos id."""
    ids = ours.tokenizer.encode(phi3.SEED_PROMPT)
    s = ours.session()
    logits, margins = s.prefill(ids), []
    for _ in range(24):
        margins.append(float(logits.max() - logits[phi3.END_ID]))
        logits = s.step(int(np.argmax(logits)))
    # the last step whose margin is below every earlier one: a bias between the two ends it there
    lows = [j for j in range(1, len(margins)) if margins[j] < min(margins[:j])]
    assert lows, f"no step after the first has a record-low margin: {margins}"
    stop_at = lows[-1]
    bias = float(np.nextafter(np.float32(margins[stop_at]), np.float32(np.inf))) + 1e-3
    assert bias < min(margins[:stop_at])
    got = ovgen.generate(ours, phi3.SEED_PROMPT, {"max_new_tokens": 40, "logit_bias": {phi3.END_ID: bias}}).sequences[0]
    want = _hf_generate(reference, hf_tok, phi3.SEED_PROMPT, max_new_tokens=40,
                        sequence_bias={(phi3.END_ID,): bias})
    assert got.finish_reason == "stop" and got.token_ids[-1] == phi3.END_ID
    assert len(got.token_ids) == stop_at + 1
    assert got.token_ids == want
    assert "<|end|>" not in got.text and got.text == hf_tok.batch_decode([want], skip_special_tokens=True)[0]
    # without the bias the same prompt runs to the limit: the bias, not chance, stopped it
    free = ovgen.generate(ours, phi3.SEED_PROMPT, {"max_new_tokens": stop_at + 2}).sequences[0]
    assert free.token_ids[:stop_at] == got.token_ids[:stop_at] and free.token_ids[stop_at] != phi3.END_ID


def test_decode_skips_special_tokens_like_batch_decode(ours, hf_tok):
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(3, phi3.BASE_VOCAB, 12).tolist()
        ids[rng.integers(12)] = int(rng.choice(list(phi3.SPECIAL_TOKENS)))
        for skip in (True, False):
            assert ours.tokenizer.decode(ids, skip_special_tokens=skip) == \
                hf_tok.batch_decode([ids], skip_special_tokens=skip)[0]
