"""GenerationConfig validation (before any inference) and the CLI's contract."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import ovgen
from conftest import PROMPTS
from ovgen.config import GenerationConfig


@pytest.mark.parametrize("field,value,message", [
    ("top_p", 1.5, r"top_p must be in \(0, 1\], got 1.5"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("temperature", -1.0, r"temperature must be in \[0, inf\)"),
    ("top_k", -3, r"top_k must be an integer >= 0, got -3"),
    ("min_p", 2.0, r"min_p must be in \[0, 1\]"),
    ("typical_p", 0.0, r"typical_p must be in \(0, 1\]"),
    ("repetition_penalty", 0.0, r"repetition_penalty must be in \[1e-30, 1e\+30\] \(a factor on float32 logits\)"),
    # past 1e30 the penalties overflowed the float32 logits (RuntimeWarnings; 0 * inf = NaN logits)
    ("repetition_penalty", 1e300, r"repetition_penalty must be in \[1e-30, 1e\+30\].*got 1e\+300"),
    ("repetition_penalty", 1e-300, r"repetition_penalty must be in \[1e-30, 1e\+30\]"),
    ("frequency_penalty", 1e31, r"frequency_penalty must be in \[-1e\+30, 1e\+30\] \(a term on float32 logits\)"),
    ("presence_penalty", float("nan"), r"presence_penalty must be in \[-1e\+30, 1e\+30\].*got nan"),
    ("diversity_penalty", -1e300, r"diversity_penalty must be in \[-1e\+30, 1e\+30\]"),
    ("length_penalty", float("inf"), r"length_penalty must be a finite number, got inf"),
    ("guidance_scale", float("nan"), r"guidance_scale must be a finite number, got nan"),
    ("max_new_tokens", -1, r"max_new_tokens must be an integer >= 0"),
    ("seed", 1.5, r"seed must be a non-negative integer"),
    ("early_stopping", "sometimes", r"early_stopping must be one of"),
    ("truncate_prompt", "yes", r"truncate_prompt must be True or False, got 'yes'"),
    # a JSONL row's "false" is truthy: it turned sampling on
    ("do_sample", "false", r"do_sample must be True or False, got 'false'"),
    ("ignore_eos", "no", r"ignore_eos must be True or False"),
    ("prompt_lookup", 1, r"prompt_lookup must be True or False, got 1"),
    ("include_stop_str_in_output", "yes", r"include_stop_str_in_output must be True or False"),

    ("allowed_token_ids", [], r"allowed_token_ids must name at least one token id, got \[\]"),
])
def test_out_of_range_fields_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**{field: value}).validate()


def test_pad_token_id_is_checked_where_it_is_used():
    # diverse beam search pads a finished group's rows with it; a model's generation_config.json may carry -1
    with pytest.raises(ValueError, match=r"pad_token_id must be a token id \(an integer >= 0\) or None, got -3"):
        GenerationConfig(pad_token_id=-3, num_beams=4, num_beam_groups=2, diversity_penalty=1.0).validate()
    GenerationConfig(pad_token_id=-1).validate()


def test_numpy_scalars_and_one_text_are_taken_as_meant():
    cfg = GenerationConfig(max_new_tokens=np.int64(8), temperature=np.float32(0.5), do_sample=np.True_,
                           top_k=np.int32(4), stop_strings="###", dry_sequence_breakers="\n\n").validate()
    assert (cfg.max_new_tokens, cfg.top_k, cfg.do_sample) == (8, 4, True)
    assert type(cfg.max_new_tokens) is int and type(cfg.temperature) is float and cfg.do_sample is True
    assert cfg.stop_strings == ["###"] and cfg.dry_sequence_breakers == ["\n\n"]  # not one per character
    later = GenerationConfig()
    later.top_k, later.stop_strings = np.int64(3), "END"  # set after construction: validate normalizes them
    assert later.validate().top_k == 3 and later.stop_strings == ["END"]
    assert json.dumps(dataclasses.asdict(cfg))  # plain Python values


def test_json_counts_written_as_floats_are_taken():
    """JSON from pandas or JavaScript writes 64 as 64.0: a dict's (a request's, a batch row's) count
    fields take a whole float; a fraction, and a token id given as a float, are still refused by name."""
    cfg = GenerationConfig.from_dict(json.loads('{"max_new_tokens": 64.0, "top_k": 4e1, "seed": 7.0, '
                                                '"num_return_sequences": 2.0, "do_sample": true}')).validate()
    assert (cfg.max_new_tokens, cfg.top_k, cfg.seed, cfg.num_return_sequences) == (64, 40, 7, 2)
    assert all(type(v) is int for v in (cfg.max_new_tokens, cfg.top_k, cfg.seed, cfg.num_return_sequences))
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 0, got 64\.5"):
        GenerationConfig.from_dict({"max_new_tokens": 64.5}).validate()
    with pytest.raises(ValueError, match=r"eos_token_id must be a token id or a list of token ids, got 2\.0"):
        GenerationConfig.from_dict({"eos_token_id": 2.0})
    with pytest.raises(ValueError, match="temperature must be in"):
        GenerationConfig.from_dict({"temperature": float("nan")}).validate()


def test_unknown_field_names_closest():
    with pytest.raises(ValueError, match="unknown generation setting 'temprature'; did you mean temperature"):
        GenerationConfig.from_dict({"temprature": 0.7})


def test_greedy_with_sampling_settings_warns():
    with pytest.warns(UserWarning, match="top_p have no effect with do_sample=False"):
        GenerationConfig(top_p=0.5).validate()


def test_settings_that_do_nothing_warn():
    with pytest.warns(UserWarning, match=r"negative_prompt has no effect with guidance_scale=1\.0"):
        GenerationConfig(negative_prompt="bad").validate()
    with pytest.warns(UserWarning, match=r"min_new_tokens \(20\) > max_new_tokens \(8\)"):
        GenerationConfig(min_new_tokens=20, max_new_tokens=8).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerationConfig(negative_prompt="bad", guidance_scale=1.5, min_new_tokens=8, max_new_tokens=8).validate()


def test_beam_constraints():
    with pytest.raises(ValueError, match="num_return_sequences must be <= num_beams"):
        GenerationConfig(num_beams=2, num_return_sequences=3).validate()
    with pytest.raises(ValueError, match="must be divisible by num_beam_groups"):
        GenerationConfig(num_beams=4, num_beam_groups=3).validate()


def test_bad_input_is_refused_before_inference(model, monkeypatch):
    calls = []
    monkeypatch.setattr(ovgen.Session, "_infer", lambda self, ids: calls.append(ids))
    with pytest.raises(ValueError, match="prompt is empty"):
        ovgen.generate(model, "")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 49152\)"):
        ovgen.generate(model, [5, 49152])
    with pytest.raises(ValueError, match="context"):
        ovgen.generate(model, [5] * 8192)
    with pytest.raises(ValueError, match="eos_token_id: token ids"):
        ovgen.generate(model, "hi", {"eos_token_id": [10**6]})
    # diverse beam search pads a finished group with it: an IndexError mid-search before
    with pytest.raises(ValueError, match="pad_token_id: token ids"):
        ovgen.generate(model, "hi", {"pad_token_id": 10**6, "num_beams": 4, "num_beam_groups": 2,
                                     "diversity_penalty": 1.0})
    assert calls == []


def test_model_folder_errors(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ovgen.load(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"notes.txt is a file, not a model folder \(an IR's folder"):
        ovgen.load(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="openvino_model.xml is missing"):
        ovgen.load(tmp_path)
    (tmp_path / "openvino_model.xml").write_text("<net><broken")
    (tmp_path / "openvino_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot be read as an OpenVINO IR"):
        ovgen.load(tmp_path)
    with pytest.raises(ValueError, match=r"device 'NPU.7' is not available; available devices: \['CPU'"):
        ovgen.load(model_dir, device="NPU.7")
    with pytest.raises(ValueError, match="ov_config: Wrong value u9 for property key KEY_CACHE_PRECISION"):
        ovgen.load(model_dir, ov_config={"KEY_CACHE_PRECISION": "u9"})
    # OpenVINO's "Could not read number of streams from str: lots; stoi" came as a raw multi-line RuntimeError
    with pytest.raises(ValueError, match="ov_config: Could not read number of streams from str: lots"):
        ovgen.load(model_dir, ov_config={"NUM_STREAMS": "lots"})
    for kwargs, error, message in (({"last_logits_only": "no"}, ValueError, "last_logits_only must be True or False"),
                                   ({"device": 5}, TypeError, "device must be a device name such as 'CPU', got int")):
        with pytest.raises(error, match=message):  # "no" is truthy; 5 failed on 'int' object has no attribute 'split'
            ovgen.load(model_dir, **kwargs)
    with pytest.raises(TypeError, match="path must be a model folder .str or Path., got int"):
        ovgen.load(5)


def test_cli_ov_config_reaches_the_compiled_model(model_dir):
    """--ov-config KV_CACHE_PRECISION=u8 gives the tokens of a model loaded with that property, which
    (on this prompt) are not those of ovgen's f16 default: the option is not silently dropped."""
    ids = ovgen.load(model_dir).tokenizer.encode(PROMPTS[5])  # f16 and u8 part at token 16 here
    greedy = {"max_new_tokens": 48, "ignore_eos": True, "do_sample": False}
    want = {kv: ovgen.generate(ovgen.load(model_dir, ov_config={"KV_CACHE_PRECISION": kv}), ids, greedy)
            .sequences[0].token_ids for kv in ("u8", "f16")}
    assert want["u8"] != want["f16"]
    for kv in ("u8", "f16"):
        out = run_cli("generate", "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", "48",
                      "--ignore-eos", "--json", "--ov-config", f"KV_CACHE_PRECISION={kv}", "PERFORMANCE_HINT=LATENCY")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sequences"][0]["token_ids"] == want[kv]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ovgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_generate_json_schema(model_dir):
    out = run_cli("generate", "--prompt-ids", "1,9690,198", "--max-new-tokens", "6", "--ignore-eos", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["prompt_token_ids"] == [1, 9690, 198]
    (seq,) = obj["sequences"]
    assert len(seq["token_ids"]) == 6 and seq["finish_reason"] == "length" and seq["score"] is None
    assert isinstance(seq["text"], str)
    assert {"ttft_ms", "tpot_ms", "tokens_per_s"} <= set(obj["metrics"])


def test_cli_generate_json_has_logprobs_and_top_logprobs_when_asked(model_dir):
    out = run_cli("generate", "--prompt-ids", "1,9690,198", "--max-new-tokens", "5", "--ignore-eos", "--json",
                  "--top-logprobs", "3", "--no-warmup")
    assert out.returncode == 0, out.stderr
    (seq,) = json.loads(out.stdout)["sequences"]
    assert len(seq["logprobs"]) == len(seq["top_logprobs"]) == 5
    assert [top[0][0] for top in seq["top_logprobs"]] == seq["token_ids"]  # greedy: the most likely first
    assert [top[0][1] for top in seq["top_logprobs"]] == seq["logprobs"]
    assert all(len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] for top in seq["top_logprobs"])
    for cmd in (["generate", "--prompt-ids", "1,9690,198"], ["chat"]):  # text output: nowhere to show them
        out = run_cli(*cmd, "--top-logprobs", "3", "--no-warmup")
        assert out.returncode == 2 and "--top-logprobs" in out.stderr and "Traceback" not in out.stderr
    # a chat keeps one reply per turn: several return sequences were printed run together as one reply
    out = run_cli("chat", "--do-sample", "--num-return-sequences", "2", "--no-warmup")
    assert out.returncode == 2 and "--num-return-sequences: ovgen chat keeps one reply per turn" in out.stderr


