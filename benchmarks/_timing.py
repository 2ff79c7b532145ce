"""Per-token time stamps from the peers' streaming hooks, and the interleaving order (shared by the
benchmark scripts)."""

from __future__ import annotations

from collections.abc import Callable


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
