"""A multi-turn chat over one Session that reuses the KV state of earlier turns.

Each turn renders the whole conversation with the chat template, keeps the longest prefix of
token ids the session already holds, rewinds past it if needed, and runs only the new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

from .config import GenerationConfig
from .generate import constraint_stages, prompt_ids, proposer_for, resolve_config, run
from .search import TokenRecord
from .session import owned


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Chat:
    """`send(text)` streams the assistant's reply; history and KV state carry over to the next turn."""

    def __init__(self, model, config: GenerationConfig | dict | None = None, *, system: str | None = None,
                 chat_template: str | None = None):
        for name, value in (("system", system), ("chat_template", chat_template)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be text or None, got {type(value).__name__}")
        self.model = model
        self.config = resolve_config(model, config)
        self.session = model.session()
        self.system = system
        self.chat_template = chat_template
        self.messages: list[dict] = []
        self.reset()
        self.reused_tokens = 0  # prompt tokens the last turn did not have to recompute
        self.prompt_tokens = 0

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.session.reset()

    def send(self, text: str) -> Iterator[TokenRecord]:
        return owned(self.session, self._send(text))

    def _send(self, text: str) -> Iterator[TokenRecord]:
        if not text:
            raise ValueError("message is empty")
        messages = self.messages + [{"role": "user", "content": text}]
        ids = prompt_ids(self.model, messages, chat_template=self.chat_template, config=self.config)
        if self.session.rows != 1:  # the last turn ended on several rows (its sequences, or beams): go on from
            self.session.reorder([0])  # the first row, gathered by the next infer; its prompt prefix is reused
        keep = min(common_prefix(self.session.tokens[0].tolist(), ids), len(ids) - 1)  # run >= 1 token
        self.session.rewind(self.session.length - keep)
        self.reused_tokens, self.prompt_tokens = keep, len(ids)
        logits = self.session.append(ids[keep:])
        reply = []
        for rec in run(self.model, self.session, ids, self.config, logits=logits,
                       extra=constraint_stages(self.model, self.config),
                       proposer=proposer_for(self.model, self.session, self.config)):
            if rec.sequence == 0:  # the history keeps the first (best, for beam search) sequence
                reply.append(rec.text)
            yield rec
        self.messages = messages + [{"role": "assistant", "content": "".join(reply)}]

    def save(self, path) -> None:
        """The conversation to `path`: its messages and the session's KV state (Session.save's
        format, the messages in its checksummed meta), so that `load` goes on without recomputing."""
        self.session.save(path, meta={"chat": {"messages": self.messages}})

    def load(self, path) -> None:
        """Replace the conversation with one `save` wrote (same model and precision); the next
        `send` reuses its KV state. Anything else (a plain Session.save file, another model, a
        corrupt file) is refused before the chat changes."""
        meta = self.session.load(path, check=lambda m: _chat_messages(path, m))
        self.messages = _chat_messages(path, meta)


def _chat_messages(path, meta) -> list[dict]:
    """The messages a Chat.save file holds; ValueError naming the file otherwise."""
    if not isinstance(meta, dict) or "chat" not in meta:
        raise ValueError(f"{path}: a saved session without a conversation (Session.save wrote it, not Chat.save)")
    messages = meta["chat"].get("messages") if isinstance(meta["chat"], dict) else None
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError(f"{path}: its chat messages are not a list of {{'role', 'content'}} strings")
    return [dict(m) for m in messages]
