"""GenerationConfig: one validated object for every decoding setting.

Field names and defaults are HF transformers' GenerationConfig where HF has the field (so a model's
generation_config.json loads as is), plus OpenAI's presence/frequency penalties and ovgen's own
stop/timing fields. `validate()` runs once, before any inference, and raises ValueError naming the
field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Keys a generation_config.json may carry that do not change ovgen's decoding (HF bookkeeping,
# encoder-decoder or features ovgen does not implement yet); they are read and ignored.
_IGNORED_KEYS = {
    "transformers_version", "_from_model_config", "use_cache", "max_length", "min_length",
    "decoder_start_token_id", "output_scores", "return_dict_in_generate", "output_logits",
    "output_attentions", "output_hidden_states", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "renormalize_logits", "cache_implementation", "assistant_confidence_threshold",
}


@dataclass
class GenerationConfig:
    """Decoding settings. Defaults are HF's (greedy unless do_sample; top_k 50 when sampling)."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] | None = None
    bad_words_ids: list[list[int]] | None = None
    allowed_token_ids: list[int] | None = None
    num_return_sequences: int = 1
    num_beams: int = 1
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    ignore_eos: bool = False
    stop_strings: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    max_time: float | None = None
    seed: int | None = None
    top_logprobs: int = 0
    truncate_prompt: bool = False  # a prompt too long for the context keeps its last tokens (else refused)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> "GenerationConfig":
        """Build from a dict. Unknown keys raise ValueError naming the closest valid fields
        (strict), or are dropped (strict=False, for generation_config.json files)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {}
        for key, value in values.items():
            if key in names:
                known[key] = value
            elif strict and key not in _IGNORED_KEYS:
                close = difflib.get_close_matches(key, sorted(names), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown generation setting {key!r}{hint}")
        if "eos_token_id" in known:
            eos = known["eos_token_id"]
            known["eos_token_id"] = [] if eos is None else [int(e) for e in ([eos] if isinstance(eos, int) else eos)]
        if isinstance(known.get("stop_strings"), str):
            known["stop_strings"] = [known["stop_strings"]]
        if known.get("logit_bias"):
            known["logit_bias"] = {int(k): float(v) for k, v in known["logit_bias"].items()}
        return cls(**known)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "GenerationConfig":
        """The model's generation_config.json (HF format); HF defaults where it is silent."""
        path = Path(model_dir) / "generation_config.json"
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(values, strict=False)

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with `changes` applied (validated like from_dict: unknown names are refused)."""
        merged = dataclasses.asdict(self)
        merged.update(changes)
        return GenerationConfig.from_dict(merged)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> "GenerationConfig":
        """Raise ValueError naming the first out-of-range field; warn once about settings that
        have no effect in the chosen mode. Returns self."""
        _check_int(self, "max_new_tokens", 0)
        _check_int(self, "min_new_tokens", 0)
        _check_int(self, "top_k", 0)
        _check_int(self, "no_repeat_ngram_size", 0)
        _check_int(self, "num_beams", 1)
        _check_int(self, "num_return_sequences", 1)
        _check_int(self, "num_beam_groups", 1)
        _check_int(self, "top_logprobs", 0)
        _check_range(self, "temperature", 0.0, math.inf, low_open=False, rng="[0, inf)")
        _check_range(self, "top_p", 0.0, 1.0, low_open=True, rng="(0, 1]")
        _check_range(self, "typical_p", 0.0, 1.0, low_open=True, rng="(0, 1]")
        if self.min_p is not None:
            _check_range(self, "min_p", 0.0, 1.0, low_open=False, rng="[0, 1]")
        _check_range(self, "repetition_penalty", 0.0, math.inf, low_open=True, rng="(0, inf)")
        for name in ("presence_penalty", "frequency_penalty", "diversity_penalty", "length_penalty"):
            _check_range(self, name, -math.inf, math.inf, low_open=True, rng="a finite number")
        if self.max_time is not None:
            _check_range(self, "max_time", 0.0, math.inf, low_open=True, rng="(0, inf) seconds")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.truncate_prompt, bool):
            raise ValueError(f"truncate_prompt must be True or False, got {self.truncate_prompt!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be one of True, False, 'never', got {self.early_stopping!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences must be <= num_beams ({self.num_beams}) for beam search, "
                             f"got {self.num_return_sequences}")
        if self.num_beams % self.num_beam_groups:
            raise ValueError(f"num_beams ({self.num_beams}) must be divisible by num_beam_groups, "
                             f"got {self.num_beam_groups}")
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True or num_beams > 1 "
                             f"(greedy search gives one sequence), got {self.num_return_sequences}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        for seq in self.bad_words_ids or []:
            if not seq:
                raise ValueError(f"bad_words_ids must hold non-empty token id lists, got {self.bad_words_ids!r}")
        self._warn_unused()
        return self

    def check_token_ids(self, vocab_size: int) -> None:
        """Every token id the config names must be < vocab_size (called once the model is known)."""
        named = {
            "eos_token_id": self.eos_token_id,
            "logit_bias": list(self.logit_bias or {}),
            "bad_words_ids": [t for seq in self.bad_words_ids or [] for t in seq],
            "allowed_token_ids": self.allowed_token_ids or [],
        }
        for name, ids in named.items():
            check_token_ids(ids, vocab_size, f"{name}: token ids")

    def _warn_unused(self) -> None:
        if self.do_sample:
            return
        unused = [n for n, default in (("temperature", 1.0), ("top_p", 1.0), ("typical_p", 1.0))
                  if getattr(self, n) != default]
        unused += ["min_p"] if self.min_p is not None else []
        if self.seed is not None:
            unused.append("seed")
        if unused:
            warnings.warn(f"{', '.join(unused)} have no effect with do_sample=False (greedy/beam search)",
                          UserWarning, stacklevel=3)


def _check_int(cfg: GenerationConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_range(cfg, name: str, low: float, high: float, *, low_open: bool, rng: str) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


def check_token_ids(ids, vocab_size: int, what: str = "token ids") -> np.ndarray:
    """`ids` as an int64 array, or ValueError naming up to five ids outside [0, vocab_size)."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = arr[(arr < 0) | (arr >= vocab_size)]
        raise ValueError(f"{what} {bad[:5].tolist()} are outside the vocabulary [0, {vocab_size})")
    return arr
