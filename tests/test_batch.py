"""Batched generation (ovgen/batch.py), `ovgen batch` (ovgen/jobs.py) and its Ray pipeline
(ovgen/raybatch.py): the same answers as one prompt at a time, nothing lost or written twice."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ovgen
from conftest import PROMPTS
from ovgen import jobs
from ovgen.cli import main
from ovgen.choice import Sampler
from ovgen.kernels.sampling import NEG_INF, softmax


def _alone(model, prompt, cfg):
    return ovgen.generate(model, prompt, cfg).sequences[0].token_ids


def test_greedy_rows_equal_the_prompts_run_alone(model):
    cfg = {"max_new_tokens": 32, "ignore_eos": True}
    batch = ovgen.generate(model, PROMPTS[:8], cfg, batch_size=8)  # prompt lengths 4..10: left padding
    assert [r.sequences[0].token_ids for r in batch] == [_alone(model, p, cfg) for p in PROMPTS[:8]]


def test_prompts_are_batched_with_those_of_similar_lengths(model, monkeypatch, tmp_path):
    """Left padding gives every row of a batch its widest row's length: a short prompt beside a long
    one cost the prefill the long one's positions again (3 rows beside an 8,188-token prompt: minutes
    here), and decoded on over its padding. Rows are now batched in order of length, and a batch ends
    where padding would pass half its tokens: [400, 5, 380, 6] tokens run as {5, 6} and {380, 400},
    at batch_size 2 and 8 alike; results stay in input order, each the prompt's alone."""
    widths = []
    real = ovgen.Session.prefill_rows

    def spy(self, rows, pad_id=0):
        widths.append(sorted(len(r) for r in rows))
        return real(self, rows, pad_id)

    monkeypatch.setattr(ovgen.Session, "prefill_rows", spy)
    text = model.tokenizer.encode(" ".join(PROMPTS * 5))
    prompts = [text[:400], model.tokenizer.encode(PROMPTS[0])[:5], text[:380], model.tokenizer.encode(PROMPTS[1])[:6]]
    cfg = {"max_new_tokens": 8, "ignore_eos": True}
    alone = [_alone(model, p, cfg) for p in prompts]
    for size in (2, 8):
        widths.clear()
        res = ovgen.generate(model, prompts, cfg, batch_size=size)
        assert widths == [[5, 6], [380, 400]]
        assert [r.prompt_token_ids for r in res] == prompts
        assert [r.sequences[0].token_ids for r in res] == alone
    widths.clear()  # ovgen batch: its chunks too (ordered by the rows' text lengths), each split the same way
    rows = [{"id": i, "prompt": model.tokenizer.decode(p)} for i, p in enumerate(prompts)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, batch_size=4)
    assert [len(w) for w in widths] == [2, 2] and max(widths[0]) < 10 < 300 < min(widths[1])
    out = {r["id"]: r["token_ids"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert out == {i: _alone(model, r["prompt"], cfg) for i, r in enumerate(rows)}


def test_async_row_steps_on_preset_inputs_equal_synchronous_steps(model, monkeypatch):
    """`start_rows` writes one token per row into preset tensors (mask, positions after left padding,
    beam_idx), and `step` now runs on them too; an infer given a dict of new tensors (how `step` ran
    rows before, and still runs what the presets cannot hold) is the reference. Through plain steps
    and a reorder that drops a row (a finished row leaving the batch), their logits agree bit for bit."""
    import numpy as np

    from ovgen.session import Session

    prompts = [model.tokenizer.encode(p) for p in PROMPTS[:4]]  # different lengths: left padding
    plan = [[11, 12, 13, 14], [21, 22, 23, 24], ("reorder", [0, 2, 3]), [31, 32, 33], [41, 42, 43]]
    plan += [[50 + i, 60 + i, 70 + i] for i in range(20)]

    def run(mode: str):
        s = model.session()
        out = [s.prefill_rows(prompts).copy()]
        for ids in plan:
            if ids[0] == "reorder":
                s.reorder(ids[1])
                continue
            if mode == "async":
                assert s.start_rows(ids) > 0
                out.append(s.finish_step().copy())
            else:
                out.append(s.step(np.array(ids)).copy())
        return out, s

    fast, s = run("async")
    assert s._rows_preset is not None and s._rows_preset.installed  # the preset path ran
    stepped, s = run("step")
    assert s._rows_preset is not None and s._rows_preset.installed
    with monkeypatch.context() as m:
        m.setattr(Session, "_rows_ok", lambda self, ids: False)
        arrays, s = run("step")
        assert s._rows_preset is None
    for a, b, c in zip(fast, stepped, arrays, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_a_seeded_row_does_not_depend_on_its_neighbours(model):
    cfg = {"max_new_tokens": 24, "do_sample": True, "top_k": 40, "seed": 9}
    target = PROMPTS[2]
    alone = _alone(model, target, cfg)
    for neighbours in (PROMPTS[:2], PROMPTS[5:9]):
        res = ovgen.generate(model, neighbours + [target], cfg)
        assert res[-1].sequences[0].token_ids == alone


def test_rows_stop_on_their_own_and_leave_the_batch(model, monkeypatch):
    rows_per_step = []

    def outputs(self, rows, keep):
        rows_per_step.append(rows)
        return real_outputs(self, rows, keep)

    real_outputs = ovgen.Session._outputs  # every infer sets its output buffers (dict or preset inputs)
    monkeypatch.setattr(ovgen.Session, "_outputs", outputs)
    prompts = [PROMPTS[6], PROMPTS[8], PROMPTS[2], [{"role": "user", "content": "Say hi."}]]
    configs = [{"max_new_tokens": 3}, {"max_new_tokens": 9}, {"stop_strings": ["("], "max_new_tokens": 30},
               {"max_new_tokens": 40}]
    res = ovgen.generate(model, prompts, {"ignore_eos": False}, configs=configs)
    assert len(res[0].sequences[0].token_ids) == 3 and res[0].sequences[0].finish_reason == "length"
    assert len(res[1].sequences[0].token_ids) == 9
    assert res[2].sequences[0].finish_reason == "stop_string" and "(" not in res[2].text
    assert res[3].sequences[0].finish_reason == "stop"  # the chat answer ends with eos
    assert rows_per_step[0] == 4 and rows_per_step == sorted(rows_per_step, reverse=True) and rows_per_step[-1] == 1
    for r, p, c in zip(res, prompts, configs):  # each row as it would be alone
        assert r.sequences[0].token_ids == _alone(model, p, {"ignore_eos": False, **c})


def test_a_row_left_alone_runs_on_the_one_row_loop(model):
    """The last row going on (and a batch of one) takes the one-token path with the next infer
    overlapping its records' host work, as one prompt alone does; the tokens do not change."""
    configs = [{"max_new_tokens": 4, "ignore_eos": True}, {"max_new_tokens": 12, "ignore_eos": True}]
    recs = list(ovgen.stream(model, PROMPTS[:2], configs=configs))
    tail = [r for r in recs if r.row == 1][4:]
    assert len(tail) == 8 and all(r.overlapped for r in tail[:-1]) and not tail[-1].overlapped
    assert all(r.overlapped for r in recs[:8])  # two rows: the next step runs while the records are made
    stops = list(ovgen.stream(model, PROMPTS[:2], {"max_new_tokens": 5, "ignore_eos": True, "stop_strings": ["@@"]}))
    assert len(stops) == 10 and not any(r.overlapped for r in stops)  # the text decides, then the step runs
    assert [r.token_id for r in recs if r.row == 1] == _alone(model, PROMPTS[1], configs[1])
    one = list(ovgen.stream(model, [PROMPTS[3]], {"max_new_tokens": 6, "ignore_eos": True}, batch_size=1))
    assert all(r.overlapped for r in one[:-1]) and {r.row for r in one} == {0}
    assert [r.token_id for r in one] == _alone(model, PROMPTS[3], {"max_new_tokens": 6, "ignore_eos": True})


def test_overlap_false_runs_every_batched_infer_after_its_records(model):
    """`overlap=False` holds for a list of prompts as for one: no infer runs while records are made,
    in the batch, on the one-row loop of its last row, for a row that runs alone (beams) and for
    side-by-side sequences; the tokens are those of the default."""
    configs = [{"max_new_tokens": 4}, {"max_new_tokens": 9}, {"max_new_tokens": 5, "num_beams": 2},
               {"max_new_tokens": 6, "num_return_sequences": 2, "do_sample": True, "seed": 3}]
    base = {"ignore_eos": True}
    on = list(ovgen.stream(model, PROMPTS[:4], base, configs=configs))
    off = list(ovgen.stream(model, PROMPTS[:4], base, configs=configs, overlap=False))
    assert any(r.overlapped for r in on) and not any(r.overlapped for r in off)
    key = sorted((r.row, r.sequence, r.index, r.token_id) for r in on)
    assert sorted((r.row, r.sequence, r.index, r.token_id) for r in off) == key and len(key) == 4 + 9 + 5 + 2 * 6
    res = ovgen.generate(model, PROMPTS[:2], base, configs=configs[:2], overlap=False)
    assert [r.sequences[0].token_ids for r in res] == [_alone(model, p, {**base, **c}) for p, c in zip(PROMPTS, configs[:2])]


def test_a_batch_stream_stopped_mid_step_leaves_the_session_usable(model):
    cfg = {"max_new_tokens": 8, "ignore_eos": True}
    session = model.session()
    st = ovgen.stream(model, PROMPTS[:3], cfg, session=session)
    first = [next(st) for _ in range(4)]  # the second step is running when the consumer stops
    assert first[-1].overlapped
    st.close()
    assert ovgen.generate(model, PROMPTS[4], cfg, session=session).sequences[0].token_ids == _alone(model, PROMPTS[4], cfg)


def test_stream_records_carry_their_row(model):
    recs = list(ovgen.stream(model, PROMPTS[:3], {"max_new_tokens": 5, "ignore_eos": True}))
    assert sorted({r.row for r in recs}) == [0, 1, 2]
    assert all(sum(r.row == i for r in recs) == 5 for i in range(3))


def test_structured_rows_in_a_batch(model):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}},
              "required": ["answer"], "additionalProperties": False}
    res = ovgen.generate(model, [[{"role": "user", "content": q}] for q in PROMPTS[:3]],
                         {"max_new_tokens": 60, "json_schema": schema})
    for r in res:
        assert set(json.loads(r.text)) == {"answer"}


