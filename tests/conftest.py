"""Shared fixtures: the real default model, prepared by `ovgen prepare` (a no-op when present)."""

from __future__ import annotations

import pytest

import ovgen
from ovgen.prepare import default_model_dir, flavour_dir, is_complete, prepare


@pytest.fixture(scope="session")
def model_dir():
    return prepare([], progress=False)


@pytest.fixture(scope="session")
def model(model_dir):
    return ovgen.load(model_dir)


def require_flavour(name: str):
    """A prepared flavour folder; fails (not skips) when missing: the README test command makes it."""
    path = flavour_dir(name)
    assert is_complete(path), f"{path} is missing; run `ovgen prepare --flavours hf,optimum,onnx,draft,phi3-tiny` first"
    return path


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three prime numbers:",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "The quick brown fox",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village,",
    "Q: Why is the sky blue?\nA:",
    "import numpy as np\n",
    "My favourite colour is",
]

__all__ = ["PROMPTS", "InterruptAfter", "chat_cut_off_once", "default_model_dir", "require_flavour"]


class InterruptAfter:
    """`target` (an InferRequest, a Generator), but its n-th call of `method` runs and then raises
    KeyboardInterrupt: where Ctrl-C lands (Python runs its signal handler at the next bytecode
    after the C++ call returns)."""

    def __init__(self, target, method: str, n: int):
        self._target, self._method, self._n = target, method, n

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if name != self._method:
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self._n -= 1
            if self._n == 0:
                raise KeyboardInterrupt
            return out
        return call


def chat_cut_off_once(model, part: str, method: str, n: int) -> dict:
    """A chat: "Hi"; then a message during which the n-th `session.<part>.<method>()` call is cut off
    by a Ctrl-C (InterruptAfter); then "Name a colour.". Returns its last reply, its session's length
    right after the Ctrl-C and its messages, beside the same of a chat that was never interrupted."""
    from ovgen.chat import Chat

    cfg = {"max_new_tokens": 8, "ignore_eos": True}

    def reply(chat, text):
        return "".join(r.text for r in chat.send(text))

    ref = Chat(model, cfg)
    reply(ref, "Hi")
    want = reply(ref, "Name a colour.")
    chat = Chat(model, cfg)
    reply(chat, "Hi")
    real = getattr(chat.session, part)
    setattr(chat.session, part, InterruptAfter(real, method, n))
    try:
        with pytest.raises(KeyboardInterrupt):
            reply(chat, "Tell me a story.")
    finally:
        setattr(chat.session, part, real)
    length = chat.session.length
    return {"reply": reply(chat, "Name a colour."), "want": want, "length_after": length,
            "messages": chat.messages, "want_messages": ref.messages}
