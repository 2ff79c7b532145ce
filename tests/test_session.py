"""Session state: snapshot/restore, rewind, reorder, independent sessions, chat KV reuse -
each must continue exactly as a fresh run would."""

from __future__ import annotations

import threading

import numpy as np
import openvino as ov
import pytest

import ovgen
from conftest import InterruptAfter, chat_cut_off_once
from ovgen import kvstate
from ovgen.chat import Chat


def greedy_tokens(session, logits, n):
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        out.append(t)
        logits = session.step(t)
    return out


@pytest.fixture
def prompt(model):
    return model.tokenizer.encode("The history of the printing press begins")


def test_prefill_step_logits_are_last_position_views(model, prompt):
    s = model.session()
    logits = s.prefill(prompt)
    assert logits.shape == (model.vocab_size,) and logits.dtype == np.float32
    assert s.length == len(prompt) and s.tokens[0].tolist() == prompt


def test_snapshot_restore_continues_like_fresh(model, prompt):
    fresh = greedy_tokens(s := model.session(), s.prefill(prompt), 24)
    a = model.session()
    logits = np.array(a.prefill(prompt))
    snap = a.snapshot()
    greedy_tokens(a, logits, 10)  # wander off
    a.restore(snap)
    assert a.length == len(prompt)
    assert greedy_tokens(a, logits, 24) == fresh


def test_a_snapshot_restores_only_onto_the_model_it_was_taken_on(model, prompt):
    """A snapshot of another model's session (here the same IR with a u8 KV cache) restored silently and
    decoded on from states this model did not compute. It is refused, the session untouched; another load
    of the same IR at the same precision computes the same states and takes it."""
    other = ovgen.load(model.path, ov_config={"KV_CACHE_PRECISION": "u8"})
    o = other.session()
    o.prefill(prompt)
    s = model.session()
    s.prefill(prompt[:3])
    with pytest.raises(ValueError, match=r"the snapshot was taken on another model \(.*KV_CACHE_PRECISION=u8\)"):
        s.restore(o.snapshot())
    assert s.tokens[0].tolist() == prompt[:3]
    fresh = greedy_tokens(f := model.session(), f.prefill(prompt), 8)
    a = model.session()
    logits = np.array(a.prefill(prompt))
    again = ovgen.load(model.path).session()
    again.restore(a.snapshot())
    assert greedy_tokens(again, logits, 8) == fresh


def test_rewind_continues_like_fresh(model, prompt):
    fresh = greedy_tokens(s := model.session(), s.prefill(prompt), 16)
    a = model.session()
    greedy_tokens(a, a.prefill(prompt), 12)
    a.rewind(12 + 3)  # back to the prompt minus its last three tokens
    logits = a.append(prompt[-3:])
    assert a.tokens[0].tolist() == prompt
    assert greedy_tokens(a, logits, 16) == fresh


def test_rewind_bounds(model, prompt):
    s = model.session()
    s.prefill(prompt)
    with pytest.raises(ValueError, match=rf"rewind n must be an integer in \[0, {len(prompt)}\]"):
        s.rewind(len(prompt) + 1)
    s.rewind(len(prompt))
    assert s.length == 0


