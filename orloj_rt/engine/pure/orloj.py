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
     q_a = F_a^-1(theta^(1/b)); pool j holds the j fastest apps and admits a request of
     any of them from the slack c(b) * q_(j) on, which again guarantees theta whatever
     the mix (each member app has F_a(q_(j)) >= theta^(1/b)). Pool j yields its b most
     urgent admitted requests, and is skipped when its newest app has no admitted
     request. So a batch of fast requests is not forced to wait for, or run with, slow
     ones. With cost hints (orloj_rt/policies/hint_classes.py) the apps are cost classes,
     and pools are what lets orloj batch short requests with short ones: +12-17% finish
     rate over one bar in the simulator (docs/results.md). They cost time: up to an app count times
     more candidates (bench/sched_overhead.py: 4 apps at queue 1,000, p50 about 6 us
     instead of 4; at queue 100,000, about 25 us instead of 5), so they are opt-in.
3. Score each candidate by its expected number of finishes per unit of expected batch
   time, sum_i P_i / E[T_B], and dispatch the best (ties: the first candidate in order of
   b, then of pool).

If no request reaches theta even alone, the one most likely to finish alone runs, so that
an idle worker is never wasted on waiting (`fallback=False` turns this off).

The defaults, theta = 0.8 and epsilon = 0.1, come from the simulator's sweep
(docs/results.md): theta 0.7 -> 0.8 trades a few batch members for fewer late ones, and a
request with less than a 10% chance even alone only takes a worker from better bets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    __slots__ = ("version", "qth", "emax")

    def __init__(self) -> None:
        self.version = -1
        self.qth: list[float] = []  # qth[b] = F^-1(theta^(1/b))
        self.emax: list[float] = []  # emax[b] = E[max of b solo times]