def test_cli_prints_each_returned_sequence_whole_in_order(model_dir):
    """Sequences made side by side still print one after another, each whole, as the API returns them."""
    cfg = {"do_sample": True, "seed": 4, "num_return_sequences": 3, "max_new_tokens": 10, "ignore_eos": True}
    res = ovgen.generate(ovgen.load(model_dir), [1, 9690, 198], cfg)
    out = run_cli("generate", "--prompt-ids", "1,9690,198", "--do-sample", "--seed", "4", "--num-return-sequences",
                  "3", "--max-new-tokens", "10", "--ignore-eos", "--no-warmup")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("\n" + "-" * 20 + "\n").join(s.text for s in res.sequences) + "\n"
    assert "(sequence 1 of 3)" in out.stderr


def test_cli_warms_up_unless_told_not_to(model_dir):
    runs = {}
    for flag in ((), ("--no-warmup",)):
        out = run_cli("generate", "--prompt-ids", "1,9690,198", "--max-new-tokens", "4", "--ignore-eos", "--json", *flag)
        assert out.returncode == 0, out.stderr
        runs[flag] = json.loads(out.stdout)
    assert runs[()]["warmup_ms"] > 0 and runs[("--no-warmup",)]["warmup_ms"] == 0
    tokens = {flag: [s["token_ids"] for s in run["sequences"]] for flag, run in runs.items()}
    assert tokens[()] == tokens[("--no-warmup",)]  # the same answer either way
    out = run_cli("generate", "--prompt-ids", "1,9690,198", "--max-new-tokens", "4")
    assert out.returncode == 0 and " s warm-up" in out.stderr


