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

PENALTY_MAX = 1e30  # |presence / frequency / diversity penalty|, repetition_penalty in [1 / this, this]
LENGTH_POW_MAX = 70.0  # |ln(len ** length_penalty)|: beam scores (sums of log-probs) / it stay within float32

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
    # llama.cpp's samplers (src/llama-sampling.cpp) and HF's ε/η cutoffs; each off at its default
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # -1: the whole sequence
    dry_sequence_breakers: list = field(default_factory=lambda: ["\n", ":", "\"", "*"])
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = 0.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    mirostat: int = 0  # 2: mirostat v2 chooses (0: off; v1 is not implemented)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    # classifier-free guidance (HF's UnbatchedClassifierFreeGuidanceLogitsProcessor): 1.0 is off
    guidance_scale: float = 1.0
    negative_prompt: str | list[int] | None = None
    # speculative decoding (ovgen/speculative.py): prompt lookup, or a draft model passed as `assistant=`
    prompt_lookup: bool = False
    max_ngram_size: int = 3
    num_assistant_tokens: int = 5
    num_assistant_tokens_schedule: str = "constant"  # or "heuristic": +2 after a full accept, -1 otherwise
    # structured output (ovgen/structured.py, the `structured` extra): at most one of these
    json_schema: dict | str | None = None
    regex: str | None = None
    grammar: str | None = None  # a Lark grammar (llguidance's dialect)
    choices: list[str] | None = None

    # ---- construction -------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._normalize()

    def _normalize(self) -> None:
        """NumPy scalars become Python ones (np.int64(8) is an integer, np.float32(0.7) a number,
        np.True_ a bool), and one text for a list-of-texts field becomes a one-item list
        (stop_strings="###" is one stop string, not three of "#")."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic) and isinstance(value, (np.bool_, np.integer, np.floating)):
                value = value.item()
                setattr(self, f.name, value)
            # an int for a number (frequency_penalty=10**20): a float, as the NumPy stages take it (a Python
            # int past int64 overflowed in one and was no array type for np.log in another, mid-generation)
            if f.type in ("float", "float | None") and isinstance(value, int) and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                except OverflowError:  # past float's range: infinite, which the range checks then name
                    setattr(self, f.name, math.inf if value > 0 else -math.inf)
        for name in ("stop_strings", "dry_sequence_breakers"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> "GenerationConfig":
        """Build from a dict. Unknown keys raise ValueError naming the closest valid fields
        (strict), or are dropped (strict=False, for generation_config.json files)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {}
        for key, value in values.items():
            if key == "response_format":
                continue
            if key in names:
                known[key] = value
            elif strict and key not in _IGNORED_KEYS:
                close = difflib.get_close_matches(key, sorted(names), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown generation setting {key!r}{hint}")
        for key, value in known.items():  # JSON writers give 64.0 for 64 (pandas, JavaScript): a count field takes it
            if isinstance(value, float) and value.is_integer() and key in _INT_FIELDS:
                known[key] = int(value)
        if "eos_token_id" in known:
            eos = known["eos_token_id"]
            known["eos_token_id"] = [] if eos is None else _id_list("eos_token_id", [eos] if _is_id(eos) else eos)
        if "response_format" in values:  # OpenAI's {"type": "json_schema", "json_schema": {"schema": ...}}
            schema = _schema_of(values["response_format"])
            if known.get("json_schema") is None:
                known["json_schema"] = schema
        if known.get("logit_bias"):
            known["logit_bias"] = _logit_bias(known["logit_bias"])
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
        self._normalize()  # fields set after construction
        for name in ("do_sample", "ignore_eos", "include_stop_str_in_output", "prompt_lookup", "truncate_prompt"):
            if not isinstance(getattr(self, name), bool):  # "false" is truthy: it would turn sampling on
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_int(self, "max_new_tokens", 0)
        _check_int(self, "min_new_tokens", 0)
        _check_int(self, "top_k", 0)
        _check_int(self, "no_repeat_ngram_size", 0)
        _check_int(self, "num_beams", 1)
        _check_int(self, "num_return_sequences", 1)
        _check_int(self, "num_beam_groups", 1)
        _check_int(self, "top_logprobs", 0)
        # pad_token_id fills a finished group's rows in diverse beam search and is unused elsewhere (where a
        # model's generation_config.json may hold -1)
        pad = self.pad_token_id
        if pad is not None and self.num_beam_groups > 1 and not (_is_id(pad) and pad >= 0):
            raise ValueError(f"pad_token_id must be a token id (an integer >= 0) or None, got {pad!r}")
        _check_range(self, "temperature", 0.0, math.inf, low_open=False, rng="[0, inf)")
        _check_range(self, "top_p", 0.0, 1.0, low_open=True, rng="(0, 1]")
        _check_range(self, "typical_p", 0.0, 1.0, low_open=True, rng="(0, 1]")
        if self.min_p is not None:
            _check_range(self, "min_p", 0.0, 1.0, low_open=False, rng="[0, 1]")
        # the penalties scale float32 logits: past 1e30 they overflowed it (NaN / inf logits, warnings);
        # 1e30 already acts as an infinite penalty
        _check_range(self, "repetition_penalty", 1 / PENALTY_MAX, PENALTY_MAX, low_open=False,
                     rng=f"[{1 / PENALTY_MAX:g}, {PENALTY_MAX:g}] (a factor on float32 logits)")
        for name in ("presence_penalty", "frequency_penalty", "diversity_penalty"):
            _check_range(self, name, -PENALTY_MAX, PENALTY_MAX, low_open=False,
                         rng=f"[{-PENALTY_MAX:g}, {PENALTY_MAX:g}] (a term on float32 logits)")
        _check_range(self, "length_penalty", -math.inf, math.inf, low_open=True, rng="a finite number")
        self._check_length_penalty()
        self._validate_samplers()
        self._validate_constraint()
        _check_int(self, "max_ngram_size", 1)
        _check_int(self, "num_assistant_tokens", 1)
        if self.num_assistant_tokens_schedule not in ("constant", "heuristic"):
            raise ValueError("num_assistant_tokens_schedule must be 'constant' or 'heuristic', "
                             f"got {self.num_assistant_tokens_schedule!r}")
        if self.prompt_lookup and self.num_beams > 1:
            raise ValueError(f"prompt_lookup verifies one sequence: num_beams must be 1, got {self.num_beams}")
        if self.max_time is not None:
            _check_range(self, "max_time", 0.0, math.inf, low_open=True, rng="(0, inf) seconds")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
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
        if not isinstance(self.stop_strings, (list, tuple)) or any(not isinstance(s, str) or not s
                                                                    for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        bad = self.bad_words_ids
        if bad is not None and (not isinstance(bad, (list, tuple)) or not all(
                isinstance(seq, (list, tuple)) and seq and all(_is_id(t) for t in seq) for seq in bad)):
            raise ValueError(f"bad_words_ids must hold non-empty token id lists (e.g. [[42], [7, 8]]), got {bad!r}")
        if self.allowed_token_ids is not None and not _id_list("allowed_token_ids", self.allowed_token_ids):
            raise ValueError("allowed_token_ids must name at least one token id, got [] (it would mask every token)")
        if not isinstance(self.eos_token_id, (list, tuple)):
            raise ValueError(f"eos_token_id must be a list of token ids, got {self.eos_token_id!r}")
        _id_list("eos_token_id", self.eos_token_id)
        if self.logit_bias is not None:
            _logit_bias(self.logit_bias, text_keys=False)
        self._warn_unused()
        return self

    def _check_length_penalty(self) -> None:
        """Beam scores divide by generated_len ** length_penalty (float32, as transformers): refuse an
        exponent that makes it overflow or vanish within max_new_tokens (an OverflowError mid-search)."""
        if self.num_beams == 1 or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 2:
            return
        limit = LENGTH_POW_MAX / math.log(self.max_new_tokens)
        if abs(self.length_penalty) > limit:
            raise ValueError(f"length_penalty must be within +-{limit:.3g} for max_new_tokens={self.max_new_tokens} "
                             f"(beam scores divide by generated_len ** length_penalty in float32), "
                             f"got {self.length_penalty!r}")

    def _validate_samplers(self) -> None:
        for name in ("dry_multiplier", "top_n_sigma"):
            _check_range(self, name, 0.0, math.inf, low_open=False, rng="[0, inf)")
        _check_range(self, "xtc_probability", 0.0, 1.0, low_open=False, rng="[0, 1]")
        _check_range(self, "xtc_threshold", 0.0, 1.0, low_open=False, rng="[0, 1] (above 0.5 it never acts)")
        _check_range(self, "dry_base", 1.0, math.inf, low_open=False, rng="[1, inf)")
        _check_int(self, "dry_allowed_length", 0)
        if isinstance(self.dry_penalty_last_n, bool) or not isinstance(self.dry_penalty_last_n, int) \
                or self.dry_penalty_last_n < -1:
            raise ValueError(f"dry_penalty_last_n must be an integer >= -1 (-1: the whole sequence), "
                             f"got {self.dry_penalty_last_n!r}")
        if not isinstance(self.dry_sequence_breakers, (list, tuple)):
            raise ValueError("dry_sequence_breakers must be a list of non-empty strings or token id lists, "
                             f"got {self.dry_sequence_breakers!r}")
        for b in self.dry_sequence_breakers:
            if not (isinstance(b, str) and b) and not (isinstance(b, (list, tuple)) and b
                                                        and all(isinstance(t, int) for t in b)):
                raise ValueError(f"dry_sequence_breakers must hold non-empty strings or token id lists, got {b!r}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            if getattr(self, name) != 0.0:
                _check_range(self, name, 0.0, 1.0, low_open=True, rng="(0, 1) (0: off)")
                if getattr(self, name) >= 1.0:
                    raise ValueError(f"{name} must be in (0, 1) (0: off), got {getattr(self, name)!r}")
        if self.mirostat not in (0, 2) or isinstance(self.mirostat, bool):
            raise ValueError(f"mirostat must be 0 (off) or 2 (mirostat v2; v1 is not implemented), got {self.mirostat!r}")
        _check_range(self, "mirostat_tau", 0.0, math.inf, low_open=True, rng="(0, inf)")
        _check_range(self, "mirostat_eta", 0.0, math.inf, low_open=True, rng="(0, inf)")
        _check_range(self, "guidance_scale", -math.inf, math.inf, low_open=True, rng="a finite number")
        neg = self.negative_prompt
        if neg is not None and not isinstance(neg, str) and not (
                isinstance(neg, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in neg)):
            raise ValueError(f"negative_prompt must be text or a list of token ids, got {neg!r}")
        if (self.guidance_scale != 1.0 or neg) and self.num_beams > 1:
            raise ValueError("guidance_scale (classifier-free guidance) runs one sequence: num_beams must be 1, "
                             f"got {self.num_beams}")

    def _validate_constraint(self) -> None:
        given = [n for n in ("json_schema", "regex", "grammar", "choices") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"json_schema, regex, grammar and choices are exclusive; got {', '.join(given)}")
        if not given:
            return
        name, value = given[0], getattr(self, given[0])
        if name == "json_schema" and not isinstance(value, (dict, str)):
            raise ValueError(f"json_schema must be a JSON Schema (a dict or its JSON text), got {type(value).__name__}")
        if name in ("regex", "grammar") and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if name == "choices" and (not isinstance(value, (list, tuple)) or not value
                                  or not all(isinstance(c, str) and c for c in value)):
            raise ValueError(f"choices must be a non-empty list of non-empty strings, got {value!r}")
        if self.ignore_eos:
            raise ValueError(f"ignore_eos cannot be combined with {name}: eos is how the grammar ends the output")

    def check_token_ids(self, vocab_size: int) -> None:
        """Every token id the config names must be < vocab_size (called once the model is known)."""
        named = {
            "eos_token_id": self.eos_token_id,
            "logit_bias": list(self.logit_bias or {}),
            "bad_words_ids": [t for seq in self.bad_words_ids or [] for t in seq],
            "allowed_token_ids": self.allowed_token_ids or [],
            "pad_token_id": [self.pad_token_id] if self.pad_token_id is not None and self.num_beam_groups > 1 else [],
            "negative_prompt": self.negative_prompt if isinstance(self.negative_prompt, (list, tuple)) else [],
            "dry_sequence_breakers": [t for b in self.dry_sequence_breakers if not isinstance(b, str) for t in b],
        }
        for name, ids in named.items():
            check_token_ids(ids, vocab_size, f"{name}: token ids")

    def _warn_unused(self) -> None:
        if self.negative_prompt and self.guidance_scale == 1.0:
            warnings.warn("negative_prompt has no effect with guidance_scale=1.0 (classifier-free guidance off; "
                          "set guidance_scale > 1)", UserWarning, stacklevel=3)
        if self.min_new_tokens > self.max_new_tokens:
            warnings.warn(f"min_new_tokens ({self.min_new_tokens}) > max_new_tokens ({self.max_new_tokens}): "
                          f"generation stops at max_new_tokens", UserWarning, stacklevel=3)
        if self.do_sample:
            return
        unused = [n for n, default in (("temperature", 1.0), ("top_p", 1.0), ("typical_p", 1.0))
                  if getattr(self, n) != default]
        unused += ["min_p"] if self.min_p is not None else []
        unused += [n for n in ("xtc_probability", "top_n_sigma", "epsilon_cutoff", "eta_cutoff", "mirostat")
                   if getattr(self, n)]
        if self.seed is not None:
            unused.append("seed")
        if unused:
            warnings.warn(f"{', '.join(unused)} have no effect with do_sample=False (greedy/beam search)",
                          UserWarning, stacklevel=3)


_INT_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)  # counts (token ids stay strict: eos_token_id)
               if f.type in ("int", "int | None") and not f.name.endswith("token_id")}


def _is_id(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _id_list(name: str, values) -> list[int]:
    """`values` as a list of ints, or ValueError naming the field (no silent int() of floats or text)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a token id or a list of token ids, got {values!r}")
    values = list(values)
    wrong = [v for v in values if not _is_id(v)]
    if wrong:
        raise ValueError(f"{name} must hold integer token ids, got {wrong[0]!r}")
    return [int(v) for v in values]


def _logit_bias(bias, *, text_keys: bool = True) -> dict[int, float]:
    """{token id: bias}; keys are ids, or their decimal text (JSON object keys, from_dict's
    text_keys); biases any number but NaN."""
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {bias!r}")
    out = {}
    for key, value in bias.items():
        if text_keys and isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if not _is_id(key):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or math.isnan(value):
            raise ValueError(f"logit_bias[{key}] must be a number (+-inf allowed), got {value!r}")
        out[int(key)] = float(value)
    return out


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
        raise ValueError(f"{name} must be {rng if rng.startswith('a ') else 'in ' + rng}, got {value!r}")


def check_token_ids(ids, vocab_size: int, what: str = "token ids") -> np.ndarray:
    """`ids` as an int64 array, or ValueError naming up to five ids outside [0, vocab_size)."""
    try:
        arr = np.asarray(ids, dtype=np.int64)
    except OverflowError:  # an id past int64 (NumPy's own message names neither the field nor the id)
        big = past_int64(np.asarray(ids, dtype=object).ravel().tolist())
        raise ValueError(f"{what} {big[:5]} are outside the vocabulary [0, {vocab_size})") from None
    if arr.size <= 64:  # a decode step's or a verification's few ids: Python's min / max, not two NumPy
        values = arr.ravel().tolist()  # reductions (~30 us right after an infer, whose weights evicted them)
        ok = not values or (min(values) >= 0 and max(values) < vocab_size)
    else:
        ok = arr.min() >= 0 and arr.max() < vocab_size
    if not ok:
        bad = arr[(arr < 0) | (arr >= vocab_size)]
        raise ValueError(f"{what} {bad[:5].tolist()} are outside the vocabulary [0, {vocab_size})")
    return arr


def past_int64(values) -> list[int]:
    """The Python ints among `values` that int64 cannot hold (NumPy keeps them as objects, or overflows)."""
    return [v for v in values if isinstance(v, int) and not -2 ** 63 <= v < 2 ** 63]


def _schema_of(response_format) -> dict | str | None:
    """The JSON Schema in an OpenAI `response_format`: {"type": "json_schema", "json_schema": {"schema":
    ...}}; {"type": "json_object"} is any JSON object; {"type": "text"} is no constraint."""
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_schema", "json_object", "text"):
        raise ValueError("response_format must be {'type': 'json_schema', 'json_schema': {'schema': ...}}, "
                         f"{{'type': 'json_object'}} or {{'type': 'text'}}, got {response_format!r}")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise ValueError(f"response_format.json_schema must hold a 'schema', got {spec!r}")
    return spec["schema"]