class _MixedTables:
    """CDF powers on a shared set of points, for E[max] of batches that mix apps.

    The points are the grid's bin edges below the largest support end of any app, that
    end, and the midpoints between them; Simpson's rule on each piece integrates
    1 - prod_a F_a^n_a. Built only when a mixed batch is first scored after a change.
    """

    __slots__ = ("versions", "pts", "pow", "zero_until", "one_from", "memo")

    def __init__(self) -> None:
        self.versions: tuple = ()
        self.pts: list[float] = []
        self.pow: list[list[list[float]] | None] = []  # pow[a][n][j] = F_a(pts[j])^n
        self.zero_until: list[int] = []  # the last j with F_a(pts[j]) == 0, or -1
        self.one_from: list[int] = []  # the first j with F_a(pts[j]) == 1
        self.memo: dict[tuple[int, ...], float] = {}  # counts -> E[max], until a change


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
        pools: bool = False,
    ):
        self._inflation = make_inflation(max_batch, alpha, inflation)
        self._c = self._inflation.table
        self._B = len(self._c)
        self._theta = check_probability("theta", theta, open_low=True)
        self._epsilon = check_probability("epsilon", epsilon)
        self._fallback = bool(fallback)
        self._pools = bool(pools)
        self._troot = [0.0] + [self._theta ** (1.0 / b) for b in range(1, self._B + 1)]
        self._app_index: dict[str, int] = {}
        self._app_names: list[str] = []
        self._dists: list[Distribution | None] = []
        self._queues: list[RequestQueue] = []
        self._caches: list[_AppCache] = []
        self._where: dict[int, int] = {}
        self._default: Distribution | None = None
        self._grid: tuple | None = None
        self._mixed = _MixedTables()

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
        return list(self._app_names)

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
        """Replaces `app`'s distribution with a copy of `dist`."""
        self._check_grid(dist)
        a = self._app(app, create=True, need_dist=False)
        self._dists[a] = dist.copy()

    def distribution(self, app: str) -> Distribution:
        """A copy of `app`'s current distribution (the default prior for an unseen app)."""
        a = self._app_index.get(app)
        if a is None and self._default is not None:
            return self._default.copy()
        if a is None or self._dists[a] is None:
            raise KeyError(f"unknown app {app!r}: no distribution has been set or learned for it")
        return self._dists[a].copy()

    def _app(self, app: str, create: bool, need_dist: bool = True) -> int:
        a = self._app_index.get(app)
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
            a = len(self._app_names)
            self._app_index[app] = a
            self._app_names.append(app)
            self._dists.append(self._default.copy() if self._default is not None else None)
            self._queues.append(RequestQueue())
            self._caches.append(_AppCache())
        elif need_dist and self._dists[a] is None:
            raise ValueError(f"no execution-time distribution for app {app!r}")
        return a

    # ---------------------------------------------------------------- the queue
    def __len__(self) -> int:
        return len(self._where)

    def queued(self, app: str | None = None) -> int:
        if app is None:
            return len(self._where)
        a = self._app_index.get(app)
        return 0 if a is None else len(self._queues[a])

    def enqueue(self, req_id, app, arrival, deadline, hint=None) -> None:
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
        a = self._app(app, create=True)
        self._queues[a].push(req_id, deadline)
        self._where[req_id] = a

    def remove(self, req_id) -> None:
        a = self._where.pop(req_id, None)
        if a is None:
            raise KeyError(f"unknown request id {req_id!r}: it is not queued")
        self._queues[a].remove(req_id)

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
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        c1 = self._c[0]
        eps = self._epsilon
        dropped: list[int] = []
        present: list[int] = []
        for a in range(len(self._queues)):
            q = self._queues[a]
            if len(q) == 0:
                continue
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
            if len(q):
                present.append(a)
        if not present:
            return Decision([], dropped, [])

        best_score = -1.0
        best: list[tuple[float, int, int]] = []
        for b in range(1, self._B + 1):
            cb = self._c[b - 1]
            for members in self._candidates(b, cb, present, now):
                score = self._score(members, b, cb, now)
                if score > best_score:
                    best_score = score
                    best = members
        if not best and self._fallback:
            best = self._most_likely_alone(present, now)
        for _, rid, a in best:
            self._queues[a].remove(rid)
            del self._where[rid]
        return Decision([rid for _, rid, _ in best], dropped, [])

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

    def _score(self, members, b: int, cb: float, now: float) -> float:
        counts = [0] * len(self._queues)
        for _, _, a in members:
            counts[a] += 1
        apps = [a for a in range(len(counts)) if counts[a]]
        e_fin = 0.0
        if len(apps) == 1:
            d = self._dists[apps[0]]
            for key, _, _ in members:
                e_fin += ipow(d._cdf((key - now) / cb), b)
            e_max = self._caches[apps[0]].emax[b]
        else:
            for key, _, _ in members:
                x = (key - now) / cb
                p = 1.0
                for a in apps:
                    p *= ipow(self._dists[a]._cdf(x), counts[a])
                e_fin += p
            e_max = self._mixed_emax(counts)
        e_t = cb * e_max
        if not (e_t > 0.0):
            e_t = 1e-300
        return e_fin / e_t

    def _most_likely_alone(self, present, now) -> list[tuple[float, int, int]]:
        """Among requests below theta alone, the one with the best chance alone."""
        c1 = self._c[0]
        best_p = -1.0
        best: list[tuple[float, int, int]] = []
        for a in present:
            key, rid = self._queues[a].last()
            p = self._dists[a]._cdf((key - now) / c1)
            if p > best_p:
                best_p = p
                best = [(key, rid, a)]
        return best

    # ---------------------------------------------------------------- mixed batches
    def _mixed_emax(self, counts: list[int]) -> float:
        mt = self._mixed
        versions = tuple(-1 if d is None else d.version for d in self._dists)
        if mt.versions != versions:
            self._build_mixed(versions)
        memo_key = tuple(counts)
        total = mt.memo.get(memo_key)
        if total is None:
            total = mt.memo[memo_key] = self._mixed_emax_sum(counts)
        return total

    def _mixed_emax_sum(self, counts: list[int]) -> float:
        mt = self._mixed
        pts = mt.pts
        npts = len(pts)
        zero_until = -1
        one_from = 0
        for a, n in enumerate(counts):
            if n:
                if mt.zero_until[a] > zero_until:
                    zero_until = mt.zero_until[a]
                if mt.one_from[a] > one_from:
                    one_from = mt.one_from[a]
        total = 0.0
        j = 0
        while j + 2 < npts:
            h = pts[j + 2] - pts[j]
            if j + 2 <= zero_until:
                total += h
            elif j >= one_from:
                break
            else:
                g0 = 1.0
                gm = 1.0
                g2 = 1.0
                for a, n in enumerate(counts):
                    if n:
                        row = mt.pow[a][n]
                        g0 *= row[j]
                        gm *= row[j + 1]
                        g2 *= row[j + 2]
                total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2))
            j += 2
        return total

    def _build_mixed(self, versions: tuple) -> None:
        mt = self._mixed
        x_end = 0.0
        edges: tuple[float, ...] = ()
        for d in self._dists:
            if d is not None and d.samples_added:
                d._ready()
                edges = d.edges
                top = d._bhi[d._last]
                if top > x_end:
                    x_end = top
        nodes = [e for e in edges if e < x_end]
        nodes.append(x_end)
        pts: list[float] = []
        for i in range(len(nodes) - 1):
            pts.append(nodes[i])
            pts.append(0.5 * (nodes[i] + nodes[i + 1]))
        pts.append(nodes[-1])
        mt.pts = pts
        mt.pow = []
        mt.zero_until = []
        mt.one_from = []
        for d in self._dists:
            if d is None or not d.samples_added:
                mt.pow.append(None)
                mt.zero_until.append(-1)
                mt.one_from.append(0)
                continue
            f = [d._cdf(x) for x in pts]
            rows = [[1.0] * len(pts)]
            for _ in range(self._B):
                prev = rows[-1]
                rows.append([prev[j] * f[j] for j in range(len(pts))])
            mt.pow.append(rows)
            zu = -1
            of = len(pts) - 1
            for j in range(len(pts)):
                if f[j] <= 0.0:
                    zu = j
            for j in range(len(pts) - 1, -1, -1):
                if f[j] >= 1.0:
                    of = j
                else:
                    break
            mt.zero_until.append(zu)
            mt.one_from.append(of)
        mt.versions = versions
        mt.memo = {}
