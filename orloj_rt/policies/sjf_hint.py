"""`sjf-hint`: shortest predicted first, the plain hint-aware batcher.

The baseline a user with a length predictor would write, and the shortest-predicted-first
batcher of the Orloj paper's discussion: each request gets one point prediction of its
solo time, and the shortest go first. It stands for what cost hints give a scheduler that
keeps a number, not a distribution, per request.

**Predictions.** A request's prediction is the mean of its app's execution-time
distribution, or of the default distribution (`set_default_distribution`) for an app
without one of its own. With cost hints the serving core files each hinted request under
a hint-class app `app#h<k>` (orloj_rt/serving/hints.py) and teaches each class its own
distribution, exactly as it teaches orloj: `set_distribution` replaces an app's
distribution with a copy, `observe_solo` adds one solo time to it (an app first taught
this way starts from a copy of the default), `observe_batch` learns a batch of one
(exec_time / c(1)). So sjf-hint sees the same learned class distributions as orloj, only
their means. The raw hint (`enqueue`'s `hint`) breaks ties inside a class.

**Order.** (prediction, raw hint with None last, deadline, id). A NaN hint counts as no
hint.

**Decision** (when a worker is idle, at `now`):

1. drop every request that cannot finish even alone by its prediction:
   now + c(1) * prediction > deadline;
2. form one batch greedily in the order above: the next request joins if the batch with
   it, of size b, finishes by every member's deadline by the prediction,
   now + c(b) * max prediction <= min deadline; otherwise it is skipped. Up to the maximum
   batch, looking at the first `scan` requests (4 x the maximum batch by default), so that
   a decision stays cheap with a long queue.

The shortest request left after step 1 can finish alone by construction, so it always
joins: like any work-conserving SJF, sjf-hint never leaves a worker idle while a request
it has not dropped waits (it never waits to fill a batch, and `next_wakeup` is never).

**Structure.** Predictions change whenever a distribution is learned, so no order over
all requests is kept. Per app (requests of one app share its prediction): a deadline
queue, the engine's `RequestQueue`, which finds step 1's drops with one `pop_below`; and
a list sorted by (hint, deadline, id), the order inside the app. A decision computes each
queued app's prediction (a mean, cached until its distribution changes), sorts the apps
by it, and merges the lists of apps with equal predictions (`heapq.merge`): O(apps log
apps + scan) after the drops. An app keeps state only while it has queued requests or a
distribution of its own; `forget_app` forgets an idle app's distribution, so that the
serving core can evict it (the core keeps the app limits: sjf-hint has none of its own).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Sequence

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, RequestQueue, inflation_table
from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.policies.base import checked_request

SCAN_PER_BATCH = 4  # candidates a decision looks at, per member of a full batch


class _App:
    """What sjf-hint keeps for one app."""

    __slots__ = ("dist", "queue", "order", "cached_dist", "cached_version", "cached_mean")

    def __init__(self) -> None:
        self.dist = None  # its own distribution, or None: the default's
        self.queue = RequestQueue()  # its requests by deadline (for the drops)
        self.order: list[tuple] = []  # (no hint, hint, deadline, id), sorted
        self.cached_dist = None
        self.cached_version = -1
        self.cached_mean = 0.0


class _Request:
    __slots__ = ("app", "entry")

    def __init__(self, app: str, entry: tuple):
        self.app = app
        self.entry = entry


class SjfHintPolicy(Policy):
    """Shortest predicted first over per-app queues (see the module docstring)."""

    name = "sjf-hint"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation: Sequence[float] | None = None,
        scan: int | None = None,
    ):
        self._c = inflation_table(max_batch, alpha, inflation)
        self._max_batch = len(self._c)
        if scan is None:
            scan = SCAN_PER_BATCH * self._max_batch
        if not (isinstance(scan, int) and not isinstance(scan, bool) and scan >= 1):
            raise ValueError(f"scan must be an integer >= 1, got {scan!r}")
        self._scan = scan
        self._default = None
        self._default_cache = _App()  # caches the default's mean
        self._apps: dict[str, _App] = {}
        self._active: dict[str, _App] = {}  # the apps with queued requests
        self._requests: dict[int, _Request] = {}

    # ---------------------------------------------------------------- configuration
    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def scan(self) -> int:
        return self._scan

    def set_default_distribution(self, dist) -> None:
        """The prior: every app without a distribution of its own predicts its mean."""
        dist.mean()  # an empty distribution has no mean: ValueError now, not at decide
        self._default = dist.copy()

    def set_distribution(self, app: str, dist) -> None:
        """`app`'s own distribution (a copy), replacing the default's or a learned one."""
        dist.mean()
        self._app(app).dist = dist.copy()

    def observe_solo(self, app: str, solo_time: float) -> None:
        """One more solo time of `app`: added to its own distribution (a copy of the
        default when it had none yet)."""
        a = self._app(app)
        if a.dist is None:
            if self._default is not None:
                a.dist = self._default.copy()
            else:
                from orloj_rt.engine import Distribution

                a.dist = Distribution()
        a.dist.add(solo_time)

    def observe_batch(self, apps, exec_time) -> None:
        """A batch of one teaches its app a solo time; a larger batch does not say which
        member was slow."""
        if len(apps) == 1:
            self.observe_solo(apps[0], float(exec_time) / self._c[0])

    def knows(self, app: str) -> bool:
        """Whether `app` has state here (queued requests or a distribution of its own)."""
        return app in self._apps

    def forget_app(self, app: str) -> bool:
        """Forgets `app`'s own distribution if it has nothing queued; says whether it did
        (it did not if the app had no state or has queued requests)."""
        a = self._apps.get(app)
        if a is None or len(a.queue):
            return False
        del self._apps[app]
        return True

    def prediction(self, app: str) -> float:
        """The predicted solo time of a request of `app`: its distribution's mean."""
        a = self._apps.get(app)
        if a is not None and a.dist is not None:
            return self._mean(a, a.dist)
        if self._default is None:
            raise ValueError(
                f"no execution-time distribution for app {app!r}: call "
                "set_distribution(app, dist) or set_default_distribution(dist) first"
            )
        return self._mean(self._default_cache, self._default)

    @staticmethod
    def _mean(a: _App, dist) -> float:
        if a.cached_dist is not dist or a.cached_version != dist.version:
            a.cached_mean = float(dist.mean())
            a.cached_dist = dist
            a.cached_version = dist.version
        return a.cached_mean

    def _app(self, app: str) -> _App:
        if not isinstance(app, str):
            raise TypeError(f"app must be a str, got {type(app).__name__}")
        a = self._apps.get(app)
        if a is None:
            a = self._apps[app] = _App()
        return a

    # ---------------------------------------------------------------- the queue
    def __len__(self) -> int:
        return len(self._requests)

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        req_id, arrival, deadline = checked_request(req_id, arrival, deadline, self._requests)
        self.prediction(app)  # ValueError without any distribution for it
        h = math.nan if hint is None else float(hint)
        entry = (1, 0.0, deadline, req_id) if math.isnan(h) else (0, h, deadline, req_id)
        a = self._app(app)
        a.queue.push(req_id, deadline)
        bisect.insort(a.order, entry)
        self._active[app] = a
        self._requests[req_id] = _Request(app, entry)

    def remove(self, req_id) -> None:
        if req_id not in self._requests:
            raise KeyError(f"unknown request id {req_id!r}: it is not queued")
        self._forget(req_id)

    def _forget(self, req_id: int, in_queue: bool = True) -> None:
        """Takes a request out of every structure (`in_queue`: also out of its app's
        deadline queue, which `pop_below` has already done for a drop)."""
        req = self._requests.pop(req_id)
        a = self._apps[req.app]
        if in_queue:
            a.queue.remove(req_id)
        i = bisect.bisect_left(a.order, req.entry)
        del a.order[i]
        if not a.order:
            del self._active[req.app]
            if a.dist is None:  # nothing of its own left
                del self._apps[req.app]

    # ---------------------------------------------------------------- the decision
    def decide(self, now: float) -> Decision:
        """Called when a worker is idle: drop what cannot finish alone by its prediction,
        then the greedy batch in shortest-predicted-first order."""
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        c = self._c
        apps = sorted((self.prediction(name), name) for name in self._active)
        dropped: list[int] = []
        live: list[tuple[float, list]] = []
        for pred, name in apps:
            a = self._active[name]
            gone = a.queue.pop_below(now + c[0] * pred)
            for rid in gone:
                self._forget(rid, in_queue=False)
            dropped.extend(gone)
            if a.order:
                live.append((pred, a.order))
        batch: list[int] = []
        top = 0.0  # the batch's largest prediction (candidates come in rising order)
        first = math.inf  # its earliest deadline
        for pred, (_, _, deadline, rid) in itertools.islice(self._candidates(live), self._scan):
            d = deadline if deadline < first else first
            t = pred if pred > top else top
            # the first candidate always joins: it survived the drop test, so it fits alone
            if not batch or now + c[len(batch)] * t <= d:
                batch.append(rid)
                top, first = t, d
                if len(batch) == self._max_batch:
                    break
        for rid in batch:
            self._forget(rid)
        return Decision(batch, dropped, [])

    def _candidates(self, live: list[tuple[float, list]]):
        """Yields (prediction, entry) in the policy's order: the apps by rising prediction,
        the lists of apps with equal predictions merged by (hint, deadline, id); at most
        `scan` entries of each list are looked at."""
        scan = self._scan
        for pred, group in itertools.groupby(live, key=lambda pl: pl[0]):
            lists = [order[:scan] for _, order in group]
            merged = lists[0] if len(lists) == 1 else heapq.merge(*lists)
            for entry in merged:
                yield pred, entry
