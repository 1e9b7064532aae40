"""Routing between nodes: which node serves a new request. Pure decision code: no IO, no
clock, no sockets; every time is an argument.

    from orloj_rt.cluster.routing import make_router, node_state, NodeState
    router = make_router("orloj", seed=0)          # or random, round-robin, p2c
    router.update("node-a", state, received=now)   # each node's state as it arrives
    node = router.choose("resnet", "app", slo=0.050, now=now)   # a node id
    router.remove("node-a")                        # a node left

A node's state (`NodeState`, routing_state.py) is built by `node_state(core, node, now)`
from its serving core (routing_node.py) and travels as `to_wire()` / `from_wire()`.

The routers (`ROUTERS`; docs/cluster-routing.md has the design and the measurements):

- `random`: a node uniformly at random.
- `round-robin`: the nodes in turn (sorted by id).
- `p2c`: power of two choices by queue length (Mitzenmacher; Ray Serve's default
  router): two distinct nodes at random, the one with fewer requests queued or running,
  counting the requests this router sent it since its state's stamp; ties at random.
- `orloj`: scores each candidate node (all of them, or `choices` = d at random: power of
  d) by the expected finishes the request adds there (`marginal_value`), and picks the
  best; values within `tie` of the best are broken by the shortest estimated wait, then
  at random. The value is the request's estimated chance of finishing there within its
  SLO (`finish_chance`: the node's running batches and queued backlog aged by the
  state's age, then the worker seconds of the requests this router sent it since the
  stamp, then the request itself in a batch, by the app's solo-time distribution
  measured on that node) less what it takes from the requests it delays there (its
  worker time, spread over the node's workers, times the chance each of them loses:
  the node's queue still in time, this router's sends since the state, and those it
  expects to send there meanwhile at its recent rate to that node, over the last
  `rate_window` x the app's mean solo time there). So a node where the request would
  only push others past their deadlines scores low even if the request itself would
  make it, and when no node can finish it, it goes where it harms nobody (a node whose
  policy will drop it). The rate is this router's own: with several routers, each sees
  its share.

Staleness (orloj and p2c alike): a state older than `stale_after` seconds (default 1 s)
is stale. A stale node is still a candidate, but its published load is ignored: its
queue counts as empty and only the requests this router sent it within the last
`stale_after` seconds count (a request sent longer ago than that is taken as done). Its
workers, maximum batch and distributions, which change slowly, are still used. So when
every state is stale, orloj routes by its own recent sends, each weighted by its expected
work and the node's speed as measured (least estimated wait, with the chance first), and
p2c by its own recent send counts: each becomes what a router without any state can do.
A node that never sent a state is not known: `update` makes a node known, `remove`
forgets it. `choose` raises `NoNodeError` when no node is known.

Models: the candidates are the nodes whose state lists the model (a node lists a model
once its first worker is ready). If no node lists it, every known node is a candidate
(the node answers an unknown model itself); random and round-robin use the same rule.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Protocol

from orloj_rt.cluster.routing_node import node_state
from orloj_rt.cluster.routing_state import (
    QUANTILE_PROBS,
    AppState,
    ModelState,
    NodeState,
    Summary,
    marginal_value,
    send_cost,
)

DEFAULT_STALE_AFTER = 1.0  # seconds


class NoNodeError(RuntimeError):
    """No node is known to the router: none has sent its state yet, or all were removed."""


class Router(Protocol):
    name: str

    def update(self, node: str, state: NodeState, received: float) -> None: ...

    def remove(self, node: str) -> None: ...

    def choose(self, model: str, app: str, slo: float, now: float) -> str: ...


class _Node:
    """What a router keeps of one node: its last state and what it sent it since."""

    __slots__ = ("state", "received", "sent", "work")

    def __init__(self, state: NodeState, received: float) -> None:
        self.state = state
        self.received = received
        # (sent at, model, app, worker seconds) since the state's stamp, oldest first
        self.sent: deque = deque()
        self.work = 0.0  # the sum of their worker seconds

    def forget_until(self, t: float, inclusive: bool) -> None:
        """Forgets the sends before `t` (at `t` too if `inclusive`)."""
        sent = self.sent
        while sent and (sent[0][0] <= t if inclusive else sent[0][0] < t):
            self.work -= sent.popleft()[3]
        if not sent:
            self.work = 0.0  # no drift from the subtractions

    def add(self, item: tuple) -> None:
        self.sent.append(item)
        self.work += item[3]


def _check_slo(slo: float) -> float:
    slo = float(slo)
    if not (slo > 0 and math.isfinite(slo)):
        raise ValueError(f"a request's slo must be > 0 seconds, got {slo!r}")
    return slo


def _two(rng: random.Random, ids: list) -> tuple:
    """`rng.sample(ids, 2)`, the same two for the same generator state (CPython 3.11's
    algorithm: a pool below 22 items, else draws until distinct), without its checks of
    the population's type, which made it most of a p2c choice (~5 us of ~8)."""
    n = len(ids)
    j0 = rng.randrange(n)
    if n <= 21:
        j1 = rng.randrange(n - 1)
        return ids[j0], ids[n - 1] if j1 == j0 else ids[j1]
    j1 = rng.randrange(n)
    while j1 == j0:
        j1 = rng.randrange(n)
    return ids[j0], ids[j1]


