"""Per-token profiling (stage split, exports), overlap of the next infer with the consumer, `ovgen bench`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest

import ovgen
from ovgen.profiling import STAGES

CONFIGS = [
    {"max_new_tokens": 24, "ignore_eos": True},
    {"max_new_tokens": 24, "do_sample": True, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 3},
    {"max_new_tokens": 24, "stop_strings": [" the"], "include_stop_str_in_output": True},
    {"max_new_tokens": 12, "do_sample": True, "num_return_sequences": 2, "seed": 5, "ignore_eos": True},
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_overlap_changes_nothing_but_timing(model, cfg):
    """Same tokens, texts, logprobs and final session state with and without overlap."""
    out = []
    for overlap in (True, False):
        s = model.session()
        res = ovgen.generate(model, "Once upon a time, in a small village,", cfg, session=s, overlap=overlap)
        out.append(([q.token_ids for q in res.sequences], [q.text for q in res.sequences],
                    [q.logprobs for q in res.sequences], s.tokens.tolist()))
        recs = res.sequences[0].records
        assert [r.overlapped for r in recs[:-1]] == [overlap] * (len(recs) - 1) and not recs[-1].overlapped
    assert out[0] == out[1]


def test_consumer_leaving_early_waits_for_the_running_infer(model):
    """The consumer stops while the next infer runs: the session finishes it and holds prompt + every
    token yielded so far; the next generation on it equals a fresh session's."""
    s = model.session()
    ids = model.tokenizer.encode("The quick brown fox", add_special_tokens=False)
    seen = []
    for rec in ovgen.stream(model, ids, {"max_new_tokens": 30, "ignore_eos": True}, session=s):
        seen.append(rec.token_id)
        if len(seen) == 5:
            assert rec.overlapped
            break
    assert s.tokens[0].tolist() == ids + seen and s.length == len(ids) + 5
    again = ovgen.generate(model, ids, {"max_new_tokens": 10}, session=s).sequences[0].token_ids
    assert again == ovgen.generate(model, ids, {"max_new_tokens": 10}).sequences[0].token_ids


def test_an_abandoned_stream_closed_late_leaves_a_later_one_alone(model):
    """A stream abandoned mid-way and closed only later (say by the garbage collector, while a newer
    stream on the same session has its own step running) must not finish the newer step."""
    ids = model.tokenizer.encode("Write a haiku about the sea.", add_special_tokens=False)
    cfg = {"max_new_tokens": 12, "ignore_eos": True}
    ref = ovgen.generate(model, ids, cfg).sequences[0].token_ids
    s = model.session()
    old = ovgen.stream(model, ids, cfg, session=s)
    next(old), next(old)  # its second step is running now
    new = ovgen.stream(model, ids, cfg, session=s)  # prefill settles the old step first
    got = [next(new).token_id, next(new).token_id]
    old.close()
    got += [r.token_id for r in new]
    assert got == ref


def test_session_calls_finish_a_started_step(model):
    s = model.session()
    s.prefill([1, 2, 3])
    assert s.start_step(4)
    assert not s.start_step(5)  # one at a time
    snap = s.snapshot()  # finishes the step first
    assert snap.tokens.tolist() == [[1, 2, 3, 4]]
    ref = model.session()
    ref.prefill([1, 2, 3])
    expected = ref.step(4)
    assert expected.argmax() == s.argmax
    # whoever started the step still gets its logits (a stream between two records), once
    np.testing.assert_array_equal(s.finish_step(), expected)
    with pytest.raises(RuntimeError, match="without a started step"):
        s.finish_step()
    assert s.start_step(5)
    s.settle()
    s.step(6)  # an infer after the settle: the settled logits no longer apply
    with pytest.raises(RuntimeError, match="without a started step"):
        s.finish_step()


def _slow_generation(model, overlap):
    return ovgen.generate(model, "Write a haiku about the sea.", {"max_new_tokens": 12, "ignore_eos": True},
                          on_token=lambda r: time.sleep(0.01), overlap=overlap)


