"""Bad input and faults: clear errors raised before inference, sessions that survive them, nothing
executed by a template, and property tests over random logits and configs."""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import openvino as ov
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ovgen
from ovgen.beam import beam_search
from ovgen.config import GenerationConfig
from ovgen.kernels.sampling import softmax
from ovgen.choice import build_chain
from ovgen.search import Sampler
from ovgen.tokenizer import render_chat_template

PROMPT = "Tell me a story about a cat"
CFG = {"do_sample": False, "max_new_tokens": 12, "ignore_eos": True}


def _fresh(model):
    return ovgen.generate(model, PROMPT, CFG).sequences[0].token_ids


@pytest.mark.parametrize("bad,error,message", [
    (lambda ids, x: np.full_like(x, np.nan), ValueError, "processor 'bad' returned NaN logits"),
    (lambda ids, x: x[:-1], ValueError, r"processor 'bad' returned logits of shape \(49151,\), expected \(49152,\)"),
    (lambda ids, x: x.tolist(), TypeError, "processor 'bad' returned list"),
    (lambda ids, x: (x > 0), TypeError, "processor 'bad' returned bool logits"),
    (lambda ids, x: np.full_like(x, -np.inf), ValueError, "every token is masked"),
])
def test_a_bad_user_processor_is_named_and_the_session_survives(model, bad, error, message):
    bad.__name__ = "bad"
    s = model.session()
    with pytest.raises(error, match=message):
        ovgen.generate(model, PROMPT, CFG, session=s, processors=[bad])
    assert ovgen.generate(model, PROMPT, CFG, session=s).sequences[0].token_ids == _fresh(model)


def test_keyboard_interrupt_mid_generation_leaves_the_session_usable(model):
    s = model.session()

    def interrupt(rec):
        if rec.index == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ovgen.generate(model, PROMPT, CFG, session=s, on_token=interrupt)
    assert ovgen.generate(model, PROMPT, CFG, session=s).sequences[0].token_ids == _fresh(model)


def test_too_long_prompt_is_refused_unless_truncation_is_asked(model, monkeypatch):
    limit = model.max_context
    ids = (np.arange(limit + 10) % 5000 + 100).tolist()
    calls = []
    real = ovgen.Session._infer
    monkeypatch.setattr(ovgen.Session, "_infer", lambda self, x, keep=1: calls.append(x) or real(self, x, keep))
    with pytest.raises(ValueError, match=rf"prompt has {limit + 10} tokens; .* is {limit}; set truncate_prompt=True"):
        ovgen.generate(model, ids, {"max_new_tokens": 4})
    assert calls == []
    # truncation keeps the last tokens that leave room for max_new_tokens: here 64 of them
    stream = ovgen.stream(model, ids, {"max_new_tokens": limit - 64, "truncate_prompt": True, "do_sample": False})
    first = next(stream)
    stream.close()
    assert calls[0].shape == (1, 64) and calls[0][0].tolist() == ids[-64:]
    assert first.index == 0


def test_ir_without_the_expected_inputs(tmp_path):
    from openvino import opset13

    x = opset13.parameter([1, -1], ov.Type.i64, name="tokens")
    out = opset13.result(opset13.convert(x, ov.Type.f32))
    out.output(0).get_tensor().set_names({"logits"})
    ov.save_model(ov.Model([out], [x]), str(tmp_path / "openvino_model.xml"))
    with pytest.raises(ValueError, match=r"not a text-generation IR: inputs \['tokens'\] \(need \['input_ids', 'attention_mask'\]\)"):
        ovgen.load(tmp_path)


def test_tokenizer_wider_than_the_logits_is_refused(tmp_path, model_dir):
    from conftest import require_flavour

    phi3 = require_flavour("phi3-tiny")
    for f in phi3.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "tokenizer.json").unlink()
    shutil.copy(model_dir / "tokenizer.json", tmp_path / "tokenizer.json")  # SmolLM2's: 49152 tokens
    m = ovgen.load(tmp_path)
    with pytest.raises(ValueError, match=r"tokenizer has 49152 tokens but the model's logits are 32064 wide"):
        ovgen.generate(m, "hello")


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ messages.append('x') }}",
])
def test_unsafe_templates_fail_and_execute_nothing(tmp_path, template):
    marker = tmp_path / "pwned"
    for _ in range(2):  # the second time from the compiled-template cache: refused all the same
        with pytest.raises(ValueError, match="unsafe template"):
            render_chat_template(template.replace("{marker}", str(marker)), [{"role": "user", "content": "hi"}])
    assert not marker.exists()


