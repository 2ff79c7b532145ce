"""Per-token timing statistics from TokenRecords.

TTFT: from the start of generate (before prefill) to the first token's record being complete.
TPOT: mean time between consecutive token records after the first (inter-token latency).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize(records: Sequence, t_start_ns: int, *, prompt_tokens: int = 0) -> dict[str, float]:
    """ttft_ms, tpot_ms, itl p50/p90/p99, tokens_per_s and the stage split (ms, summed)."""
    if not records:
        return {"prompt_tokens": prompt_tokens, "generated_tokens": 0}
    ready = np.array([r.ready_ns for r in records], dtype=np.int64)
    ttft = (ready[0] - t_start_ns) / 1e6
    itl = np.diff(ready) / 1e6
    total_s = (ready[-1] - t_start_ns) / 1e9
    out = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": len(records),
        "ttft_ms": float(ttft),
        "tpot_ms": float(itl.mean()) if itl.size else 0.0,
        "itl_p50_ms": float(np.percentile(itl, 50)) if itl.size else 0.0,
        "itl_p90_ms": float(np.percentile(itl, 90)) if itl.size else 0.0,
        "itl_p99_ms": float(np.percentile(itl, 99)) if itl.size else 0.0,
        "tokens_per_s": float(len(records) / total_s) if total_s > 0 else 0.0,
        "decode_tokens_per_s": float(itl.size / (itl.sum() / 1e3)) if itl.size and itl.sum() > 0 else 0.0,
    }
    for stage in ("model", "process", "choice", "detok"):
        out[f"{stage}_ms"] = sum(getattr(r, f"{stage}_ns") for r in records) / 1e6
    return out
