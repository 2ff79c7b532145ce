"""Structured output: JSON Schema, regex, Lark grammars and choices as a token mask (llguidance).

The constraint is a stage of the token-choice chain (ovgen/choice.py): `GrammarMask` masks every token
the grammar does not allow next, on the whole vocabulary or - since a mask only lowers logits - on
the graph's candidates. EOS is allowed exactly when the grammar accepts (llguidance puts the
tokenizer's eos ids in the mask then). Each chosen token advances the matcher (`accept`), and the
next mask is computed right then, while the model runs the next step (the loop calls `accept` after
starting that infer). Beams get one matcher per row, reordered with the KV rows; a group of diverse
beam search masks its own slice of them (`rows=`); a row retired (a finished group padded with eos,
a beam whose score is -inf and whose token the mask did not allow) stops consuming tokens until a
reorder fills it from a live row. `clone()` and `rollback(n)` follow the Session back (snapshots,
speculative rejection).

llguidance is the `structured` extra (`pip install 'ovgen[structured]'`); the core never imports it.
The LLTokenizer is built once per tokenizer from its tokenizer.json (cached on the Tokenizer).
"""

from __future__ import annotations

import json

import numpy as np

from ovgen.kernels.sampling import NEG_INF

from .processors import Stage

FIELDS = ("json_schema", "regex", "grammar", "choices")  # GenerationConfig fields that constrain the output
# JSON as json.dumps writes it: one line, ", " and ": " (a schema's "x-guidance" overrides these): a small
# model wastes no tokens on free whitespace, and the output has one spelling
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def constraint_of(cfg) -> tuple[str, object] | None:
    """(field, value) of the config's one constraint, or None."""
    set_ = [(f, getattr(cfg, f)) for f in FIELDS if getattr(cfg, f) is not None]
    return set_[0] if set_ else None


def grammar_text(field: str, value) -> str:
    """The llguidance grammar for a constraint field."""
    from llguidance import LLMatcher

    if field == "json_schema":
        schema = json.loads(value) if isinstance(value, str) else value
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
    if field == "regex":
        return LLMatcher.grammar_from_regex(value)
    if field == "grammar":
        return LLMatcher.grammar_from_lark(value)
    alternatives = " | ".join(json.dumps(c) for c in value)  # choices: a JSON string literal is a Lark literal
    return LLMatcher.grammar_from_lark(f"start: {alternatives}")


def ll_tokenizer(model):
    """The model's llguidance tokenizer: its tokenizer.json, the logits' width and its eos ids (cached)."""
    tok = model.tokenizer
    if "llguidance" not in tok.cache:
        from llguidance import LLTokenizer

        path = model.path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: structured output builds its token mask from it")
        eos = list(model.generation_config.eos_token_id) or None
        tok.cache["llguidance"] = LLTokenizer(path.read_text(encoding="utf-8"), n_vocab=model.vocab_size, eos_token=eos)
    return tok.cache["llguidance"]


def grammar_stage(model, cfg, rows: int = 1) -> "GrammarMask | None":
    """The mask stage for the config's constraint (None without one). The grammar is compiled here,
    before any inference: a schema or pattern llguidance cannot compile is a ValueError naming the
    field and llguidance's reason (the unsupported keyword, the bad pattern)."""
    found = constraint_of(cfg)
    if found is None:
        return None
    field, value = found
    try:
        text = grammar_text(field, value)
    except ValueError as e:  # not valid JSON / not an object
        raise ValueError(f"{field}: {e}") from None
    mask = GrammarMask(ll_tokenizer(model), text, rows, name=field)
    return mask


