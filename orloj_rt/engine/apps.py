"""Which apps a policy keeps state for: a cap, an overflow app, eviction of idle apps.

Any client names its app freely (the `app` header field), and a policy keeps per-app
state: a distribution, a queue, cached thresholds and tables. Without a bound, a client
that sends requests under thousands of distinct app tags grows the scheduler's memory
without end. An `AppTable` bounds it:

- **A cap**: at most `max_apps` live apps, the overflow app included. A new app gets its
  own state while there is room (one place is kept for the overflow app); beyond, its
  requests are filed under `OVERFLOW_APP` ("~other") and share that app's distribution.
  Nothing is lost: those requests are queued, decided and served like any others.
- **Eviction of idle apps**: an app with nothing in flight that has not been seen for
  `idle_s` seconds of the owner's clock is forgotten, with all its state, which makes room
  again. The sweep is lazy: it runs when a new app arrives (the only event that can grow
  the table), so its cost is O(1) amortised and a decision never pays it. A policy's
  default is never (`DEFAULT_APP_IDLE_S` = 0): its clock need not be in seconds (the
  simulator's unit is the mean solo time). The runtime's scheduler evicts after
  `RUNTIME_APP_IDLE_S` = 60 s of wall clock.

Why an overflow app rather than evicting the least recently used idle app to make room:
eviction to make room lets anyone flush every other app's learned distribution just by
sending requests under new tags, at no cost to itself; with an overflow app, the apps
that are established keep what they learned, and only newcomers beyond the cap share a
distribution until idle apps age out. `0` for `max_apps` is no cap, `0` for `idle_s` never
evicts.

Apps given a distribution with `set_distribution` are *pinned*: idle eviction spares them
(a configured or fitted prior, e.g. a hint class, must not fall back to the default). They
still count towards the cap, and `forget_app` still forgets them.

Both engines' policies (and orloj-step) use this one class, so that the compiled engine
and the pure twin assign the same indices (a free list, last freed first) and forget the
same apps at the same calls: their decisions stay identical. The runtime's scheduler uses
it too, per model, for its own per-app state (docs/runtime.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

#: The app whose state the requests of apps beyond the cap share.
OVERFLOW_APP = "~other"
#: Live apps per model (the overflow app included) unless configured otherwise.
DEFAULT_MAX_APPS = 256
#: A policy forgets an idle app after this long on its clock; 0: never (a policy's clock
#: may be the simulator's, in mean solo times)
DEFAULT_APP_IDLE_S = 0.0
#: The runtime's scheduler forgets an app with nothing in flight not seen for this long.
RUNTIME_APP_IDLE_S = 60.0


def check_app_limits(max_apps, idle_s) -> tuple[int, float]:
    """(max_apps, idle_s) validated: an integer >= 0 (0: no cap) and seconds >= 0 (0:
    never evict)."""
    if isinstance(max_apps, bool) or not isinstance(max_apps, int) or max_apps < 0:
        raise ValueError(f"max_apps must be an integer >= 0 (0: no cap), got {max_apps!r}")
    try:
        idle = float(idle_s)
    except (TypeError, ValueError):
        idle = math.nan
    if not (idle >= 0 and math.isfinite(idle)):
        raise ValueError(f"app_idle_s must be finite seconds >= 0 (0: never), got {idle_s!r}")
    return max_apps, idle


class AppTable:
    """Live app names <-> small integer indices, with a cap and an LRU of evictable apps.

    The table keeps no per-app state of its own beyond the name: its owner keeps the
    state, indexed by the index, and frees it when `sweep` or `remove` says so.
    """

    __slots__ = ("max_apps", "idle_s", "index", "names", "_free", "_seen", "clock",
                 "evicted")  # fmt: skip

    def __init__(self, max_apps: int = DEFAULT_MAX_APPS, idle_s: float = DEFAULT_APP_IDLE_S):
        self.max_apps, self.idle_s = check_app_limits(max_apps, idle_s)
        self.index: dict[str, int] = {}  # live name -> index
        self.names: list[str | None] = []  # index -> live name, None where free
        self._free: list[int] = []  # freed indices, reused last freed first
        # the evictable (unpinned) live apps, least recently seen first -> when last seen
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.clock = -math.inf  # the latest time the owner reported (tick)
        self.evicted = 0  # apps forgotten so far (sweep and remove)

    def set_limits(self, max_apps: int, idle_s: float) -> None:
        """New limits; apps already live stay (a lower cap only stops new admissions)."""
        self.max_apps, self.idle_s = check_app_limits(max_apps, idle_s)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, name) -> bool:
        return name in self.index

    def get(self, name) -> int | None:
        return self.index.get(name)

    def live(self) -> list[str]:
        """The live names, in index order."""
        return [n for n in self.names if n is not None]

    def tick(self, now: float) -> None:
        """The owner's clock moved to `now` (an arrival, a decision)."""
        if now > self.clock:
            self.clock = now

    def touch(self, name: str) -> None:
        """`name` was seen now (no-op for a pinned or unknown app)."""
        seen = self._seen
        if name in seen:
            seen[name] = self.clock
            seen.move_to_end(name)

    def pin(self, name: str) -> None:
        """Idle eviction spares `name` from now on."""
        self._seen.pop(name, None)

    def has_room(self, name: str) -> bool:
        """Whether a new app `name` may have state of its own now. One place is kept for
        the overflow app, so that live apps never exceed `max_apps`."""
        if not self.max_apps or name == OVERFLOW_APP:
            return True
        reserved = 0 if OVERFLOW_APP in self.index else 1
        return len(self.index) + 1 + reserved <= self.max_apps

    def admit(self, name: str) -> tuple[str, int, bool]:
        """A name that is not live, once the caller forgot the idle apps it would: (the
        name its requests' state is filed under, that name's index, whether it was added
        just now). `name` itself while there is room; beyond, the overflow app (added if it
        is not live yet, else seen now)."""
        if not self.has_room(name):
            i = self.index.get(OVERFLOW_APP)
            if i is not None:
                self.touch(OVERFLOW_APP)
                return OVERFLOW_APP, i, False
            name = OVERFLOW_APP
        return name, self.add(name), True

    def add(self, name: str) -> int:
        """Admits `name` (not live) and returns its index: a freed one if any."""
        if self._free:
            i = self._free.pop()
            self.names[i] = name
        else:
            i = len(self.names)
            self.names.append(name)
        self.index[name] = i
        self._seen[name] = self.clock
        return i

    def remove(self, name: str) -> int:
        """Forgets `name` (live) and returns the index it had, now free."""
        i = self.index.pop(name)
        self.names[i] = None
        self._free.append(i)
        self._seen.pop(name, None)
        self.evicted += 1
        return i

    def sweep(self, busy: Callable[[str, int], bool]) -> list[tuple[str, int]]:
        """Forgets every unpinned app not seen for `idle_s` seconds that is not
        `busy(name, index)`; returns the (name, index) pairs forgotten, whose state the
        owner frees. A busy app counts as seen now. O(1) when nothing is due."""
        if not self.idle_s:
            return []
        seen = self._seen
        cutoff = self.clock - self.idle_s
        out: list[tuple[str, int]] = []
        while seen:
            name, last = next(iter(seen.items()))
            if last >= cutoff:
                break
            i = self.index[name]
            if busy(name, i):
                seen[name] = self.clock
                seen.move_to_end(name)
            else:
                self.remove(name)
                out.append((name, i))
        return out