def test_a_bad_prompt_is_named_before_inference(model):
    with pytest.raises(ValueError, match=r"prompts\[1\]: prompt is empty"):
        ovgen.generate(model, ["hello", ""], {"max_new_tokens": 3})
    with pytest.raises(ValueError, match=r"prompts\[0\]: .*did you mean temperature"):
        ovgen.generate(model, ["hello", "x"], configs=[{"temprature": 1}, {}])
    # what only a one-prompt generation uses is refused for a list, not silently dropped (and back)
    from ovgen.prefix import PrefixCache
    from ovgen.speculative import PromptLookup

    session = model.session()
    for name, value in (("chooser", lambda *a: 0), ("assistant", model), ("proposer", PromptLookup()),
                        ("prefix_cache", PrefixCache())):
        with pytest.raises(ValueError, match=f"{name} applies to one prompt at a time"):
            ovgen.generate(model, ["hello", "x"], {"max_new_tokens": 3}, session=session, **{name: value})
    with pytest.raises(ValueError, match="one prompt takes config"):
        ovgen.generate(model, "hello", {"max_new_tokens": 3}, configs=[{}], session=session)
    assert session.length == 0


# ---- ovgen batch -------------------------------------------------------------------------------------------
ROWS = [{"id": "a", "prompt": "The capital of France is", "top_logprobs": 2},
        {"id": "b", "messages": [{"role": "user", "content": "Name a colour."}], "max_new_tokens": 8},
        {"id": "c", "prompt": ""},
        {"id": "d", "prompt": "1, 2, 3,", "temprature": 0.5},
        {"id": "e", "prompt": "Once upon a time", "do_sample": True, "seed": 4},
        {"id": "f", "prompt": "def fib(n):", "num_beams": 2},
        {"prompt": "The quick brown fox", "stop_strings": [" over"]},
        {"id": 42, "prompt": "My favourite colour is", "logit_bias": {"30": -5}}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _lines(path):
    return {json.loads(x)["id"]: json.loads(x) for x in path.read_text().splitlines()}


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    _write(d / "in.jsonl", ROWS)
    jobs.run_job(model, d / "in.jsonl", d / "out.jsonl", {"max_new_tokens": 12}, batch_size=3, logprobs=True)
    return d, _lines(d / "out.jsonl")


def test_batch_job_output(model, reference):
    _, out = reference
    assert set(out) == {"a", "b", "c", "d", "e", "f", 7, 42}  # the row without an id: its line, 7
    assert out["c"] == {"id": "c", "error": "prompt is empty"}
    assert "temprature" in out["d"]["error"]
    assert len(out["b"]["token_ids"]) <= 8 and len(out["a"]["token_ids"]) == 12
    assert out["a"]["token_ids"] == _alone(model, "The capital of France is", {"max_new_tokens": 12})
    assert out["e"]["token_ids"] == _alone(model, "Once upon a time", {"max_new_tokens": 12, "do_sample": True,
                                                                        "seed": 4})
    assert out[7]["finish_reason"] == "stop_string" or " over" not in out[7]["text"]
    assert len(out["a"]["logprobs"]) == 12 and all(lp <= 0 for lp in out["a"]["logprobs"])
    # the row that asked for top_logprobs has them: the greedy token first, with its own logprob
    a = out["a"]
    assert [[pair[0] for pair in top[:1]] for top in a["top_logprobs"]] == [[t] for t in a["token_ids"]]
    assert [top[0][1] for top in a["top_logprobs"]] == a["logprobs"]
    assert all(len(top) == 2 and top[0][1] >= top[1][1] for top in a["top_logprobs"])
    assert "top_logprobs" not in out["e"]


def test_batch_job_resumes_after_a_kill(model, reference, tmp_path):
    ref_dir, ref = reference
    _write(tmp_path / "in.jsonl", ROWS)
    done = (ref_dir / "out.jsonl").read_text().splitlines()
    # a run killed after three rows, in the middle of writing the fourth line
    (tmp_path / "out.jsonl").write_text("\n".join(done[:3]) + "\n" + done[3][:25])
    counts = jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", {"max_new_tokens": 12},
                          batch_size=3, logprobs=True)
    assert counts["skipped"] == 3 and counts["done"] + counts["errors"] == len(ROWS) - 3
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == len(ROWS) and len({json.loads(x)["id"] for x in lines}) == len(ROWS)  # none lost, none twice
    assert _lines(tmp_path / "out.jsonl") == ref
    again = jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", {"max_new_tokens": 12}, batch_size=3)
    assert again["skipped"] == len(ROWS) and len((tmp_path / "out.jsonl").read_text().splitlines()) == len(ROWS)


