"""Streaming: deltas join to the final text (Cyrillic, CJK, emoji), stop strings across token
boundaries, finish reasons."""

from __future__ import annotations

import pytest

import ovgen
from ovgen.stopping import StopStrings


@pytest.mark.parametrize("prompt", [
    "Переведи на русский: good morning, my friend. Ответ:",
    "请用中文写一句话：",
    "日本の首都は",
    "Reply with three emoji 🎉😀👍 and more emoji:",
    "Write a sentence in Bulgarian: България е",
])
def test_deltas_join_to_final_text(model, prompt):
    res = ovgen.generate(model, prompt, {"max_new_tokens": 48, "ignore_eos": True, "do_sample": True, "seed": 5,
                                         "temperature": 1.2})
    seq = res.sequences[0]
    deltas = [r.text for r in seq.records]
    # A split multi-byte character would show as U+FFFD in a delta but not in the final decode, so
    # equality proves none was split (a U+FFFD in both is an invalid byte sequence the model sampled).
    assert "".join(deltas) == seq.text == model.tokenizer.decode(seq.token_ids)
    assert any(ord(c) > 127 for c in seq.text), "the prompt should make the model write non-ASCII text"


def test_stop_strings_unit():
    s = StopStrings(["STOP", "<end>"])
    out = [s.feed(d) for d in ["hello S", "T", "O", "P world"]]
    assert "".join(t for t, _ in out) == "hello " and out[-1][1]
    s = StopStrings(["STOP"])
    assert s.feed("ST") == ("", False) and s.feed("ay") == ("STay", False)
    s = StopStrings(["ab"], include_in_output=True)
    assert s.feed("xxa") == ("xx", False) and s.feed("bzz") == ("ab", True)


def test_stop_string_across_token_boundary(model):
    base = ovgen.generate(model, "Count: 1, 2, 3,", {"max_new_tokens": 24, "ignore_eos": True}).sequences[0]
    assert " 6," in base.text
    stop = " 6,"
    res = ovgen.generate(model, "Count: 1, 2, 3,", {"max_new_tokens": 24, "ignore_eos": True,
                                                    "stop_strings": [stop]}).sequences[0]
    assert res.finish_reason == "stop_string"
    assert res.text == base.text[:base.text.index(stop)]
    with_stop = ovgen.generate(model, "Count: 1, 2, 3,", {"max_new_tokens": 24, "ignore_eos": True,
                                                          "stop_strings": [stop],
                                                          "include_stop_str_in_output": True}).sequences[0]
    assert with_stop.text == base.text[:base.text.index(stop) + len(stop)]


def test_finish_reasons(model):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    eos = ovgen.generate(model, msgs, {"max_new_tokens": 64}).sequences[0]
    assert eos.finish_reason == "stop" and eos.token_ids[-1] in model.generation_config.eos_token_id
    assert "<|im_end|>" not in eos.text
    length = ovgen.generate(model, msgs, {"max_new_tokens": 3}).sequences[0]
    assert length.finish_reason == "length" and len(length.token_ids) == 3
    ignored = ovgen.generate(model, msgs, {"max_new_tokens": len(eos.token_ids) + 5, "ignore_eos": True}).sequences[0]
    assert ignored.finish_reason == "length" and ignored.token_ids[:len(eos.token_ids)] == eos.token_ids


def test_max_time(model):
    res = ovgen.generate(model, "Tell me everything", {"max_new_tokens": 2000, "ignore_eos": True,
                                                       "max_time": 0.3}).sequences[0]
    assert res.finish_reason == "time" and len(res.token_ids) < 2000


def test_min_new_tokens_suppresses_eos(model):
    msgs = [{"role": "user", "content": "Say yes."}]
    short = ovgen.generate(model, msgs, {"max_new_tokens": 40}).sequences[0]
    assert short.finish_reason == "stop"
    n = len(short.token_ids) + 4
    longer = ovgen.generate(model, msgs, {"max_new_tokens": 60, "min_new_tokens": n}).sequences[0]
    assert len(longer.token_ids) >= n


def test_user_processor_joins_the_chain(model):
    banned = model.tokenizer.encode(" Paris")[0]
    seen = []

    def no_paris(token_ids, logits):
        seen.append(token_ids.shape[-1])
        out = logits.copy()
        out[banned] = -float("inf")
        return out

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    res = ovgen.generate(model, msgs, {"max_new_tokens": 16}, processors=[no_paris]).sequences[0]
    assert banned not in res.token_ids and seen and seen[1] == seen[0] + 1


