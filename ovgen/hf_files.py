"""HF-format side files from a GGUF's metadata: config.json, generation_config.json,
tokenizer.json (+ tokenizer_config.json) and the chat template.

Why build tokenizer.json ourselves: transformers' GGUF tokenizer conversion maps spaces to the unknown
token for SmolLM2. The GGUF carries everything needed: the byte-level BPE vocabulary and merges and
the pre-tokenizer name. "smollm" is the HF SmolLM2 pre-tokenizer: digits split one by one, then
GPT-2 byte-level splitting (llama.cpp `LLAMA_VOCAB_PRE_TYPE_SMOLLM`).
"""

from __future__ import annotations

import json
from pathlib import Path

_SUPPORTED_PRE = {"smollm", "gpt2", "default"}


def read_gguf_metadata(gguf_path: Path) -> dict:
    """All scalar/array key-value fields of a GGUF file, decoded to Python values."""
    import gguf  # the `prepare` extra

    reader = gguf.GGUFReader(str(gguf_path))
    return {key: field.contents() for key, field in reader.fields.items()}


def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equal to the model's own byte-level BPE tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    model_kind = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model_kind != "gpt2" or pre not in _SUPPORTED_PRE:
        raise ValueError(
            f"tokenizer.ggml.model={model_kind!r} / tokenizer.ggml.pre={pre!r} is not supported; "
            f"supported: model 'gpt2' with pre-tokenizer one of {sorted(_SUPPORTED_PRE)}"
        )
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # token_type 3 = CONTROL (llama.cpp): these match as whole strings, never split by BPE.
    types = meta.get("tokenizer.ggml.token_type", [])
    special = [tokens[i] for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def _token(meta: dict, key: str) -> str | None:
    idx = meta.get(f"tokenizer.ggml.{key}_token_id")
    return None if idx is None else meta["tokenizer.ggml.tokens"][int(idx)]


def tokenizer_config(meta: dict) -> dict:
    """tokenizer_config.json as transformers' PreTrainedTokenizerFast reads it."""
    tokens = meta["tokenizer.ggml.tokens"]
    # SmolLM2-Instruct ends a turn with <|im_end|>; the GGUF's eos id already points at it.
    eos = _token(meta, "eos")
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _token(meta, "bos"),
        "eos_token": eos,
        "unk_token": _token(meta, "unknown"),
        "pad_token": _token(meta, "padding") or eos,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta['general.architecture']}.context_length", 2048)),
        "chat_template": meta.get("tokenizer.chat_template"),
        "vocab_size": len(tokens),
    }


def model_config(meta: dict) -> dict:
    """config.json (HF LlamaConfig) from the GGUF hyper-parameters."""
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"general.architecture={arch!r} is not supported; supported: 'llama'")

    def g(key):
        return meta[f"{arch}.{key}"]

    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv")),
        "head_dim": int(meta.get(f"{arch}.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(g("context_length")),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(meta.get(f"{arch}.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id", meta["tokenizer.ggml.eos_token_id"])),
        "torch_dtype": "float32",
    }


def generation_config(meta: dict) -> dict:
    """generation_config.json: the ids; decoding defaults are HF's (greedy) unless the model says."""
    return {
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": [int(meta["tokenizer.ggml.eos_token_id"])],
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id", meta["tokenizer.ggml.eos_token_id"])),
    }


def write_hf_files(meta: dict, out_dir: Path) -> None:
    """Write config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and chat_template.jinja into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    tcfg = tokenizer_config(meta)
    files = {
        "config.json": model_config(meta),
        "generation_config.json": generation_config(meta),
        "tokenizer_config.json": tcfg,
        "special_tokens_map.json": {
            k: tcfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if tcfg[k]
        },
    }
    for name, obj in files.items():
        (out_dir / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if tcfg["chat_template"]:
        (out_dir / "chat_template.jinja").write_text(tcfg["chat_template"], encoding="utf-8")