def test_a_killed_batch_job_keeps_the_lines_of_the_rows_that_had_ended(model, model_dir, tmp_path):
    """The lines were flushed once per chunk: a kill (SIGKILL, a job scheduler's timeout) lost the rows of
    the chunk that had already ended - here a quick row and two bad ones beside a long row - and the rerun
    computed them again. Each line now reaches the file as its row ends. (The row asking for 10**12
    sequences ran its prompt and then filled the memory; it is that row's error now.)"""
    import time

    rows = [{"id": "long", "prompt": "Once upon a time", "max_new_tokens": 4000, "ignore_eos": True},
            {"id": "quick", "prompt": "The capital of France is", "max_new_tokens": 2},
            {"id": "bad", "prompt": "x", "stop_strings": 5},
            {"id": "many", "prompt": "x", "do_sample": True, "num_return_sequences": 10**12}]
    _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "ovgen.cli", "batch", "-m", str(model_dir), str(tmp_path / "in.jsonl"),
           "--output", str(out), "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and {"quick", "bad", "many"} <= set(_lines(out)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the long row ended before the kill: make it longer"
    finally:
        proc.kill()
        proc.wait()
    got = _lines(out)
    assert set(got) == {"quick", "bad", "many"}
    assert got["quick"]["token_ids"] == _alone(model, "The capital of France is", {"max_new_tokens": 2})
    assert got["bad"]["error"] == "stop_strings must be non-empty strings, got 5"
    assert got["many"]["error"].startswith("num_return_sequences=1000000000000: 1000000000000 rows side by side")


@pytest.mark.parametrize("content", [b"my notes, no newline", bytes(range(256)), b'{"id": 1}\n\x89PNG\r\n'])
def test_an_output_file_ovgen_did_not_write_is_left_alone(model, tmp_path, content):
    """--output naming some other file: a last line without a newline was taken for a line cut off by a
    kill and cut away (a one-line text file lost its text), a binary file stopped the job with a codec
    error and no file name. Refused now, the file untouched; a real cut-off line is still cut (above)."""
    _write(tmp_path / "in.jsonl", ROWS[:1])
    (tmp_path / "other.txt").write_bytes(content)
    with pytest.raises(ValueError, match=r"other.txt: not an ovgen batch output \("):
        jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "other.txt")
    assert (tmp_path / "other.txt").read_bytes() == content
    for cut in (b'{"i', b'{"id": 7, "te'):  # a kill within a line's first bytes, or later: still ours
        (tmp_path / "out.jsonl").write_bytes(b'{"id": "x", "text": ""}\n' + cut)
        assert jobs.done_ids(tmp_path / "out.jsonl") == {"x"}
        assert (tmp_path / "out.jsonl").read_bytes() == b'{"id": "x", "text": ""}\n'


