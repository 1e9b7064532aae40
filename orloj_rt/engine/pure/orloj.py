"""The Orloj policy: the pure-Python twin of csrc/engine/orloj_decide.hpp.

When a worker is idle at time `now`:

1. Drop every request whose chance of finishing, even alone and now, is below epsilon:
   F_app((deadline - now) / c(1)) < epsilon. Each app has its own deadline-ordered queue,
   so this only looks at the requests it drops, plus one per app.
2. For each batch size b, form candidates from the most urgent requests whose finish
   probability in a batch of size b is at least theta. With one app that is
   P = F(s / c(b))^b >= theta, i.e. a slack s >= tau_b = c(b) * F^-1(theta^(1/b)): one
   threshold per b, found by a binary search in the deadline order. A batch of one uses
   each app's exact threshold. For larger batches with several apps:
   - by default, one candidate: every app at the most demanding app's threshold among
     those queued, which guarantees theta whatever the batch's mix;
   - with `pools=True`, one candidate per *pool*: order the queued apps by their quantile
     q_a = F_a^-1(theta^(1/b)); pool j holds the j fastest apps and admits a request of any
     of them from the slack c(b) * q_(j) on, which again guarantees theta whatever the mix
     (each member app has F_a(q_(j)) >= theta^(1/b)). Pool j yields its b most urgent
     admitted requests, and is skipped when its newest app has no admitted request. So a
     batch of fast requests is not forced to wait for, or run with, slow ones. Pools form
     candidates only at the sizes of a ladder (`pool_ladder`: every size up to `pool_dense`
     = 8, then 8 x `pool_step`^k rounded, `pool_step` = 1.6: 13, 20, 33, ...) and at the
     largest batch the decision forms: 11 sizes instead of 32 at a maximum batch of 32
     (with 8 hint classes, every size made some 245 candidates a decision on a fresh
     queue), and the sizes left out moved the simulator's finish rates by under 1%
     (docs/engine.md). With cost hints (orloj_rt/serving/hints.py) the apps are cost
     classes, and pools are what lets orloj batch short requests with short ones: +12-17%
     finish rate over one bar in the simulator (docs/results.md). They cost time: up to an
     app count times more candidates (bench/sched_overhead.py: 4 apps at queue 1,000, p50
     about 6 us instead of 4; at queue 100,000, about 25 us instead of 5), so they are
     opt-in.
   2b. Weights (issue 17): each app has a weight (`set_app_weight`, default 1). When the
   queued apps have several, step 2 runs again for each weight level above the lowest,
   over the apps at or above it, so that a batch of heavy requests is a candidate even
   when lighter, more urgent ones would fill every batch of the whole set.
3. Score each candidate by its expected number of weighted finishes per unit of expected
   batch time, sum_i w_i P_i / E[T_B], and dispatch the best (ties: the first candidate
   in order of weight level, then b, then pool).
   3b. Price (`price_share` k < 1; 1, the default, is step 3 alone): with r* the best score,
   dispatch instead the candidate with the most expected finishes net of the worker's
   time at k r*, sum_i w_i P_i - k r* E[T_B] (ties: the first in step 3's order). The
   best-scoring candidate is worth (1 - k) r* E[T] > 0 by that measure, so a candidate
   wins only with a score above k r*; among those, a larger batch that is almost as
   efficient beats a small one that is a little more so. Step 3 alone prices the worker's
   time at the best rate any candidate offers now, as if that rate could be had for ever;
   the queue it leaves behind expires instead, and what a decision earns over time is
   less than r*. With cost hints (the classes of orloj_rt/serving/hints.py) the best
   rate is often a small batch of the shortest class, while longer classes' requests
   expire: in the simulator with hints of CoV 0.6, k = 0.5 raised orloj's finish rates
   by up to 0.041 and lowered them by up to 0.015 (docs/results.md). The serving core
   sets k = 0.5 once a request is filed under a hint class; without hints it stays 1
   (k = 0.5 moved plain orloj's simulator figures both ways, docs/results.md).

If no request reaches theta even alone, the one most likely to finish alone runs, so that
an idle worker is never wasted on waiting (`fallback=False` turns this off). With
`patience` p > 0 it runs only if its expected time alone E[T] is at most p x the expected
wait for the next decision that finds a candidate at theta (an average of the gaps
between such decisions, 0.1 for the newest, or the time since the last one if that is
longer): it waits while E[T] > p x that average and now < the last such decision + E[T]
/ p, and `next_wakeup` says when the second stops holding, so a request kept waiting is
looked at again even if nothing arrives. Where requests differ in law (cost-hint
classes), the requests below theta are the long ones, and one of them holds the worker
while short requests that would finish arrive and wait: in the simulator with hints of
CoV 0.6, waiting (p = 0.5) raised orloj's finish rates by up to 0.067 and lowered them
by up to 0.022 at load 1 (at most 0.005 elsewhere; docs/results.md). 0 (off) is the
default; the serving core sets 0.5 once a request is filed under a hint class
(orloj_rt/serving/hints.py). Without hints it is off: there p = 0.5 moved finish rates
by -0.028 to +0.015 (docs/results.md), both ways.

`drop_hopeless(now)` is step 1 alone; `evaluate(now)` says what `decide(now)` would
dispatch after its drops, and its score, without changing the queue (the variant choice
of orloj_rt/policies/utility.py asks one engine per variant).

Apps. Any client names its app, so the apps a policy keeps state for are bounded
(orloj_rt/engine/apps.py): at most `max_apps` live apps (default 256; beyond, requests
share the overflow app "~other"), and an app with nothing queued that has not been seen
for `app_idle_s` on the policy's clock (default 0: never; the runtime's scheduler forgets
idle apps itself) is forgotten when a new app arrives, its index reused. A decision looks
only at the apps with queued requests (`_active`), and a mixed batch's E[max] only at its
members' apps, so its cost does not grow with the apps seen.

The defaults, theta = 0.8 and epsilon = 0.1, come from the simulator's sweep
(docs/results.md): theta 0.7 -> 0.8 trades a few batch members for fewer late ones, and a
request with less than a 10% chance even alone only takes a worker from better bets.
With cost-hint classes the serving core sets epsilon 0.02 (`set_epsilon`), which its own
sweep favoured there (docs/results.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from orloj_rt.engine.apps import (
    DEFAULT_APP_IDLE_S,
    DEFAULT_MAX_APPS,
    AppTable,
)
from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.engine.pure.batch_model import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_BATCH,
    Inflation,
    batch_cdf,
    batch_mean,
)
from orloj_rt.engine.pure.distribution import Distribution, ipow
from orloj_rt.engine.pure.request_queue import RequestQueue

DEFAULT_THETA = 0.8
DEFAULT_EPSILON = 0.1
DEFAULT_POOL_DENSE = 8  # pooled batch sizes: every size up to 8, ...
DEFAULT_POOL_STEP = 1.6  # ... then 13, 20, 33, 52, ... (8 x 1.6^k, rounded)
PATIENCE_EWMA = 0.1  # the weight of the newest gap between decisions at theta


def pool_ladder(max_batch: int, dense: int, step: float) -> list[int]:
    """The batch sizes at which pools form candidates when several apps are queued: every
    size up to `dense`, then dense x step^k rounded (k = 1, 2, ...), up to `max_batch` (a
    decision adds its largest batch itself). `step` 1 (or below 1.01) means every size.
    Both engines take their ladder from here, so that they agree to the last rounding."""
    if isinstance(dense, bool) or not float(dense).is_integer() or dense < 1:
        raise ValueError(f"pool_dense must be an integer >= 1, got {dense!r}")
    dense = int(dense)
    step = float(step)
    if not (math.isfinite(step) and step >= 1.0):
        raise ValueError(f"pool_step must be a finite number >= 1, got {step!r} "
                         "(1: pools at every batch size)")
    if step < 1.01:  # (a step this close to 1 leaves out no size worth the loop)
        return list(range(1, max_batch + 1))
    sizes = list(range(1, min(dense, max_batch) + 1))
    k = 1
    while True:
        b = math.floor(dense * step**k + 0.5)
        if b > max_batch:
            return sizes
        if b > sizes[-1]:
            sizes.append(b)
        k += 1


def check_patience(value) -> float:
    """`patience` validated: a finite number >= 0 (0: the fallback always runs)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"patience must be a finite number >= 0 (0: off), got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"patience must be a finite number >= 0 (0: off), got {value!r}")
    return value


