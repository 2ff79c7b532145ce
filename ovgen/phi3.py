"""The OpenVINO Phi-3 chat sample's model family, built locally: Phi-3's tokens, prompt format and
export flags on random-weight `Phi3ForCausalLM` checkpoints (real Phi-3 weights cannot be
downloaded on machines without the model hub).

The sample exports with

    optimum-cli export openvino --model microsoft/Phi-3-mini-4k-instruct --task text-generation-with-past
        --weight-format int4 --group-size 128 --ratio 0.6 --sym --trust-remote-code ./model/phi3-instruct/int4

`build_checkpoint` writes a Phi-3-shaped checkpoint (`TINY` for tests, `MINI` = Phi-3-mini's 3.8B
shape for the seed-scale benchmark) whose tokenizer carries Phi-3's special tokens at their real ids;
`export` runs optimum-cli with the sample's exact int4 flags (without --trust-remote-code: transformers
has Phi-3 built in, and ovgen never runs a checkpoint's code).
"""

from __future__ import annotations

import json
from pathlib import Path

from .tools import optimum_cli, run_tool

# Phi-3-mini-4k-instruct's added tokens (tokenizer.json) and the ids its generation_config stops on.
SPECIAL_TOKENS = {
    32000: "<|endoftext|>", 32001: "<|assistant|>", 32002: "<|placeholder1|>", 32003: "<|placeholder2|>",
    32004: "<|placeholder3|>", 32005: "<|placeholder4|>", 32006: "<|system|>", 32007: "<|end|>",
    32008: "<|placeholder5|>", 32009: "<|placeholder6|>", 32010: "<|user|>",
}
BASE_VOCAB = 32000  # Phi-3's SentencePiece vocabulary: ids below the added tokens
VOCAB_SIZE = 32064  # the embedding / logits width (padded)
EOS_IDS = [32000, 32001, 32007]
END_ID = 32007  # <|end|>: ends every turn
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# The sample's prompt (tokenised with add_special_tokens=False) and OpenVINO properties.
SEED_PROMPT = ("<|system|>You are a helpful AI assistant.<|end|><|user|>can you introduce yourself?<|end|>"
               "<|assistant|>")
SEED_OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": ""}
EXPORT_FLAGS = ["--task", "text-generation-with-past", "--weight-format", "int4", "--group-size", "128",
                "--ratio", "0.6", "--sym"]

# Model shapes. Hidden sizes are multiples of 128, so --group-size 128 applies as in the sample.
TINY = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "initializer_range": 0.2}  # wide weights: clear logit margins, so greedy is not decided by rounding
MINI = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
        "initializer_range": 0.02}  # microsoft/Phi-3-mini-4k-instruct's config.json


def build_tokenizer(meta: dict):
    """A byte-level BPE over SmolLM2's first 32,000 tokens (the GGUF's vocabulary and the merges that
    stay inside it), with ids 0-2 renamed <unk> <s> </s> and Phi-3's added tokens at 32000-32010."""
    from tokenizers import AddedToken

    from .hf_files import build_tokenizer as smollm_tokenizer

    tokens = list(meta["tokenizer.ggml.tokens"][:BASE_VOCAB])
    tokens[:3] = ["<unk>", "<s>", "</s>"]
    keep = set(tokens)
    merges = [m for m in meta["tokenizer.ggml.merges"] if _merge_inside(m, keep)]
    types = [3 if i < 3 else 1 for i in range(BASE_VOCAB)]  # 3 = CONTROL: matched whole, never split
    tok = smollm_tokenizer({**meta, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
                            "tokenizer.ggml.token_type": types})
    for i, text in sorted(SPECIAL_TOKENS.items()):
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        assert tok.token_to_id(text) == i, (text, tok.token_to_id(text))
    return tok


def _merge_inside(merge: str, vocab: set[str]) -> bool:
    """A BPE merge "a b" whose parts and result are all in `vocab`."""
    a, b = merge.split(" ", 1)
    return a in vocab and b in vocab and a + b in vocab


def build_checkpoint(meta: dict, out: Path, shape: dict = TINY, *, seed: int = 0) -> None:
    """Write a random-weight Phi3ForCausalLM (bf16 safetensors, as Phi-3 ships) with Phi-3's tokenizer
    files, generation_config and chat template into `out` (needs torch + transformers: the dev extra)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    config = Phi3Config(vocab_size=VOCAB_SIZE, num_key_value_heads=shape["num_attention_heads"],
                        max_position_embeddings=4096, original_max_position_embeddings=4096,
                        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=32000,
                        pad_token_id=32000, sliding_window=2047, tie_word_embeddings=False, **shape)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: the 3.8B shape would need 15 GB in fp32
    try:
        model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.update(bos_token_id=1, eos_token_id=EOS_IDS, pad_token_id=32000, do_sample=False)
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    build_tokenizer(meta).save(str(out / "tokenizer.json"))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|endoftext|>",
            "unk_token": "<unk>", "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 4096, "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n", encoding="utf-8")
    special = {k: tcfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def export_command(checkpoint: Path, out: Path) -> list[str]:
    """The sample's optimum-cli command (an argument list, never a shell string)."""
    return [optimum_cli(), "export", "openvino", "--model", str(checkpoint), *EXPORT_FLAGS, str(out)]


def export(checkpoint: Path, out: Path, log: Path) -> None:
    """optimum-cli export with the sample's int4 flags; RuntimeError with the log's tail on failure."""
    run_tool(export_command(checkpoint, out), log, "optimum-cli export openvino")
