"""Tokenisation, incremental detokenisation and chat templates.

Backends: "hf" reads tokenizer.json with the `tokenizers` library (default); "openvino" runs the
openvino_tokenizer / openvino_detokenizer IRs, made HF's where they were not: broken UTF-8 decodes to
U+FFFD as HF's does (not dropped), a text's trailing NUL is encoded and decoded, and
skip_special_tokens=False keeps the special tokens. Chat templates come from the model folder
(chat_template.jinja, else tokenizer_config.json's "chat_template") and render in jinja2's
ImmutableSandboxedEnvironment, as HF does, so a template cannot reach Python internals.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import numpy as np
import openvino as ov


class Tokenizer:
    """encode / decode / apply_chat_template over a model folder's tokenizer files."""

    def __init__(self, model_dir: str | Path, backend: str = "hf"):
        self.dir = Path(model_dir)
        self.backend = backend
        self.cache: dict = {}  # what samplers derive from the vocabulary once (DRY breakers, grammar matchers)
        cfg_path = self.dir / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        if backend == "hf":
            path = self.dir / "tokenizer.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (needed by the 'hf' tokenizer backend)")
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._tok = HFTokenizer.from_file(str(path))
            except Exception as e:  # the library raises a bare Exception on bad JSON
                raise ValueError(f"{path}: cannot be read as a tokenizer ({e})") from None
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            self.special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        elif backend == "openvino":
            self._init_openvino()
        else:
            raise ValueError(f"backend must be 'hf' or 'openvino', got {backend!r}")

    def _init_openvino(self) -> None:
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops)

        from .runtime import core

        for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
            if not (self.dir / name).is_file():
                raise FileNotFoundError(f"{self.dir / name} is missing (needed by the 'openvino' backend)")
        bytes_in = _bytes_tokenizer(self.dir)
        self._bytes_in = bytes_in is not None
        self._ov_tok = core().compile_model(bytes_in if self._bytes_in else str(self.dir / "openvino_tokenizer.xml"),
                                            "CPU")
        skipping, keeping, special, self.vocab_size = _detokenizers(self.dir)
        self._ov_detok = {True: core().compile_model(skipping, "CPU")}
        if keeping is not None:
            self._ov_detok[False] = core().compile_model(keeping, "CPU")
        self._local = threading.local()  # detokenizer requests per thread (sessions may run on several)
        end = self.encode("a")
        self._end = end[0] if len(end) == 1 else None
        if self._end is None or self.decode([self._end]) != "a":
            raise ValueError(f"{self.dir}: its openvino tokenizer does not encode 'a' as one token that decodes back")
        self.special_ids = special


    # ---- encode / decode ----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. add_special_tokens=False (the Phi-3 sample's setting) adds no BOS/EOS."""
        if self.backend == "hf":
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if self._bytes_in:  # the text's UTF-8 bytes as they are
            data = text.encode("utf-8")
            return self._ov_tok([np.array([0], np.int32), np.array([len(data)], np.int32),
                                 np.frombuffer(data, np.uint8)])["input_ids"][0].tolist()
        if text.endswith("\x00"):
            raise ValueError("tokenizer 'openvino': OpenVINO's string tensors drop a text's trailing NUL characters "
                             "(\\x00), which changes its tokens; use the 'hf' tokenizer for such a text")
        return self._ov_tok([text])["input_ids"][0].tolist()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self.backend == "hf":
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if not ids:
            return ""
        return self._decode_rows([ids], skip_special_tokens)[0]

    def _decode_rows(self, rows: list[list[int]], skip_special_tokens: bool) -> list[str]:
        """The openvino detokenizer over equally long id lists, in one infer."""
        skip = bool(skip_special_tokens)
        if skip not in self._ov_detok:
            raise ValueError(f"tokenizer 'openvino': {self.dir / 'openvino_detokenizer.xml'} has no VocabDecoder "
                             "skip-tokens input, so skip_special_tokens=False cannot keep its special tokens; "
                             "use the 'hf' tokenizer")
        reqs = self._local.__dict__.setdefault("detok", {})
        req = reqs.get(skip)
        if req is None:
            req = reqs[skip] = self._ov_detok[skip].create_infer_request()
        # one letter after the ids, taken off again: numpy's fixed-width bytes (OpenVINO's bytes_data) drop
        # trailing NULs, so a NUL token last decoded to nothing
        req.set_input_tensor(ov.Tensor(np.asarray([row + [self._end] for row in rows], dtype=np.int64)))
        req.infer()
        return [bytes(b).decode("utf-8", "replace")[:-1] for b in req.get_output_tensor(0).bytes_data]

    def token_texts(self) -> list[str]:
        """Every token's own text (special tokens included), by id; computed once."""
        if "token_texts" not in self.cache:
            rows = [[i] for i in range(self.vocab_size)]
            self.cache["token_texts"] = self._tok.decode_batch(rows, skip_special_tokens=False) \
                if self.backend == "hf" else self._decode_rows(rows, False)
        return self.cache["token_texts"]

    # ---- chat ---------------------------------------------------------------------------------
    def chat_template(self) -> str | None:
        path = self.dir / "chat_template.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
        return self.config.get("chat_template")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            template: str | None = None) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's chat template."""
        template = template if template is not None else self.chat_template()
        if not template:
            raise ValueError(f"{self.dir}: no chat template (chat_template.jinja or tokenizer_config.json)")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
        try:
            return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.config.get("bos_token") or "",
                                        eos_token=self.config.get("eos_token") or "")
        except TypeError as e:  # e.g. str + int inside the template: name the message that is not text
            odd = next((i for i, m in enumerate(messages) if not isinstance(m["content"], str)), None)
            where = "" if odd is None else (f"messages[{odd}]['content'] is "
                                            f"{type(messages[odd]['content']).__name__}, not text; ")
            raise ValueError(f"chat template cannot render these messages: {where}{e}") from None


