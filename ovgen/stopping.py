"""Stopping: EOS ids, stop strings across token boundaries, max_new_tokens, max_time.

finish_reason values (OpenAI / openvino-genai vocabulary): "stop" (an EOS token), "stop_string",
"length" (max_new_tokens), "time" (max_time).
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    """Find stop strings in streamed text, even when one spans several tokens.

    `feed(delta)` returns `(text_to_emit, matched)`. Text that could be the start of a stop string is
    held back until it is known not to be one, so streamed output never shows part of a stop string.
    On a match, the emitted text ends right before the stop string (or after it, when
    `include_in_output`). `flush()` releases held-back text when generation ends without a match.
    """

    def __init__(self, stops: Iterable[str], include_in_output: bool = False):
        self.stops = [s for s in stops if s]
        self.include = include_in_output
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        buf = self.pending + delta
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            at, stop = min(hits)
            self.pending = ""
            return buf[:at + (len(stop) if self.include else 0)], True
        hold = self._held_suffix(buf)
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Stopping:
    """Decides, after each chosen token, whether generation ends and why."""

    def __init__(self, *, eos_token_ids: Iterable[int], max_new_tokens: int, max_time: float | None = None,
                 ignore_eos: bool = False):
        self.eos = frozenset(int(e) for e in eos_token_ids) if not ignore_eos else frozenset()
        self.max_new_tokens = max_new_tokens
        self.max_time = max_time

    def check(self, token_id: int, n_generated: int, elapsed_s: float) -> str | None:
        """finish_reason after `n_generated` tokens, the last being `token_id`; None to go on."""
        if token_id in self.eos:
            return "stop"
        if n_generated >= self.max_new_tokens:
            return "length"
        if self.max_time is not None and elapsed_s >= self.max_time:
            return "time"
        return None
