"""Greedy parity: ovgen's loop gives the same tokens as openvino-genai's LLMPipeline (SDPA backend)
on the same IR, with the same prompt ids passed through TokenizedInputs."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino_genai
import pytest

import ovgen
from conftest import PROMPTS


@pytest.fixture(scope="module")
def pipe(model_dir):
    return openvino_genai.LLMPipeline(str(model_dir), "CPU", ATTENTION_BACKEND="SDPA")


def genai_greedy(pipe, ids, n):
    cfg = openvino_genai.GenerationConfig()
    cfg.max_new_tokens, cfg.ignore_eos, cfg.do_sample = n, True, False
    inputs = openvino_genai.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)),
                                            ov.Tensor(np.ones((1, len(ids)), np.int64)))
    return [int(t) for t in pipe.generate(inputs, cfg).tokens[0]]


@pytest.mark.parametrize("prompt", PROMPTS[:10])
def test_greedy_matches_openvino_genai(model, pipe, prompt):
    ids = model.tokenizer.encode(prompt)
    ref = genai_greedy(pipe, ids, 64)
    ours = ovgen.generate(model, ids, {"max_new_tokens": 64, "ignore_eos": True, "do_sample": False})
    assert ours.sequences[0].token_ids == ref
    assert len(ref) == 64


def test_chat_prompt_matches_openvino_genai(model, pipe):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = ovgen.generate.__globals__["prompt_ids"](model, msgs)
    ref = genai_greedy(pipe, ids, 32)
    ours = ovgen.generate(model, msgs, {"max_new_tokens": 32, "ignore_eos": True})
    assert ours.sequences[0].token_ids == ref