# ---- property tests ---------------------------------------------------------------------------
_logit = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([np.inf, -np.inf, 3.4e38, -3.4e38, 1e-38, 0.0]))


@st.composite
def _configs(draw):
    return GenerationConfig(
        do_sample=True,
        temperature=draw(st.sampled_from([0.3, 0.7, 1.0, 1.5])),
        top_k=draw(st.sampled_from([0, 1, 5, 50])),
        top_p=draw(st.sampled_from([0.1, 0.5, 0.9, 1.0])),
        min_p=draw(st.sampled_from([None, 0.05, 0.5])),
        typical_p=draw(st.sampled_from([0.5, 1.0])),
        repetition_penalty=draw(st.sampled_from([1.0, 1.3, 0.8])),
        presence_penalty=draw(st.sampled_from([0.0, 0.5])),
        no_repeat_ngram_size=draw(st.sampled_from([0, 2])),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=st.lists(_logit, min_size=2, max_size=64), history=st.lists(st.integers(0, 63), max_size=20),
       cfg=_configs())
def test_chain_gives_a_distribution_or_a_clear_error(logits, history, cfg):
    x = np.array(logits, np.float32)
    ids = np.array([t % x.size for t in history] or [0], np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf inside softmax: handled below
        out = build_chain(cfg, prompt_len=1)(ids, x)
        assert out.shape == x.shape and out.dtype == np.float32
        if (out == -np.inf).all():  # not a distribution: the sampler must refuse it, not draw garbage
            with pytest.raises(ValueError, match="every token is masked"):
                Sampler(seed=0)(out)
            return
        if not (np.isfinite(out) | (out == -np.inf)).all():  # NaN or +inf
            with pytest.raises(ValueError, match="not finite"):
                Sampler(seed=0)(out)
            return
        p = softmax(out)
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-6 and (p > 0).sum() >= 1


class _TinyLM:
    """A NumPy language model behind the Session interface beam search uses: the next-token
    logits are a fixed random function of the whole row's history."""

    def __init__(self, vocab: int, seed: int):
        self.vocab, self.seed = vocab, seed
        self.tokens = np.zeros((1, 0), np.int64)
        self.infer_ns = 0

    @property
    def rows(self):
        return self.tokens.shape[0]

    def _logits(self):
        out = np.stack([np.random.default_rng([self.seed, *row.tolist()]).standard_normal(self.vocab) * 3
                        for row in self.tokens]).astype(np.float32)
        self.logsumexp = np.log(np.exp(out.astype(np.float64)).sum(-1)).astype(np.float32)
        if self.rows == 1:
            self.logsumexp = self.logsumexp[0]
            return out[0]
        return out

    def prefill(self, ids):
        self.tokens = np.asarray(ids, np.int64).reshape(1, -1)
        return self._logits()

    def reorder(self, idx):
        self.tokens = self.tokens[np.asarray(idx)]

    def step(self, ids):
        self.tokens = np.concatenate([self.tokens, np.asarray(ids, np.int64).reshape(-1, 1)], axis=1)
        return self._logits()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), beams=st.integers(2, 5), lp=st.sampled_from([0.5, 1.0, 2.0]),
       early=st.sampled_from([True, False, "never"]), max_new=st.integers(1, 8), eos=st.integers(0, 7))