def render_chat_template(template: str, messages: list[dict], **context) -> str:
    """HF's rendering: ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks), `raise_exception`,
    `tojson`. A template that reaches for unsafe attributes raises ValueError("unsafe template").
    The compiled template is kept per template text (compiling takes ~5 ms, rendering ~0.1 ms)."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return _compiled_template(template).render(messages=messages, **context)
    except SecurityError as e:
        raise ValueError(f"unsafe template: {e}") from None
    except TemplateError as e:
        raise ValueError(f"chat template error: {e}") from None


@functools.lru_cache(maxsize=32)
def _compiled_template(template: str):
    """The jinja2 Template of `template`, as transformers compiles a chat template (and caches it:
    its `_compile_jinja_template` is an lru_cache too). A template that fails to compile is not kept."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    class Sandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj, attribute):
            # jinja2 returns an Undefined that prints as "": refuse at once instead
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _detokenizers(folder: Path):
    """(the detokenizer that skips special tokens, one that keeps them, the special ids, the vocabulary
    size: the length of VocabDecoder's token-begins input). The IR bakes the skipped ids into
    VocabDecoder's fifth input; openvino-genai makes that input switchable through a state variable
    (MakeVocabDecoderSatateful), here the second model gets an empty list instead. An IR without that
    input gives (model, None, set(), its rt_info's vocab_size or 0)."""
    import openvino.opset13 as ops

    from .runtime import core

    skipping = _byte_detokenizer(folder)
    keeping = skipping.clone()
    decoders = [op for op in keeping.get_ordered_ops() if op.get_type_name() == "VocabDecoder"]
    if len(decoders) != 1 or decoders[0].get_input_size() < 5:  # e.g. a SentencepieceDetokenizer
        rt = skipping.get_rt_info()
        return skipping, None, set(), int(rt["vocab_size"].value) if "vocab_size" in rt else 0
    skip_ids = decoders[0].input_value(4)
    special = core().compile_model(ov.Model([ops.result(skip_ids)], []), "CPU")({})[0]
    decoders[0].input(4).replace_source_output(ops.constant(np.zeros(0, skip_ids.get_element_type().to_dtype()))
                                               .output(0))
    vocab_size = decoders[0].input_value(1).get_partial_shape()[0].get_length()
    return skipping, keeping, {int(i) for i in np.ravel(special)}, vocab_size