def test_bad_arguments_leave_the_session_as_it_was(model, prompt, tmp_path):
    """Each call is refused by name and changes nothing: before, rewind(1.0) reset the session (its
    TypeError came from inside the state change), prefill([]) emptied it, append([5.5]) ran token 5
    and a second row of ids for a one-row session failed inside OpenVINO."""
    fresh = greedy_tokens(f := model.session(), f.prefill(prompt), 8)
    s = model.session()
    logits = s.prefill(prompt)
    for call, error, message in (
            (lambda: s.rewind(1.0), ValueError, r"rewind n must be an integer in \[0, \d+\], got 1.0"),
            (lambda: s.rewind("2"), ValueError, "rewind n must be an integer.* got '2'"),
            (lambda: s.rewind(True), ValueError, "rewind n must be an integer.* got True"),
            (lambda: s.prefill([]), ValueError, "token_ids is empty"),
            (lambda: s.prefill("hi"), TypeError, "token_ids must be integer token ids, got <U2 values"),
            (lambda: s.prefill([5, 49152]), ValueError, "outside the vocabulary"),
            (lambda: s.append([5.5]), TypeError, r"token_ids must be integer token ids, got float64 values \(5.5\)"),
            (lambda: s.append([[[5]]]), ValueError, r"token_ids must be \[T\] or \[rows, T\], got shape \[1, 1, 1\]"),
            (lambda: s.step([5, 6]), ValueError, r"token_ids has 2 row\(s\); the session holds 1"),
            (lambda: s.append([[5], [6]]), ValueError, r"token_ids has 2 row\(s\); the session holds 1"),
            (lambda: s.restore(5), TypeError, r"restore takes a Snapshot \(session.snapshot\(\)\), got int"),
            (lambda: s.save(tmp_path / "s.npz", meta={"x": object()}), TypeError, "save: meta must be JSON data")):
        with pytest.raises(error, match=message):
            call()
        assert s.tokens[0].tolist() == prompt
    assert list(tmp_path.iterdir()) == []
    assert greedy_tokens(s, logits, 8) == fresh
    s.rewind(np.int64(3))  # a NumPy integer is an integer
    assert s.length == len(prompt) + 5


def test_reorder_fans_out_and_swaps_rows(model, prompt):
    """Fan one row out to two, then swap them: each row must equal a two-row session that was
    fed the same tokens per row without any reorder (same batch size, so the same kernels)."""
    s = model.session()
    s.prefill(prompt)
    s.reorder([0, 0])  # one row -> two copies of it
    s.step([11, 22])
    s.reorder([1, 0])  # swap the rows
    swapped = np.array(s.step([33, 44]))
    assert s.tokens[:, -2:].tolist() == [[22, 33], [11, 44]]

    ref = model.session()
    ref.prefill([prompt, prompt])
    ref.step([22, 11])
    expected = np.array(ref.step([33, 44]))
    np.testing.assert_allclose(swapped, expected, atol=2e-2)
    assert np.abs(swapped[0] - expected[1]).max() > 20 * np.abs(swapped - expected).max()  # rows differ


def test_warmup_leaves_the_callers_sessions_and_results_alone(model, prompt):
    cfg = {"max_new_tokens": 12}
    before = ovgen.generate(model, prompt, cfg).sequences[0].token_ids
    a = model.session()
    la = np.array(a.prefill(prompt))
    history = a.tokens.copy()
    assert model.warmup() > 0
    assert np.array_equal(a.tokens, history) and a.length == len(prompt)
    fresh = model.session()
    assert greedy_tokens(a, la, 12) == greedy_tokens(fresh, fresh.prefill(prompt), 12)
    assert ovgen.generate(model, prompt, cfg).sequences[0].token_ids == before


def test_sessions_over_one_compiled_model_are_independent(model, prompt):
    a, b = model.session(), model.session()
    la = a.prefill(prompt)
    b.prefill(model.tokenizer.encode("Something else entirely"))
    ref = greedy_tokens(s := model.session(), s.prefill(prompt), 12)
    assert greedy_tokens(a, np.array(la), 12) == ref


def test_two_threads_match_sequential(model):
    prompts = ["Once upon a time", "def main():"]
    seq = [ovgen.generate(model, p, {"max_new_tokens": 24, "ignore_eos": True}).sequences[0].token_ids
           for p in prompts]
    out = [None, None]

    def work(i):
        out[i] = ovgen.generate(model, prompts[i], {"max_new_tokens": 24, "ignore_eos": True}).sequences[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == seq


def test_chat_reuses_kv_and_matches_fresh_generation(model):
    chat = Chat(model, {"max_new_tokens": 20})
    first = "".join(r.text for r in chat.send("Name a fruit."))
    second = [r.token_id for r in chat.send("And a vegetable?")]
    assert chat.reused_tokens > 30  # the whole first turn, minus what the template re-renders
    msgs = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": first},
            {"role": "user", "content": "And a vegetable?"}]
    fresh = ovgen.generate(model, msgs, {"max_new_tokens": 20}).sequences[0].token_ids
    assert second == fresh