def check_price_share(value) -> float:
    """`price_share` validated: a number in (0, 1] (1: off, the best score wins)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"price_share must be a number in (0, 1] (1: off), got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"price_share must be a number in (0, 1] (1: off), got {value!r}")
    return value


def check_probability(name: str, value: float, *, open_low: bool = False) -> float:
    value = float(value)
    ok = (0.0 < value <= 1.0) if open_low else (0.0 <= value <= 1.0)
    if not ok:
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be a probability in {interval}, got {value!r}")
    return value


def make_inflation(max_batch: int, alpha: float, inflation) -> Inflation:
    if inflation is None:
        return Inflation(max_batch, alpha)
    if isinstance(inflation, Inflation):
        return inflation
    return Inflation.from_table(inflation)


class _AppCache:
    """Per-app numbers that only change when the app's distribution does."""

    __slots__ = ("version", "qth", "emax", "mix")

    def __init__(self) -> None:
        self.version = -1
        self.qth: list[float] = []  # qth[b] = F^-1(theta^(1/b))
        self.emax: list[float] = []  # emax[b] = E[max of b solo times]
        self.mix: _MixTable | None = None  # for mixed batches, built on first need


_stamps = itertools.count(1)


class _MixTable:
    """One app's CDF powers on the policy's fixed points, for E[max] of mixed batches.

    The points are the grid's edges from 0 to hi and the midpoints between them
    (`_points`); pow[n][j] = F(pts[j])^n, by repeated products, for n up to the largest
    count of the app in a mix so far (`row`). Built when a mixed batch with this app is
    first scored after its distribution changed; `stamp` is unique to each build, so that
    a remembered E[max] of a mix can never outlive one of its tables.
    """

    __slots__ = ("version", "stamp", "f", "pow", "zero_until", "one_from", "top")

    def __init__(self, d: Distribution, pts: list[float]) -> None:
        f = self.f = [d._cdf(x) for x in pts]
        self.pow = [[1.0] * len(pts)]
        zu = -1
        for j in range(len(pts)):
            if f[j] <= 0.0:
                zu = j
        of = len(pts)  # F < 1 at the last point: never 1 on the points
        for j in range(len(pts) - 1, -1, -1):
            if f[j] >= 1.0:
                of = j
            else:
                break
        self.zero_until = zu  # the last j with F(pts[j]) == 0, or -1
        self.one_from = of  # F == 1 at every point from this j on
        self.top = d._bhi[d._last]  # the support's end
        self.version = d.version
        self.stamp = next(_stamps)

    def row(self, n: int) -> list[float]:
        rows = self.pow
        f = self.f
        while len(rows) <= n:
            prev = rows[-1]
            rows.append([prev[j] * f[j] for j in range(len(f))])
        return rows[n]


