"""The tokenizer.json that `ovgen prepare` builds from the GGUF encodes exactly like the
openvino tokenizer IR that openvino-genai converts from the same GGUF, and decodes back."""

from __future__ import annotations

import random

import numpy as np
import openvino_tokenizers  # noqa: F401
import pytest

from ovgen.runtime import core
from ovgen.tokenizer import IncrementalDecoder, Tokenizer, _compiled_template

POOLS = {
    "english": ["The quick brown fox jumps over the lazy dog.", "Hello, world!", "It's a test; isn't it?",
                "Mr. O'Neil's cat", "UPPER lower MiXeD", "e.g. i.e. etc.", "co-operate", "state-of-the-art"],
    "code": ["def f(x):\n    return x ** 2", "for (int i = 0; i < n; ++i) { a[i] = 0; }", "SELECT * FROM t;",
             "x = {'a': [1, 2, 3]}", "#include <stdio.h>", "if __name__ == '__main__':", "a->b && c || !d"],
    "digits": ["1234567890", "3.14159", "1,000,000", "2026-11-21", "0x1F", "v1.2.3", "42", "007", "1e-10"],
    "whitespace": ["  two", "\tTab", "\n\nnewlines\n", "trailing   ", "   ", " \t \n ", "a  b   c    d"],
    "cyrillic": ["Привет, мир!", "Съешь же ещё этих мягких французских булок", "Ёлка", "България"],
    "turkish": ["Türkçe ığüşöç İstanbul", "Şişli'de güzel bir gün", "ĞÜŞİÖÇ"],
    "finnish": ["Hyvää päivää", "Tämä koodi vie mallin", "äiti ja isä"],
    "swahili": ["Habari ya asubuhi", "Msimbo huu unasafirisha modeli", "Asante sana"],
    "cjk": ["日本語のテキスト", "中文测试", "한국어 텍스트", "東京タワー"],
    "emoji": ["😀", "🎉🎉", "👍🏽", "👨‍👩‍👧", "🇫🇮", "❤️"],
    "special": ["<|im_start|>user\nHi<|im_end|>", "<|endoftext|>", "<|im_end|><|im_start|>", "<repo_name>x"],
}


def corpus(n: int = 560, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [s for pool in POOLS.values() for s in pool]
    kinds = list(POOLS)
    while len(out) < n:
        parts = [rng.choice(POOLS[rng.choice(kinds)]) for _ in range(rng.randint(1, 4))]
        sep = rng.choice(["", " ", "  ", "\n", "\t", "-", "1"])
        out.append(sep.join(parts))
    return out


@pytest.fixture(scope="module")
def ov_tokenizer(model_dir):
    return core().compile_model(str(model_dir / "openvino_tokenizer.xml"), "CPU")


def test_encodes_like_openvino_tokenizer(model_dir, ov_tokenizer):
    tok = Tokenizer(model_dir)
    strings = corpus()
    assert len(strings) >= 500
    mismatches = []
    for s in strings:
        ours = tok.encode(s)
        theirs = ov_tokenizer([s])["input_ids"][0].tolist()
        if ours != theirs:
            mismatches.append((s, ours, theirs))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_decodes_back(model_dir):
    tok = Tokenizer(model_dir)
    for s in corpus():
        assert tok.decode(tok.encode(s), skip_special_tokens=False) == s


def test_openvino_backend_matches_hf_backend(model_dir):
    hf, ovt = Tokenizer(model_dir, "hf"), Tokenizer(model_dir, "openvino")
    for s in corpus(60, seed=1) + POOLS["special"]:
        ids = hf.encode(s)
        assert ovt.encode(s) == ids
        assert ovt.decode(ids) == hf.decode(ids)
        # the IR skips its special tokens always; skip_special_tokens=False must keep them, as HF does
        assert ovt.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False) == s
    assert ovt.special_ids == hf.special_ids and len(hf.special_ids) > 2
    # the vocabulary and every token's own text (DRY's sequence breakers are found in them) as HF's
    assert ovt.vocab_size == hf.vocab_size == 49152
    assert ovt.token_texts() == hf.token_texts()
    ids = hf.encode("<|im_start|>user\nHi 😀<|im_end|>")
    for skip in (True, False):
        dec = IncrementalDecoder(ovt, skip_special_tokens=skip)
        assert "".join([dec.push(t) for t in ids] + [dec.flush()]) == hf.decode(ids, skip_special_tokens=skip)


