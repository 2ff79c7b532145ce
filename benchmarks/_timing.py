"""Per-token time stamps from the peers' streaming hooks, and the interleaving order (shared by the
benchmark scripts)."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns

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


def rotated(items: list, i: int) -> list:
    """`items` starting at position i (mod len): round i of an interleaved run, so that no item always
    runs right after the same other one."""
    k = i % len(items)
    return items[k:] + items[:k]


def lockstep(names: list, prefill: Callable, step: Callable, steps: int, reps: int) -> dict:
    """Time `prefill(name)` then `steps` x `step(name, token)` (each returns the last logits, the
    next token is their argmax) for every name in lock-step: all take step i before any takes i + 1,
    in an order that rotates, so a slow second of a shared machine hits all of them. Repetition 0
    warms up. Returns per name: median prefill / step ms, medians of the paired per-call ratios to
    names[0], and whether its greedy tokens (repetition 1) equal names[0]'s."""
    times = {n: ([], []) for n in names}  # (prefill ms, step ms)
    tokens = {n: [] for n in names}
    for rep in range(reps + 1):
        last = {}
        for k in range(steps + 1):
            for n in rotated(names, rep + k):
                t = perf_counter_ns()
                logits = prefill(n) if k == 0 else step(n, last[n])
                dt = (perf_counter_ns() - t) / 1e6
                last[n] = int(np.argmax(logits.reshape(-1, logits.shape[-1])[0]))
                if rep:
                    times[n][k > 0].append(dt)
                if rep == 1:
                    tokens[n].append(last[n])
    base = names[0]
    ratio = lambda n, i: float(np.median(np.array(times[n][i]) / np.array(times[base][i])))  # noqa: E731
    return {n: {"prefill_ms": float(np.median(times[n][0])), "step_ms": float(np.median(times[n][1])),
                "prefill_ratio": ratio(n, 0), "step_ratio": ratio(n, 1), "same_tokens": tokens[n] == tokens[base]}
            for n in names}
