"""Known answers of the routers (orloj_rt/cluster/routing.py), with node states read off
real serving cores where the state matters."""

from __future__ import annotations

from collections import Counter

import msgpack
import numpy as np
import pytest

from orloj_rt.cluster.routing import (
    ROUTERS,
    ModelState,
    NodeState,
    NoNodeError,
    Prepared,
    Summary,
    make_router,
    node_state,
)
from orloj_rt.serving import ServingCore
from orloj_rt.sim.simulator import SimModel, warmup_profile

C = [1 + 0.15 * i for i in range(8)]


def core_with(queued: int, solo_mean: float = 1.0, seed: int = 0) -> ServingCore:
    """A one-worker core whose warm-up measured solo times of mean `solo_mean` (a slower
    node measures longer ones), with `queued` requests submitted at 0 (deadline 100) and
    dispatched: a batch of up to 8 runs, the rest wait."""
    rng = np.random.default_rng(seed)
    core = ServingCore([SimModel("m", len(C))], "orloj", None, 1, timer=lambda: 0.0)
    core.worker_ready(0, [warmup_profile(list(solo_mean * rng.lognormal(-0.125, 0.5, 2000)),
                                         C)])  # fmt: skip
    core.submit([(i, 0, "a", 0.0, 100.0, None, 0, 0) for i in range(queued)])
    core.dispatch(0.0)
    return core


def two_nodes(router: str, now: float = 0.1, busy_mean: float = 3.0, **params):
    """'busy': 8 running, 40 queued, of long requests (mean `busy_mean`); 'idle':
    nothing, requests of mean 1."""
    r = make_router(router, seed=1, **params)
    busy = node_state(core_with(48, busy_mean), "busy", 0.0, busy_since={0: 0.0})
    r.update("busy", busy, now)
    r.update("idle", node_state(core_with(0, 1.0), "idle", 0.0), now)
    return r


def test_tight_slo_goes_to_the_idle_node():
    r = two_nodes("orloj")
    assert r.choose("m", "a", 2.0, 0.1) == "idle"
    p_busy, wait_busy, value_busy = r.last_scores["busy"]
    p_idle, wait_idle, value_idle = r.last_scores["idle"]
    assert p_busy == 0.0 and wait_busy > 10  # 40 queued of mean 3, batched, on one worker
    assert p_idle > 0.6 and wait_idle == 0.0 and value_idle == p_idle  # nobody behind it
    # power of two picks both candidates when there are two: the same answer
    assert two_nodes("orloj", choices=2).choose("m", "a", 2.0, 0.1) == "idle"


def test_a_slow_idle_node_loses_a_tight_request_to_a_fast_idle_one():
    r = make_router("orloj")
    r.update("slow", node_state(core_with(0, 2.0), "slow", 0.0), 0.0)
    r.update("fast", node_state(core_with(0, 1.0), "fast", 0.0), 0.0)
    assert r.choose("m", "a", 1.5, 0.0) == "fast"
    assert r.last_scores["fast"][0] > r.last_scores["slow"][0] + 0.2


def test_its_own_sends_count_until_the_next_state():
    """Between states the router adds what it sent: two equal idle nodes, fresh states,
    requests sent at one instant alternate."""
    r = make_router("orloj")
    for n in ("x", "y"):
        r.update(n, node_state(core_with(0), n, 0.0), 0.0)
    first = [r.choose("m", "a", 8.0, 0.01) for _ in range(6)]
    assert Counter(first) == {"x": 3, "y": 3}
    assert first[0] != first[1]
    # a new state stamped after the sends replaces them: idle again, fresh start
    r.update("x", node_state(core_with(0), "x", 0.02), 0.02)
    assert len(r.nodes["x"].sent) == 0 and len(r.nodes["y"].sent) == 3


def test_requests_that_cannot_finish_anywhere_go_where_they_harm_nobody():
    """The value of a send is its chance less what it takes from the requests behind it:
    once the idle node is full (for an SLO of 2), a request that would only delay those
    goes to the node where it has no chance either way (whose policy will drop it)."""
    r = two_nodes("orloj", busy_mean=1.0)
    got = [r.choose("m", "a", 2.0, 0.5) for _ in range(4)]
    assert got[0] == "idle" and got[1:] == ["busy"] * 3
    assert r.last_scores["busy"][0] == 0.0 and r.last_scores["idle"][2] < 0


def test_stale_state_falls_back_to_own_sends():
    """States older than stale_after: the busy node's published queue is ignored; with
    nothing but the router's own sends to go by, the requests are shared evenly (the
    nodes' distributions, still used, are the same here)."""
    fresh = two_nodes("orloj", busy_mean=1.0, stale_after=1.0)
    assert Counter(fresh.choose("m", "a", 6.0, 0.5) for _ in range(5)) == {"idle": 5}
    assert fresh.fallbacks == 0
    stale = two_nodes("orloj", busy_mean=1.0, stale_after=1.0)
    got = Counter(stale.choose("m", "a", 6.0, 1.5) for _ in range(10))
    assert got == {"idle": 5, "busy": 5}
    assert stale.fallbacks == 10
    # p2c alike: by its own recent sends only
    p2c = two_nodes("p2c", busy_mean=1.0, stale_after=1.0)
    got = Counter(p2c.choose("m", "a", 2.0, 1.5) for _ in range(10))
    assert got == {"idle": 5, "busy": 5}


