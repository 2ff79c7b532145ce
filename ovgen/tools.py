"""The external tools `ovgen prepare` runs (pip, optimum-cli, the ONNX builder): always as argument
lists, never shell strings, each with its own log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_tool(cmd: list[str], log: Path, what: str) -> None:
    """Run a tool (argument list, never a shell string); on failure raise with its log's tail."""
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{what} failed (exit {code}); last lines of {log}:\n{tail}")


def optimum_cli() -> str:
    """optimum-cli beside this interpreter (the venv's), else whichever is on PATH."""
    cli = Path(sys.executable).with_name("optimum-cli")
    return str(cli) if cli.exists() else "optimum-cli"