def test_beam_search_invariants_on_a_tiny_lm(seed, beams, lp, early, max_new, eos):
    cfg = GenerationConfig(num_beams=beams, num_return_sequences=2,
                           length_penalty=lp, early_stopping=early, eos_token_id=[eos])
    hyps, _ = beam_search(_TinyLM(8, seed), [1, 2, 3], cfg, max_new_tokens=max_new)
    assert len(hyps) == cfg.num_return_sequences
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.token_ids) for h in hyps}) == len(hyps)
    for h in hyps:
        n = len(h.token_ids)
        assert 1 <= n <= max_new and all(t != eos for t in h.token_ids[:-1])
        assert h.finish_reason == ("stop" if h.token_ids[-1] == eos else "length")
        # the score is the sum of the chosen tokens' log-probabilities over length ** length_penalty
        assert h.score == pytest.approx(sum(h.processed_logprobs) / n ** lp, abs=1e-5)
        assert np.isfinite(h.score) and h.score <= 0


@pytest.mark.parametrize("n", [1, 4, 64, 65, 300])  # up to 64 ids checked in Python, more in NumPy
def test_token_ids_outside_the_vocabulary_are_named_at_every_length(n):
    from ovgen.config import check_token_ids

    ids = np.arange(n, dtype=np.int64) % 49152
    assert check_token_ids(ids, 49152).tolist() == ids.tolist()
    assert check_token_ids(ids.reshape(1, -1), 49152).shape == (1, n)
    assert check_token_ids([49151] * n, 49152).tolist() == [49151] * n  # the last id is in
    for bad in (-1, 49152, 10**12):
        wrong = ids.copy()
        wrong[n // 2] = bad
        with pytest.raises(ValueError, match=rf"what \[{bad}\] are outside the vocabulary \[0, 49152\)"):
            check_token_ids(wrong, 49152, "what")
    assert check_token_ids([], 49152).size == 0


@pytest.mark.parametrize("prompt,message", [
    (5, "a prompt is a string, a list of token ids or a list of chat messages .* got int"),
    (None, "got NoneType"),
    ([1.5, 2], r"prompt token ids must be integers, got 1.5 \(float\) at position 0"),
    ([1, "a"], r"got 'a' \(str\) at position 1"),
    (np.array([3.0, 4.0]), r"got 3.0 \(float\) at position 0"),
    ([True, 2], r"got True \(bool\) at position 0"),
])
def test_a_prompt_of_the_wrong_type_is_named(model, prompt, message):
    session = model.session()
    with pytest.raises(TypeError, match=message):
        ovgen.generate(model, prompt, {"max_new_tokens": 2}, session=session)
    assert session.length == 0
    with pytest.raises(TypeError, match=r"prompts\[1\]: .*" + message):  # in a batch: which prompt
        ovgen.generate(model, ["hello", prompt], {"max_new_tokens": 2})
    ok = ovgen.generate(model, np.array([[1, 2, 3]]), {"max_new_tokens": 1})  # integer arrays are ids
    assert ok.prompt_token_ids == [1, 2, 3]


def test_a_token_array_of_several_rows_is_not_taken_as_one_prompt(model):
    """A [2, T] array (a tokenizer's padded batch, HF's input_ids) was flattened into one prompt of
    2T tokens, padding and all. It is refused by its shape; a batch is a list of prompts."""
    session = model.session()
    for shape in ((2, 3), (1, 1, 3)):
        with pytest.raises(ValueError, match=r"prompt token ids in an array must be \[T\] or \[1, T\], got shape "
                           + re.escape(str(shape)) + "; a batch is a list of prompts"):
            ovgen.generate(model, np.ones(shape, np.int64), {"max_new_tokens": 1}, session=session)
    assert session.length == 0
    rows = ovgen.generate(model, list(np.array([[1, 2, 3], [4, 5, 6]])), {"max_new_tokens": 1})
    assert [r.prompt_token_ids for r in rows] == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("setting,message", [
    ({"eos_token_id": "x"}, "eos_token_id must be a token id or a list of token ids, got 'x'"),
    ({"eos_token_id": [2, 2.5]}, "eos_token_id must hold integer token ids, got 2.5"),
    ({"logit_bias": {"abc": 1}}, "logit_bias keys must be token ids, got 'abc'"),
    ({"logit_bias": {5: float("nan")}}, r"logit_bias\[5\] must be a number \(\+-inf allowed\), got nan"),
    ({"logit_bias": {5: "high"}}, r"logit_bias\[5\] must be a number"),
    ({"logit_bias": [5]}, "logit_bias must be a dict of token id -> bias"),
    ({"bad_words_ids": [5, 6]}, r"bad_words_ids must hold non-empty token id lists \(e.g. \[\[42\], \[7, 8\]\]\)"),
    ({"bad_words_ids": [[5.5]]}, "bad_words_ids must hold non-empty token id lists"),
    ({"allowed_token_ids": [1, "2"]}, "allowed_token_ids must hold integer token ids, got '2'"),
])
def test_token_id_settings_of_the_wrong_type_are_named(model, setting, message):
    """Each once went through int() / float() unnamed (or, for a NaN bias, ran and chose the NaN)."""
    session = model.session()
    with pytest.raises(ValueError, match=message):
        ovgen.generate(model, PROMPT, {"max_new_tokens": 2, **setting}, session=session)
    assert session.length == 0
    with pytest.raises(ValueError, match=message):  # a GenerationConfig is checked the same way
        GenerationConfig.from_dict(setting).validate()


@pytest.mark.parametrize("setting,message", [
    ({"num_beam_groups": "abc"}, "num_beam_groups must be an integer >= 1, got 'abc'"),
    ({"stop_strings": 5}, "stop_strings must be non-empty strings, got 5"),
    ({"dry_sequence_breakers": 5}, "dry_sequence_breakers must be a list of non-empty strings or token id lists, got 5"),
    ({"bad_words_ids": 5}, r"bad_words_ids must hold non-empty token id lists \(e.g. \[\[42\], \[7, 8\]\]\), got 5"),
    ({"eos_token_id": 10**20}, r"eos_token_id: token ids \[100000000000000000000\] are outside the vocabulary"),
    ({"logit_bias": {10**20: 1.0}}, r"logit_bias: token ids \[100000000000000000000\] are outside the vocabulary"),
    ({"bad_words_ids": [[3, 10**20]]}, r"bad_words_ids: token ids \[100000000000000000000\] are outside"),
    ({"allowed_token_ids": [-10**20]}, r"allowed_token_ids: token ids \[-100000000000000000000\] are outside"),
    ({"num_beams": 2, "num_beam_groups": 2, "pad_token_id": 10**20}, r"pad_token_id: token ids \[10+\] are outside"),
])
def test_settings_of_the_wrong_kind_or_past_int64_are_named(model, setting, message):
    """Found by a fuzz over every setting: these raised TypeError ('>' not supported, 'int' object is
    not iterable) or OverflowError (Python int too large to convert to C long), naming no setting."""
    session = model.session()
    with pytest.raises(ValueError, match=message):
        ovgen.generate(model, PROMPT, {"max_new_tokens": 2, **setting}, session=session)
    assert session.length == 0


def test_an_integer_for_a_number_setting_is_that_number(model):
    """frequency_penalty=10**20 raised OverflowError and dry_base=10**20 a TypeError (np.log of an int
    past int64) mid-generation, after the prompt had run; an int is now the float it stands for."""
    for setting in ({"frequency_penalty": 10**20}, {"dry_multiplier": 1, "dry_base": 10**20}, {"temperature": 2}):
        as_float = {k: float(v) for k, v in setting.items()}
        cfg = {"max_new_tokens": 8, "do_sample": True, "seed": 3}
        got = ovgen.generate(model, PROMPT, {**cfg, **setting}).sequences[0].token_ids
        assert got == ovgen.generate(model, PROMPT, {**cfg, **as_float}).sequences[0].token_ids, setting
    with pytest.raises(ValueError, match=r"max_time must be in \(0, inf\) seconds, got inf"):  # past float's range
        GenerationConfig.from_dict({"max_time": 10**400}).validate()


def test_session_calls_with_bad_arguments_are_named_and_change_nothing(model):
    """Found by a fuzz over the Session API: logits_to_keep=np.array([1.0]) reached the infer (an
    OpenVINO shape error, and the session reset); prefill_rows reset the session before finding a bad
    row; reorder took a [2, 2, 2] array (flattened) and raised OverflowError on 10**20; tokens_then
    wrote -1 or 1.5 into the history; step(True) ran token 1."""
    ids = model.tokenizer.encode("The capital of France is")
    s = model.session()
    s.prefill(ids)
    fresh = model.session()
    fresh.prefill(ids)
    expected = int(np.argmax(fresh.step(5)))
    for call, error, message in (
            (lambda: s.step(True), TypeError, "token_ids must be integer token ids, got bool values"),
            (lambda: s.append([5, 6], logits_to_keep=np.array([1.0])), ValueError,
             r"logits_to_keep must be an integer in \[1, 2\], got array\(\[1.\]\)"),
            (lambda: s.append([5, 6], logits_to_keep=True), ValueError, "logits_to_keep must be an integer"),
            (lambda: s.reorder(10**20), ValueError, r"beam_idx must be a \[rows\] vector of integers in \[0, 1\)"),
            (lambda: s.reorder(np.zeros((2, 2, 2), np.int64)), ValueError, r"beam_idx must be a \[rows\] vector"),
            (lambda: s.prefill_rows([[5, 6], [5, -3]]), ValueError, r"token ids \[-3\] are outside the vocabulary"),
            (lambda: s.prefill_rows([[5, 6]], pad_id=49152), ValueError, r"pad_id \[49152\] are outside"),
            (lambda: s.prefill_rows(np.array([1.0])), TypeError, "token_ids must be integer token ids, got float64"),
            (lambda: s.prefill_rows(np.zeros((2, 2, 2), np.int64)), ValueError, r"row 0 must be a \[T\] list"),
            (lambda: s.tokens_then(-1), ValueError, r"token ids \[-1\] are outside the vocabulary"),
            (lambda: s.tokens_then(1.5), TypeError, "got float64 values"),
    ):
        with pytest.raises(error, match=message):
            call()
        assert s.tokens[0].tolist() == ids and s.rows == 1
    assert int(np.argmax(s.step(5))) == expected


def test_token_ids_past_int64_are_named(model):
    session = model.session()
    with pytest.raises(ValueError, match=r"prompt token ids \[100000000000000000000\] are outside the vocabulary"):
        ovgen.generate(model, [5, 10**20], {"max_new_tokens": 2}, session=session)
    with pytest.raises(ValueError, match=r"token ids \[100000000000000000000\] are outside the vocabulary"):
        session.prefill([5, 10**20])
    assert session.length == 0


@pytest.mark.parametrize("setting", [{"num_return_sequences": 10**12, "do_sample": True}, {"num_beams": 10**12}])
def test_rows_side_by_side_that_no_memory_holds_are_refused_before_inference(model, setting):
    """num_return_sequences = 10**20 ran the prompt, then filled the memory building its rows (RSS past
    6 GB when stopped); num_beams = 10**20 ran the prompt, then NumPy raised 'Maximum allowed dimension
    exceeded'. The rows' KV cache alone (>= 22.5 KiB per token on this model) cannot fit: refused first."""
    from ovgen.chat import Chat

    name = next(iter(setting))
    message = rf"{name}=1000000000000: 1000000000000 rows side by side need at least .* GiB of KV cache"
    session = model.session()
    with pytest.raises(ValueError, match=message):
        ovgen.generate(model, PROMPT, {"max_new_tokens": 4, **setting}, session=session)
    assert session.length == 0
    with pytest.raises(ValueError, match=r"prompts\[1\]: " + message):
        ovgen.generate(model, ["hello", PROMPT], {"max_new_tokens": 4, "do_sample": True}, configs=[{}, setting])
    chat = Chat(model, {"max_new_tokens": 4, **setting})
    with pytest.raises(ValueError, match=message):
        list(chat.send("hello"))
    assert chat.messages == [] and chat.session.length == 0
    fits = {**setting, name: 3, "num_return_sequences": 3}
    assert len(ovgen.generate(model, PROMPT, {"max_new_tokens": 4, **fits}).sequences) == 3


def test_logit_bias_takes_json_text_keys_and_infinite_biases(model):
    forced = ovgen.generate(model, PROMPT, {"max_new_tokens": 2, "logit_bias": {"30": float("inf")}})
    assert forced.sequences[0].token_ids == [30, 30]
    first = _fresh(model)[0]
    banned = ovgen.generate(model, PROMPT, {"max_new_tokens": 1, "logit_bias": {str(first): -float("inf")}})
    assert banned.sequences[0].token_ids != [first]


def test_the_parts_a_call_brings_are_checked_before_inference(model, model_dir):
    session = model.session()
    other = ovgen.load(model_dir)  # another Model (even of the same IR) keeps its own compiled model
    for kwargs, message in (({"session": 5}, "session must be a session of this model .* got int"),
                            ({"session": other.session()}, "got a session of another model"),
                            ({"processors": 5}, "processors must be a list of processors, got int"),
                            ({"processors": [5]}, "a processor must be callable"),
                            ({"on_token": 5}, "on_token must be a callable taking a TokenRecord, got int")):
        with pytest.raises(TypeError, match=message):
            ovgen.generate(model, PROMPT, {"max_new_tokens": 2}, **kwargs)
    with pytest.raises(TypeError, match="a processor must be callable"):  # before the session runs anything
        ovgen.stream(model, PROMPT, {"max_new_tokens": 2}, session=session, processors=[None])
    assert session.length == 0
    # checked before the prefill too (a chooser or proposer failed after it, a prefix cache inside it)
    for kwargs, error, message in (
            ({"chooser": 5}, TypeError, "a chooser is a Chooser or a callable logits -> token id, got int"),
            ({"proposer": 5}, TypeError, r"proposer must have propose\(tokens, k\) and feedback.* got int"),
            ({"prefix_cache": {}}, TypeError, "prefix_cache must be an ovgen.prefix.PrefixCache, got dict"),
            ({"batch_size": "2"}, ValueError, "batch_size must be an integer >= 1, got '2'"),
            ({"configs": [None, 5]}, TypeError, r"configs\[1\] must be a dict, a GenerationConfig or None, got int"),
            ({"configs": {"max_new_tokens": 2}}, TypeError, "configs must be a list .* got dict"),
            # a template that is not text was ignored with a text prompt (and failed inside jinja2 with messages)
            ({"chat_template": ["{{ x }}"]}, TypeError, "chat_template must be a template's text or None, got list")):
        prompt = [PROMPT, PROMPT] if "configs" in kwargs or "batch_size" in kwargs else PROMPT
        with pytest.raises(error, match=message):
            ovgen.generate(model, prompt, {"max_new_tokens": 2}, session=session, **kwargs)
        assert session.length == 0, kwargs
    with pytest.raises(ValueError, match="ov_config must be a dict of OpenVINO properties, got str"):
        ovgen.load(model_dir, ov_config="PERFORMANCE_HINT=LATENCY")
    from ovgen.prefix import PrefixCache

    with pytest.raises(TypeError, match="got float64 values"):  # 1.5 was looked up as token 1
        PrefixCache().lookup([1.5, 2.0])


def test_chat_message_content_a_template_cannot_render_is_named(model):
    from ovgen.chat import Chat

    with pytest.raises(TypeError, match="system must be text or None, got int"):
        Chat(model, system=5)  # (it used to fail only at the first message, in the template)
    with pytest.raises(ValueError, match=r"messages\[1\]\['content'\] is int, not text"):
        ovgen.generate(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 5}],
                       {"max_new_tokens": 2})


def test_tokens_then_views_the_history_and_the_next_token_without_changing_it():
    from ovgen.session import TokenHistory

    h = TokenHistory()
    for n in (0, 255, 256, 600):  # empty, one short of the buffer, a full buffer (grows), a grown one
        h.tokens = np.arange(n).reshape(1, -1)
        view = h.tokens_then(7)
        assert view.tolist() == [*range(n), 7]
        assert not view.flags.writeable
        assert h.length == n and h.tokens.tolist() == [list(range(n))]
        h._push(np.array([[9]]))  # the next push writes where the view's last token was
        assert h.tokens[0].tolist() == [*range(n), 9]