def test_openvino_backend_replaces_broken_utf8_like_hf(model_dir):
    """Random id lists rich in tokens that hold part of a character: the detokenizer IR's own UTF8Validate
    (replace mode) gave one U+FFFD for two broken characters in a row ([187, 228]: HF '\ufffd\ufffd');
    ovgen decodes the IR's bytes the way HF does."""
    hf, ovt = Tokenizer(model_dir, "hf"), Tokenizer(model_dir, "openvino")
    assert hf.decode([187, 228]) == "\ufffd\ufffd"
    assert_partial_characters_decode_like_hf(hf, ovt, 3000, seed=5, at_least=100)


def assert_partial_characters_decode_like_hf(hf, ovt, n: int, seed: int, at_least: int) -> None:
    """`n` random id lists of 1-5 tokens, 60 % of them tokens that hold part of a character (at least
    `at_least` such tokens in the vocabulary): ovt decodes each as hf does."""
    partial = [t for t in range(hf.vocab_size) if "\ufffd" in hf.decode([t])]
    assert len(partial) > at_least
    rng = random.Random(seed)
    for _ in range(n):
        ids = [rng.choice(partial) if rng.random() < 0.6 else rng.randrange(hf.vocab_size)
               for _ in range(rng.randint(1, 5))]
        assert ovt.decode(ids) == hf.decode(ids), ids


def test_openvino_backend_without_a_skip_list_refuses_to_keep_specials(model_dir, monkeypatch):
    """A detokenizer IR whose special tokens cannot be switched back on (no VocabDecoder skip-tokens input)
    says so when asked to keep them, instead of dropping them silently."""
    import ovgen.tokenizer as tokenizer_module

    real = tokenizer_module._detokenizers
    monkeypatch.setattr(tokenizer_module, "_detokenizers", lambda folder: (real(folder)[0], None, set(), 0))
    ovt = Tokenizer(model_dir, "openvino")
    assert ovt.decode([1, 28]) == Tokenizer(model_dir).decode([1, 28])
    with pytest.raises(ValueError, match="skip_special_tokens=False cannot keep its special tokens"):
        ovt.decode([1, 28], skip_special_tokens=False)


def test_openvino_backend_decodes_every_prefix_and_streams_like_hf(model_dir):
    """The detokenizer IR openvino-genai writes dropped a partial UTF-8 character where HF gives U+FFFD,
    so streaming on the 'openvino' backend lost or repeated characters ('😀😀' came out '😀', '文字' as
    '文YY'); a trailing NUL came back as nothing, or was lost on the way in. Every prefix (partial
    characters included) and every stream must now give HF's text."""
    hf, ovt = Tokenizer(model_dir, "hf"), Tokenizer(model_dir, "openvino")
    texts = corpus(80, seed=3) + ["a\x00", "😀😀 文字\x00b", "\x00"]
    for s in texts:
        ids = hf.encode(s)
        for n in range(1, len(ids) + 1):
            assert ovt.decode(ids[:n]) == hf.decode(ids[:n]), (s, n)
        dec = IncrementalDecoder(ovt)
        assert "".join([dec.push(t) for t in ids] + [dec.flush()]) == hf.decode(ids), s
    # a string tensor built from Python strips a text's trailing NULs: ovgen feeds the IR the text's bytes
    for s in ["ok\x00", "\x00", "a\x00\x00", "", "x\x00y"]:
        assert ovt.encode(s) == hf.encode(s), repr(s)
        assert ovt.decode(hf.encode(s)) == s


def test_openvino_backend_refuses_a_trailing_nul_it_cannot_feed(model_dir, monkeypatch):
    """A tokenizer IR whose string input cannot be replaced by bytes (it feeds more than its
    StringTensorUnpack) gets Python strings, which lose a trailing NUL: such a text is refused, by name."""
    import ovgen.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "_bytes_tokenizer", lambda folder: None)
    ovt = Tokenizer(model_dir, "openvino")
    assert ovt.encode("ok") == Tokenizer(model_dir).encode("ok")
    with pytest.raises(ValueError, match="tokenizer 'openvino': OpenVINO's string tensors drop a text's trailing NUL"):
        ovt.encode("ok\x00")


def test_special_tokens_are_single_ids(model_dir):
    tok = Tokenizer(model_dir)
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.decode([1, 2], skip_special_tokens=True) == ""


def test_incremental_decoder_joins_to_decode(model_dir):
    tok = Tokenizer(model_dir)
    for s in corpus(120, seed=2):
        ids = tok.encode(s)
        dec = IncrementalDecoder(tok, skip_special_tokens=False)
        deltas = [dec.push(t) for t in ids] + [dec.flush()]
        assert "".join(deltas) == tok.decode(ids, skip_special_tokens=False)
        assert all("\ufffd" not in d for d in deltas[:-1]), deltas