@pytest.mark.parametrize("cfg", [{"num_return_sequences": 3, "do_sample": True, "seed": 2, "temperature": 1.3,
                                  "ignore_eos": True},
                                 {"num_beams": 3, "num_return_sequences": 2}], ids=["sequences", "beams"])
def test_a_chat_turn_that_ended_on_several_rows_reuses_the_first_rows_prefix(model, cfg):
    """A turn whose sequences (or beams) end on several session rows: the next turn goes on from row 0
    (its KV row gathered by that turn's first infer) and reuses its prefix - it recomputed the whole
    conversation before. Row 0's state is its own tokens' (next logits as a fresh session's on them)."""
    chat = Chat(model, {**cfg, "max_new_tokens": 12})
    list(chat.send("Name a fruit."))
    first_prompt = chat.prompt_tokens
    assert chat.session.rows > 1
    list(chat.send("And a vegetable?"))
    assert chat.reused_tokens >= first_prompt  # the first turn's prompt at least (0 before)
    s = chat.session
    if s.rows > 1:
        s.reorder([0])
    held = s.tokens[0].tolist()
    ours = s.append([504])
    fresh = model.session().prefill(held + [504])
    assert int(ours.argmax()) == int(fresh.argmax())
    np.testing.assert_allclose(ours, fresh, atol=2e-2)


def test_an_empty_sessions_snapshot_and_saved_state_restore_to_a_usable_session(model, prompt, tmp_path):
    """A session that has run nothing holds batch-0 state tensors: put back as they are, the next
    append failed in the CPU plugin (beam_idx 0 out of a batch of 0); a saved empty chat hit it."""
    empty = model.session()
    snap = empty.snapshot()
    empty.save(tmp_path / "empty.npz")
    fresh = model.session()
    ref = greedy_tokens(fresh, fresh.append(prompt), 8)
    for put in (lambda s: s.restore(snap), lambda s: s.load(tmp_path / "empty.npz")):
        s = model.session()
        s.prefill([5, 6, 7])
        put(s)
        assert s.length == 0
        assert greedy_tokens(s, s.append(prompt), 8) == ref