def _points(edges) -> list[float]:
    """The grid's edges below inf (0, lo, ..., hi) and the midpoints between them."""
    e = edges[:-1]
    pts: list[float] = []
    for i in range(len(e) - 1):
        pts.append(e[i])
        pts.append(0.5 * (e[i] + e[i + 1]))
    pts.append(e[-1])
    return pts


def _rep_pow(x: float, n: int) -> float:
    """x^n by n multiplications, as the tables' rows are built."""
    p = 1.0
    for _ in range(n):
        p *= x
    return p


MEMO_CAP = 4096  # remembered mixes; a full memo starts afresh


class OrlojPolicy(Policy):
    """Distribution-aware batching for one model (see the module docstring)."""

    name = "orloj"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation: Inflation | Sequence[float] | None = None,
        theta: float = DEFAULT_THETA,
        epsilon: float = DEFAULT_EPSILON,
        fallback: bool = True,
        patience: float = 0.0,
        price_share: float = 1.0,
        pools: bool = False,
        pool_dense: int = DEFAULT_POOL_DENSE,
        pool_step: float = DEFAULT_POOL_STEP,
        max_apps: int = DEFAULT_MAX_APPS,
        app_idle_s: float = DEFAULT_APP_IDLE_S,
    ):
        self._inflation = make_inflation(max_batch, alpha, inflation)
        self._c = self._inflation.table
        self._B = len(self._c)
        self._theta = check_probability("theta", theta, open_low=True)
        self._epsilon = check_probability("epsilon", epsilon)
        self._fallback = bool(fallback)
        self._patience = check_patience(patience)
        self._price_share = check_price_share(price_share)
        self._last_good: float | None = None  # the last decision with a candidate at theta
        self._good_gap = math.inf  # the average gap between such decisions
        self._fell_back = False  # the last _select ran the fallback
        self._wake: float | None = None  # when a fallback held back may run
        self._pools = bool(pools)
        self._on_ladder = [False] * (self._B + 1)
        for b in pool_ladder(self._B, pool_dense, pool_step):
            self._on_ladder[b] = True
        self._troot = [0.0] + [self._theta ** (1.0 / b) for b in range(1, self._B + 1)]
        self._apps = AppTable(max_apps, app_idle_s)
        # per app index (a freed index holds None / an empty queue until reused)
        self._dists: list[Distribution | None] = []
        self._queues: list[RequestQueue] = []
        self._caches: list[_AppCache] = []
        self._weights: list[float] = []  # per app index: its weight in the score (1.0)
        self._limit = 0  # set_batch_limit: the largest batch a decision forms (0: B)
        self._active: set[int] = set()  # the apps with queued requests
        self._where: dict[int, int] = {}
        self._default: Distribution | None = None
        self._grid: tuple | None = None
        self._pts: list[float] = []  # the mixed tables' points (once a grid is known)
        self._memo: dict[tuple, float] = {}  # mix -> E[max], see _mixed_emax

    # ---------------------------------------------------------------- configuration
    @property
    def max_batch(self) -> int:
        return self._B

    @property
    def inflation(self) -> Inflation:
        return self._inflation

    @property
    def theta(self) -> float:
        return self._theta

    @property
    def epsilon(self) -> float:
        return self._epsilon

    @property
    def apps(self) -> list[str]:
        """The live apps (those this policy keeps state for), in index order."""
        return self._apps.live()

    @property
    def max_apps(self) -> int:
        return self._apps.max_apps

    @property
    def app_idle_s(self) -> float:
        return self._apps.idle_s

    @property
    def app_slots(self):
        """App indices allocated, live or free: at most the most apps ever live at once."""
        return len(self._apps.names)

    @property
    def active_apps(self):
        """The apps with queued requests: the only ones a decision looks at."""
        return len(self._active)

    @property
    def apps_evicted(self) -> int:
        """How many apps were forgotten (idle, or `forget_app`)."""
        return self._apps.evicted

    def set_app_limits(self, max_apps: int, app_idle_s: float) -> None:
        """New limits (orloj_rt/engine/apps.py); (0, 0) hands them to the caller, which
        then forgets apps itself (`forget_app`), as the runtime's scheduler does."""
        self._apps.set_limits(max_apps, app_idle_s)

    def knows(self, app: str) -> bool:
        """Whether `app` is live (has state of its own)."""
        return app in self._apps

    def forget_app(self, app: str) -> bool:
        """Forgets `app` and all its state, if it is live and has nothing queued; says
        whether it did."""
        a = self._apps.get(app)
        if a is None or len(self._queues[a]):
            return False
        self._apps.remove(app)
        self._free(a)
        return True

    def _check_grid(self, dist: Distribution) -> None:
        if not isinstance(dist, Distribution):
            raise TypeError(f"expected a Distribution of this engine, got {type(dist).__name__}")
        if dist.samples_added == 0:
            raise ValueError("empty distribution: give a prior with at least one sample")
        grid = (dist.bins, dist.lo, dist.hi)
        if self._grid is None:
            self._grid = grid
        elif grid != self._grid:
            raise ValueError(
                f"every distribution of a policy must share one grid {self._grid}, got {grid}"
            )

    def set_default_distribution(self, dist: Distribution) -> None:
        """The prior that an app gets when it is first seen (e.g. from warm-up)."""
        self._check_grid(dist)
        self._default = dist.copy()

    def set_distribution(self, app: str, dist: Distribution) -> None:
        """Replaces `app`'s distribution with a copy of `dist`; idle eviction spares it
        from then on (it is pinned)."""
        self._check_grid(dist)
        a = self._app(app, create=True, need_dist=False)
        self._dists[a] = dist.copy()
        name = self._apps.names[a]
        if name == app:  # not filed under the overflow app
            self._apps.pin(name)

    def distribution(self, app: str) -> Distribution:
        """A copy of `app`'s current distribution (the default prior for an unseen app)."""
        a = self._apps.get(app)
        if a is None and self._default is not None:
            return self._default.copy()
        if a is None or self._dists[a] is None:
            raise KeyError(f"unknown app {app!r}: no distribution has been set or learned for it")
        return self._dists[a].copy()

    def set_app_weight(self, app: str, weight: float) -> None:
        """`app`'s weight: each of its requests counts `weight` finishes in the score
        (default 1.0; orloj_rt/policies/utility.py sets app x tier x fairness weights).
        Apps of several weights also get candidates from the apps at or above each weight
        (step 2b in the module docstring)."""
        w = float(weight)
        if not (w > 0.0 and math.isfinite(w)):
            raise ValueError(f"an app's weight must be a finite number > 0, got {weight!r}")
        a = self._app(app, create=True, need_dist=False)
        self._weights[a] = w

    def set_batch_limit(self, limit: int | None) -> None:
        """The largest batch a decision forms from now on (None or 0: the maximum batch):
        orloj_rt/policies/utility.py keeps lower tiers' batches short while a higher tier
        may arrive."""
        b = 0 if limit is None else int(limit)
        if b < 0:
            raise ValueError(f"a batch limit must be >= 0 (0: none), got {limit!r}")
        self._limit = b

    @property
    def batch_limit(self) -> int:
        return self._limit

    def set_patience(self, patience: float) -> None:
        """The fallback's patience from now on (the module docstring; 0: off). The
        serving core sets it once a request is filed under a cost-hint class."""
        self._patience = check_patience(patience)

    @property
    def patience(self) -> float:
        return self._patience

    def set_epsilon(self, epsilon: float) -> None:
        """Step 1's drop threshold from now on. The serving core sets it once a request
        is filed under a cost-hint class."""
        self._epsilon = check_probability("epsilon", epsilon)

    def set_price_share(self, price_share: float) -> None:
        """Step 3b's price share from now on (the module docstring; 1: off). The serving
        core sets it once a request is filed under a cost-hint class."""
        self._price_share = check_price_share(price_share)

    @property
    def price_share(self) -> float:
        return self._price_share

    def app_weight(self, app: str) -> float:
        """`app`'s weight (1.0 for an app never weighted or unknown)."""
        a = self._apps.get(app)
        return 1.0 if a is None else self._weights[a]

    def _app(self, app: str, create: bool, need_dist: bool = True) -> int:
        a = self._apps.get(app)
        if a is None:
            if not create:
                raise KeyError(f"unknown app {app!r}")
            if not isinstance(app, str):
                raise TypeError(f"app must be a str, got {type(app).__name__}")
            if need_dist and self._default is None:
                raise ValueError(
                    f"no execution-time distribution for app {app!r}: call "
                    "set_distribution(app, dist) or set_default_distribution(dist) first"
                )
            a = self._admit(app)
        else:
            self._apps.touch(app)
        if need_dist and self._dists[a] is None:
            raise ValueError(f"no execution-time distribution for app {app!r}")
        return a

    def _admit(self, app: str) -> int:
        """A new app: its own state if there is room (after forgetting the idle apps that
        are due), else the overflow app's."""
        t = self._apps
        for _, a in t.sweep(self._busy):
            self._free(a)
        _, a, added = t.admit(app)
        if not added:
            return a
        dist = self._default.copy() if self._default is not None else None
        if a == len(self._dists):
            self._dists.append(dist)
            self._queues.append(RequestQueue())
            self._caches.append(_AppCache())
            self._weights.append(1.0)
        else:
            self._dists[a] = dist
        return a

    def _busy(self, name: str, a: int) -> bool:
        return len(self._queues[a]) > 0

    def _free(self, a: int) -> None:
        """Frees app index a's state (its queue is empty)."""
        self._dists[a] = None
        self._queues[a] = RequestQueue()
        self._caches[a] = _AppCache()
        self._weights[a] = 1.0
        self._active.discard(a)

    # ---------------------------------------------------------------- the queue
    def __len__(self) -> int:
        return len(self._where)

    def queued(self, app: str | None = None) -> int:
        if app is None:
            return len(self._where)
        a = self._apps.get(app)
        return 0 if a is None else len(self._queues[a])

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        arrival = float(arrival)
        deadline = float(deadline)
        if not math.isfinite(arrival):
            raise ValueError(f"arrival time must be finite, got {arrival!r}")
        if not math.isfinite(deadline):
            raise ValueError(f"deadline must be finite, got {deadline!r}")
        if deadline < arrival:
            raise ValueError(
                f"deadline {deadline!r} is in the past: it is before the arrival {arrival!r}"
            )
        req_id = int(req_id)
        if req_id in self._where:
            raise ValueError(f"request id {req_id} is already queued")
        self._apps.tick(arrival)
        a = self._app(app, create=True)
        self._queues[a].push(req_id, deadline)
        self._where[req_id] = a
        self._active.add(a)

    def remove(self, req_id) -> None:
        a = self._where.pop(req_id, None)
        if a is None:
            raise KeyError(f"unknown request id {req_id!r}: it is not queued")
        q = self._queues[a]
        q.remove(req_id)
        if not len(q):
            self._active.discard(a)

    def remove_many(self, req_ids, also=()) -> None:
        """`remove` for each of `req_ids` (KeyError at the first unknown one); then the
        same in each policy of `also` (policies holding the same requests, as the
        variants' engines do)."""
        for rid in req_ids:
            self.remove(rid)
        for other in also:
            other.remove_many(req_ids)

    # ---------------------------------------------------------------- learning
    def observe_solo(self, app: str, solo_time: float) -> None:
        a = self._app(app, create=True, need_dist=False)
        d = self._dists[a]
        if d is None:
            d = self._dists[a] = Distribution(*(self._grid or ()))
            if self._grid is None:
                self._grid = (d.bins, d.lo, d.hi)
        d.add(solo_time)

    def observe_batch(self, apps, exec_time) -> None:
        if len(apps) == 1:
            self.observe_solo(apps[0], float(exec_time) / self._c[0])

    # ---------------------------------------------------------------- batch latency
    def batch_cdf(self, t: float, apps: Sequence[str]) -> float:
        """P(a batch with members of these apps finishes within t seconds)."""
        return batch_cdf(t, self._member_dists(apps), self._inflation)

    def batch_mean(self, apps: Sequence[str]) -> float:
        """E[execution time] of a batch with members of these apps."""
        return batch_mean(self._member_dists(apps), self._inflation)

    def _member_dists(self, apps: Sequence[str]) -> list[Distribution]:
        return [self._dists[self._app(a, create=False)] for a in apps]

    # ---------------------------------------------------------------- the decision
    def _refresh(self, a: int) -> _AppCache:
        cache = self._caches[a]
        d = self._dists[a]
        if cache.version != d.version:
            d._ready()
            cache.qth = [0.0] + [d._quantile(self._troot[b]) for b in range(1, self._B + 1)]
            cache.emax = d._emax_table(self._B)
            cache.version = d.version
        return cache

    def decide(self, now: float) -> Decision:
        now = self._check_now(now)
        dropped = self._drop(now)
        present = self._present()
        if not present:
            return Decision([], dropped, [])
        best, _ = self._select(present, now)
        if best and not self._fell_back:
            self._note_good(now)
        for _, rid, a in best:
            q = self._queues[a]
            q.remove(rid)
            del self._where[rid]
            if not len(q):
                self._active.discard(a)
        return Decision([rid for _, rid, _ in best], dropped, [])

    def drop_hopeless(self, now: float) -> list[int]:
        """Step 1 of a decision alone: removes and returns the requests that cannot
        finish even alone and now (chance below epsilon)."""
        return self._drop(self._check_now(now))

    def evaluate(self, now: float) -> tuple[float, list[int]]:
        """The batch `decide(now)` would dispatch after its drops, and its score
        (expected weighted finishes per unit of expected batch time; the fallback
        request's own score when no candidate reaches theta), without changing the queue:
        (score, ids), or (-1.0, []) if nothing would run. It leaves the hopeless queued
        (they are never admitted while theta > epsilon: a request that reaches theta in a
        batch reaches epsilon alone)."""
        now = self._check_now(now)
        c1 = self._c[0]
        eps = self._epsilon
        present = []
        for a in sorted(self._active):
            self._refresh(a)
            key, _ = self._queues[a].last()
            if self._dists[a]._cdf((key - now) / c1) >= eps:
                present.append(a)
        if not present:
            return -1.0, []
        best, score = self._select(present, now)
        return score, [rid for _, rid, _ in best]

    def _check_now(self, now) -> float:
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        self._apps.tick(now)
        return now

    def _drop(self, now: float) -> list[int]:
        """Step 1: removes every request whose chance even alone and now is below eps."""
        c1 = self._c[0]
        eps = self._epsilon
        dropped: list[int] = []
        for a in sorted(self._active):  # app order, as the compiled engine's
            q = self._queues[a]
            self._refresh(a)
            d = self._dists[a]
            while len(q):
                key, rid = q.first()
                if d._cdf((key - now) / c1) < eps:
                    q.remove(rid)
                    del self._where[rid]
                    dropped.append(rid)
                else:
                    break
            if not len(q):
                self._active.discard(a)
        return dropped

    def _present(self) -> list[int]:
        return sorted(self._active)

    def _select(self, present: list[int], now: float):
        """Steps 2-3 over the apps `present`: (the best members, its score); with apps of
        several weights, each weight level's apps (at or above it) form candidates too,
        after the whole set's, lowest level first."""
        best_score = -1.0
        best: list[tuple[float, int, int]] = []
        w = self._weights
        levels = sorted({w[a] for a in present})
        top_b = self._limit if 0 < self._limit < self._B else self._B
        priced = self._price_share < 1.0
        values: list[tuple[list, float, float]] = []  # with a price: (members, E fin, E T)
        for level in levels:
            apps = present if level == levels[0] else [a for a in present if w[a] >= level]
            sparse = self._pools and len(apps) > 1
            for b in range(1, top_b + 1):
                if sparse and b != top_b and not self._on_ladder[b]:
                    continue  # pools form candidates on the ladder's sizes (and top_b)
                cb = self._c[b - 1]
                for members in self._candidates(b, cb, apps, now):
                    e_fin, e_t = self._value(members, b, cb, now)
                    score = e_fin / e_t
                    if priced:
                        values.append((members, e_fin, e_t))
                    if score > best_score:
                        best_score = score
                        best = members
        if values:  # step 3b
            r = self._price_share * best_score
            best_net = -math.inf
            for members, e_fin, e_t in values:
                net = e_fin - r * e_t
                if net > best_net:
                    best_net = net
                    best = members
                    best_score = e_fin / e_t
        self._fell_back = False
        self._wake = None
        if not best and self._fallback:
            best, best_score = self._most_likely_alone(present, now)
            self._fell_back = True
            if best:
                self._wake = self._held_until(best[0][2], now)
                if self._wake is not None:
                    best, best_score = [], -1.0
        return best, best_score

    def _note_good(self, now: float) -> None:
        """A decision at `now` found a candidate at theta: update the average gap."""
        if self._last_good is not None:
            gap = now - self._last_good
            if math.isinf(self._good_gap):
                self._good_gap = gap
            else:
                self._good_gap = self._good_gap + PATIENCE_EWMA * (gap - self._good_gap)
        self._last_good = now

    def _held_until(self, a: int, now: float) -> float | None:
        """With patience, until when a fallback request of app `a` waits (it would hold
        the worker longer than patience x the expected wait for a decision at theta), or
        None if it runs now."""
        if not (self._patience > 0.0) or self._last_good is None:
            return None
        e_t = self._c[0] * self._caches[a].emax[1]
        until = self._last_good + e_t / self._patience
        if e_t > self._patience * self._good_gap and now < until:
            return until
        return None

    def next_wakeup(self, now: float) -> float | None:
        """When a fallback request held back by patience may run (None: never)."""
        return self._wake if self._wake is not None and self._active else None

    def _candidates(self, b: int, cb: float, present: list[int], now: float):
        """The candidate batches of size b, in the order that breaks ties (see step 2)."""
        caches = self._caches
        queues = self._queues
        if b == 1 or len(present) == 1:
            # one pool: with b == 1 each app at its own exact threshold
            pools = [[(a, now + cb * caches[a].qth[b]) for a in present]]
        elif not self._pools:
            # the original rule: one pool, every app at the most demanding app's bar
            q_max = 0.0
            for a in present:
                if caches[a].qth[b] > q_max:
                    q_max = caches[a].qth[b]
            pools = [[(a, now + cb * q_max) for a in present]]
        else:
            order = sorted(present, key=lambda a: (caches[a].qth[b], a))
            pools = []
            for j, newest in enumerate(order):
                key = now + cb * caches[newest].qth[b]
                if not queues[newest].window(key, 1):
                    continue  # the newest app adds nothing: pool j - 1 at a higher bar
                pools.append([(a, key) for a in order[: j + 1]])
        for pool in pools:
            cands: list[tuple[float, int, int]] = []
            for a, key in pool:
                for dl, rid in queues[a].window(key, b):
                    cands.append((dl, rid, a))
            if len(cands) < b:
                continue
            cands.sort()
            yield cands[:b]

    def _value(self, members, b: int, cb: float, now: float) -> tuple[float, float]:
        """A candidate's expected weighted finishes and expected time (its score is their
        ratio)."""
        counts: dict[int, int] = {}
        for _, _, a in members:
            counts[a] = counts.get(a, 0) + 1
        apps = sorted(counts)
        e_fin = 0.0
        w = self._weights
        if len(apps) == 1:
            d = self._dists[apps[0]]
            for key, _, a in members:
                e_fin += w[a] * ipow(d._cdf((key - now) / cb), b)
            e_max = self._caches[apps[0]].emax[b]
        else:
            for key, _, m in members:
                x = (key - now) / cb
                p = 1.0
                for a in apps:
                    p *= ipow(self._dists[a]._cdf(x), counts[a])
                e_fin += w[m] * p
            e_max = self._mixed_emax(apps, counts)
        e_t = cb * e_max
        if not (e_t > 0.0):
            e_t = 1e-300
        return e_fin, e_t

    def _most_likely_alone(self, present, now) -> tuple[list[tuple[float, int, int]], float]:
        """Among requests below theta alone, the one with the best chance alone, and its
        score as a batch of one."""
        c1 = self._c[0]
        best_p = -1.0
        best: list[tuple[float, int, int]] = []
        for a in present:
            key, rid = self._queues[a].last()
            p = self._dists[a]._cdf((key - now) / c1)
            if p > best_p:
                best_p = p
                best = [(key, rid, a)]
        if not best:
            return best, -1.0
        a = best[0][2]
        e_t = c1 * self._caches[a].emax[1]
        if not (e_t > 0.0):
            e_t = 1e-300
        return best, self._weights[a] * best_p / e_t

    # ---------------------------------------------------------------- mixed batches
    # E[max] of a batch that mixes apps: Simpson's rule for the integral of
    # 1 - prod_a F_a^n_a on the grid's edges below the mix's support end X (the largest of
    # its apps'), X itself, and the midpoints between them. Every piece but the last is a
    # whole bin, whose points every app tabulates once (_MixTable); the last, [edge, X],
    # is computed for the mix. Only the mix's own apps are looked at.
    def _mix_table(self, a: int) -> _MixTable:
        cache = self._caches[a]
        d = self._dists[a]
        mt = cache.mix
        if mt is None or mt.version != d.version:
            d._ready()
            if not self._pts:
                self._pts = _points(d.edges)
            mt = cache.mix = _MixTable(d, self._pts)
        return mt

    def _mixed_emax(self, apps: list[int], counts: dict[int, int]) -> float:
        tabs = [self._mix_table(a) for a in apps]
        key = tuple((a, counts[a], t.stamp) for a, t in zip(apps, tabs, strict=True))
        total = self._memo.get(key)
        if total is None:
            if len(self._memo) >= MEMO_CAP:
                self._memo = {}
            total = self._memo[key] = self._mixed_emax_sum(apps, counts, tabs)
        return total

    def _mixed_emax_sum(self, apps: list[int], counts: dict[int, int], tabs) -> float:
        pts = self._pts
        top = 0.0
        zero_until = -1
        one_from = 0
        for t in tabs:
            if t.top > top:
                top = t.top
            if t.zero_until > zero_until:
                zero_until = t.zero_until
            if t.one_from > one_from:
                one_from = t.one_from
        edges = len(pts) // 2 + 1
        nk = 0  # the grid's edges below the support's end
        while nk < edges and pts[2 * nk] < top:
            nk += 1
        if nk == 0:
            return 0.0
        last = nk - 1
        rows = [t.row(counts[a]) for a, t in zip(apps, tabs, strict=True)]
        total = 0.0
        for m in range(last):
            j = 2 * m
            h = pts[j + 2] - pts[j]
            if j + 2 <= zero_until:
                total += h
            elif j >= one_from:
                return total
            else:
                g0 = 1.0
                gm = 1.0
                g2 = 1.0
                for row in rows:
                    g0 *= row[j]
                    gm *= row[j + 1]
                    g2 *= row[j + 2]
                total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2))
        j = 2 * last
        if j >= one_from:
            return total
        x0 = pts[j]
        mid = 0.5 * (x0 + top)
        h = top - x0
        g0 = 1.0
        gm = 1.0
        g2 = 1.0
        for a, row in zip(apps, rows, strict=True):
            d = self._dists[a]
            n = counts[a]
            g0 *= row[j]
            gm *= _rep_pow(d._cdf(mid), n)
            g2 *= _rep_pow(d._cdf(top), n)
        total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2))
        return total
