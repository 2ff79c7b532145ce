"""Where every benchmark writes its figures: one JSON per benchmark in benchmarks/results/, with the
date and the machine it ran on (times drift between machines; the ratios are what compare)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def default_path(benchmark: str) -> str:
    return str(RESULTS / f"{benchmark}.json")


def save_result(path: str | Path, benchmark: str, **fields) -> None:
    """Write {"benchmark", "date", **fields, "machine"} to `path` and say so."""
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
               "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}
    out = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M"), **fields, "machine": machine}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