def test_a_rows_messages_must_be_chat_messages(model, tmp_path):
    """`"messages": "hi"` ran "hi" as a plain-text prompt, without the chat template, and `[1, 2]` as token
    ids; each is now that row's error. Messages under "prompt" stay a chat, as ovgen.generate takes them."""
    chat = [{"role": "user", "content": "Hi"}]
    _write(tmp_path / "in.jsonl", [{"id": 1, "messages": "hi"}, {"id": 2, "messages": [1, 2]},
                                   {"id": 3, "prompt": chat}, {"id": 4, "messages": chat}])
    jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", {"max_new_tokens": 3})
    out = _lines(tmp_path / "out.jsonl")
    assert out[1]["error"] == "messages must be a list of {'role', 'content'} dicts, got str"
    assert out[2]["error"] == "messages must be a list of {'role', 'content'} dicts, got a list of int"
    assert out[3]["token_ids"] == out[4]["token_ids"] == _alone(model, chat, {"max_new_tokens": 3})


def test_rows_without_an_id_are_known_by_their_line_number(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": "x", "prompt": "a"}\n\nnot json\n{"prompt": "b"}\n[1]\n'
                                       '{"id": null, "prompt": "c"}\n')
    rows = jobs.read_rows(tmp_path / "in.jsonl")  # blank line 2 counted, no row
    assert [r["id"] for r in rows] == ["x", 3, 4, 5, 6]
    assert [r["error"] for r in rows] == [None, "line 3 is not JSON (Expecting value)", None,
                                          "line 5 is not a JSON object", "id must be a string or an integer, got None"]
    (tmp_path / "clash.jsonl").write_text('{"prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"clash.jsonl: id 1 appears twice \(lines 1 and 2; a row without an id "
                                         r"is known by its line number\)"):
        jobs.read_rows(tmp_path / "clash.jsonl")