def _unpack(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """[rows, words] int32 bitmask (bit i of word j = token 32 j + i) -> [rows, vocab] bool."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little")
    return bits[:, :vocab].astype(bool)


class GrammarMask(Stage):
    """The grammar as a mask stage (subset kind "lowers": exact on candidates). `allowed` is how
    many tokens the last mask allowed (the per-token record reports it)."""

    subset, mask, per_row = "lowers", True, True

    def __init__(self, tokenizer, grammar: str, rows: int = 1, name: str = "grammar"):
        from llguidance import LLMatcher

        self.tokenizer, self.grammar, self.rows, self.name = tokenizer, grammar, rows, name
        first = LLMatcher(tokenizer, grammar)
        if first.is_error():
            raise ValueError(f"{name}: llguidance cannot compile it: {first.get_error()}")
        self._template = first
        self.reset()

    # ---- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        self.matchers = [self._template.deep_copy() for _ in range(self.rows)]
        self.retired = np.zeros(self.rows, bool)
        self.bitmask = np.full((self.rows, (self.tokenizer.vocab_size + 31) // 32), -1, np.int32)
        self._fill(range(self.rows), dead_end="no text matches it")

    def _fill(self, rows, dead_end: str = "no token can follow") -> None:
        from llguidance.numpy import fill_next_token_bitmask

        for r in rows:
            fill_next_token_bitmask(self.matchers[r], self.bitmask, r)
            if self.matchers[r].is_error():  # llguidance's reason, without the parser state it dumps after it
                reason = self.matchers[r].get_error().splitlines()[0]
                raise ValueError(f"{self.name}: {dead_end} (llguidance: {reason})")
        self._bools = None
        self.allowed = int(np.unpackbits(self.bitmask[0].view(np.uint8)).sum())

    def accept(self, token) -> None:
        """Advance each row's matcher by its token and compute the next masks (GIL released inside)."""
        tokens = np.atleast_1d(np.asarray(token)).tolist()
        live = [r for r in range(len(tokens)) if not self.retired[r]]
        for r in live:
            m, t = self.matchers[r], tokens[r]
            if not m.is_stopped() and not m.consume_token(int(t)):
                raise ValueError(f"{self.name}: token {t} is not allowed here ({m.get_error()})")
        self._fill(live)

    def rollback(self, n: int) -> None:
        """Forget the last n accepted tokens (speculative rejection, Session.rewind)."""
        live = [r for r in range(self.rows) if not self.retired[r]]
        for r in live:
            if n and not self.matchers[r].rollback(n):
                raise ValueError(f"{self.name}: cannot roll back {n} tokens ({self.matchers[r].get_error()})")
        self._fill(live)

    def reorder(self, beam_idx) -> None:
        idx = np.asarray(beam_idx).reshape(-1).tolist()
        self.matchers = [self.matchers[i].deep_copy() for i in idx]
        self.rows = len(idx)
        self.retired = self.retired[idx]
        self.bitmask = self.bitmask[idx].copy()
        self._bools = None

    def retire(self, rows) -> None:
        self.retired[rows] = True

    def clone(self) -> "GrammarMask":
        twin = object.__new__(GrammarMask)
        twin.__dict__.update(self.__dict__)
        twin.matchers = [m.deep_copy() for m in self.matchers]
        twin.bitmask = self.bitmask.copy()
        twin.retired = self.retired.copy()
        return twin

    @property
    def accepting(self) -> bool:
        return all(m.is_accepting() for m, gone in zip(self.matchers, self.retired) if not gone)

    # ---- applying the mask ------------------------------------------------------------------------
    def __call__(self, token_ids, logits, rows: slice | None = None):
        vocab = logits.shape[-1]
        if self._bools is None or self._bools.shape[-1] != vocab:
            self._bools = _unpack(self.bitmask, vocab)
        if logits.ndim == 1:
            allowed = self._bools[0]
        else:
            allowed = self._bools[rows if rows is not None else slice(0, logits.shape[0])]
        return np.where(allowed, logits, NEG_INF)

    def on_subset(self, token_ids, values, ids, vocab):
        words = self.bitmask[0][ids >> 5]
        allowed = (words >> (ids & 31).astype(np.int32)) & 1
        return np.where(allowed.astype(bool), values, NEG_INF)
