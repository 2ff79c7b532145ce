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
    """Write {"benchmark", "date", **fields, "machine"} to `path` and say so (the machine names its CPU)."""
    from ovgen.runtime import cpu_flags, cpu_model

    # which CPU: the same model of one IR infers in bf16 on some, f32 on others, at other speeds
    machine = {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
               "platform": platform.platform(), "processor": platform.processor(),
               "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}
    out = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M"), **fields, "machine": machine}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


def line_plot(path: str | Path, x: list, series: dict[str, list], **axes) -> None:
    """One PNG of y-series over `x` (label -> values, points joined), `axes` passed to `Axes.set`
    (xlabel, ylabel, title, xscale, yscale); x ticks at the measured points."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in series.items():
        ax.plot(x, y, "o-", label=label)
    ax.set(**axes)
    ax.set_xticks(x, [str(v) for v in x])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the measured points labelled
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
