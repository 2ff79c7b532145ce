"""A prefix cache: prompts computed once (a system prompt, a chat's earlier turns, a shared document)
are reused by any later prompt that starts with them, on any Session over the same compiled model.

`generate(..., prefix_cache=cache)`: the cached prompt sharing the longest prefix with the new one
is restored (`Session.restore`: a copy of its KV state, O(prefix)), rewound to the shared part (an
O(1) trim) and only the rest is run; the whole prompt is then cached for the next one. So a second
question under the same system prompt recomputes only the question. The tokens equal a fresh run's up to the last bits a chunked prefill
computes differently (tested). Entries are evicted least-recently-used past `max_bytes`. A cache
serves one model: the same IR at the same precision (another load of it too); a session of another
model (a draft, the IR at another precision) is refused before anything runs. Sessions on several
threads may share one cache (a lock guards its entries; each thread runs its own session).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .backend import token_array
from .kvstate import interchangeable, model_label


class PrefixCache:
    def __init__(self, max_bytes: int = 512 << 20, min_tokens: int = 16):
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, (int, np.integer)) or min_tokens < 1:
            raise ValueError(f"min_tokens must be an integer >= 1 (the shortest prefix worth caching), got {min_tokens!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float, np.number)) or not max_bytes >= 0:
            raise ValueError(f"max_bytes must be a number of bytes >= 0, got {max_bytes!r}")
        self.max_bytes, self.min_tokens = max_bytes, int(min_tokens)
        self._entries: OrderedDict[tuple[int, ...], object] = OrderedDict()  # prompt ids -> Snapshot
        self.hits = self.misses = 0
        self.reused_tokens = 0  # prompt tokens not recomputed, over all lookups
        self._model = None  # the model whose states the entries hold (or one interchangeable with it)
        self._lock = threading.Lock()  # sessions on several threads may share the cache

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        return sum(_size(s) for s in self._entries.values())

    def lookup(self, ids) -> tuple[int, tuple[int, ...], object | None]:
        """(shared length, cached prompt, its snapshot) for the cached prompt sharing the longest
        prefix with `ids` (at least `min_tokens`), or (0, (), None)."""
        ids = tuple(token_array(ids).reshape(-1).tolist())  # (1.5 was taken as 1; a bad type named)
        best, shared = (), 0
        with self._lock:
            for key in self._entries:
                n = _common(key, ids)
                if n > shared:
                    best, shared = key, n
            if shared < self.min_tokens:
                self.misses += 1
                return 0, (), None
            self._entries.move_to_end(best)
            self.hits += 1
            self.reused_tokens += shared
            return shared, best, self._entries[best]

    def store(self, ids, snapshot) -> None:
        """Cache `snapshot` (a Session's state holding exactly `ids`) unless it is too short."""
        ids = tuple(int(t) for t in ids)
        if len(ids) < self.min_tokens or _size(snapshot) > self.max_bytes:
            return
        with self._lock:
            self._entries[ids] = snapshot
            self._entries.move_to_end(ids)
            while self._nbytes() > self.max_bytes:
                self._entries.popitem(last=False)

    def check(self, session) -> None:
        """NotImplementedError unless `session` can take and restore this cache's snapshots."""
        if not session.snapshots:
            raise NotImplementedError(f"a prefix cache keeps snapshots, which {type(session).__name__} cannot take "
                                      "(attention='paged'); load the model with attention='stateful'")
        if not getattr(session, "snapshots_travel", True):  # (it worked on a miss, then raised on the first hit)
            raise NotImplementedError(f"a prefix cache restores a prompt's snapshot into other sessions, which "
                                      f"{type(session).__name__} cannot (it restores only to an earlier point of its "
                                      "own sequence); use an OpenVINO IR")

    def prefill(self, session, ids) -> np.ndarray:
        """Run the prompt `ids` on `session` reusing the longest cached prefix, cache the prompt, and
        return its last logits (what `session.prefill(ids)` returns)."""
        self.check(session)
        with self._lock:
            if self._model is None:
                self._model = session.model
            model = self._model
        if not interchangeable(session.model, model):
            raise ValueError(f"this prefix cache holds the KV states of another model: {model_label(self._model)}; "
                             f"this session's is {model_label(session.model)} and would restore states it did not "
                             "compute (a cache per model)")
        n, key, snap = self.lookup(ids)
        if snap is None:
            logits = session.prefill(ids)
        else:
            session.restore(snap)
            n = min(n, len(ids) - 1)  # run at least the last token: its logits start the generation
            session.rewind(len(key) - n)
            logits = session.append(list(ids[n:]))
        if n < len(ids) and len(ids) >= self.min_tokens:
            self.store(ids, session.snapshot())
        return logits


def _common(a: tuple, b: tuple) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _size(snap) -> int:
    return sum(a.nbytes for a in snap.states.values()) if hasattr(snap, "states") else 0
