"""The simulator across nodes: N nodes, each the runtime's serving core with its workers,
and one router in front that sees each node's state S time units old.

    from orloj_rt.sim.cluster import ClusterConfig, run_cluster
    result = run_cluster(ClusterConfig(WorkloadSpec(solo="trace", trace=..., slo=3,
                                                    load=1.5), nodes=16, speeds="unequal",
                                       routers=("p2c", "orloj"), state_age=2.0))

Each node is driven exactly as `simulate_serving` (sim/simulator.py) drives one core, and
with its helpers (`SimModel`, `warmup_profile`): the core gets each worker's warm-up
profile, each routed request's descriptor when it arrives, `dispatch(now)` after every
event at the node, and each batch's report (its time, and each member's work). A node of
speed s (`speeds`) runs everything 1/s times as long: its warm-up measures solo times
X / s, and a batch of b takes c(b) x max X / s; the members' work reports are X (work,
such as tokens, does not depend on the device), so the core learns solo times X / s as a
slower device would make it. What differs from one core is only the routing:

- Each request is routed when it arrives: `router.choose(model, app, slo, now)` with slo
  = its deadline - arrival, then submitted to the chosen node's core at once (no network
  time).
- State age S (`state_age`, in units of the mean solo time): with S = 0 the router sees
  every node's state as it is (`node_state` rebuilt for each node that changed since
  the router's last look, before each choice). With S > 0 every node publishes its
  state every `state_period` units (default 0.1; the runtime publishes every few ms,
  about a tenth of a typical solo time) and the router receives each state S units
  after its stamp: it decides with states S to S + period old.
- The router's `stale_after` defaults to 10 units here (the routers' own default, 1 s,
  is for the runtime's clock): a 2-unit-old state is used, aged; `router_params` set it.
- Events at one instant: batch completions, then states arriving at the router, then
  publications, then arrivals (routed and submitted, in order), then each touched
  node's dispatch. So one node (`nodes=1`) makes exactly simulate_serving's calls and
  decisions. (With state age 0, arrivals at the same instant are dispatched one by one,
  so that each choice sees the one before it; with continuous gaps this never happens.)

`load` (WorkloadSpec.load) is per node: the arrival rate is nodes x load. So one node at
load L is `orloj-rt sim --load L`. Node speeds: "equal" (all 1), "unequal" (every
second node, 1, 3, 5, ..., at 0.5: half the nodes 2x slower), or a comma-separated list
of N positive speeds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from orloj_rt.engine.pure.batch_model import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, Inflation
from orloj_rt.sim.simulator import (
    COMPLETED,
    DROPPED,
    PENDING,
    REJECTED,
    Outcome,
    SimModel,
    SimulationError,
    check_clock,
    checked_requests,
    outcome_of,
    warmup_profile,
)
from orloj_rt.sim.workloads import WorkloadSpec, generate

ROUTER_NAMES = ("random", "round-robin", "p2c", "orloj")
SPEED_KINDS = ("equal", "unequal")
DEFAULT_STATE_PERIOD = 0.1
DEFAULT_SIM_STALE_AFTER = 10.0
MODEL = "sim"


def parse_speeds(spec, nodes: int) -> tuple[float, ...]:
    """Node speeds from "equal", "unequal" or a list of `nodes` positive numbers (a string
    "1,0.5,..." or a sequence); ValueError naming the fix otherwise."""
    if nodes < 1:
        raise ValueError(f"need at least one node, got {nodes!r}")
    if isinstance(spec, str):
        text = spec.strip()
        if text == "equal":
            return (1.0,) * nodes
        if text == "unequal":
            return tuple(0.5 if i % 2 else 1.0 for i in range(nodes))
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"node speeds {spec!r}: give equal, unequal, or {nodes} "
                             "comma-separated numbers > 0 (e.g. 1,0.5)") from None
    else:
        values = [float(v) for v in spec]
    if len(values) != nodes:
        raise ValueError(f"node speeds: {len(values)} given for {nodes} nodes; give one per "
                         "node, or equal / unequal")  # fmt: skip
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"node speeds must be finite and > 0, got {values}")
    return tuple(values)


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster cell: the workload (its load per node), the nodes, the routers to
    compare, and how old the router's view is."""

    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    nodes: int = 4
    workers_per_node: int = 1
    speeds: str | tuple = "equal"
    routers: tuple[str, ...] = ROUTER_NAMES
    router_params: dict = field(default_factory=dict)
    state_age: float = 0.0
    state_period: float = DEFAULT_STATE_PERIOD
    policy: str = "orloj"  # what every node runs
    policy_params: dict = field(default_factory=dict)
    max_batch: int = DEFAULT_MAX_BATCH
    batch_alpha: float = DEFAULT_ALPHA
    router_seed: int = 0

    def __post_init__(self) -> None:
        from orloj_rt.cluster.routing import ROUTERS
        from orloj_rt.policies import POLICIES

        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.nodes!r}")
        if self.workers_per_node < 1:
            raise ValueError(f"--workers-per-node must be >= 1, got {self.workers_per_node!r}")
        parse_speeds(self.speeds, self.nodes)
        if not self.routers:
            raise ValueError("name at least one router")
        for r in self.routers:
            if r not in ROUTERS:
                raise ValueError(f"unknown router {r!r}; choose from {', '.join(ROUTERS)}")
        if not (self.state_age >= 0 and math.isfinite(self.state_age)):
            raise ValueError(f"--state-age must be >= 0 (units of the mean solo time), "
                             f"got {self.state_age!r}")  # fmt: skip
        if not (self.state_period > 0 and math.isfinite(self.state_period)):
            raise ValueError(f"the state period must be > 0, got {self.state_period!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"node policy {self.policy!r} is not a whole-batch policy; "
                             f"choose from {', '.join(POLICIES)}")  # fmt: skip

    def speed_list(self) -> tuple[float, ...]:
        return parse_speeds(self.speeds, self.nodes)

    def to_json(self) -> dict:
        from dataclasses import asdict

        out = asdict(self.workload)
        del out["app_mix"]
        out["load_per_node"] = out.pop("load")
        out.update(
            nodes=self.nodes,
            workers_per_node=self.workers_per_node,
            speeds=self.speeds if isinstance(self.speeds, str) else list(self.speeds),
            routers=list(self.routers),
            router_params=self.router_params,
            state_age=self.state_age,
            state_period=self.state_period,
            policy=self.policy,
            max_batch=self.max_batch,
            batch_alpha=self.batch_alpha,
        )
        return out