def test_stage_split_and_raw_timestamps(model):
    res = _slow_generation(model, overlap=False)
    recs = res.sequences[0].records
    ready = [r.ready_ns for r in recs]
    assert ready == sorted(ready) and ready[0] > res.t_start_ns
    for r in recs:
        assert r.callback_ns >= 10e6  # the callback's sleep is measured as its own stage
        assert r.infer_start_ns < r.start_ns <= r.ready_ns
        # synchronous: the stages of one token follow each other inside its inter-token interval
        assert r.start_ns >= r.infer_start_ns + r.model_ns
        assert r.start_ns + r.process_ns + r.choice_ns + r.detok_ns <= r.ready_ns + 1000
    for prev, r in zip(recs, recs[1:]):
        assert r.infer_start_ns >= prev.ready_ns + prev.callback_ns - 1000  # infer after the callback
    st = res.profile.stats()
    for key in ("ttft_ms", "tpot_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "tokens_per_s"):
        assert st[key] > 0
    assert st["itl_p50_ms"] <= st["itl_p90_ms"] <= st["itl_p99_ms"]
    assert st["callback_ms"] >= 12 * 10
    assert abs(st["tpot_ms"] - (ready[-1] - ready[0]) / 1e6 / 11) < 1e-6


def test_one_token_has_no_inter_token_latency(model, model_dir):
    """One generated token has a TTFT and no time between tokens: TPOT, the ITL percentiles and the
    decode rate are None (JSON null), not 0.0 (which averaged with other rows' TPOTs biased them, and
    printed as "TPOT 0.00 ms | 0.0 tokens/s")."""
    st = ovgen.generate(model, "Hello", {"max_new_tokens": 1}).metrics
    assert st["generated_tokens"] == 1 and st["ttft_ms"] > 0 and st["tokens_per_s"] > 0
    assert all(st[k] is None for k in ("tpot_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "decode_tokens_per_s"))
    none = ovgen.generate(model, "Hello", {"max_new_tokens": 0}).metrics  # the same keys, nothing timed
    assert none.keys() == st.keys() and none["generated_tokens"] == 0 and none["ttft_ms"] is None
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "generate", "-m", str(model_dir), "Hello",
                          "--max-new-tokens", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| one token: no TPOT |" in out.stderr and "0.00" not in out.stderr


def test_overlap_runs_the_next_infer_during_the_callback(model):
    """With overlap the model slice of token i+1 starts before token i's callback ends, in the trace."""
    res = _slow_generation(model, overlap=True)
    recs = res.sequences[0].records
    for prev, r in zip(recs, recs[1:]):
        assert r.infer_start_ns < prev.ready_ns + prev.callback_ns
        assert r.infer_start_ns >= prev.start_ns + prev.process_ns + prev.choice_ns  # after the choice


def test_exports(model, tmp_path):
    cfg = {"max_new_tokens": 10, "do_sample": True, "top_k": 20, "temperature": 0.7, "seed": 1, "ignore_eos": True}
    res = ovgen.generate(model, "List three prime numbers:", cfg)
    prof = res.profile
    data = json.loads(prof.to_json(str(tmp_path / "p.json")))
    assert json.loads((tmp_path / "p.json").read_text()) == data
    assert [t["token_id"] for t in data["tokens"]] == res.sequences[0].token_ids
    assert set(data["stats"]["processors"]) == {"temperature", "top_k"}
    rows = list(csv.DictReader(io.StringIO(prof.to_csv(str(tmp_path / "p.csv")))))
    assert len(rows) == 10 and {f"{s}_ms" for s in STAGES} <= set(rows[0])
    assert [int(r["token_id"]) for r in rows] == res.sequences[0].token_ids
    trace = json.loads(prof.to_chrome_trace(str(tmp_path / "t.json")))["traceEvents"]
    slices = [e for e in trace if e["ph"] == "X"]
    for stage in ("model", "read_logits", "process", "choice", "detok", "callback", "temperature", "top_k"):
        per_token = sorted(e["args"]["token"] for e in slices if e["name"] == stage)
        assert per_token == (list(range(1, 10)) if stage == "model" else list(range(10))), stage
    assert [e["args"]["token"] for e in slices if e["name"] == "prefill"] == [0]
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in slices)
    assert {e["tid"] for e in slices if e["name"] in ("model", "prefill")} == {1}
    # no tokens (max_new_tokens=0): the header alone, the same columns (the CSV was empty, which csv readers
    # and pandas refuse)
    empty = ovgen.generate(model, "List three prime numbers:", {"max_new_tokens": 0}).profile.to_csv()
    reader = csv.DictReader(io.StringIO(empty))
    assert list(reader) == [] and reader.fieldnames == [c for c in rows[0] if not c.startswith("proc:")]


def test_bench_cli(tmp_path):
    files = {k: tmp_path / f"b.{k}" for k in ("png", "json", "csv")}
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "bench", "--prompt-tokens", "8,40", "--new-tokens", "6",
                          "--runs", "2", "--plot", str(files["png"]), "--trace", str(files["json"]),
                          "--csv", str(files["csv"]), "--json", "--ov-config", "KV_CACHE_PRECISION=u8"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ov_config"]["KV_CACHE_PRECISION"] == "u8"  # the results say what they were compiled with
    assert [r["prompt_tokens"] for r in res["results"]] == [8, 40]
    assert all(r["runs"] == 2 and r["ttft_ms"] > 0 and r["tpot_ms"] > 0 for r in res["results"])
    assert "bench" in out.stderr and "run" in out.stderr  # the progress bar
    assert files["png"].stat().st_size > 10_000
    trace = json.loads(files["json"].read_text())["traceEvents"]
    assert len({e["pid"] for e in trace}) == 4  # 2 lengths x 2 runs
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == 2 * 2 * 6
    table = subprocess.run([sys.executable, "-m", "ovgen.cli", "bench", "--prompt-tokens", "8", "--new-tokens", "4",
                            "--runs", "1"], capture_output=True, text=True, timeout=600)
    assert table.returncode == 0 and "TTFT ms" in table.stdout and "p99" in table.stdout
    for bad, msg in ((["--prompt-tokens", "8,x"], "comma-separated integers"), (["--runs", "0"], "--runs must be"),
                     (["--prompt-tokens", "9000"], "exceed the model's context"),
                     (["--new-tokens", "1"], "--new-tokens must be >= 2 (TPOT is the time between tokens), got 1")):
        r = subprocess.run([sys.executable, "-m", "ovgen.cli", "bench", *bad], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