class _Base:
    name = ""
    prepares = True  # a decision may be made ahead and dropped (`Prepared`)

    def __init__(self, seed: int = 0, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        stale_after = float(stale_after)
        if not stale_after > 0:
            raise ValueError(f"stale_after must be > 0 seconds, got {stale_after!r}")
        self.rng = random.Random(seed)
        self.stale_after = stale_after
        self.nodes: dict[str, _Node] = {}
        self._ids: list[str] = []  # sorted node ids
        self.fallbacks = 0  # choices made with every candidate's state stale

    # --------------------------------------------------------------- the protocol
    def update(self, node: str, state: NodeState, received: float) -> None:
        """The node's state arrived at `received`. An older stamp than the one held is
        ignored (states can cross on the way); the router's sends before the new stamp
        are in it and are forgotten."""
        if not isinstance(state, NodeState):
            raise TypeError(f"update needs a NodeState, got {type(state).__name__}")
        n = self.nodes.get(node)
        if n is None:
            self.nodes[node] = _Node(state, received)
            self._ids = sorted(self.nodes)
            return
        if state.stamp < n.state.stamp:
            return
        n.state, n.received = state, received
        n.forget_until(state.stamp, inclusive=True)

    def remove(self, node: str) -> None:
        """Forgets the node (it left or died); unknown ids are ignored."""
        if self.nodes.pop(node, None) is not None:
            self._ids = sorted(self.nodes)

    def choose(self, model: str, app: str, slo: float, now: float) -> str:
        """The node for a request sent now; the send is counted (`pick` then `record`)."""
        node = self.pick(model, app, slo, now)
        self._sent(node, model, app, float(slo), float(now))
        return node

    def pick(self, model: str, app: str, slo: float, now: float) -> str:
        """`choose`'s decision without counting the send: `record` counts it."""
        slo = _check_slo(slo)
        return self._pick(self._candidates(model), model, app, slo, float(now))

    def record(self, node: str, model: str, app: str, slo: float, now: float) -> None:
        """Counts a request sent to `node` (a known node) at `now`, as `choose` does."""
        self._sent(node, model, app, float(slo), float(now))

    # --------------------------------------------------------------- helpers
    def _candidates(self, model: str) -> list[str]:
        if not self._ids:
            raise NoNodeError("no node is known to the router: no node has published its "
                              "state yet (start the nodes, or wait for their first state)")
        ids = [i for i in self._ids if model in self.nodes[i].state.models]
        return ids or list(self._ids)

    def stale(self, node: str, now: float) -> bool:
        return now - self.nodes[node].state.stamp > self.stale_after

    def _recent(self, n: _Node, now: float, stale: bool) -> deque:
        """The sends that still count: since the stamp; for a stale state, within the
        last stale_after seconds."""
        if stale:
            n.forget_until(now - self.stale_after, inclusive=False)
        return n.sent

    def _sent(self, node: str, model: str, app: str, slo: float, now: float) -> None:
        self.nodes[node].add((now, model, app, 0.0))

    def _pick(self, ids: list[str], model: str, app: str, slo: float, now: float) -> str:
        raise NotImplementedError


class RandomRouter(_Base):
    name = "random"

    def _pick(self, ids, model, app, slo, now):
        return ids[self.rng.randrange(len(ids))]

    def _sent(self, node, model, app, slo, now):
        pass  # it never looks at them


class RoundRobinRouter(_Base):
    name = "round-robin"
    prepares = False  # a decision made and dropped would skip a node

    def __init__(self, seed: int = 0, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        super().__init__(seed, stale_after)
        self._next = 0

    def _pick(self, ids, model, app, slo, now):
        node = ids[self._next % len(ids)]
        self._next = (self._next + 1) % len(ids)
        return node

    def _sent(self, node, model, app, slo, now):
        pass


class P2CRouter(_Base):
    """Power of two choices by queue length (queued + running + own sends since the
    stamp); see the module docstring for stale states."""

    name = "p2c"

    def load(self, node: str, now: float) -> int:
        n = self.nodes[node]
        stale = self.stale(node, now)
        own = len(self._recent(n, now, stale))
        return own if stale else n.state.queue_length() + own

    def _pick(self, ids, model, app, slo, now):
        if len(ids) == 1:
            return ids[0]
        a, b = _two(self.rng, ids)
        la, lb = self.load(a, now), self.load(b, now)
        if all(self.stale(i, now) for i in (a, b)):
            self.fallbacks += 1
        if la == lb:
            return a if self.rng.random() < 0.5 else b
        return a if la < lb else b


class OrlojRouter(_Base):
    """By the estimated chance of finishing within the SLO (module docstring).

    `choices`: candidates scored per request, 0 for all (default); `tie`: chances within
    this of the best are ties, broken by the shortest estimated wait (default 0.01)."""

    name = "orloj"

    def __init__(self, seed: int = 0, stale_after: float = DEFAULT_STALE_AFTER,
                 choices: int = 0, tie: float = 0.01,
                 rate_window: float = 20.0) -> None:  # fmt: skip
        super().__init__(seed, stale_after)
        choices = int(choices)
        if choices < 0 or choices == 1:
            raise ValueError(f"choices must be 0 (every node) or >= 2, got {choices!r}")
        tie = float(tie)
        if not 0 <= tie < 1:
            raise ValueError(f"tie must be in [0, 1), got {tie!r}")
        rate_window = float(rate_window)
        if not rate_window > 0:
            raise ValueError(f"rate_window must be > 0, got {rate_window!r}")
        self.choices = choices
        self.tie = tie
        self.rate_window = rate_window
        self._times: dict[str, deque] = {}  # per node, when this router sent it requests
        self.last_scores: dict[str, tuple[float, float, float]] = {}  # the last choice's

    def rate(self, node: str, window: float, now: float) -> float:
        """Requests this router sent `node` per second over the last `window` seconds."""
        times = self._times.get(node)
        if not times:
            return 0.0
        cut = now - window
        while times and times[0] < cut:
            times.popleft()
        return len(times) / window

    def score(self, node: str, model: str, app: str, slo: float,
              now: float) -> tuple[float, float, float]:  # fmt: skip
        """(estimated chance of finishing within slo, estimated wait, the expected
        finishes it adds: `marginal_value`) at `node`."""
        n = self.nodes[node]
        st = n.state
        if model not in st.models:
            return 0.0, math.inf, -math.inf
        stale = self.stale(node, now)
        sent = self._recent(n, now, stale)
        work = n.work
        window = self.rate_window * st.models[model].dist(app).mean
        return marginal_value(st, model, app, slo, max(0.0, now - st.stamp), work,
                              len(sent), self.rate(node, window, now),
                              use_state=not stale)  # fmt: skip

    @property
    def scores_each(self) -> bool:
        """Whether a decision is its candidates' scores, each of one node (`best`): with
        every node a candidate; power of d draws the candidates afresh each time."""
        return not self.choices

    def _pick(self, ids, model, app, slo, now):
        if self.choices and self.choices < len(ids):
            ids = self.rng.sample(ids, self.choices)
        return self.best(ids, {i: self.score(i, model, app, slo, now) for i in ids}, now)

    def best(self, ids: list, scores: dict, now: float) -> str:
        """The pick among `ids` by their `score`s (`_pick` without the scoring)."""
        self.last_scores = scores
        nodes, stale_after = self.nodes, self.stale_after
        if all(now - nodes[i].state.stamp > stale_after for i in ids):  # self.stale, inlined
            self.fallbacks += 1
        cut = max([v[2] for v in scores.values()]) - self.tie
        near = [i for i in ids if scores[i][2] >= cut]
        if len(near) == 1:
            return near[0]
        shortest = min([scores[i][1] for i in near]) + 1e-12
        pick = [i for i in near if scores[i][1] <= shortest]
        return pick[0] if len(pick) == 1 else pick[self.rng.randrange(len(pick))]

    def _sent(self, node, model, app, slo, now):
        n = self.nodes[node]
        st = n.state
        queued = len(n.sent)
        if not self.stale(node, now) and model in st.models:
            queued += st.models[model].queued
        n.add((now, model, app, send_cost(st, model, app, queued, slo)))
        self._times.setdefault(node, deque()).append(now)

    def update(self, node: str, state: NodeState, received: float) -> None:
        super().update(node, state, received)
        state.after_backlog()  # what every score of this state needs: made here, once

    def remove(self, node: str) -> None:
        super().remove(node)
        self._times.pop(node, None)


class Prepared:
    """A router's decisions made ahead of their requests, for a process whose requests
    should not wait for them (the cluster router, router.py).

        ahead = Prepared(make_router("orloj"))
        ahead.update(node, state, received)    # as router.update / remove
        node, ready = ahead.take(model, app, slo, now)   # the decision: prepared or made
        ...the request is forwarded to node...
        ahead.sent(node, model, app, slo, now)  # counts it; prepares the next of its kind

    A decision depends on the nodes' states and on what this router sent since them, so
    it is made right after each of those changes, for the kinds of request seen lately
    (model, app, slo: the last `keys`), and kept while nothing changed: `take` returns a
    kept decision when no state came and no request was sent since it was made, and it
    is at most `max_age` seconds old (the time between the decision and its request is
    an age added to the states'; the states are refreshed every few milliseconds, and
    each refresh prepares the decisions again: `prepare`). Otherwise `take` decides
    then. So each request is routed as the router would route it at the time the
    decision was made, from the same states and sends; what the wrapped router counts
    (its sends, its stale-state choices) counts the decisions used, not the ones
    prepared and dropped. A router whose decisions change it (round-robin) decides each
    when its request comes.

    With a router whose decision is one score per candidate node (orloj with every node
    a candidate: `scores_each`), the scores are kept per node and kind: a node's score
    is made again when its state came, when a request was sent to it, or when it is
    `max_age` old; the others' are kept (a send to one node changes no other node's
    score). So a send costs one node's score and the pick among the kept ones."""

    def __init__(self, router: _Base, max_age: float = 0.005, keys: int = 8) -> None:
        max_age = float(max_age)
        if not max_age >= 0:
            raise ValueError(f"max_age must be >= 0 seconds, got {max_age!r}")
        self.router = router
        self._each = bool(getattr(router, "scores_each", False))
        self.max_age = max_age
        self.keys = max(1, int(keys))
        self.version = 0  # bumped by every state, removal and send
        self._node_version: dict[str, int] = {}  # per node: its states and sends
        # (model, app, slo) -> [node, version, made at, stale-state choices it counted,
        #                       kept scores: ({node: score}, {node: (version, made at)})
        #                       or None]
        self._ready: dict[tuple, list] = {}
        self.prepared = 0  # decisions taken ready-made
        self.made = 0  # decisions made when their request came
        self.on_change = None  # called when the decisions made ahead are no longer valid

    def _changed(self, node: str) -> None:
        self.version += 1
        self._node_version[node] = self._node_version.get(node, 0) + 1
        if self.on_change is not None:
            self.on_change()

    def ready(self, key: tuple) -> tuple | None:
        """(node, made at) of the decision made ahead for this kind (model, app, slo)
        while nothing changed since; else None. For a caller that uses it outside `take`
        (the router's compiled relay), which then calls `taken(key)`."""
        hit = self._ready.get(key)
        if hit is None or hit[1] != self.version:
            return None
        return hit[0], hit[2]

    def taken(self, key: tuple) -> None:
        """The decision `ready(key)` gave was used: counted as `take` counts it."""
        hit = self._ready.get(key)
        if hit is not None:
            self.router.fallbacks += hit[3]
        self.prepared += 1

    def update(self, node: str, state: NodeState, received: float) -> None:
        self.router.update(node, state, received)
        self._changed(node)

    def remove(self, node: str) -> None:
        self.router.remove(node)
        self._changed(node)

    def take(self, model: str, app: str, slo: float, now: float) -> tuple[str, bool]:
        """(the node for a request of this kind sent now, whether it was ready-made).
        Raises as `choose` does (NoNodeError, ValueError for a bad slo)."""
        key = (model, app, slo)
        hit = self._ready.get(key)
        if hit is not None and hit[1] == self.version and now - hit[2] <= self.max_age:
            self.router.fallbacks += hit[3]
            self.prepared += 1
            return hit[0], True
        self.made += 1
        if hit is not None and hit[4] is not None:  # made again from the kept scores
            self._prepare(key, now)
            hit = self._ready.get(key)
            if hit is not None:
                self.router.fallbacks += hit[3]
                return hit[0], False
        return self.router.pick(model, app, slo, now), False

    def sent(self, node: str, model: str, app: str, slo: float, now: float) -> None:
        """The request went to `node`: counted, and the next decision of every kind seen
        lately prepared again (the send changed them all: with requests of several kinds
        in flight, the next one is often of another kind)."""
        r = self.router
        r.record(node, model, app, slo, now)
        self._changed(node)
        if not r.prepares:
            return
        key = (model, app, slo)
        ready = self._ready
        hit = ready.pop(key, None)
        if hit is None and len(ready) >= self.keys:
            del ready[next(iter(ready))]  # the kind seen least lately
        if hit is not None:
            ready[key] = hit  # the most lately seen, with its kept scores
        else:
            self._prepare(key, now)
        for k in list(ready):  # with kept scores, one node's score each (the node sent to)
            if ready[k][1] != self.version:
                self._prepare(k, now)

    def prepare(self, now: float) -> None:
        """Makes the decisions of the kinds seen lately again (after states came)."""
        for key in list(self._ready):
            self._prepare(key, now)

    def _prepare(self, key: tuple, now: float) -> None:
        r = self.router
        before = r.fallbacks
        try:
            if self._each:
                kept = self._ready.get(key)
                scores = self._scores(key, now, None if kept is None else kept[4])
                node = r.best(list(scores[0]), scores[0], now)
            else:
                scores = None
                node = r.pick(key[0], key[1], key[2], now)
        except (NoNodeError, ValueError):
            self._ready.pop(key, None)
            return
        counted, r.fallbacks = r.fallbacks - before, before
        self._ready[key] = [node, self.version, now, counted, scores]

    def _scores(self, key: tuple, now: float, kept: tuple | None) -> tuple:
        """({candidate: its score}, {candidate: (its node version, made at)}): the kept
        scores where nothing of their node changed and they are under max_age, the
        others made now."""
        r = self.router
        model, app, slo = key
        slo = _check_slo(slo)
        versions = self._node_version
        old, old_meta = kept if kept is not None else ({}, {})
        scores, meta = {}, {}
        oldest = now - self.max_age
        for i in r._candidates(model):
            v = versions.get(i, 0)
            m = old_meta.get(i)
            if m is not None and m[0] == v and m[1] >= oldest:
                scores[i], meta[i] = old[i], m
            else:
                scores[i], meta[i] = r.score(i, model, app, slo, now), (v, now)
        return scores, meta


ROUTERS: dict[str, Callable[..., _Base]] = {
    "random": RandomRouter,
    "round-robin": RoundRobinRouter,
    "p2c": P2CRouter,
    "orloj": OrlojRouter,
}


def make_router(name: str, seed: int = 0, **params) -> _Base:
    """A router by name (`ROUTERS`): random, round-robin, p2c, orloj. `params`:
    stale_after (every router; seconds), and for orloj choices and tie."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    try:
        return cls(seed=seed, **params)
    except TypeError as exc:
        raise ValueError(f"router {name!r}: {exc}; its parameters: stale_after"
                         + (", choices, tie, rate_window" if name == "orloj" else "")) from None


__all__ = [
    "DEFAULT_STALE_AFTER",
    "QUANTILE_PROBS",
    "ROUTERS",
    "AppState",
    "ModelState",
    "NoNodeError",
    "NodeState",
    "OrlojRouter",
    "P2CRouter",
    "Prepared",
    "RandomRouter",
    "RoundRobinRouter",
    "Router",
    "Summary",
    "make_router",
    "node_state",
]