class _Node:
    __slots__ = ("name", "core", "speed", "busy_since", "wakeup", "dirty")

    def __init__(self, name, core, speed) -> None:
        self.name = name
        self.core = core
        self.speed = speed
        self.busy_since: dict[int, float] = {}
        self.wakeup = math.inf
        self.dirty = True


@dataclass
class ClusterOutcome:
    outcome: Outcome
    node: np.ndarray  # the node index each request was routed to
    fallbacks: int  # choices the router made with every candidate's state stale


def simulate_cluster(router, arrival, deadline, solo, apps, inflation, warmup_solo, *,
                     nodes: int, workers_per_node: int = 1, speeds=None,
                     policy: str = "orloj", policy_params: dict | None = None,
                     state_age: float = 0.0,
                     state_period: float = DEFAULT_STATE_PERIOD) -> ClusterOutcome:  # fmt: skip
    """Routes every request with `router` (orloj_rt.cluster.routing) over `nodes` serving
    cores of `workers_per_node` workers each, on one virtual clock (module docstring)."""
    from orloj_rt.cluster.routing import node_state
    from orloj_rt.serving import ServingCore

    arrival, deadline, solo = checked_requests(arrival, deadline, solo, apps,
                                               workers_per_node)  # fmt: skip
    speeds = parse_speeds("equal" if speeds is None else speeds, nodes)
    n = len(arrival)
    c = [float(v) for v in inflation]
    warm = np.asarray(warmup_solo, dtype=np.float64)
    cluster: list[_Node] = []
    for i, s in enumerate(speeds):
        core = ServingCore([SimModel(MODEL, len(c))], policy, policy_params,
                           workers_per_node, timer=lambda: 0.0)  # fmt: skip
        profile = warmup_profile(warm / s, c)
        for w in range(workers_per_node):
            core.worker_ready(w, [profile])
        cluster.append(_Node(f"n{i}", core, s))
    arr = arrival.tolist()
    dl = deadline.tolist()
    x = solo.tolist()
    state = [PENDING] * n
    finish = [math.nan] * n
    where = [-1] * n
    sizes: list[int] = []
    running: list = []  # (end, seq, node, worker, start, ids)
    wakes: list = []  # (time, node), lazily invalidated by _Node.wakeup
    deliveries: deque = deque()  # (time, node index, NodeState)
    seq = 0
    nxt = 0
    last_event = 0.0
    next_pub = 0.0 if state_age > 0 else math.inf

    def publish(t: float) -> None:
        for i, nd in enumerate(cluster):
            st = node_state(nd.core, nd.name, t, busy_since=nd.busy_since, speed=nd.speed)
            deliveries.append((t + state_age, i, st))

    if state_age > 0:  # the router knows every node from its first state on
        publish(0.0)
        while deliveries:
            _, i, st = deliveries.popleft()
            router.update(cluster[i].name, st, 0.0)
        next_pub = state_period
    else:
        for nd in cluster:
            router.update(nd.name, node_state(nd.core, nd.name, 0.0, speed=nd.speed), 0.0)
    index = {nd.name: i for i, nd in enumerate(cluster)}

    def serve(i: int, now: float) -> None:
        nd = cluster[i]
        core = nd.core
        runs = core.dispatch(now)
        dropped, rejected, errors = core.take_discards()
        for run in runs:
            for rid in run.tokens:
                if state[rid] != PENDING or where[rid] != i:
                    raise SimulationError(f"node {nd.name} dispatched request {rid}, which "
                                          "it does not hold queued")  # fmt: skip
                state[rid] = -1
            exec_time = c[len(run.tokens) - 1] * max(x[r] for r in run.tokens) / nd.speed
            nonlocal seq
            seq += 1
            heapq.heappush(running, (now + exec_time, seq, i, run.worker, now, run.tokens))
            nd.busy_since[run.worker] = now
            sizes.append(len(run.tokens))
        if errors:
            raise SimulationError(f"node {nd.name}: the core failed requests: {errors[:3]}")
        for rid in dropped:
            state[rid] = DROPPED
        for rid in rejected:
            state[rid] = REJECTED
        w_at = core.next_wakeup(now)
        nd.wakeup = w_at if (w_at is not None and w_at > now) else math.inf
        if nd.wakeup < math.inf:
            heapq.heappush(wakes, (nd.wakeup, i))
        nd.dirty = True

    while True:
        t_arr = arr[nxt] if nxt < n else math.inf
        t_done = running[0][0] if running else math.inf
        while wakes and cluster[wakes[0][1]].wakeup != wakes[0][0]:
            heapq.heappop(wakes)
        t_wake = wakes[0][0] if wakes else math.inf
        routing = nxt < n
        t_del = deliveries[0][0] if (routing and deliveries) else math.inf
        t_pub = next_pub if routing else math.inf
        now = min(t_arr, t_done, t_wake, t_del, t_pub)
        if now == math.inf:
            break
        check_clock(now, last_event)  # each node's wake-up ends at the first event after it
        last_event = now
        touched: set[int] = set()
        while running and running[0][0] <= now:
            end, _, i, w, start, members = heapq.heappop(running)
            for rid in members:
                state[rid] = COMPLETED
                finish[rid] = end
            cluster[i].busy_since.pop(w, None)
            cluster[i].core.batch_done(w, 0, True, end - start, [x[r] for r in members])
            touched.add(i)
        while wakes and wakes[0][0] <= now:
            _, i = heapq.heappop(wakes)
            if cluster[i].wakeup <= now:
                cluster[i].wakeup = math.inf
                touched.add(i)
        while deliveries and deliveries[0][0] <= now:
            t, i, st = deliveries.popleft()
            router.update(cluster[i].name, st, t)
        if routing and next_pub <= now:
            publish(now)
            next_pub = now + state_period
        while nxt < n and arr[nxt] <= now:
            if state_age == 0:
                for nd in cluster:
                    if nd.dirty:
                        router.update(nd.name, node_state(nd.core, nd.name, now,
                                                          busy_since=nd.busy_since,
                                                          speed=nd.speed), now)  # fmt: skip
                        nd.dirty = False
            i = index[router.choose(MODEL, apps[nxt], dl[nxt] - arr[nxt], now)]
            where[nxt] = i
            cluster[i].core.submit([(nxt, 0, apps[nxt], arr[nxt], dl[nxt], None, 0, 0)])
            cluster[i].dirty = True
            touched.add(i)
            nxt += 1
            if state_age == 0 and len(touched) and nxt < n and arr[nxt] <= now:
                for j in touched:  # the next choice at this instant sees it dispatched
                    serve(j, now)
                touched.clear()
        for i in touched:
            serve(i, now)
    for rid in range(n):  # nothing can happen any more: what still waits is dropped
        if state[rid] == PENDING:
            state[rid] = DROPPED
    return ClusterOutcome(outcome_of(state, finish, sizes, last_event),
                          np.asarray(where, dtype=np.int32),
                          int(getattr(router, "fallbacks", 0)))  # fmt: skip


