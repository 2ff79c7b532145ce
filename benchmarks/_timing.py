"""Per-token time stamps from the peers' streaming hooks (shared by the benchmark scripts)."""

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
