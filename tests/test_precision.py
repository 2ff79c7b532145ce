"""The precision policy: named, read back from the compiled model, reported with every result."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest

import ovgen
from conftest import PROMPTS
from ovgen.cli import main
from ovgen.precision import CPU_DEFAULTS, F32_DEFAULTS, compile_properties, inference_hint
from ovgen.runtime import core, cpu_flags, cpu_model, describe_cpu, device_info, has_bf16


def _compiled(model, key):
    value = model.compiled.get_property(key)
    return value.to_string() if isinstance(value, ov.Type) else str(value)


def test_exact_is_f32_inference_and_f16_kv_cache_on_every_cpu(model):
    assert model.precision == "exact"
    # ... activations included: no dynamic int8 quantization of the int4 matmuls' inputs on VNNI/AMX CPUs
    assert model.ov_config == {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f16",
                               "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    for key, value in model.ov_config.items():  # read back, not what was asked
        assert _compiled(model, key) == value
    assert model.report["properties"]["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.parametrize("device", ["AUTO", "HETERO:CPU", "MULTI:CPU"])
def test_the_policy_reaches_the_cpu_under_a_virtual_device(model, model_dir, device):
    """AUTO under precision "exact" ran the plugin's bf16 where the CPU has it (the hint was not passed
    on), and reported "exact" with no properties; HETERO:CPU failed in get_property. The policy now goes
    through DEVICE_PROPERTIES and is read back from the CPU under the device."""
    ids = model.tokenizer.encode("The capital of France is a city")
    exact = model.session().prefill(ids).copy()
    virtual = ovgen.load(model_dir, device=device)
    assert virtual.ov_config == model.ov_config and virtual.report["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    np.testing.assert_array_equal(virtual.session().prefill(ids), exact)  # the same computation, bit for bit
    assert virtual.report["cpu_model"] == cpu_model() and virtual.report["capabilities"] == device_info("CPU")["capabilities"]
    assert virtual.report["name"].startswith(device.split(":")[0])  # HETERO's own name cannot be asked: "HETERO on <CPU>"
    native = ovgen.load(model_dir, device=device, precision="native",
                        ov_config={"DEVICE_PROPERTIES": {"CPU": {"KV_CACHE_PRECISION": "u8"}}})
    assert native.ov_config["INFERENCE_PRECISION_HINT"] == ("bf16" if has_bf16() else "f32")
    assert native.ov_config["KV_CACHE_PRECISION"] == "u8"  # the caller's own CPU properties win


def test_native_is_the_plugins_own_precision(model_dir):
    native = ovgen.load(model_dir, precision="native")
    plugin_default = core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert native.ov_config["INFERENCE_PRECISION_HINT"] == plugin_default
    assert plugin_default == ("bf16" if has_bf16() else "f32")
    assert native.ov_config["KV_CACHE_PRECISION"] == "f16"
    dq = core().get_property("CPU", "DYNAMIC_QUANTIZATION_GROUP_SIZE")
    assert native.ov_config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == str(dq)  # the plugin's own, as genai runs
    assert native.report["precision"] == "native"


def test_ov_config_overrides_the_policy_and_the_model_says_what_it_got(model_dir):
    m = ovgen.load(model_dir, ov_config={"INFERENCE_PRECISION_HINT": "bf16", "KV_CACHE_PRECISION": "u8"})
    assert m.ov_config["KV_CACHE_PRECISION"] == "u8"
    # a CPU without bf16 silently infers in f32: the read-back value says so
    assert m.ov_config["INFERENCE_PRECISION_HINT"] == ("bf16" if has_bf16() else "f32")
    assert m.ov_config["INFERENCE_PRECISION_HINT"] == _compiled(m, "INFERENCE_PRECISION_HINT")


def test_policy_properties():
    assert inference_hint("exact", "CPU") == "f32" and inference_hint("native", "CPU") is None
    assert compile_properties("f32", "CPU", {"NUM_STREAMS": "1"}) == {
        **CPU_DEFAULTS, **F32_DEFAULTS, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1"}
    for hint in ("bf16", None):  # only f32 phases turn dynamic quantization off
        assert "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in compile_properties(hint, "CPU", None)
    assert compile_properties("f32", "CPU", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32})[
        "DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 32
    assert compile_properties("f32", "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_properties(inference_hint("exact", "GPU"), "GPU", None) == {}


def test_bad_precision_is_refused_before_compiling(model_dir):
    with pytest.raises(ValueError, match=r"precision must be one of exact, native, fast \(or a per-phase plan dict\), got 'quick'"):
        ovgen.load(model_dir, precision="quick")


def test_report_names_the_cpu(model):
    info = device_info("CPU")
    assert model.report["name"] == info["name"] == core().get_property("CPU", "FULL_DEVICE_NAME")
    assert model.report["cpu_flags"] == cpu_flags()
    assert model.report["cpu_model"] == cpu_model()
    assert set(model.report["cpu_flags"]) <= {"avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16",
                                              "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8"}


def test_dynamic_quantization_counts_only_where_it_acts(model, model_dir):
    """The plugin quantizes matmul activations to int8 only on CPUs with VNNI (x86): where it does not,
    DYNAMIC_QUANTIZATION_GROUP_SIZE 32 computes exact's logits bit for bit, and states saved at 32 (native,
    a bf16 hint's prefill on an AVX2 CPU) are exact's - they are not refused as another precision (they
    were, on an AVX2 EPYC). Where it acts, the logits differ and the precision names it."""
    from ovgen.kvstate import precision_of
    from ovgen.runtime import quantizes_activations

    dq = ovgen.load(model_dir, ov_config={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32})
    assert dq.ov_config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    ids = model.tokenizer.encode(PROMPTS[4])
    same = np.array_equal(dq.session().prefill(ids), model.session().prefill(ids))
    acts = quantizes_activations(model.report)
    assert same is not acts
    assert ("DYNAMIC_QUANTIZATION_GROUP_SIZE" in precision_of(dq)) is acts
    s = dq.session()
    s.prefill(ids)
    if acts:
        with pytest.raises(ValueError, match="DYNAMIC_QUANTIZATION_GROUP_SIZE=32"):
            model.session().restore(s.snapshot())
    else:
        exact = model.session()
        exact.restore(s.snapshot())
        assert exact.tokens[0].tolist() == ids
    x86 = {"machine": "x86_64"}
    assert not quantizes_activations({**x86, "cpu_flags": ["avx2"]})
    assert quantizes_activations({**x86, "cpu_flags": ["avx2", "avx512f", "avx512_vnni"]})
    assert quantizes_activations({**x86, "cpu_flags": ["avx2", "avx_vnni"]})
    assert quantizes_activations({"machine": "aarch64", "cpu_flags": []})  # unknown: assumed so
    assert quantizes_activations({**x86, "cpu_flags": []})


def test_cpu_model_and_flags_come_from_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
                    "flags\t\t: amx_bf16\n")
    assert cpu_model(info) == "AuthenticAMD family 25 model 17"
    assert cpu_flags(info) == ["avx2", "avx512f", "avx512_bf16"]
    report = {"name": "AMD EPYC", "cpu_model": cpu_model(info), "cpu_flags": cpu_flags(info)}
    assert describe_cpu(report) == "AMD EPYC [AuthenticAMD family 25 model 17] (avx2, avx512f, avx512_bf16)"
    missing = tmp_path / "absent"
    assert cpu_model(missing) == "" and cpu_flags(missing) == []
    assert describe_cpu({"name": "ARM", "cpu_model": "", "cpu_flags": []}) == "ARM (no precision flags)"


def test_cli_precision_reaches_the_model_and_every_json_result(model_dir, capsys):
    assert main(["generate", "-m", str(model_dir), "--precision", "native", "--max-new-tokens", "3", "--json",
                 "Hello"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["precision"] == "native"
    assert out["model"]["properties"]["INFERENCE_PRECISION_HINT"] == ("bf16" if has_bf16() else "f32")
    assert main(["inspect", "-m", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["compiled"]["precision"] == "exact"
    assert info["inputs"]["input_ids"] == ["[?,?]", "i64"] and info["outputs"]["logits"][1] == "f32"
    assert info["compiled"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert main(["bench", "-m", str(model_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1",
                 "--json", "--precision", "native"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["precision"] == "native" and bench["report"]["name"] == device_info("CPU")["name"]
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "-m", str(model_dir), "--precision", "fastest", "Hi"])
    assert exit_.value.code == 2 and "--precision: invalid choice: 'fastest'" in capsys.readouterr().err


def test_same_tokens_at_exact_across_compiles(model, model_dir):
    """exact pins f32 whatever the plugin's default: a second compile gives the same tokens."""
    again = ovgen.load(model_dir, precision="exact")
    ids = model.tokenizer.encode("The quick brown fox")
    cfg = {"max_new_tokens": 24, "ignore_eos": True}
    assert ovgen.generate(model, ids, cfg).sequences[0].token_ids == ovgen.generate(again, ids, cfg).sequences[0].token_ids


def test_exact_decode_step_computes_what_a_prefill_does(model):
    """A one-token decode step after a prompt gives the logits a prefill of prompt + token gives at its
    last position (f32 throughout: no activation quantization whose groups depend on the row count)."""
    ids = model.tokenizer.encode("The capital of France is Paris. The capital of Italy is")
    s = model.session()
    s.prefill(ids[:-1])
    step = np.array(s.step(ids[-1]), dtype=np.float32)
    whole = np.array(model.session().prefill(ids), dtype=np.float32)
    assert step.shape == whole.shape
    assert float(np.abs(step - whole).max()) < 0.05