def test_cli_plain_output_streams_text_only(model_dir):
    out = run_cli("generate", "--chat", "What is the capital of France?", "--max-new-tokens", "32")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "TTFT" not in out.stdout
    assert "TTFT" in out.stderr and "TPOT" in out.stderr and "tokens/s" in out.stderr


@pytest.mark.parametrize("args,needle", [
    (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--temperature", "-2"], "temperature must be in [0, inf), got -2.0"),
    (["--num-return-sequences", "2"], "num_return_sequences > 1 needs do_sample=True"),
    (["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--prompt-ids", " , "], "--prompt-ids holds no token id, got ' , '"),
    (["--prompt-ids", "1,2"], "give a PROMPT or --prompt-ids, not both"),
    (["--chat-template", "/no/such.jinja"], "--chat-template: cannot read /no/such.jinja (No such file"),
    (["--ov-config", "KV_CACHE_PRECISION"], "--ov-config takes KEY=VALUE items, got 'KV_CACHE_PRECISION'"),
    (["--ov-config", "KV_CACHE_PRECISION=q7"], "ov_config: Wrong value q7 for property key KV_CACHE_PRECISION"),
    (["--ov-config", "NOT_A_PROPERTY=1"], "ov_config: NotFound: Unsupported property NOT_A_PROPERTY"),
])
def test_cli_bad_arguments_one_line(model_dir, args, needle):
    out = run_cli("generate", "hello", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_prompt_swallowed_by_a_many_valued_option_is_explained(tmp_path, capsys):
    from ovgen.cli import main

    for flag in ("--stop", "--choices"):
        assert main(["generate", "-m", str(tmp_path / "no-model"), flag, "a", "b", "hello"]) == 2
        err = capsys.readouterr().err
        assert f"give a PROMPT or --prompt-ids ({flag} took every word after it; put PROMPT first, or end the " \
               "list with --)" in err
    assert main(["generate", "-m", str(tmp_path / "no-model")]) == 2
    assert capsys.readouterr().err.strip().endswith("give a PROMPT or --prompt-ids")


def test_prompt_ids_with_chat_rendering_are_refused_before_the_model_loads(tmp_path, capsys):
    from ovgen.cli import main

    for flag in (["--chat"], ["--system", "Be brief."]):
        assert main(["generate", "--prompt-ids", "1,2", *flag, "-m", str(tmp_path / "no-model")]) == 2
        err = capsys.readouterr().err
        assert "--prompt-ids are used as they are" in err and "model folder" not in err


@pytest.mark.parametrize("args,needle", [
    (["bench", "--plot", "{tmp}/no/such/dir/lat.png"], "--plot: cannot write {tmp}/no/such/dir/lat.png (no directory"),
    (["bench", "--csv", "{tmp}"], "--csv: {tmp} is a directory, not a file"),
    (["bench", "--trace", "{tmp}/missing/t.json"], "--trace: cannot write {tmp}/missing/t.json"),
    (["compare", "--plot", "{tmp}/missing/c.png"], "--plot: cannot write {tmp}/missing/c.png"),
    (["batch", "{tmp}/in.jsonl", "--output", "{tmp}/missing/o.jsonl"], "--output: cannot write {tmp}/missing/o.jsonl"),
])
def test_unwritable_outputs_are_refused_before_the_model_loads(tmp_path, capsys, args, needle):
    from ovgen.cli import main

    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    # a model folder that does not exist: the output path must be refused first, before any loading
    argv = [a.format(tmp=tmp_path) for a in args] + ["-m", str(tmp_path / "no-model")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and "model folder" not in err
    assert not (tmp_path / "missing").exists()


def test_cli_chat_session(model_dir):
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "chat", "--max-new-tokens", "12"],
                         input="Hello!\n/reset\nWho are you?\n/exit\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("TTFT") == 2 and "(history cleared)" in out.stderr


def test_cli_chat_saves_and_loads_the_conversation(model_dir, tmp_path):
    path = tmp_path / "chat.npz"
    chat = [sys.executable, "-m", "ovgen.cli", "chat", "--max-new-tokens", "8", "--no-warmup"]
    first = subprocess.run(chat, input=f"Hello, I am Ada.\n/save {path}\n/save\n", capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0 and f"saved to {path})" in first.stderr and "(usage: /save PATH)" in first.stderr
    second = subprocess.run(chat, input=f"/load {tmp_path / 'nothing.npz'}\n/load {path}\nWho am I?\n",
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "no saved session there; the chat is unchanged)" in second.stderr
    assert "(2 messages and" in second.stderr and f"loaded from {path})" in second.stderr
    reused = int(second.stderr.split("; ")[-1].split()[0])  # "...; N prompt tokens reused from the KV cache]"
    assert reused > 20


def test_cli_chat_commands_and_a_refused_message_keep_the_chat_going(model_dir):
    too_long = "word " * 9000  # more tokens than the context holds: refused, the chat goes on
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "chat", "--max-new-tokens", "6"],
                         input=f"Hello!\n\n   \n/bogus\n/help\n/reset all\n{too_long}\n//reset is a command?\n/exit\n",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(unknown command /bogus: /reset clears the history" in out.stderr
    assert "(/reset takes no argument: /reset clears the history" in out.stderr  # (and does not clear it)
    assert "(error: " in out.stderr and "context" in out.stderr and "the history is unchanged" in out.stderr
    # two replies: "Hello!" and the //-escaped message (the second reused the first turn's KV cache)
    assert out.stderr.count("TTFT") == 2 and "(history cleared)" not in out.stderr
    assert not out.stderr.splitlines()[-2].endswith("; 0 prompt tokens reused from the KV cache]")