def test_a_save_cut_off_by_ctrl_c_leaves_no_file_behind(model, prompt, tmp_path, monkeypatch):
    """save() writes a temporary file and renames it: a Ctrl-C while it was written left `s.npz.tmp`
    (only an OSError removed it). Now nothing is left, the session is untouched, and a later save works."""
    s = model.session()
    s.prefill(prompt)

    def cut_off(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", cut_off)
    with pytest.raises(KeyboardInterrupt):
        s.save(tmp_path / "s.npz")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [] and s.tokens[0].tolist() == prompt
    s.save(tmp_path / "s.npz")
    t = model.session()
    t.load(tmp_path / "s.npz")
    assert t.tokens[0].tolist() == prompt


def test_a_saved_chat_goes_on_where_it_stopped(model, tmp_path):
    chat = Chat(model, {"max_new_tokens": 16})
    list(chat.send("Hello, my name is Ada. Name a fruit."))
    chat.save(tmp_path / "chat.npz")
    saved = [dict(m) for m in chat.messages]
    going_on = [r.token_id for r in chat.send("What is my name?")]
    other = Chat(model, {"max_new_tokens": 16}, system="another system prompt")
    other.load(tmp_path / "chat.npz")
    assert other.messages == saved and other.session.length > 30
    assert [r.token_id for r in other.send("What is my name?")] == going_on
    assert other.reused_tokens == chat.reused_tokens > 30  # the loaded KV state, not recomputed
    # refused before the chat changes: a Session.save file without a conversation, a missing file
    s = model.session()
    s.prefill([1, 2, 3])
    s.save(tmp_path / "plain.npz")
    assert s.load(tmp_path / "plain.npz") is None  # no meta
    before, length = [dict(m) for m in other.messages], other.session.length
    with pytest.raises(ValueError, match="plain.npz: a saved session without a conversation"):
        other.load(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "missing.npz")
    assert other.messages == before and other.session.length == length


def test_interrupted_stream_leaves_session_usable(model):
    s = model.session()
    ref = ovgen.generate(model, "Tell me a story", {"max_new_tokens": 12}).sequences[0].token_ids
    gen = ovgen.stream(model, "A long tale of", {"max_new_tokens": 50}, session=s)
    for rec in gen:
        if rec.index == 5:
            break
    gen.close()
    again = ovgen.generate(model, "Tell me a story", {"max_new_tokens": 12}, session=s)
    assert again.sequences[0].token_ids == ref


def test_a_stream_is_a_context_manager_that_closes_it(model):
    """`with ovgen.stream(...) as st:` closes the stream however the block is left (an exception
    here), as an explicit close() does; the session is then the user's."""
    s = model.session()
    ref = ovgen.generate(model, "Tell me a story", {"max_new_tokens": 12}).sequences[0].token_ids
    with pytest.raises(ZeroDivisionError):
        with ovgen.stream(model, "A long tale of", {"max_new_tokens": 50}, session=s) as st:
            for rec in st:
                if rec.index == 5:
                    1 / 0
    with pytest.raises(StopIteration):
        next(st)
    assert ovgen.generate(model, "Tell me a story", {"max_new_tokens": 12}, session=s).sequences[0].token_ids == ref


def test_graph_argmax_and_logsumexp_follow_the_logits(model, prompt):
    """The one-token fast path reads logsumexp and the top candidates (hence argmax) from graph
    outputs: they must describe the logits returned, step after step, and after snapshot/restore
    and rewind."""
    s = model.session()
    logits = s.prefill(prompt)
    snap = s.snapshot()
    first = logits.copy()
    for _ in range(40):
        assert s.argmax == int(np.argmax(logits))
        assert float(s.logsumexp) == pytest.approx(float(np.log(np.exp(logits.astype(np.float64)).sum())), abs=1e-4)
        logits = s.step(int(np.argmax(logits)))
    s.restore(snap)
    assert s.argmax == int(np.argmax(first))
    s.rewind(1)
    assert s.argmax is None


def test_sequences_after_the_first_report_their_first_tokens_logprob(model):
    res = ovgen.generate(model, "Once upon a time", {"do_sample": True, "seed": 3, "num_return_sequences": 3,
                                                     "max_new_tokens": 4})
    first = model.session().prefill(model.tokenizer.encode("Once upon a time")).astype(np.float64)
    log_z = np.log(np.exp(first - first.max()).sum()) + first.max()
    for seq in res.sequences:
        tok = seq.token_ids[0]
        assert seq.records[0].logprob == pytest.approx(first[tok] - log_z, abs=1e-3)


def test_argmax_output_breaks_ties_to_the_lowest_index():
    import openvino as ov
    from openvino import opset13

    from ovgen.kernels.graph import add_argmax_output

    x = opset13.parameter([1, 1, 6], ov.Type.f32, name="x")
    out = opset13.result(opset13.multiply(x, np.float32(1)))
    out.output(0).get_tensor().set_names({"logits"})
    m = ov.Model([out], [x])
    assert add_argmax_output(m) and not add_argmax_output(m)
    compiled = ov.Core().compile_model(m, "CPU")
    for row in ([1, 3, 3, 0, 3, 2], [5, 5, 5, 5, 5, 5], [0, 0, 0, 0, 1, 1], [-np.inf, -1, -1, -2, -1, -3]):
        got = compiled(np.array([[row]], np.float32))[compiled.output("argmax")]
        assert int(got.reshape(-1)[0]) == int(np.argmax(row))


def test_argmax_from_the_top_candidates_is_np_argmax_or_unknown():
    """Session.argmax reads the graph's top-k candidates (TopK unstable, ids ascending): ties at the
    maximum go to the lowest id as np.argmax's do, and when every candidate ties (more tokens may tie
    outside them) it says None, so the loop scans the logits instead."""
    from types import SimpleNamespace

    import openvino as ov
    from openvino import opset13

    from ovgen.kernels.graph import add_topk_output
    from ovgen.session import Session

    x = opset13.parameter([1, 1, 12], ov.Type.f32, name="x")
    out = opset13.result(opset13.multiply(x, np.float32(1)))
    out.output(0).get_tensor().set_names({"logits"})
    m = ov.Model([out], [x])
    add_topk_output(m, 4)
    compiled = ov.Core().compile_model(m, "CPU")
    rows = {"one max": [0, 1, 9, 2, 3, 4, 5, 6, 7, 8, 1, 0], "max tied twice": [0, 7, 1, 2, 7, 3, 0, 0, 1, 2, 3, 4],
            "max tied three times, last ids": [0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5],
            "max tied 5 times (> k)": [1, 4, 4, 0, 4, 4, 0, 4, 0, 0, 0, 0], "all equal": [2] * 12,
            "-inf around": [-np.inf] * 10 + [-1, -2]}
    for what, row in rows.items():
        res = compiled(np.array([[row]], np.float32))
        top = (res[compiled.output("topk_values")][0, 0], res[compiled.output("topk_ids")][0, 0])
        got = Session.argmax.fget(SimpleNamespace(top=top))
        tied = int(np.sum(np.array(row) == max(row)))
        assert got == (int(np.argmax(row)) if tied < 4 else None), what


_OWN_REQUEST = """
import gc, sys
import numpy as np, ovgen
model = ovgen.load(sys.argv[1])
ids = model.tokenizer.encode("The history of the printing press begins")
ovgen.generate(model, "Hello", {"max_new_tokens": 8})  # an ovgen session sets its input tensors, then dies
gc.collect()
request = model.compiled.create_infer_request()  # the README's advice: share_inputs=True
feed = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64),
        "position_ids": np.arange(len(ids))[None], "beam_idx": np.zeros(1, np.int32), "logits_to_keep": np.ones(1, np.int64),
        "topk_on": np.array(True)}
for _ in range(3):
    request.reset_state()
    request.infer(feed, share_inputs=True)
own = request.get_tensor("logits").data[0, -1].copy()
ref = model.session().prefill(ids)
print("same" if np.array_equal(own, ref) else f"differ by {np.abs(own - ref).max()}")
"""


def test_an_own_infer_request_after_an_ovgen_session_with_shared_inputs(model_dir):
    """README: after a session is collected, a request of your own on `model.compiled` fed with
    share_inputs=True runs clean (fed by copying, the CPU plugin can write to the dead session's
    freed inputs) and computes what a session does. In a subprocess: a crash must not end pytest."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _OWN_REQUEST, str(model_dir)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "same"


@pytest.mark.parametrize("at_wait", [1, 3])  # the turn's prompt append; a decode step (overlapped)
def test_a_chat_goes_on_exactly_after_ctrl_c_inside_an_infer(model, at_wait):
    """Ctrl-C right after an infer, before its tokens were recorded, left the KV state ahead of the
    history: the chat's next message failed inside OpenVINO (an attention mask of the wrong
    length), which `ovgen chat` did not survive. Now the session starts afresh when that happens
    and the next reply is the one a chat that was never interrupted gives."""
    run = chat_cut_off_once(model, "request", "wait", at_wait)
    assert run["length_after"] == 0  # (reset: nothing tells how far the cut-off infer got)
    assert run["reply"] == run["want"]
    assert run["messages"] == run["want_messages"]


@pytest.mark.parametrize("op", ["restore", "load", "compact", "reset"])
def test_ctrl_c_inside_a_state_change_leaves_a_session_that_continues_exactly(model, prompt, op, tmp_path,
                                                                                 monkeypatch):
    """A restore / load / compaction copies the state layer by layer, and a reset empties it before the
    history: a Ctrl-C in between left layers of two contexts, or a history the state did not hold, and
    the session went on from that (an OpenVINO error, or wrong tokens). Now such a session starts
    afresh, as after a cut-off infer, and what it computes next is what a fresh session computes."""
    s = model.session()
    greedy_tokens(s, s.prefill(prompt), 6)
    snap, path = s.snapshot(), tmp_path / "s.npz"
    s.save(path)
    s.rewind(6)
    s.append(model.tokenizer.encode(" in China"))  # (now holds other tokens, and six holes)
    if op == "reset":
        s.request = InterruptAfter(s.request, "reset_state", 1)
    else:
        monkeypatch.setattr(kvstate, "ov", InterruptAfter(ov, "Tensor", 9))  # (between two layers' state copies)
    with pytest.raises(KeyboardInterrupt):
        {"restore": lambda: s.restore(snap), "load": lambda: s.load(path), "compact": s.compact,
         "reset": s.reset}[op]()
    monkeypatch.undo()
    s.request = getattr(s.request, "_target", s.request)
    held, extra = s.tokens[0].tolist(), model.tokenizer.encode(" and then")
    assert held == []
    fresh = model.session()
    assert greedy_tokens(s, s.append(extra), 8) == greedy_tokens(fresh, fresh.prefill(held + extra), 8)


_SIGINT_CHATS = """
import os, random, signal, sys, threading
import ovgen
from ovgen.chat import Chat

