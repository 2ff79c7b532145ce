"""Per-token timing: statistics, and exports as JSON, CSV and a Chrome trace.

Every TokenRecord carries raw perf_counter_ns() timestamps and its stage split:

    model        the infer() that produced the token's logits (the prefill, for token 0)
    read_logits  from the end of that infer to the start of processing (outputs, bookkeeping, and
                 with overlap the wait for the infer)
    process      the processor chain (each processor separately in `stage_ns`)
    choice       token choice + log-probabilities
    accept       the chain taking the chosen token (a grammar advances and computes its next mask)
    detok        detokenisation + stop strings
    callback     the consumer's time with the record (on_token, streaming, the caller's loop)

TTFT: from the start of generate (before prefill) to the first token's record being complete.
TPOT: mean time between consecutive token records after the first (inter-token latency, ITL).
With overlap (search.decode) the next token's infer runs during detok and callback, so stages of
consecutive tokens overlap in time; the Chrome trace shows the model on its own track.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STAGES = ("model", "read_logits", "process", "choice", "accept", "detok", "callback")


def stage_ns(rec, stage: str) -> int:
    """A record's time in one of STAGES (ns)."""
    return rec.read_ns if stage == "read_logits" else getattr(rec, f"{stage}_ns")


def summarize(records: Sequence, t_start_ns: int, *, prompt_tokens: int = 0) -> dict[str, float | None]:
    """ttft_ms, tpot_ms, itl p50/p90/p99, tokens_per_s and the stage split (ms, summed). What was not
    measured is None: with no token, everything timed; with one token (or tokens that all came at
    once), the TPOT, ITL percentiles and decode rate, since no time between tokens was measured."""
    ready = np.array([r.ready_ns for r in records], dtype=np.int64)
    itl = np.diff(ready) / 1e6
    if itl.size and not itl.any():  # every token stamped at one instant: a runtime's own beam search returns
        itl = itl[:0]  # them all at once (ort.beam_records)
    total_s = (ready[-1] - t_start_ns) / 1e9 if ready.size else 0.0
    gaps = itl.size > 0
    out = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": len(records),
        "ttft_ms": float((ready[0] - t_start_ns) / 1e6) if ready.size else None,
        "tpot_ms": float(itl.mean()) if gaps else None,
        "itl_p50_ms": float(np.percentile(itl, 50)) if gaps else None,
        "itl_p90_ms": float(np.percentile(itl, 90)) if gaps else None,
        "itl_p99_ms": float(np.percentile(itl, 99)) if gaps else None,
        "tokens_per_s": (float(len(records) / total_s) if total_s > 0 else 0.0) if ready.size else None,
        "decode_tokens_per_s": float(itl.size / (itl.sum() / 1e3)) if gaps else None,  # (gaps: some interval > 0)
    }
    for stage in STAGES:
        out[f"{stage}_ms"] = sum(stage_ns(r, stage) for r in records) / 1e6
    return out


_COLUMNS = ("sequence", "index", "token_id", "text", "logprob", "t_ms", "itl_ms", "overlapped")  # then stages


@dataclass
class Profile:
    """The timings of one generation (`GenerationResult.profile`): `stats()`, `rows()` and the
    exports `to_json`, `to_csv`, `to_chrome_trace` (each returns the text and writes `path` if given)."""

    records: list
    t_start_ns: int
    prompt_tokens: int = 0

    def stats(self) -> dict:
        """summarize() of the first sequence, plus each processor's total (ms) under "processors"."""
        first = [r for r in self.records if r.sequence == 0]
        out = summarize(first, self.t_start_ns, prompt_tokens=self.prompt_tokens)
        procs: dict[str, float] = {}
        for r in first:
            for name, ns in r.stage_ns.items():
                procs[name] = procs.get(name, 0.0) + ns / 1e6
        out["processors"] = procs
        return out

    def itl_ms(self) -> np.ndarray:
        """Inter-token latencies of the first sequence (ms): the gaps between consecutive records."""
        return np.diff([r.ready_ns for r in self.records if r.sequence == 0]) / 1e6

    def processor_names(self) -> list[str]:
        names: dict[str, None] = {}
        for r in self.records:
            names.update(dict.fromkeys(r.stage_ns))
        return list(names)

    def rows(self) -> list[dict]:
        """One dict per token: ids, times from the start (ms), inter-token latency and every stage (ms)."""
        out, prev = [], {}
        procs = self.processor_names()
        for r in self.records:
            last = prev.get(r.sequence, self.t_start_ns)
            row = dict(zip(_COLUMNS, (r.sequence, r.index, r.token_id, r.text, r.logprob,
                                      (r.ready_ns - self.t_start_ns) / 1e6, (r.ready_ns - last) / 1e6, r.overlapped)))
            row.update({f"{s}_ms": stage_ns(r, s) / 1e6 for s in STAGES})
            row.update({f"proc:{p}_ms": r.stage_ns.get(p, 0) / 1e6 for p in procs})
            out.append(row)
            prev[r.sequence] = r.ready_ns
        return out

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps({"stats": self.stats(), "tokens": self.rows()}, ensure_ascii=False)
        return _write(path, text)

    def to_csv(self, path: str | None = None) -> str:
        rows = self.rows()
        buf = io.StringIO()  # no tokens: the header alone (a CSV reader still finds the columns)
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [*_COLUMNS, *(f"{s}_ms" for s in STAGES)],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return _write(path, buf.getvalue())

    def trace_events(self, pid: int = 1, name: str = "ovgen") -> list[dict]:
        """Chrome trace events: one complete ("X") slice per stage per token, times in µs from the
        start; the model on thread 1, the host loop on thread 2, processors nested in "process"."""
        us = lambda ns: (ns - self.t_start_ns) / 1e3  # noqa: E731
        ev = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}},
              {"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "model (infer)"}},
              {"ph": "M", "name": "thread_name", "pid": pid, "tid": 2, "args": {"name": "host loop"}}]

        def slice_(stage, tid, start_ns, dur_ns, r):
            ev.append({"ph": "X", "name": stage, "cat": stage, "pid": pid, "tid": tid, "ts": us(start_ns),
                       "dur": dur_ns / 1e3, "args": {"token": r.index, "token_id": r.token_id,
                                                     "sequence": r.sequence}})

        for r in self.records:
            if r.infer_start_ns:
                slice_("prefill" if r.index == 0 else "model", 1, r.infer_start_ns, r.model_ns, r)
                slice_("read_logits", 2, r.infer_start_ns + r.model_ns, r.read_ns, r)
            t = r.start_ns or r.ready_ns - r.process_ns - r.choice_ns - r.accept_ns - r.detok_ns
            slice_("process", 2, t, r.process_ns, r)
            sub = t
            for proc, ns in r.stage_ns.items():
                slice_(proc, 2, sub, ns, r)
                sub += ns
            slice_("choice", 2, t + r.process_ns, r.choice_ns, r)
            slice_("accept", 2, t + r.process_ns + r.choice_ns, r.accept_ns, r)
            slice_("detok", 2, r.ready_ns - r.detok_ns, r.detok_ns, r)  # it ends the record (speculation: later)
            slice_("callback", 2, r.ready_ns, r.callback_ns, r)
        return ev

    def to_chrome_trace(self, path: str | None = None) -> str:
        """JSON that Perfetto (ui.perfetto.dev) and chrome://tracing open."""
        return chrome_trace(self.trace_events(), path)


def chrome_trace(events: list[dict], path: str | None = None) -> str:
    """Trace events as the JSON document Perfetto and chrome://tracing open (written to `path` if given)."""
    return _write(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


def _write(path: str | None, text: str) -> str:
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text
