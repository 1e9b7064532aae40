"""Step-level batching in the simulator: members leave at the step where their work ends,
every request is accounted for, runs are reproducible, and the contract is checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orloj_rt.policies import STEP_POLICIES
from orloj_rt.policies.step_interface import StepDecision, StepPolicy
from orloj_rt.sim import SimConfig, SimulationError, WorkloadSpec, run
from orloj_rt.sim.simulator import COMPLETED, DROPPED, ENDED
from orloj_rt.sim.step_simulator import simulate_steps, steps_needed

SMALL = dict(requests=300, prior_samples=2000)
C = [1.0, 1.5, 2.0, 2.5]  # c(1..4)


class Greedy(StepPolicy):
    """Admits everything queued (up to max_batch) and records every call."""

    name = "greedy"

    def __init__(self, max_batch=4, end=None):
        self.queue: list[int] = []
        self._max_batch = max_batch
        self.boundaries: list[tuple[float, list]] = []
        self.finished: list[tuple[str, int]] = []
        self.ended_seen: list[tuple[str, int]] = []
        self.end = end or (lambda now, running: [])

    @property
    def max_batch(self):
        return self._max_batch

    @property
    def step(self):
        return 0.1

    def enqueue(self, req_id, app, arrival, deadline, hint=None):
        self.queue.append(req_id)

    def remove(self, req_id):
        self.queue.remove(req_id)

    def step_boundary(self, now, running):
        self.boundaries.append((now, list(running)))
        ended = self.end(now, running)
        free = self._max_batch - len(running) + len(ended)
        joined, self.queue = self.queue[:free], self.queue[free:]
        return StepDecision(joined, [], ended)

    def observe_finished(self, app, steps):
        self.finished.append((app, steps))

    def observe_ended(self, app, steps):
        self.ended_seen.append((app, steps))

    def __len__(self):
        return len(self.queue)


def test_steps_needed():
    assert steps_needed(0.3, 0.1) == 3  # 0.3 / 0.1 is 2.9999999999999996
    assert steps_needed(0.31, 0.1) == 4
    assert steps_needed(0.0, 0.1) == 1  # every request runs at least one step
    assert steps_needed(2.0, 0.1) == 20


def test_members_leave_and_are_answered_at_the_step_where_their_work_ends():
    p = Greedy()
    # r0 needs 3 steps, r1 one; r2 arrives during the first step and needs one
    out = simulate_steps(p, [0.0, 0.0, 0.12], [9.0, 9.0, 9.0], [0.25, 0.1, 0.05],
                         ["a", "b", "a"], C, step=0.1)
    # t=0: r0 and r1 run a step of two, 1.5 * 0.1; r1 is done at 0.15 and leaves; r2 joins
    # then, the next step of two ends at 0.30 (r2 done); r0 runs its third step alone
    assert out.finish == pytest.approx([0.40, 0.15, 0.30])
    assert np.all(out.state == COMPLETED)
    assert list(out.batch_sizes) == [2, 2, 1]
    assert sorted(p.finished) == [("a", 1), ("a", 3), ("b", 1)]
    # the boundaries the policy saw, with the members still running there
    assert [round(t, 9) for t, _ in p.boundaries] == [0.0, 0.15, 0.3]
    assert [(m.id, m.steps) for m in p.boundaries[1][1]] == [(0, 1)]
    assert [(m.id, m.steps) for m in p.boundaries[2][1]] == [(0, 2)]


def test_a_request_arriving_at_a_boundary_joins_it():
    p = Greedy()
    out = simulate_steps(p, [0.0, 0.1], [9.0, 9.0], [0.2, 0.1], ["a", "a"], C, step=0.1)
    # the first step (alone) ends at 0.1, exactly when r1 arrives: a step of two follows
    assert out.finish == pytest.approx([0.25, 0.25])


def test_ended_members_are_dropped_and_reported():
    def end_long(now, running):
        return [m.id for m in running if m.steps >= 2]

    p = Greedy(end=end_long)
    out = simulate_steps(p, [0.0, 0.0], [9.0, 9.0], [0.15, 0.5], ["a", "a"], C, step=0.1)
    assert list(out.state) == [COMPLETED, ENDED]
    assert out.finish[0] == pytest.approx(0.30)
    assert math.isnan(out.finish[1])
    assert p.ended_seen == [("a", 2)]
    m = out.summary(np.array([0.0, 0.0]), np.array([9.0, 9.0]))
    assert (m["completed"], m["dropped"], m["ended"]) == (1, 1, 1)


def test_workers_run_their_batches_side_by_side():
    p = Greedy(max_batch=1)
    out = simulate_steps(p, [0.0, 0.0], [9.0, 9.0], [0.2, 0.2], ["a", "a"], [1.0],
                         step=0.1, workers=2)
    assert out.finish == pytest.approx([0.2, 0.2])
    out = simulate_steps(Greedy(max_batch=1), [0.0, 0.0], [9.0, 9.0], [0.2, 0.2], ["a", "a"],
                         [1.0], step=0.1)
    assert out.finish == pytest.approx([0.2, 0.4])


def test_a_wakeup_that_passes_while_the_worker_is_busy_does_not_turn_the_clock_back():
    until = {0: 0.5, 2: 2.0}

    class Holds(Greedy):
        """Holds request r until `until[r]` (asking to be woken then)."""

        def step_boundary(self, now, running):
            self.boundaries.append((now, list(running)))
            free = self._max_batch - len(running)
            joined = [r for r in self.queue if now >= until.get(r, 0.0)][:free]
            self.queue = [r for r in self.queue if r not in joined]
            return StepDecision(joined, [], [])

        def next_wakeup(self, now):
            return min((until[r] for r in self.queue if r in until and now < until[r]),
                       default=None)  # fmt: skip

    # r1 (arrived at 0.1) runs ten steps alone to 1.1, past r0's wakeup at 0.5; r0 runs
    # then, to 1.2; r2 (arrived at 1.15) is held until 2.0
    p = Holds(max_batch=1)
    out = simulate_steps(p, [0.0, 0.1, 1.15], [9.0] * 3, [0.1, 1.0, 0.1], ["a"] * 3, [1.0],
                         step=0.1)  # fmt: skip
    assert out.finish == pytest.approx([1.2, 1.1, 2.1])
    seen = [t for t, _ in p.boundaries]
    assert seen == sorted(seen)


def test_requests_left_waiting_for_ever_count_as_dropped():
    class Idle(Greedy):
        def step_boundary(self, now, running):
            return StepDecision([], [], [])

    out = simulate_steps(Idle(), [0.0, 1.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], C, step=0.1)
    assert list(out.state) == [DROPPED, DROPPED]


def test_a_policy_breaking_the_contract_is_caught():
    class Oversized(Greedy):
        def step_boundary(self, now, running):
            joined, self.queue = self.queue, []
            return StepDecision(joined, [], [])

    with pytest.raises(SimulationError, match="maximum 1"):
        simulate_steps(Oversized(max_batch=1), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0],
                       ["a", "a"], [1.0], step=0.1)

    class Twice(Greedy):
        def step_boundary(self, now, running):
            return StepDecision([0] if not running else [], [], [])

    with pytest.raises(SimulationError, match="not queued"):
        simulate_steps(Twice(), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0], ["a", "a"], C, step=0.1)

    class EndsAStranger(Greedy):
        def step_boundary(self, now, running):
            d = super().step_boundary(now, running)
            return StepDecision(d.joined, [], [1] if running else [])

    with pytest.raises(SimulationError, match="not running"):
        simulate_steps(EndsAStranger(max_batch=1), [0.0, 0.0], [5.0, 5.0], [1.0, 1.0],
                       ["a", "a"], [1.0], step=0.1)


STEP_CELL = ("orloj", "oracle", *STEP_POLICIES)


@pytest.mark.parametrize("solo", ["static", "bimodal", "lognormal"])
@pytest.mark.parametrize("load", [1.0, 6.0])
def test_every_request_ends_exactly_once_for_every_step_policy(solo, load):
    spec = WorkloadSpec(solo=solo, slo=3.0, load=load, **SMALL)
    result = run(SimConfig(spec, batching="step", policies=STEP_CELL))
    assert list(result["policies"]) == list(STEP_CELL)
    for name, m in result["policies"].items():
        assert m["completed"] + m["dropped"] + m["rejected"] == 300, name
        assert 0 <= m["ended"] <= m["dropped"]
        assert 0 <= m["late"] <= m["completed"]
        assert m["finish_rate"] == pytest.approx((m["completed"] - m["late"]) / 300)
    assert result["policies"]["fcfs-step"]["dropped"] == 0  # it gives up on nobody


def test_a_seed_gives_the_same_output():
    def cfg(seed):
        spec = WorkloadSpec(solo="lognormal", slo=3.0, load=4.0, seed=seed, **SMALL)
        return SimConfig(spec, batching="step", policies=tuple(STEP_POLICIES))

    assert run(cfg(5)) == run(cfg(5))
    assert run(cfg(5))["policies"] != run(cfg(6))["policies"]


def test_whole_batch_policies_are_unchanged_by_step_batching():
    spec = WorkloadSpec(solo="bimodal", slo=3.0, load=2.0, **SMALL)
    whole = run(SimConfig(spec, policies=("orloj", "nexus")))["policies"]
    step = run(SimConfig(spec, batching="step", policies=("orloj", "nexus")))["policies"]
    assert whole == step


def test_orloj_step_beats_continuous_batching_under_overload():
    # continuous batching admits everyone: its queue, and its lateness, grow without end
    spec = WorkloadSpec(solo="lognormal", slo=3.0, load=8.0, requests=1000, prior_samples=2000)
    m = run(SimConfig(spec, batching="step", policies=("fcfs-step", "orloj-step")))["policies"]
    assert m["orloj-step"]["finish_rate"] > 5 * m["fcfs-step"]["finish_rate"]
    assert m["orloj-step"]["finish_rate"] > 0.4


def test_step_policies_need_step_batching():
    with pytest.raises(ValueError, match="--batching step"):
        SimConfig(WorkloadSpec(**SMALL), policies=("orloj-step",))
    with pytest.raises(ValueError, match="unknown batching"):
        SimConfig(WorkloadSpec(**SMALL), batching="token")
    with pytest.raises(ValueError, match="step"):
        SimConfig(WorkloadSpec(**SMALL), batching="step", step=0.0)


# ---------------------------------------------------------------------- through the core
def _core_run(policy, arrival, deadline, solo, inflation, **kw):
    from orloj_rt.sim.step_simulator import simulate_serving_steps

    trace: list = []
    out = simulate_serving_steps(policy, arrival, deadline, solo, ["a"] * len(arrival),
                                 inflation, [0.1, 0.2, 0.3], step=0.1, trace=trace,
                                 **kw)  # fmt: skip
    return out, trace


def test_through_the_core_a_freed_place_is_filled_one_step_later():
    """The runtime's worker applies an update at the boundary after the report it answers:
    r0 leaves at 0.2, and r2, queued since 0.05, joins at 0.3, one step later than when
    the policy is called at each boundary (simulate_steps)."""
    arrival, deadline, solo = [0.0, 0.0, 0.05], [9.0, 9.0, 9.0], [0.2, 0.3, 0.1]
    out, trace = _core_run("fcfs-step", arrival, deadline, solo, [1.0, 1.0])
    assert out.finish == pytest.approx([0.2, 0.3, 0.4])
    assert list(out.batch_sizes) == [2, 2, 1, 1]
    assert np.all(out.state == COMPLETED)
    # an idle worker applies an update at once: r0 and r1 ran from 0.0
    (first,) = [a for name, a in trace if name == "decided" and a[0]][:1]
    assert first[0] == [(0, 1, [0, 1], [])]
    # r2 was admitted at the report of 0.2 and joined at 0.3, after that boundary's report
    # (which echoes the update applied at 0.0: the worker reports, then applies)
    reports = [a[0] for name, a in trace if name == "step_progress"]
    assert [(r[2], r[4], r[6]) for r in reports] == [
        (1, [0, 1], []), (1, [1], [[0, 2]]), (1, [], [[1, 3]]), (2, [], [[2, 1]])]
    assert [r[3] for r in reports] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    from orloj_rt.policies import make_policy

    direct = simulate_steps(make_policy("fcfs-step", max_batch=2, inflation=[1.0, 1.0],
                                        step=0.1), arrival, deadline, solo, ["a"] * 3,
                            [1.0, 1.0], step=0.1)  # fmt: skip
    assert direct.finish == pytest.approx([0.2, 0.3, 0.3])


def test_through_the_core_an_ended_member_is_answered_at_once_and_leaves_a_step_later():
    # r0 needs 5 steps but its deadline is 0.25: edf-step ends it at the report of 0.2,
    # for the boundary of 0.3; it is answered then (ENDED) and runs until 0.3
    out, trace = _core_run("edf-step", [0.0], [0.25], [0.5], [1.0, 1.0])
    assert list(out.state) == [ENDED] and math.isnan(out.finish[0])
    assert list(out.batch_sizes) == [1, 1, 1]
    decided = [a for name, a in trace if name == "decided" and (a[0] or a[1])]
    assert decided[-1] == ([(0, 2, [], [0])], [0])
    m = out.summary(np.array([0.0]), np.array([0.25]))
    assert (m["completed"], m["dropped"], m["ended"]) == (0, 1, 1)


def test_step_cells_run_the_step_policies_through_the_core():
    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.sim.experiment import run_policy
    from orloj_rt.sim.step_simulator import simulate_serving_steps
    from orloj_rt.sim.workloads import generate

    config = SimConfig(WorkloadSpec(solo="lognormal", slo=3.0, load=4.0, **SMALL),
                       batching="step", policies=tuple(STEP_POLICIES))  # fmt: skip
    req = generate(config.workload)
    for name in STEP_POLICIES:
        out = simulate_serving_steps(name, req.arrival, req.deadline, req.solo, req.app,
                                     Inflation(config.max_batch, config.batch_alpha).table,
                                     req.prior, step=config.step,
                                     clairvoyant=name == "oracle-step")  # fmt: skip
        got = run_policy(config, name, req)
        want = out.summary(req.arrival, req.deadline)
        assert {k: got[k] for k in want} == want, name
        assert got["answered_in_slo"] == want["finish_rate"] == got["utility"], name


def test_through_the_core_the_contract_is_checked():
    from orloj_rt.sim.step_simulator import simulate_serving_steps

    with pytest.raises(ValueError, match="not a step policy"):
        simulate_serving_steps("fifo", [0.0], [1.0], [0.1], ["a"], C, [0.1], step=0.1)
    with pytest.raises(ValueError, match="step"):
        simulate_serving_steps("fcfs-step", [0.0], [1.0], [0.1], ["a"], C, [0.1], step=0.0)