def test_aged_state_counts_the_work_done_since():
    """The busy node's queue drains while its state ages: at an age past its backlog it
    scores as idle (only the router's own sends remain)."""
    r = two_nodes("orloj", stale_after=1000.0)
    r.choose("m", "a", 2.0, 500.0)
    assert r.last_scores["busy"][1] == 0.0


def test_p2c_prefers_the_shorter_queue():
    r = two_nodes("p2c")
    assert Counter(r.choose("m", "a", 2.0, 0.1) for _ in range(5)) == {"idle": 5}


def test_prepared_decisions_are_the_routers_until_something_changes():
    """A decision made ahead is the one the router makes at that time from the same
    states and sends; a send, a state or age makes it again."""
    ahead, ref = Prepared(two_nodes("orloj"), max_age=0.01), two_nodes("orloj")
    node, ready = ahead.take("m", "a", 2.0, 0.1)
    assert (node, ready) == (ref.choose("m", "a", 2.0, 0.1), False) == ("idle", False)
    ahead.sent(node, "m", "a", 2.0, 0.1)  # counted, and the next one prepared
    for t in (0.101, 0.102, 0.103):  # the same sends, so the same answers as the router's
        node, ready = ahead.take("m", "a", 2.0, t)
        assert ready and node == ref.choose("m", "a", 2.0, t)
        ahead.sent(node, "m", "a", 2.0, t)
    assert ahead.router.nodes["idle"].sent == ref.nodes["idle"].sent
    assert ahead.take("m", "a", 2.0, 0.2)[1] is False  # older than max_age: made again
    ahead.sent("idle", "m", "a", 2.0, 0.2)
    ahead.update("idle", node_state(core_with(48, 3.0), "idle", 0.2, busy_since={0: 0.2}), 0.2)
    assert ahead.take("m", "a", 2.0, 0.2)[1] is False  # a state came: made again
    ahead.prepare(0.2)  # what the router process does after reading states
    assert ahead.take("m", "a", 2.0, 0.2)[1] is True
    ahead.remove("busy")
    assert ahead.take("m", "a", 2.0, 0.2) == ("idle", False)
    rr = Prepared(make_router("round-robin"))  # its decisions change it: never made ahead
    rr.update("x", NodeState("x", 0.0, 1), 0.0)
    rr.update("y", NodeState("y", 0.0, 1), 0.0)
    got = []
    for _ in range(4):
        node, ready = rr.take("m", "a", 1.0, 0.0)
        rr.sent(node, "m", "a", 1.0, 0.0)
        got.append((node, ready))
    assert got == [("x", False), ("y", False)] * 2


def test_a_send_prepares_every_kind_seen_lately_again():
    """Requests of two kinds in turn: after a send of one, the other's decision is ready
    too, and it is the router's at that moment (it used to wait for the next state)."""
    for name in ("orloj", "p2c"):
        ahead, ref = Prepared(two_nodes(name), max_age=0.01), two_nodes(name)
        kinds = [("m", "a", 2.0), ("m", "b", 4.0)]
        for k in kinds:
            node, _ = ahead.take(*k, 0.1)
            assert node == ref.pick(*k, 0.1)
            ahead.sent(node, *k, 0.1)
            ref.record(node, *k, 0.1)
        for i in range(6):
            k, t = kinds[i % 2], 0.101 + i * 0.001
            node, ready = ahead.take(*k, t)
            assert ready, (name, i)
            if name == "orloj":  # deterministic: the same scores, the same pick
                assert node == ref.pick(*k, t)
            ahead.sent(node, *k, t)
            ref.record(node, *k, t)
        assert ahead.made == 2 and ahead.prepared == 6


def test_no_node():
    for name in ROUTERS:
        r = make_router(name)
        with pytest.raises(NoNodeError, match="no node is known"):
            r.choose("m", "a", 1.0, 0.0)
    r = two_nodes("orloj")
    r.remove("busy")
    r.remove("idle")
    r.remove("never-there")
    with pytest.raises(NoNodeError):
        r.choose("m", "a", 1.0, 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown router 'p3c'"):
        make_router("p3c")
    with pytest.raises(ValueError, match="choices"):
        make_router("orloj", choices=1)
    with pytest.raises(ValueError, match="its parameters"):
        make_router("p2c", choices=2)
    r = two_nodes("orloj")
    with pytest.raises(ValueError, match="slo"):
        r.choose("m", "a", 0.0, 0.0)


def test_wire_round_trip_through_msgpack():
    st = node_state(core_with(20, 2.0), "n1", 3.0, busy_since={0: 1.0}, speed=0.5)
    wire = st.to_wire()
    back = NodeState.from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert back.to_wire() == wire
    assert back.queue_length() == 20 and back.speed == 0.5 and len(back.busy_left) == 1
    with pytest.raises(ValueError, match="wire version"):
        NodeState.from_wire(dict(wire, v=99))


def test_summary_cdf_and_expected_max():
    s = Summary.lognormal(1.0, 0.5)
    assert s.cdf(0.0) == 0.0 and s.cdf(1e9) == 1.0
    assert 0.45 < s.cdf(s.q[5]) < 0.6
    assert s.expected_max(1) == 1.0 < s.expected_max(2) < s.expected_max(8)
    two = s.scaled(2.0)
    assert two.cdf(2.0) == pytest.approx(s.cdf(1.0))
    m = ModelState(inflation=C, default=s)
    assert m.dist("unknown") is s