def test_batch_job_refuses_duplicate_ids_and_reads_parquet(model, tmp_path):
    _write(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}])
    with pytest.raises(ValueError, match="id 1 appears twice"):
        jobs.run_job(model, tmp_path / "dup.jsonl", tmp_path / "o.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"id": "p", "prompt": "The capital of France is"}]), tmp_path / "in.parquet")
    jobs.run_job(model, tmp_path / "in.parquet", tmp_path / "pq.jsonl", {"max_new_tokens": 6})
    assert _lines(tmp_path / "pq.jsonl")["p"]["token_ids"] == _alone(model, "The capital of France is",
                                                                      {"max_new_tokens": 6})


def test_cli_batch(model_dir, tmp_path, capsys):
    _write(tmp_path / "in.jsonl", ROWS[:3])
    assert main(["batch", "-m", str(model_dir), str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                 "--max-new-tokens", "5", "--batch-size", "2"]) == 0
    assert set(_lines(tmp_path / "o.jsonl")) == {"a", "b", "c"}
    assert '"done": 2' in capsys.readouterr().err
    assert main(["batch", "-m", str(model_dir), str(tmp_path / "missing.jsonl"), "--output", "x"]) == 2


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--concurrency", "2"], "--ray-address and --concurrency apply to --ray runs"),
    (["--ray-address", "ray://head:10001"], "--ray-address and --concurrency apply to --ray runs"),
    (["--ray", "--concurrency", "0"], "--concurrency must be >= 1, got 0"),
])
def test_cli_batch_options_are_checked_before_the_model_loads(tmp_path, capsys, args, message):
    _write(tmp_path / "in.jsonl", ROWS[:1])
    assert main(["batch", "-m", str(tmp_path / "no-model"), str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "o.jsonl"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "no-model" not in err and not (tmp_path / "o.jsonl").exists()


def test_a_line_that_is_not_utf8_is_that_rows_error(model, tmp_path):
    """A byte that is not UTF-8 stopped the whole job with "'utf-8' codec can't decode byte 0xff", naming
    neither the file nor the line; a UTF-8 byte-order mark (Windows editors write one) made line 1 an error."""
    (tmp_path / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "Hi"}\n{"id": "b", "prompt": "caf\xe9"}\n'
                                        b'{"id": "c", "prompt": "Hello"}\n')
    counts = jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", {"max_new_tokens": 2})
    assert counts == {"rows": 3, "skipped": 0, "done": 2, "errors": 1}
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    column = len(b'{"id": "b", "prompt": "caf') + 1
    assert out[2]["error"] == f"line 2 is not UTF-8 text (byte 0xe9 at column {column})"
    assert len(out["a"]["token_ids"]) == len(out["c"]["token_ids"]) == 2
    with pytest.raises(FileNotFoundError, match="is a folder, not an input file"):
        jobs.run_job(model, tmp_path, tmp_path / "out2.jsonl")


def test_the_input_file_is_never_the_output(model, tmp_path, capsys):
    """--output naming the input file (or a link to it): its rows with ids counted as done, and the
    others' results were appended to the input itself. Refused, the file untouched, before the model loads."""
    _write(tmp_path / "in.jsonl", ROWS[:2])
    before = (tmp_path / "in.jsonl").read_bytes()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    for out in ("in.jsonl", "link.jsonl"):
        assert main(["batch", "-m", str(tmp_path / "no-model"), str(tmp_path / "in.jsonl"),
                     "--output", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert f"--output {tmp_path / out} is the input file" in err and "no-model" not in err
        with pytest.raises(ValueError, match="is the input file"):
            jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / out)
    assert (tmp_path / "in.jsonl").read_bytes() == before


def test_cli_batch_ctrl_c_then_rerun(model_dir, tmp_path):
    """A real SIGINT to `ovgen batch` once its first rows are written: one line saying how to go on,
    exit 130, no traceback; the same command again writes only the missing rows."""
    import signal
    import time

    rows = [{"id": i, "prompt": f"Count from {i} to {i + 50}:"} for i in range(12)]
    _write(tmp_path / "in.jsonl", rows)
    cmd = [sys.executable, "-m", "ovgen.cli", "batch", "-m", str(model_dir), str(tmp_path / "in.jsonl"),
           "--output", str(tmp_path / "o.jsonl"), "--batch-size", "2", "--max-new-tokens", "96", "--ignore-eos"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "o.jsonl").is_file() and (tmp_path / "o.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    written = len(_lines(tmp_path / "o.jsonl"))
    assert proc.returncode == 130 and 2 <= written < len(rows), (proc.returncode, written, err[-500:])
    assert "ovgen batch: interrupted; rerun the same command to go on" in err and "Traceback" not in err
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-500:]
    assert f'"skipped": {written}' in again.stderr and f"{len(rows) - written}/{len(rows) - written}" in again.stderr
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == list(range(len(rows)))  # every row once


def test_ray_pipeline_gives_the_same_answers(model_dir, reference, tmp_path):
    """A local Ray instance (2 CPUs), started by `ovgen batch --ray` in a child process."""
    ref_dir, ref = reference
    out = tmp_path / "ray.jsonl"
    proc = subprocess.run([sys.executable, "-m", "ovgen.cli", "batch", "-m", str(model_dir), str(ref_dir / "in.jsonl"),
                           "--output", str(out), "--max-new-tokens", "12", "--batch-size", "3", "--logprobs", "--ray"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _lines(out) == ref


def test_records_time_the_grammar_apart_from_detokenisation(model):
    """The mask's next-token computation (`accept`) is its own stage in batched and speculative records,
    as in the one-prompt loop, not folded into detok."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    cfg = {"max_new_tokens": 30, "json_schema": schema}
    batched = ovgen.stream(model, [[{"role": "user", "content": q}] for q in PROMPTS[:2]], cfg)
    spec = ovgen.stream(model, [{"role": "user", "content": PROMPTS[0]}], {**cfg, "prompt_lookup": True})
    for records in (list(batched), list(spec)):
        assert all(r.accept_ns > 0 for r in records)


def test_plain_greedy_rows_pick_what_their_own_stage_would(model):
    """Plain greedy rows take their tokens from one argmax over the batch (batch._picks); rows with
    processors or sampling run their own stage. Every row's token, log-probabilities and flags equal
    what its stage chooses on its row alone, ties (to the lowest id) included."""
    import numpy as np

    from ovgen import batch
    from ovgen.search import choose

    vocab = model.vocab_size
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, vocab)).astype(np.float32)
    logits[0, [7, 900, 40000]] = 9.0  # a three-way tie: the lowest id wins
    logits[3, [vocab - 1, 2]] = 8.5
    lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1)).astype(np.float32)
    greedy = model.generation_config.replace(max_new_tokens=8, ignore_eos=True)
    cfgs = [greedy, greedy.replace(repetition_penalty=1.3), greedy.replace(do_sample=True, seed=4, top_k=20),
            greedy.replace(top_logprobs=3), greedy]

    class Rows:  # what _picks reads of a session
        pad = np.zeros(5, np.int64)
        tokens = np.array([[1, 7, 900, 2, 5]] * 5, np.int64)

    def rows():
        return [batch._rows(model, i, [1, 7, 900, 2, 5], c, (), [])[0] for i, c in enumerate(cfgs)]

    live = rows()
    assert [r.greedy for r in live] == [True, False, False, True, True]
    picks = batch._picks(Rows, live, logits, lse, None, 0)
    alone = [choose(r.choice, Rows.tokens[j], logits[j], lse[j], None, r.cfg.top_logprobs, r.stopping, 1, 0)
             for j, r in enumerate(rows())]
    assert [p.token for p in picks][0::3] == [7, 2]
    for p, a in zip(picks, alone, strict=True):
        assert (p.token, p.logprob, p.choice.logprob, p.top, p.reason) == (a.token, a.logprob, a.choice.logprob,
                                                                             a.top, a.reason)
        assert (p.choice.subset, p.choice.top_choice) == (a.choice.subset, a.choice.top_choice)


def test_sampled_rows_drawn_in_one_pass_equal_their_own_stage(model, monkeypatch):
    """Rows sampling after a top-k (with a repetition penalty and a temperature before it, a top-p and /
    or a min-p after it) draw in one pass over their graph candidates (batch._draw_rows): 30 steps of
    random logits, every row's token, log-probabilities and generator state equal its own stage's on
    its row alone, bit for bit. Rows the pass leaves to their stage: a tie at the k-th place,
    candidates that cannot decide the top-k (the whole vocabulary then: all tied, or a penalty that
    sank the k-th largest under the bound), a lone setting, a stage the pass does not do (typical_p)."""
    from ovgen import batch
    from ovgen.backend import TOP_CANDIDATES
    from ovgen.search import choose

    vocab, width = model.vocab_size, TOP_CANDIDATES
    base = model.generation_config.replace(max_new_tokens=64, ignore_eos=True, do_sample=True)
    nucleus = dict(top_k=40, temperature=0.8, top_p=0.8, min_p=0.05)
    cfgs = [base.replace(top_k=50, seed=1), base.replace(top_k=50, seed=2), base.replace(top_k=50, seed=3),
            base.replace(top_k=20, temperature=0.7, seed=4), base.replace(top_k=20, temperature=0.7, seed=5),
            base.replace(top_k=1, seed=6), base.replace(top_k=1, seed=7), base.replace(top_k=50, top_p=0.9, seed=8),
            base.replace(top_k=30, seed=9), base.replace(top_k=50, top_p=0.9, seed=10),
            base.replace(**nucleus, seed=11), base.replace(**nucleus, seed=12), base.replace(**nucleus, seed=13),
            base.replace(top_k=20, min_p=0.2, seed=14), base.replace(top_k=20, min_p=0.2, seed=15),
            base.replace(top_k=50, typical_p=0.9, seed=16), base.replace(top_k=50, typical_p=0.9, seed=17),
            base.replace(**nucleus, repetition_penalty=1.3, seed=18), base.replace(**nucleus, repetition_penalty=1.3,
                                                                                seed=19),
            base.replace(top_k=40, repetition_penalty=3.0, seed=20), base.replace(top_k=40, repetition_penalty=3.0,
                                                                                seed=21),
            # a sweep: the same stages, each row its own settings (rows 3, 4, 13, 14, 19, 20 join them)
            base.replace(top_k=40, temperature=0.6, top_p=0.7, seed=22),
            base.replace(top_k=40, temperature=0.9, top_p=0.85, seed=23),
            base.replace(top_k=40, temperature=1.3, top_p=0.95, seed=24),
            base.replace(top_k=20, temperature=1.5, seed=25), base.replace(top_k=20, min_p=0.05, seed=26), base.replace(top_k=40, repetition_penalty=1.05, seed=27)]
    ids = [1, 7, 900, 2, 5] + list(range(1000, 1100))  # the penalised history

    class Rows:  # what _picks reads of a session; rows 18 and 20 left-padded with tokens a history must not hold
        pad = np.array([3 if j in (18, 20) else 0 for j in range(len(cfgs))], np.int64)
        tokens = np.array([[40000, 40001, 40002] + ids] * len(cfgs), np.int64)
        tokens[np.flatnonzero(pad == 0), :3] = ids[:3]
    Rows.model = model

    live = [batch._rows(model, i, ids, c, (), [])[0] for i, c in enumerate(cfgs)]
    alone = [batch._rows(model, i, ids, c, (), [])[0] for i, c in enumerate(cfgs)]
    t7, t8 = np.float32(0.7), np.float32(0.8)
    keys = ([(None, 50, None, None)] * 3 + [(t7, 20, None, None)] * 2 + [(None, 1, None, None)] * 2
            + [(None, 50, 0.9, None), (None, 30, None, None), (None, 50, 0.9, None)] + [(t8, 40, 0.8, 0.05)] * 3
            + [(None, 20, None, 0.2)] * 2)
    assert [r.draw for r in live] == ([(None, *key) for key in keys] + [None] * 2 + [(1.3, t8, 40, 0.8, 0.05)] * 2
                                      + [(3.0, None, 40, None, None)] * 2
                                      + [(None, np.float32(t), 40, p, None)
                                         for t, p in ((0.6, 0.7), (0.9, 0.85), (1.3, 0.95))]
                                      + [(None, np.float32(1.5), 20, None, None), (None, None, 20, None, 0.05),
                                         (1.05, None, 40, None, None)])
    passed = []
    real = batch._draw_rows
    monkeypatch.setattr(batch, "_draw_rows", lambda *a: passed.append(sorted(d := real(*a))) or d)
    rng = np.random.default_rng(11)
    for step in range(30):
        logits = (rng.standard_normal((len(cfgs), vocab)) * rng.uniform(1, 4)).astype(np.float32)
        if step % 3 == 0:
            top = np.sort(logits[1])[::-1]
            logits[1, logits[1] == top[50]] = top[49]  # a tie at the 50th place
        if step % 5 == 0:
            logits[2, :] = 0.5  # every candidate ties: the top-k is not decided on them
        if step % 2 == 0:  # ties inside the top-k: the nucleus's order among them is its stable sort's
            for j in (7, 10, 11):
                top = np.sort(logits[j])[::-1]
                logits[j, np.isin(logits[j], top[1:4])] = top[1]
        else:  # a tie the nucleus's cut falls inside: which of them it keeps is its stable sort's choice
            for j in (7, 9, 10, 11, 12):
                picked = rng.choice(vocab, 17, replace=False)
                logits[j], logits[j, picked[0]], logits[j, picked[1:]] = rng.standard_normal(vocab), 7.0, 6.0
        for j in (17, 18, 19, 20, 26):  # history tokens among the candidates: penalised (the padding's: not)
            logits[j, rng.choice(ids, 12, replace=False)] = np.sort(logits[j])[-30:-18]
            logits[j, Rows.tokens[j, :3]] = np.sort(logits[j])[-40:-37]
        if step % 4 == 1:  # every logit negative: the penalty multiplies
            logits[17:19] -= 30
        if step % 3 == 2:  # the penalty sinks the history's 60 leaders under the other candidates' floor
            for j in (19, 20):
                logits[j] = rng.standard_normal(vocab)
                logits[j, ids[5:65]] = 5 + rng.random(60)
        lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1)).astype(np.float32)
        cand = np.sort(np.argpartition(-logits, width, axis=1)[:, :width], axis=1)
        tops = (np.take_along_axis(logits, cand, axis=1), cand)
        for r in live:
            r.n = 0
        picks = batch._picks(Rows, live, logits, lse, tops, 0)
        for j, (p, r) in enumerate(zip(picks, alone, strict=True)):
            a = choose(r.choice, Rows.tokens[j, Rows.pad[j]:], logits[j], lse[j], (tops[0][j], tops[1][j]), 0,
                       r.stopping, 1, 0)
            assert (p.token, p.logprob, p.choice.logprob, p.choice.subset) == (a.token, a.logprob, a.choice.logprob,
                                                                               a.choice.subset), (step, j)
        assert [r.choice.chooser.rng.bit_generator.state for r in live] == \
               [r.choice.chooser.rng.bit_generator.state for r in alone]
    logits[4, tops[1][4, :3]] = np.nan  # NaN among a row's candidates: its own stage's error, both ways
    tops = (np.take_along_axis(logits, cand, axis=1), cand)
    with pytest.raises(ValueError, match="not finite"):
        batch._picks(Rows, live, logits, lse, tops, 0)
    with pytest.raises(ValueError, match="not finite"):
        choose(alone[4].choice, Rows.tokens[4], logits[4], lse[4], (tops[0][4], tops[1][4]), 0, alone[4].stopping,
               1, 0)
    drawn = [set(d) for d in passed]
    assert all({0, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 17, 18, 21, 22, 23, 24, 25, 26} <= d and not d & {8, 15, 16}
               for d in drawn[:30])
    assert all(({19, 20} & d == set()) == (step % 3 == 2) for step, d in enumerate(drawn[:30]))
    assert all(1 not in d for d in drawn[:30:3]) and all(2 not in d for d in drawn[:30:5])
    assert sum(1 in d for d in drawn) >= 15 and sum(2 in d for d in drawn) >= 20 and 4 not in drawn[30]


# ---- num_return_sequences: a prompt's sequences side by side --------------------------------------------------
SEQ_CASES = {
    "sample": {"do_sample": True, "seed": 5, "top_k": 50, "top_p": 0.95, "temperature": 0.9, "max_new_tokens": 40,
               "stop_strings": ["."]},
    "penalties": {"do_sample": True, "seed": 8, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3,
                  "max_new_tokens": 24, "ignore_eos": True},
    "penalty_nucleus": {"do_sample": True, "seed": 4, "repetition_penalty": 1.2, "temperature": 0.8, "top_k": 40,
                        "top_p": 0.9, "min_p": 0.02, "max_new_tokens": 32, "ignore_eos": True},  # batch._draw_rows
    "schema": {"do_sample": True, "seed": 6, "max_new_tokens": 48,
               "json_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                               "required": ["city"], "additionalProperties": False}},
}
CITY = [{"role": "user", "content": "Name a city in France and say one thing about it."}]


class Watched(Sampler):
    """A Sampler (the same draws) that logs, for each draw, how far its uniform fell from the edges of
    the chosen token's interval in the cumulative distribution, as a share of the total."""

    def __init__(self, seed):
        super().__init__(seed)
        self.margins = []
        self.sequences = [self]  # this chooser, then the ones it made for sequences 1, 2, ...

    def for_sequence(self, i):
        twin = super().for_sequence(i)  # a Watched copy on sequence i's seed, with logs of its own
        twin.margins, twin.sequences = [], [twin]
        self.sequences.append(twin)
        return twin

    def choose(self, cand):
        twin = np.random.Generator(type(self.rng.bit_generator)())
        twin.bit_generator.state = self.rng.bit_generator.state  # the uniform this draw is about to use
        u = twin.random()
        choice = super().choose(cand)
        if choice is not None:
            cdf = np.cumsum(softmax(cand.values[np.flatnonzero(cand.values != NEG_INF)]))
            x = u * cdf[-1]
            i = min(int(cdf.searchsorted(x, side="right")), cdf.size - 1)
            self.margins.append(min(x - (cdf[i - 1] if i else 0.0), cdf[i] - x) / cdf[-1])
        return choice


def assert_same_draws(got: list[int], alone: list[int], margins: list[float], what: str) -> None:
    """`got` equals `alone`, the sequence drawn with the same uniforms from one-row logits - up to the
    first step whose uniform fell within 2e-3 of an edge of the cumulative distribution: there the
    batched infer's f32 sums (another order than one row's: log-probabilities ~1e-4 apart) may move
    the edge past it, and the two diverge from there on."""
    k = next((k for k, (a, b) in enumerate(zip(got, alone)) if a != b), None)
    if k is None:
        assert len(got) == len(alone), what
    else:
        assert margins[k] < 2e-3, f"{what}: token {k} differs ({got[k]} vs {alone[k]}) with its uniform " \
                                  f"{margins[k]:.2g} from the distribution's edges"


@pytest.mark.parametrize("case", SEQ_CASES)
def test_returned_sequences_run_side_by_side_as_each_would_alone(model, monkeypatch, case):
    """num_return_sequences=4: the prompt runs once, its KV row is forked into four rows that decode as one
    batch, sequence i drawing from child i of the seed's SeedSequence (sequence 0: from the seed, as
    num_return_sequences=1): each sequence equals that sequence drawn alone (same seed stream, one-row
    infers). The stream gives each sequence whole, in order, while they end at different steps."""
    prefills, widths = [], []
    real_prefill, real_outputs = ovgen.Session.prefill, ovgen.Session._outputs
    monkeypatch.setattr(ovgen.Session, "prefill", lambda self, ids: prefills.append(1) or real_prefill(self, ids))
    monkeypatch.setattr(ovgen.Session, "_outputs", lambda self, rows, keep: widths.append(rows) or
                        real_outputs(self, rows, keep))
    cfg = SEQ_CASES[case]
    recs = list(ovgen.stream(model, CITY, {**cfg, "num_return_sequences": 4}))
    assert len(prefills) == 1 and 4 in widths  # one prefill; then the four rows in one infer
    monkeypatch.undo()
    seqs = [[r for r in recs if r.sequence == i] for i in range(4)]
    assert [r.sequence for r in recs] == sorted(r.sequence for r in recs)  # each sequence whole, in order
    for i, rs in enumerate(seqs):
        assert [r.index for r in rs] == list(range(len(rs))) and rs[-1].finish_reason is not None
        watched = Watched(np.random.SeedSequence(cfg["seed"], spawn_key=(i,)) if i else cfg["seed"])
        alone = ovgen.generate(model, CITY, cfg, chooser=watched).sequences[0]
        got = [r.token_id for r in rs]
        assert_same_draws(got, alone.token_ids, watched.margins, f"sequence {i}")
        if got == alone.token_ids:
            assert ("".join(r.text for r in rs), rs[-1].finish_reason) == (alone.text, alone.finish_reason)
    if case == "schema":
        assert all(set(json.loads("".join(r.text for r in rs))) == {"city"} for rs in seqs)
    if case == "sample":
        assert len({len(rs) for rs in seqs}) > 1  # they ended at different steps (the ordering was exercised)


def test_returned_sequences_one_after_another_equal_side_by_side(model, monkeypatch):
    """Where the KV row cannot be forked (paged attention, onnxruntime-genai) the sequences run one after
    another from the prompt's snapshot, each from its own generator: the same sequences as side by side."""
    cfg = {**SEQ_CASES["sample"], "num_return_sequences": 3, "stop_strings": []}
    side = ovgen.generate(model, PROMPTS[1], cfg)
    monkeypatch.setattr(sys.modules["ovgen.generate"], "side_by_side", lambda *a: False)
    restores = []
    real_restore = ovgen.Session.restore
    monkeypatch.setattr(ovgen.Session, "restore", lambda self, snap: restores.append(1) or real_restore(self, snap))
    watched = Watched(cfg["seed"])
    after = ovgen.generate(model, PROMPTS[1], cfg, chooser=watched)
    assert len(restores) == 2 and len(watched.sequences) == 3
    for i, (a, b, w) in enumerate(zip(side.sequences, after.sequences, watched.sequences)):
        assert_same_draws(a.token_ids, b.token_ids, w.margins, f"sequence {i}")


def test_a_chooser_without_its_own_sequences_serves_them_in_turn(model, monkeypatch):
    """A user chooser that cannot give a sequence its own stream (a plain callable) chooses every
    sequence, one after another (no infer of two rows), its state running on."""
    calls, widths = [], []
    real_outputs = ovgen.Session._outputs
    monkeypatch.setattr(ovgen.Session, "_outputs", lambda self, rows, keep: widths.append(rows) or
                        real_outputs(self, rows, keep))

    def pick(logits):
        calls.append(1)
        return int(np.argsort(logits)[-1 - len(calls) % 2])  # alternates the best and the second best

    res = ovgen.generate(model, PROMPTS[2], {"do_sample": True, "num_return_sequences": 2, "max_new_tokens": 5,
                                             "ignore_eos": True}, chooser=pick)
    assert len(calls) == 10 and set(widths) == {1}
    a, b = (s.token_ids for s in res.sequences)
    assert a[0] != b[0]  # sequence 0 began on the second best, sequence 1 on the best: the state ran on


def test_returned_sequences_stopped_early_leave_the_session_usable(model):
    session = model.session()
    cfg = {"do_sample": True, "seed": 1, "num_return_sequences": 3, "max_new_tokens": 20, "ignore_eos": True}
    st = ovgen.stream(model, PROMPTS[0], cfg, session=session)
    first = [next(st) for _ in range(3)]
    assert [r.sequence for r in first] == [0, 0, 0]
    st.close()
    greedy = {"max_new_tokens": 8, "ignore_eos": True}
    assert ovgen.generate(model, PROMPTS[4], greedy, session=session).sequences[0].token_ids == \
        _alone(model, PROMPTS[4], greedy)


def test_a_prompts_sequences_join_the_other_prompts_rows(model, monkeypatch, tmp_path):
    """In a list of prompts, a prompt asking for num_return_sequences=3 is prefilled once beside the
    others, its KV row forked into three rows of the same batch (5 rows: 3 + a greedy row + a sampled
    one); every prompt gives what it gives alone - the greedy one its tokens, each sequence its own
    draws (up to the uniforms within 2e-3 of an edge, see assert_same_draws). batch_size counts rows:
    at 4 the three sequences and one other prompt share a batch. `ovgen batch` writes the row once all
    of its sequences have ended (they end at different steps, interleaved with the other rows)."""
    prefills, widths = [], []
    real_prefill, real_outputs = ovgen.Session.prefill_rows, ovgen.Session._outputs
    monkeypatch.setattr(ovgen.Session, "prefill_rows", lambda self, rows, pad_id=0: prefills.append(len(rows)) or
                        real_prefill(self, rows, pad_id))
    monkeypatch.setattr(ovgen.Session, "_outputs", lambda self, rows, keep: widths.append(rows) or
                        real_outputs(self, rows, keep))
    seq = {**SEQ_CASES["sample"], "num_return_sequences": 3, "stop_strings": []}
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[8]]
    configs = [{"max_new_tokens": 20, "ignore_eos": True}, seq, {"do_sample": True, "seed": 3, "max_new_tokens": 16}]
    res = ovgen.generate(model, prompts, configs=configs)
    assert prefills == [3] and max(widths) == 5
    prefills.clear()
    recs = list(ovgen.stream(model, prompts, configs=configs, batch_size=4))
    assert sorted(prefills) == [1, 2]  # the greedy (shortest) prompt with the sequences, then the last prompt
    monkeypatch.undo()
    assert [len(r.sequences) for r in res] == [1, 3, 1]
    assert res[0].sequences[0].token_ids == _alone(model, prompts[0], configs[0])
    assert res[2].sequences[0].token_ids == _alone(model, prompts[2], configs[2])
    for i, s in enumerate(res[1].sequences):
        watched = Watched(np.random.SeedSequence(seq["seed"], spawn_key=(i,)) if i else seq["seed"])
        alone = ovgen.generate(model, prompts[1], {**seq, "num_return_sequences": 1}, chooser=watched).sequences[0]
        assert_same_draws(s.token_ids, alone.token_ids, watched.margins, f"sequence {i}")
        at_4 = [r.token_id for r in recs if r.row == 1 and r.sequence == i]
        assert_same_draws(at_4, alone.token_ids, watched.margins, f"sequence {i}, batch_size 4")
    assert sorted(r.sequence for r in recs if r.row == 1 and r.finish_reason) == [0, 1, 2]
    rows = [{"id": i, "prompt": p, **c} for i, (p, c) in enumerate(zip(prompts, configs))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=3)
    out = _lines(tmp_path / "out.jsonl")
    assert sorted(out) == [0, 1, 2] and len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert [s["token_ids"] for s in out[1]["sequences"]] == [s.token_ids for s in res[1].sequences]
    assert out[0]["token_ids"] == res[0].sequences[0].token_ids


def test_a_job_row_that_makes_no_token_gets_its_line(model, tmp_path):
    """A row with max_new_tokens 0 yields no record; its line is still written (it was missing, and a
    rerun ran the row again every time)."""
    rows = [{"id": "none", "prompt": PROMPTS[0], "max_new_tokens": 0}, {"id": "some", "prompt": PROMPTS[1]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs.run_job(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", {"max_new_tokens": 4, "ignore_eos": True})
    out = _lines(tmp_path / "out.jsonl")
    assert out["none"] == {"id": "none", "text": "", "token_ids": [], "finish_reason": "length"}
    assert out["some"]["token_ids"] == _alone(model, PROMPTS[1], {"max_new_tokens": 4, "ignore_eos": True})
