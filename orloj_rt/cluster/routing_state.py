"""What a node publishes for the routers, and the estimates they make from it.

Pure data and arithmetic: no IO, no clock, no sockets. A node builds a `NodeState`
(routing_node.py reads it off the serving core) every few milliseconds; a router
(routing.py) keeps the last one of each node and estimates from it a new request's chance
of finishing there. On the wire a state is `to_wire()`'s dict of str / int / float / list
/ dict only (msgpack or JSON), read back by `NodeState.from_wire`.

Times are seconds on the node's clock (the simulator's units read as seconds). A state's
`stamp` is the time it describes; a router's `received` time and its `now` are on the
router's clock, and only their differences matter (`received - stamp` is not used: the
router takes the age as `now - stamp` once it has the state, so the two clocks must agree
to within what a state's age tolerates; on one machine or with NTP they do).

A solo-time distribution travels as `QUANTILE_PROBS` quantiles (12 numbers) and its mean.
From them `Summary` gives a CDF (linear between the quantiles, 0 at 0) and E[max of b],
the expected longest of b independent draws, with each quantile standing for its
probability bin (`BIN_EDGES`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from statistics import NormalDist

#: the probabilities at which a node publishes each solo-time distribution
QUANTILE_PROBS = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.925, 0.975, 0.995)
#: quantile k stands for the probability bin [BIN_EDGES[k], BIN_EDGES[k + 1])
BIN_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
WIRE_VERSION = 1

_NORMAL = NormalDist()


def lognormal_quantiles(mean: float, cov: float) -> list[float]:
    """The QUANTILE_PROBS quantiles of the lognormal with this mean and CoV."""
    if not (mean > 0 and math.isfinite(mean)):
        raise ValueError(f"a distribution's mean must be > 0, got {mean!r}")
    cov = max(float(cov), 1e-6)
    s2 = math.log1p(cov * cov)
    mu, s = math.log(mean) - s2 / 2.0, math.sqrt(s2)
    return [math.exp(mu + s * _NORMAL.inv_cdf(p)) for p in QUANTILE_PROBS]


class Summary:
    """A solo-time distribution as published: its quantiles and mean (seconds)."""

    __slots__ = ("mean", "q", "_emax", "_bt")

    def __init__(self, mean: float, q) -> None:
        q = [float(v) for v in q]
        if len(q) != len(QUANTILE_PROBS):
            raise ValueError(f"a summary has {len(QUANTILE_PROBS)} quantiles, got {len(q)}")
        if not (mean > 0 and math.isfinite(mean)) or not all(
                v >= 0 and math.isfinite(v) for v in q):  # fmt: skip
            raise ValueError(f"a summary needs a mean > 0 and finite quantiles >= 0, "
                             f"got mean {mean!r}, quantiles {q}")  # fmt: skip
        for i in range(1, len(q)):  # non-decreasing, whatever rounding did
            if q[i] < q[i - 1]:
                q[i] = q[i - 1]
        self.mean = float(mean)
        self.q = q
        self._emax: list[float] = []  # E[max of b] for b = 1.. as far as asked
        self._bt: tuple | None = None  # (inflation, [c(b) E[max of b] for each b])

    @classmethod
    def lognormal(cls, mean: float, cov: float) -> Summary:
        return cls(mean, lognormal_quantiles(mean, cov))

    @classmethod
    def of(cls, dist) -> Summary:
        """From an engine `Distribution` (either engine's: `quantile(p)`, `mean()`)."""
        return cls(float(dist.mean()), [float(dist.quantile(p)) for p in QUANTILE_PROBS])

    def scaled(self, k: float) -> Summary:
        return Summary(self.mean * k, [v * k for v in self.q])

    def cdf(self, t: float) -> float:
        """P(X <= t): linear between the published quantiles, from (0, 0) to the first,
        flat at 1 beyond the last."""
        q = self.q
        if t <= 0:
            return 0.0
        if t >= q[-1]:
            return 1.0
        i = bisect_right(q, t)
        if i == 0:
            return QUANTILE_PROBS[0] * t / q[0] if q[0] > 0 else QUANTILE_PROBS[0]
        lo, hi = q[i - 1], q[i]
        p0, p1 = QUANTILE_PROBS[i - 1], QUANTILE_PROBS[i]
        if hi <= lo:
            return p1
        return p0 + (p1 - p0) * (t - lo) / (hi - lo)

    def expected_max(self, b: int) -> float:
        """E[max of b draws], each quantile standing for its bin; b = 1 gives the mean."""
        b = max(1, int(b))
        em = self._emax
        while len(em) < b:
            n = len(em) + 1
            if n == 1:
                em.append(self.mean)
                continue
            acc, prev = 0.0, 0.0
            for k, v in enumerate(self.q):
                cur = BIN_EDGES[k + 1] ** n
                acc += v * (cur - prev)
                prev = cur
            # the bins' representatives understate the mean a little; keep E[max] >= mean
            em.append(max(acc, self.mean))
        return em[b - 1]

    def batch_times(self, inflation) -> list[float]:
        """c(b) E[max of b] for b = 1..len(inflation), kept for the last table asked (the
        same list, or an equal one: each state decoded brings its own)."""
        bt = self._bt
        if bt is None or (bt[0] is not inflation and bt[0] != inflation):
            bt = self._bt = (inflation, [c * self.expected_max(b)
                                         for b, c in enumerate(inflation, 1)])  # fmt: skip
        return bt[1]

    def to_wire(self) -> list:
        return [self.mean, list(self.q)]

    @classmethod
    def from_wire(cls, v) -> Summary:
        """The summary of a wire pair; an equal pair decoded before gives the same object
        (`_interned`), so that its tables (E[max of b], batch times) are computed once
        per distribution, not once per state received (a node publishes every 5 ms)."""
        key = (v[0], tuple(v[1]))
        hit = _SUMMARIES.get(key)
        if hit is None:
            hit = cls(float(v[0]), v[1])
            _intern(_SUMMARIES, key, hit)
        return hit


# what from_wire decoded, by its wire value: the distributions and batch-inflation tables
# of the nodes change rarely (a node recomputes an app's when its samples grew by 1/8)
_SUMMARIES: dict = {}
_INFLATIONS: dict = {}
_INTERN_MAX = 4096  # entries per table; a full table starts again (bounded memory)


def _intern(table: dict, key, value) -> None:
    if len(table) >= _INTERN_MAX:
        table.clear()
    table[key] = value


def _inflation(c) -> list[float]:
    """A wire inflation table as a list of floats, the same list for equal tables."""
    key = tuple(c)
    hit = _INFLATIONS.get(key)
    if hit is None:
        hit = [float(v) for v in c]
        _intern(_INFLATIONS, key, hit)
    return hit


def batch_factor(inflation, dist: Summary, b: int) -> float:
    """Worker seconds per request in a batch of b: c(b) E[max of b] / b."""
    b = max(1, min(int(b), len(inflation)))
    return dist.batch_times(inflation)[b - 1] / b


@dataclass
class AppState:
    """One app of one model on one node."""

    queued: int = 0  # its requests waiting in the node's queue (not running)
    dist: Summary | None = None  # its solo times on this node; None: the model's default

    def to_wire(self) -> list:
        return [self.queued, None if self.dist is None else self.dist.to_wire()]

    @classmethod
    def from_wire(cls, v) -> AppState:
        return cls(int(v[0]), None if v[1] is None else Summary.from_wire(v[1]))


@dataclass
class ModelState:
    """One model on one node: its batch inflation, its default (prior) distribution, its
    queue per app, how many of its requests run, and the worker time its queue needs."""

    inflation: list[float]  # c(1..B), B the maximum batch
    default: Summary  # the solo-time distribution of an app the node has not learned
    apps: dict[str, AppState] = field(default_factory=dict)
    queued: int = 0  # all its waiting requests (the apps listed and any left out)
    running: int = 0  # its requests on workers now
    backlog: float = 0.0  # worker seconds its queued requests need (batched, see node_state)
    alive: int = 0  # of the queued, those whose deadline has not passed
    slack: float = 0.0  # their mean time left to their deadline (seconds)
    served: int = 0  # requests dispatched to workers since the node started (a counter)

    def dist(self, app: str) -> Summary:
        a = self.apps.get(app)
        return self.default if a is None or a.dist is None else a.dist

    def to_wire(self) -> dict:
        return {
            "c": list(self.inflation),
            "default": self.default.to_wire(),
            "apps": {k: a.to_wire() for k, a in self.apps.items()},
            "queued": self.queued,
            "running": self.running,
            "backlog": self.backlog,
            "alive": self.alive,
            "slack": self.slack,
            "served": self.served,
        }

    @classmethod
    def from_wire(cls, d: dict) -> ModelState:
        return cls(
            inflation=_inflation(d["c"]),
            default=Summary.from_wire(d["default"]),
            apps={str(k): AppState.from_wire(v) for k, v in d["apps"].items()},
            queued=int(d["queued"]),
            running=int(d["running"]),
            backlog=float(d["backlog"]),
            alive=int(d.get("alive", 0)),
            slack=float(d.get("slack", 0.0)),
            served=int(d.get("served", 0)),
        )


@dataclass
class NodeState:
    """What one node publishes so that a router can estimate a new request's chance of
    finishing there.

    `busy_left`: for each worker running a batch, the expected seconds until it is free
    (idle workers are not listed: `workers - len(busy_left)` are idle). `speed`: the
    node's relative speed as configured (1 by default); informational, since the
    distributions are measured on the node and already carry it."""

    node: str
    stamp: float  # the node-clock time this state describes
    workers: int  # ready workers
    busy_left: list[float] = field(default_factory=list)
    models: dict[str, ModelState] = field(default_factory=dict)
    speed: float = 1.0

    @property
    def idle(self) -> int:
        return max(0, self.workers - len(self.busy_left))

    def queue_length(self) -> int:
        """Requests queued or running on the node (what p2c compares)."""
        return sum(m.queued + m.running for m in self.models.values())

    def backlog(self) -> float:
        """Worker seconds that the node's queues need, all models together."""
        return sum(m.backlog for m in self.models.values())

    def after_backlog(self) -> list[float]:
        """When each worker is free once the running batches and the queued backlog are
        done (seconds after the stamp); computed once per state."""
        cached = self.__dict__.get("_after")
        if cached is None:
            w = max(1, self.workers)
            free = [max(0.0, b) for b in self.busy_left] + [0.0] * max(0, w - len(self.busy_left))
            level = water_level(free, self.backlog())
            cached = self.__dict__["_after"] = [max(f, level) for f in free]
        return cached

    def to_wire(self) -> dict:
        return {
            "v": WIRE_VERSION,
            "node": self.node,
            "stamp": self.stamp,
            "workers": self.workers,
            "busy_left": list(self.busy_left),
            "speed": self.speed,
            "models": {k: m.to_wire() for k, m in self.models.items()},
        }

    @classmethod
    def from_wire(cls, d: dict) -> NodeState:
        if d.get("v") != WIRE_VERSION:
            raise ValueError(f"node state of wire version {d.get('v')!r}; this router reads "
                             f"version {WIRE_VERSION}: run the same orloj-rt on every node")
        return cls(
            node=str(d["node"]),
            stamp=float(d["stamp"]),
            workers=int(d["workers"]),
            busy_left=[float(v) for v in d["busy_left"]],
            models={str(k): ModelState.from_wire(m) for k, m in d["models"].items()},
            speed=float(d["speed"]),
        )


# ---------------------------------------------------------------------- estimates
def water_level(free: list[float], work: float) -> float:
    """The time at which `work` worker seconds, shared by workers free at times `free`
    (each from its own free time on), are done: the level L with
    sum(max(0, L - f)) = work. With no work, the earliest free time."""
    fs = sorted(free)
    if not fs:
        return math.inf
    if work <= 0:
        return fs[0]
    acc = 0.0  # work that fits below fs[k]
    for k in range(1, len(fs)):
        need = k * (fs[k] - fs[k - 1])
        if acc + need >= work:
            return fs[k - 1] + (work - acc) / k
        acc += need
    return fs[-1] + (work - acc) / len(fs)


def wait_estimate(state: NodeState, age: float, extra_work: float,
                  use_state: bool = True) -> float:  # fmt: skip
    """Seconds from now until a worker of the node could start a request sent now, if the
    node served its queue in order: the state's running batches and queued backlog,
    `age` seconds later, then `extra_work` worker seconds sent since (the router's own).
    `use_state` False: the node's load is unknown (a stale state): only `extra_work`."""
    w = max(1, state.workers)
    if use_state:
        after = state.after_backlog()
        free_now = [f - age if f > age else 0.0 for f in after]
    else:
        free_now = [0.0] * w
    if extra_work <= 0:
        return min(free_now)
    return water_level(free_now, extra_work)


def batch_cap(inflation, dist: Summary, slack: float) -> int:
    """The largest batch size b (1 to the maximum) whose expected time c(b) E[max of b]
    fits in `slack` seconds: the batches an SLO-aware node forms for such requests."""
    return max(1, bisect_right(dist.batch_times(inflation), slack))


def finish_chance(state: NodeState, model: str, app: str, slo: float, age: float,
                  extra_work: float, extra_count: int, use_state: bool = True
                  ) -> tuple[float, float]:  # fmt: skip
    """(the estimated chance that a request of `app` on `model`, sent now with `slo`
    seconds to its deadline, finishes there in time; the wait estimate). It waits
    `wait_estimate`, then runs in a batch of b members: the queue per worker, at least 1,
    at most `batch_cap` of what is left of its SLO: P(c(b) X <= slo - wait), X the app's
    solo time on the node."""
    m = state.models[model]
    wait = wait_estimate(state, age, extra_work, use_state)
    left = slo - wait
    if left <= 0:
        return 0.0, wait
    d = m.dist(app)
    q = extra_count + (m.queued if use_state else 0)
    b = min(max(1, math.ceil(q / max(1, state.workers))), batch_cap(m.inflation, d, left))
    return d.cdf(left / m.inflation[b - 1]), wait


def marginal_value(state: NodeState, model: str, app: str, slo: float, age: float,
                   extra_work: float, extra_count: int, rate: float,
                   use_state: bool = True) -> tuple[float, float, float]:  # fmt: skip
    """(chance, wait, value) of sending a request to the node: `finish_chance`'s chance
    and wait, and the expected finishes it adds there, its chance less what it takes
    from the others: it holds a worker for its cost S (`send_cost`), S / workers of the
    node's time, by which it delays the requests behind it, each losing
    P(left) - P(left - S / workers) (evaluated at its own slack: the others' share its
    law and SLO), and those are the node's waiting requests still in time, the ones
    sent there since the state, and the ones expected to arrive while it is ahead of
    them (`rate` x (wait + S / workers), `rate` the requests sent there per second
    lately)."""
    # finish_chance and send_cost inlined (the same arithmetic): the batch tables and the
    # wait are looked up once per node and request
    m = state.models[model]
    workers = max(1, state.workers)
    wait = wait_estimate(state, age, extra_work, use_state)
    left = slo - wait
    if left <= 0:
        return 0.0, wait, 0.0
    d = m.dist(app)
    inflation = m.inflation
    times = d.batch_times(inflation)
    q = extra_count + (m.queued if use_state else 0)
    b = min(max(1, math.ceil(q / workers)), max(1, bisect_right(times, left)))
    c = inflation[b - 1]
    chance = d.cdf(left / c)
    bs = min(max(1, math.ceil((q + 1) / workers)), max(1, bisect_right(times, slo)))
    delta = times[bs - 1] / bs / workers
    if delta <= 0:
        return chance, wait, chance
    loss = chance - d.cdf(max(0.0, left - delta) / c)
    behind = (m.alive if use_state else 0) + extra_count + rate * (wait + delta)
    return chance, wait, chance - behind * loss


def send_cost(state: NodeState, model: str, app: str, queued: int, slo: float) -> float:
    """Worker seconds that one more request of `app` adds to a node whose model already
    has `queued` requests waiting: its share c(b) E[max of b] / b of a batch of b, the
    queue per worker (at least 1) at most `batch_cap(slo)`."""
    m = state.models.get(model)
    if m is None:
        return 0.0
    d = m.dist(app)
    b = min(max(1, math.ceil((queued + 1) / max(1, state.workers))),
            batch_cap(m.inflation, d, slo))  # fmt: skip
    return batch_factor(m.inflation, d, b)