model = ovgen.load(sys.argv[1])
cfg = {"max_new_tokens": 24, "ignore_eos": True}
if sys.argv[2] == "prompt_lookup":
    cfg.update(prompt_lookup=True, num_assistant_tokens=3)


def reply(chat, text):
    return "".join(r.text for r in chat.send(text))


ref = Chat(model, cfg)
reply(ref, "Hi")
want = reply(ref, "Name a colour.")
armed = threading.Event()


def handler(signum, frame):
    if armed.is_set():
        armed.clear()
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, handler)
rng = random.Random(7)
interrupted = wrong = 0
for _ in range(12):
    chat = Chat(model, cfg)
    reply(chat, "Hi")
    timer = threading.Timer(rng.uniform(0.0, 0.35), os.kill, (os.getpid(), signal.SIGINT))
    armed.set()
    timer.start()
    try:
        reply(chat, "Tell me a story. Tell me a story about a cat.")
        continue  # (the reply ended first: another history, not compared)
    except KeyboardInterrupt:
        interrupted += 1
    finally:
        armed.clear()
        timer.cancel()
        timer.join()
    if reply(chat, "Name a colour.") != want:
        wrong += 1
print(interrupted, wrong)
"""


@pytest.mark.parametrize("mode", ["overlap", "prompt_lookup"])
def test_real_sigints_during_chat_replies_never_break_the_chat(model_dir, mode):
    """SIGINT at random moments of a reply (the OS signal, as Ctrl-C sends it; in a child process,
    which owns its signal handler): each time, the chat's next message gives the reply of a chat
    that was never interrupted - decode steps overlapped with streaming, or prompt-lookup
    verifications (their inputs are read by the infer while the host goes on)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SIGINT_CHATS, str(model_dir), mode], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    interrupted, wrong = map(int, out.stdout.split()[-2:])
    assert interrupted >= 4 and wrong == 0