@pytest.mark.parametrize("overlap", [True, False])
def test_a_stream_whose_session_another_generation_took_stops_with_a_clear_error(model, overlap):
    """Two streams on one session, interleaved: the second takes the session; the first, asked for
    its next record, raises instead of decoding on from the other's KV state (without overlap it
    used to go on silently with wrong tokens). Streams on their own sessions interleave freely."""
    cfg = {"max_new_tokens": 6, "ignore_eos": True}
    alone = {p: ovgen.generate(model, p, cfg).sequences[0].token_ids for p in ("Hello", "The sky is")}
    session = model.session()
    first = ovgen.stream(model, "Hello", cfg, session=session, overlap=overlap)
    assert next(first).token_id == alone["Hello"][0]
    assert ovgen.generate(model, "The sky is", cfg, session=session).sequences[0].token_ids == alone["The sky is"]
    with pytest.raises(RuntimeError, match="another generation used this session"):
        next(first)
    assert ovgen.generate(model, "Hello", cfg, session=session).sequences[0].token_ids == alone["Hello"]
    a, b = (iter(ovgen.stream(model, p, cfg, overlap=overlap)) for p in ("Hello", "The sky is"))
    got = {"Hello": [], "The sky is": []}
    for _ in range(6):
        got["Hello"].append(next(a).token_id)
        got["The sky is"].append(next(b).token_id)
    assert got == alone


@pytest.mark.parametrize("overlap", [True, False])
def test_reading_the_session_between_two_records_leaves_the_stream_going(model, tmp_path, overlap):
    """A snapshot or save between two records finishes the step the stream started (overlap) and
    leaves the state as it was: the stream goes on with the tokens it gives alone (it used to die
    with 'finish_step() without a started step'); the file holds the state at that point."""
    cfg = {"max_new_tokens": 10, "ignore_eos": True}
    alone = ovgen.generate(model, "The capital of France is", cfg).sequences[0].token_ids
    session = model.session()
    got = []
    for i, rec in enumerate(ovgen.stream(model, "The capital of France is", cfg, session=session, overlap=overlap)):
        got.append(rec.token_id)
        if i == 3:
            session.save(tmp_path / "mid.npz")
            held = session.tokens[0].tolist()  # (with overlap: now with the token whose step the save finished)
            snap = session.snapshot()
    assert got == alone
    other = model.session()
    other.load(tmp_path / "mid.npz")
    assert other.tokens[0].tolist() == held
    session.restore(snap)
    assert session.tokens[0].tolist() == held


@pytest.mark.parametrize("change", ["rewind", "step", "reset"])
@pytest.mark.parametrize("overlap", [True, False])
def test_a_stream_whose_session_the_user_changed_stops_with_a_clear_error(model, overlap, change):
    """A rewind / step / reset by the user between two records: the stream raises when asked for its next
    record instead of decoding from a state it did not make (without overlap it used to go on with
    wrong tokens, with it died with an opaque error). The session is the user's after that. A stream
    that was abandoned (break) does not stand in the way of using the session directly."""
    cfg = {"max_new_tokens": 8, "ignore_eos": True}
    alone = ovgen.generate(model, "Hello", cfg).sequences[0].token_ids
    session = model.session()
    stream = ovgen.stream(model, "Hello", cfg, session=session, overlap=overlap)
    assert [next(stream).token_id for _ in range(3)] == alone[:3]
    session.settle()  # finishes the step the stream started (overlap), and changes nothing
    held = session.length
    {"rewind": lambda: session.rewind(2), "step": lambda: session.step(alone[3]), "reset": session.reset}[change]()
    with pytest.raises(RuntimeError, match="state was changed .* since this stream's last record"):
        next(stream)
    assert session.length == {"rewind": held - 2, "step": held + 1, "reset": 0}[change]  # as the user left it
    assert ovgen.generate(model, "Hello", cfg, session=session).sequences[0].token_ids == alone
    for i, _ in enumerate(ovgen.stream(model, "Hello", cfg, session=session, overlap=overlap)):
        if i == 2:
            break
    session.rewind(1)  # after a break the session is the user's
    assert session.length > 0


def test_two_chat_replies_on_one_chat_cannot_interleave(model):
    from ovgen.chat import Chat

    chat = Chat(model, {"max_new_tokens": 6})
    first = chat.send("Hi")
    next(first)
    second = "".join(r.text for r in chat.send("Name a colour."))
    with pytest.raises(RuntimeError, match="another generation used this session"):
        next(first)
    assert chat.messages[-1] == {"role": "assistant", "content": second}