def test_incremental_decoder_holds_partial_utf8(model_dir):
    tok = Tokenizer(model_dir)
    ids = tok.encode("😀")
    assert len(ids) > 1  # byte-level: an emoji spans several tokens
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(t) for t in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "😀"


def test_chat_template_renders_like_transformers(model_dir):
    import transformers
    ref = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tok = Tokenizer(model_dir)
    for msgs in ([{"role": "user", "content": "Hi"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]):
        expected = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tok.apply_chat_template(msgs) == expected
        # compiled once per template text: the next render reuses it
        hits = _compiled_template.cache_info().hits
        assert tok.apply_chat_template(msgs) == expected
        assert _compiled_template.cache_info().hits == hits + 1
        assert tok.encode(expected) == ref(expected, add_special_tokens=False)["input_ids"]
    assert np.array_equal(tok.encode("a b"), ref("a b", add_special_tokens=False)["input_ids"])


def test_generation_with_the_openvino_tokenizer_matches_hf(model, model_dir):
    """load(tokenizer="openvino") end to end: the greedy tokens, the text and the streamed deltas equal
    the tokenizer.json model's, with and without DRY."""
    import ovgen

    ov_model = ovgen.load(model_dir, tokenizer="openvino")
    messages = [{"role": "user", "content": "Write one line about caf\u00e9s and \U0001f600."}]
    cfg = {"max_new_tokens": 24}
    ours, ref = ovgen.generate(ov_model, messages, cfg), ovgen.generate(model, messages, cfg)
    assert ours.sequences[0].token_ids == ref.sequences[0].token_ids
    assert ours.text == ref.text and ours.text
    assert "".join(r.text for r in ovgen.stream(ov_model, messages, cfg)) == ref.text
    # DRY finds its sequence breakers in every token's text: the backend's vocabulary must be whole
    # (with an empty one, as the backend had, this prompt's tokens differed)
    dry = {"max_new_tokens": 32, "dry_multiplier": 0.8, "dry_allowed_length": 1}
    repeat = [{"role": "user", "content": "Write the word 'ok:' twenty times, one per line."}]
    assert ovgen.generate(ov_model, repeat, dry).sequences[0].token_ids == \
        ovgen.generate(model, repeat, dry).sequences[0].token_ids


def test_openvino_backend_on_a_sentencepiece_tokenizer():
    """Phi-3's tokenizer (SentencePiece-style: '▁' for spaces, <0xE6>-style byte fallback, converted by
    openvino_tokenizers in the phi3-tiny flavour) on the 'openvino' backend: the same ids, texts, prefixes,
    streams and token texts as HF's. Its tokenizer IR keeps an option as state (a "truncation"
    ReadValue / Assign): the bytes-input rewrite dropped the Assign and the IR did not compile."""
    import ovgen
    from conftest import require_flavour

    folder = require_flavour("phi3-tiny")
    hf, ovt = Tokenizer(folder, "hf"), Tokenizer(folder, "openvino")
    specials = ["<|user|>\nHi 😀<|end|>\n<|assistant|>", "<|system|>x<|end|><|endoftext|>", "a\x00", "\x00"]
    for s in corpus(60, seed=7) + specials:
        ids = hf.encode(s)
        assert ovt.encode(s) == ids, s
        for skip in (True, False):
            assert ovt.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), s
        for n in range(1, len(ids) + 1):
            assert ovt.decode(ids[:n]) == hf.decode(ids[:n]), (s, n)
        dec = IncrementalDecoder(ovt)
        assert "".join([dec.push(t) for t in ids] + [dec.flush()]) == hf.decode(ids), s
    assert ovt.vocab_size == hf.vocab_size and ovt.special_ids == hf.special_ids and len(hf.special_ids) > 2
    assert ovt.token_texts() == hf.token_texts()
    assert_partial_characters_decode_like_hf(hf, ovt, 1000, seed=11, at_least=200)  # the byte-fallback tokens
    cfg = {"max_new_tokens": 12, "ignore_eos": True}
    want = ovgen.generate(ovgen.load(folder), "<|user|>Name a colour.<|end|><|assistant|>", cfg)
    got = ovgen.generate(ovgen.load(folder, tokenizer="openvino"), "<|user|>Name a colour.<|end|><|assistant|>", cfg)
    assert (got.sequences[0].token_ids, got.text) == (want.sequences[0].token_ids, want.text)
