"""A queue ordered by a key (a deadline, or an arrival time) with removal by request id.

The pure-Python twin of csrc/engine/request_queue.hpp. Entries are ordered by (key, id),
so that equal keys break ties by the smaller id in both engines. Here a sorted list keeps
the order (insertion is a memmove, fine for a specification); the compiled engine uses a
red-black tree with O(log n) insertion and removal.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator


def check_key(key: float) -> float:
    key = float(key)
    if math.isnan(key):
        raise ValueError("queue key (deadline) is NaN")
    return key


class RequestQueue:
    """Request ids ordered by (key, id)."""

    __slots__ = ("_order", "_key_of")

    def __init__(self) -> None:
        self._order: list[tuple[float, int]] = []
        self._key_of: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, req_id: object) -> bool:
        return req_id in self._key_of

    def __iter__(self) -> Iterator[tuple[float, int]]:
        """(key, id) pairs in order."""
        return iter(list(self._order))

    def push(self, req_id: int, key: float) -> None:
        req_id = int(req_id)
        key = check_key(key)
        if req_id in self._key_of:
            raise ValueError(f"request id {req_id} is already queued")
        bisect.insort(self._order, (key, req_id))
        self._key_of[req_id] = key

    def remove(self, req_id: int) -> float:
        """Removes `req_id` and returns its key; KeyError if it is not queued."""
        try:
            key = self._key_of.pop(req_id)
        except KeyError:
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue") from None
        i = bisect.bisect_left(self._order, (key, req_id))
        del self._order[i]
        return key

    def key_of(self, req_id: int) -> float:
        try:
            return self._key_of[req_id]
        except KeyError:
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue") from None

    def first(self) -> tuple[float, int] | None:
        return self._order[0] if self._order else None

    def last(self) -> tuple[float, int] | None:
        return self._order[-1] if self._order else None

    def head(self, n: int) -> list[tuple[float, int]]:
        """The first `n` entries (fewer if the queue is shorter)."""
        return self._order[:n]

    def window(self, key: float, n: int) -> list[tuple[float, int]]:
        """Up to `n` entries starting at the first one whose key is >= `key`."""
        i = bisect.bisect_left(self._order, (key, -(2**63)))
        return self._order[i : i + n]

    def pop_below(self, key: float) -> list[int]:
        """Removes and returns, in order, every id whose key is < `key`."""
        i = bisect.bisect_left(self._order, (key, -(2**63)))
        out = [rid for _, rid in self._order[:i]]
        del self._order[:i]
        for rid in out:
            del self._key_of[rid]
        return out
