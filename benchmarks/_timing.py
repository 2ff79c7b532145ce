"""Per-token time stamps from the peers' streaming hooks, the interleaving order and lock-step timing
(shared by the benchmark scripts)."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, perf_counter_ns

import numpy as np


def hf_stamp_streamer(clock: Callable[[], float]):
    """A transformers streamer whose `.stamps` get clock() once per generated token (generate()
    first puts the prompt: that call is not a token)."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.first = [], True

        def put(self, value):
            if self.first:
                self.first = False
                return
            self.stamps.append(clock())

        def end(self):
            pass

    return Stamps()


def throughput(runs: dict[str, Callable[[], list]], rounds: int, tokens: int) -> tuple[dict, dict]:
    """One warm-up call of each runner, then `rounds` timed calls of each in a balanced order: (each
    runner's last output, its tokens/s per round, `tokens` being what one call generates)."""
    out = {name: run() for name, run in runs.items()}
    tps: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(rounds):
        for name in balanced(list(runs), i):
            t0 = perf_counter()
            out[name] = runs[name]()
            tps[name].append(tokens / (perf_counter() - t0))
    return out, tps


def balanced(items: list, i: int) -> list:
    """The order of round i of an interleaved run: a Williams design, so that across len(items)
    rounds (2 x len(items) when odd) every item runs right after every other one equally often.
    Measured why: whoever ran right after onnxruntime-genai decoded ~10 % slower (peers.py at 32
    tokens, 9 rounds: ovgen/genai TPOT 1.16 when ovgen followed it, 1.02 when genai did), so a
    plain rotation, which keeps every item's predecessor, charges that to one peer."""
    n = len(items)
    first = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]  # 0, 1, n-1, 2, n-2, ...
    order = [items[(f + i) % n] for f in first]
    return order[::-1] if n % 2 and (i // n) % 2 else order


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the paired ratios a[i] / b[i]."""
    return float(np.median(np.array(a) / np.array(b)))


def lockstep(names: list, prefill: Callable, step: Callable, steps: int, reps: int) -> dict:
    """Time `prefill(name)` then `steps` x `step(name, token)` (each returns the last logits, the
    next token is their argmax) for every name in lock-step: all take step i before any takes i + 1,
    in a balanced order (`balanced`), so a slow second of a shared machine hits all of them.
    Repetition 0 warms up. Returns per name: median prefill / step ms, medians of the paired
    per-call ratios to names[0], and whether its greedy tokens (repetition 1) equal names[0]'s."""
    times = {n: ([], []) for n in names}  # (prefill ms, step ms)
    tokens = {n: [] for n in names}
    for rep in range(reps + 1):
        last = {}
        for k in range(steps + 1):
            for n in balanced(names, rep * (steps + 1) + k):
                t = perf_counter_ns()
                logits = prefill(n) if k == 0 else step(n, last[n])
                dt = (perf_counter_ns() - t) / 1e6
                last[n] = int(np.argmax(logits.reshape(-1, logits.shape[-1])[0]))
                if rep:
                    times[n][k > 0].append(dt)
                if rep == 1:
                    tokens[n].append(last[n])
    base = names[0]
    return {n: {"prefill_ms": float(np.median(times[n][0])), "step_ms": float(np.median(times[n][1])),
                "prefill_ratio": median_ratio(times[n][0], times[base][0]),
                "step_ratio": median_ratio(times[n][1], times[base][1]), "same_tokens": tokens[n] == tokens[base]}
            for n in names}