def _bytes_tokenizer(folder: Path):
    """The tokenizer IR taking a text as its unpacked UTF-8 form (begins, ends, bytes), the three outputs of
    its StringTensorUnpack, or None when its string input feeds anything else. A string tensor built from
    Python loses a text's trailing NULs (numpy's fixed-width strings drop them); bytes keep them."""
    import openvino.opset13 as ops

    from .runtime import core

    model = core().read_model(str(folder / "openvino_tokenizer.xml"))
    params = model.get_parameters()
    users = [t.get_node() for t in params[0].output(0).get_target_inputs()] if len(params) == 1 else []
    if not users or any(u.get_type_name() != "StringTensorUnpack" for u in users):
        return None
    inputs = [ops.parameter([-1], ov.Type.i32, name="begins"), ops.parameter([-1], ov.Type.i32, name="ends"),
              ops.parameter([-1], ov.Type.u8, name="bytes")]
    for unpack in users:
        for i, new in enumerate(inputs):
            unpack.output(i).replace(new.output(0))
    # its sinks too: a tokenizer IR may keep options as state (openvino_tokenizers' "truncation" ReadValue /
    # Assign in the Phi-3 tokenizer it converts), and a model without them fails to compile that ReadValue
    return ov.Model(model.get_results(), model.get_sinks(), inputs, "tokenizer_bytes_in")


def _byte_detokenizer(folder: Path):
    """The detokenizer IR without its UTF8Validate: it returns the raw bytes, which decode() turns into
    text with Python's errors="replace" - HF's byte-level decode (Rust's from_utf8_lossy), one U+FFFD per
    maximal broken sequence. The IR that openvino-genai's GGUF reader writes drops broken bytes
    (replace_mode="false"): a token ending inside a character decoded to nothing, so the
    IncrementalDecoder, which waits on a trailing U+FFFD, lost or repeated characters; with
    replace_mode="true" two broken characters in a row gave one U+FFFD where HF gives two (21 of 20,000
    random id lists rich in partial characters)."""
    from .runtime import core

    model = core().read_model(str(folder / "openvino_detokenizer.xml"))
    for op in model.get_ordered_ops():
        if op.get_type_name() == "UTF8Validate":  # (begins, ends, bytes) in -> the same out
            for i in range(op.get_output_size()):
                op.output(i).replace(op.input_value(i))
    return model


class IncrementalDecoder:
    """Turn a stream of token ids into text deltas.

    Never emits a broken UTF-8 character (a delta ending in U+FFFD waits for more tokens), and the
    deltas join to exactly `decode(all ids)`: `flush()` emits whatever the final decode adds.
    Decodes only a short window (from `prefix` to the end) per token, as TGI/vLLM do.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before `read` are already emitted
        self.emitted: list[str] = []
        self._prefix_text = ""  # decode(ids[prefix:read]), kept so each push decodes once

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        new_text = self.tok.decode(self.ids[self.prefix:], self.skip)
        if len(new_text) > len(self._prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(self._prefix_text):]
            self._prefix_text = delta  # = decode(ids[read:]): the window now starts at the old read
            self.prefix, self.read = self.read, len(self.ids)
            self.emitted.append(delta)
            return delta
        return ""

    def flush(self) -> str:
        """The rest of the text (a trailing partial character decodes as U+FFFD, as decode() gives)."""
        full = self.tok.decode(self.ids, self.skip)
        done = "".join(self.emitted)
        rest = full[len(done):] if full.startswith(done) else ""
        if rest:
            self.emitted.append(rest)
        self.prefix = self.read = len(self.ids)
        self._prefix_text = ""
        return rest

    @property
    def text(self) -> str:
        return "".join(self.emitted)
