"""The simulator: conservation, determinism, the batch model, and contract checks."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.policies import POLICIES
from orloj_rt.sim import SimConfig, SimulationError, WorkloadSpec, run, simulate
from orloj_rt.sim.simulator import COMPLETED, DROPPED, REJECTED

SMALL = dict(requests=300, prior_samples=2000)


@pytest.mark.parametrize("solo", ["static", "bimodal", "lognormal"])
@pytest.mark.parametrize("load", [1.0, 4.0])
def test_every_request_ends_exactly_once_for_every_policy(solo, load):
    # with cost hints, so that sjf-hint and orloj+hint run too
    every = (*POLICIES, "orloj+hint")
    result = run(SimConfig(WorkloadSpec(solo=solo, slo=3.0, load=load, hint_cv=0.6, **SMALL),
                           policies=every))  # fmt: skip
    assert set(result["policies"]) == set(every)
    for name, m in result["policies"].items():
        assert m["completed"] + m["dropped"] + m["rejected"] == 300, name
        assert 0 <= m["late"] <= m["completed"]
        assert m["finish_rate"] == pytest.approx((m["completed"] - m["late"]) / 300)


def test_a_seed_gives_the_same_output():
    cfg = SimConfig(WorkloadSpec(solo="lognormal", slo=5.0, load=2.0, seed=11, **SMALL))
    assert run(cfg) == run(cfg)
    other = SimConfig(WorkloadSpec(solo="lognormal", slo=5.0, load=2.0, seed=12, **SMALL))
    assert run(other)["policies"] != run(cfg)["policies"]


class Recorder(Policy):
    """Dispatches everything queued at once (up to max_batch) and records what it sees."""

    name = "recorder"

    def __init__(self, max_batch=8):
        self.queue: list[int] = []
        self.max_batch = max_batch
        self.observed: list[tuple[list[str], float]] = []
        self.hints: list = []

    def enqueue(self, req_id, app, arrival, deadline, hint=None):
        self.queue.append(req_id)
        self.hints.append(hint)

    def remove(self, req_id):
        self.queue.remove(req_id)

    def decide(self, now):
        batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
        return Decision(batch, [], [])

    def observe_batch(self, apps, exec_time):
        self.observed.append((list(apps), exec_time))

    def __len__(self):
        return len(self.queue)


def test_a_batch_runs_for_inflation_times_its_longest_member():
    p = Recorder()
    c = [1.0, 1.5, 2.0]
    out = simulate(p, [0.0, 0.0, 0.0, 0.5], [9.0, 9.0, 9.0, 9.0], [1.0, 3.0, 2.0, 0.5],
                   ["a", "a", "b", "a"], c + [2.5] * 5)
    # t=0: all three arrive; one batch of 3 runs 2.0 * 3.0 = 6; request 3 waits until 6
    assert list(out.finish) == [6.0, 6.0, 6.0, 6.5]
    assert p.observed == [(["a", "a", "b"], 6.0), (["a"], 0.5)]
    assert list(out.batch_sizes) == [3, 1]
    assert np.all(out.state == COMPLETED)


def test_workers_run_batches_side_by_side():
    p = Recorder(max_batch=1)
    out = simulate(p, [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], [1.0], workers=2)
    assert list(out.finish) == [1.0, 1.0]
    out = simulate(Recorder(max_batch=1), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"],
                   [1.0], workers=1)
    assert list(out.finish) == [1.0, 2.0]


def test_a_clairvoyant_policy_gets_the_true_times_and_others_the_hints():
    class Clairvoyant(Recorder):
        clairvoyant = True

    p = Clairvoyant()
    simulate(p, [0.0, 1.0], [5.0, 5.0], [0.7, 0.9], ["a", "a"], [1.0, 1.0], hints=[7, 9])
    assert p.hints == [0.7, 0.9]
    q = Recorder()
    simulate(q, [0.0, 1.0], [5.0, 5.0], [0.7, 0.9], ["a", "a"], [1.0, 1.0], hints=[7, 9])
    assert q.hints == [7.0, 9.0]


def test_requests_left_waiting_for_ever_count_as_dropped():
    class Idle(Recorder):
        def decide(self, now):
            return Decision([], [], [])

    out = simulate(Idle(), [0.0, 1.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], [1.0])
    assert list(out.state) == [DROPPED, DROPPED]


def test_drops_and_rejections_are_recorded():
    class Refuser(Recorder):
        def decide(self, now):
            rid = self.queue.pop(0)
            return Decision([], [rid] if rid % 2 else [], [] if rid % 2 else [rid])

    out = simulate(Refuser(), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], [1.0])
    assert list(out.state) == [REJECTED, DROPPED]


def test_a_policy_breaking_the_contract_is_caught():
    class Oversized(Recorder):
        def decide(self, now):
            return Decision([0, 1], [], [])

    with pytest.raises(SimulationError, match="maximum 1"):
        simulate(Oversized(), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], [1.0])

    class Twice(Recorder):
        def decide(self, now):
            return Decision([0], [], [])

    with pytest.raises(SimulationError, match="not queued"):
        simulate(Twice(), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], [1.0])


class Holds(Recorder):
    """Holds request r until `until[r]` (asking to be woken then), one at a time."""

    def __init__(self, until):
        super().__init__(max_batch=1)
        self.until = until
        self.seen: list[float] = []

    def decide(self, now):
        self.seen.append(now)
        ready = [r for r in self.queue if now >= self.until.get(r, 0.0)][:1]
        self.queue = [r for r in self.queue if r not in ready]
        return Decision(ready, [], [])

    def next_wakeup(self, now):
        held = [self.until[r] for r in self.queue if r in self.until and now < self.until[r]]
        return min(held, default=None)


def test_a_wakeup_that_passes_while_the_worker_is_busy_does_not_turn_the_clock_back():
    # r0 is held until 5, but r1 (arrived at 1) keeps the worker busy from 1 to 11; r0
    # runs then, to 12; r2 (arrived at 11.5) is held until 20. The simulator once went
    # back to the stale wakeup at 5 and asked the policy then
    p = Holds({0: 5.0, 2: 20.0})
    out = simulate(p, [0.0, 1.0, 11.5], [50.0] * 3, [1.0, 10.0, 1.0], ["a"] * 3, [1.0])
    assert out.finish.tolist() == [12.0, 11.0, 21.0]
    assert p.seen == sorted(p.seen)


def test_through_the_core_every_answer_comes_after_its_request_has_run():
    """orloj with hint classes waits (patience) and asks to be woken: the serving core's
    clock never goes back, and no request is answered before arrival + solo time."""
    from orloj_rt.sim.simulator import simulate_serving
    from orloj_rt.sim.workloads import generate

    req = generate(WorkloadSpec(solo="bimodal", slo=2.0, load=4.0, hint_cv=0.6,
                                requests=800, prior_samples=2000))  # fmt: skip
    trace: list = []
    out = simulate_serving("orloj", req.arrival, req.deadline, req.solo, req.app,
                           [1.0 + 0.15 * b for b in range(32)], req.prior, hints=req.hint,
                           warmup_hints=req.prior_hint, trace=trace)  # fmt: skip
    times = [args[0] for name, args in trace if name == "dispatch"]
    assert times == sorted(times)
    done = out.state == COMPLETED
    assert done.sum() > 100
    assert np.all(out.finish[done] >= req.arrival[done] + req.solo[done] - 1e-9)


def test_orloj_with_cost_hints_runs_in_the_simulator():
    spec = WorkloadSpec(solo="lognormal", slo=5.0, load=4.0, hint_cv=0.3, **SMALL)
    result = run(SimConfig(spec, policies=("orloj", "orloj+hint", "nexus")))
    m = result["policies"]["orloj+hint"]
    assert m["completed"] + m["dropped"] + m["rejected"] == 300
    assert m["finish_rate"] > result["policies"]["orloj"]["finish_rate"]
    with pytest.raises(ValueError, match="hint_cv"):
        run(SimConfig(WorkloadSpec(**SMALL), policies=("orloj+hint",)))


def test_a_servers_measured_delays_shift_each_batch_as_measured():
    """simulate_serving(service=...): a batch starts `start delay` after its dispatch,
    runs its model time + `extra`, frees its worker then, and is answered `reply delay`
    later (bench/e2e_model_check.py --service)."""
    from orloj_rt.sim.simulator import simulate_serving

    args = ([0.0, 0.0], [100.0, 100.0], [1.0, 1.0], ["a", "a"], [1.0], [1.0] * 64)
    plain = simulate_serving("fifo", *args)
    assert plain.finish.tolist() == [1.0, 2.0]  # batches of one (max batch 1), back to back
    out = simulate_serving("fifo", *args, service=[(0.5, 1.0, 0.25)])
    # first: starts 0.5, runs 2.0, worker free at 2.5, answered 2.75; second: dispatched
    # at 2.5, starts 3.0, free at 5.0, answered 5.25
    assert out.finish.tolist() == [2.75, 5.25]
    late = simulate_serving("fifo", [0.0], [2.7], [1.0], ["a"], [1.0], [1.0] * 64,
                            service=[(0.5, 1.0, 0.25)])  # fmt: skip
    assert late.summary(np.array([0.0]), np.array([2.7]))["late"] == 1