def cluster_requests(config: ClusterConfig):
    """The cell's requests: the workload at nodes x its per-node load."""
    from dataclasses import replace

    return generate(replace(config.workload, load=config.workload.load * config.nodes))


def run_router(config: ClusterConfig, router_name: str, requests=None) -> dict:
    """One router on the cell's requests: the metrics of `orloj-rt sim` (Outcome.summary)
    and, per node speed, the share of requests sent there and their finish rate."""
    from orloj_rt.cluster.routing import make_router

    if requests is None:
        requests = cluster_requests(config)
    params = {"stale_after": DEFAULT_SIM_STALE_AFTER, **config.router_params.get(router_name, {})}
    router = make_router(router_name, seed=config.router_seed, **params)
    table = Inflation(config.max_batch, config.batch_alpha).table
    speeds = config.speed_list()
    res = simulate_cluster(router, requests.arrival, requests.deadline, requests.solo,
                           requests.app, table, requests.prior, nodes=config.nodes,
                           workers_per_node=config.workers_per_node, speeds=speeds,
                           policy=config.policy, policy_params=dict(config.policy_params),
                           state_age=config.state_age,
                           state_period=config.state_period)  # fmt: skip
    out = res.outcome.summary(requests.arrival, requests.deadline)
    out["fallbacks"] = res.fallbacks
    on_time = (res.outcome.state == COMPLETED) & (res.outcome.finish <= requests.deadline)
    node_speed = np.asarray(speeds)[res.node]
    by_speed = {}
    for s in sorted(set(speeds), reverse=True):
        mine = node_speed == s
        k = int(mine.sum())
        by_speed[f"{s:g}"] = {"share": k / len(res.node) if len(res.node) else 0.0,
                              "finish_rate": float(on_time[mine].sum()) / k if k else None}
    out["by_speed"] = by_speed
    return out


def run_cluster(config: ClusterConfig, requests=None) -> dict:
    """Every router of the cell on the same requests: {"config": ..., "routers": ...}."""
    if requests is None:
        requests = cluster_requests(config)
    return {"config": config.to_json(),
            "routers": {r: run_router(config, r, requests) for r in config.routers}}
