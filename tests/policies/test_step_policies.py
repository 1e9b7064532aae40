"""The step-level policies at a step boundary: fcfs-step, edf-step and orloj-step."""

from __future__ import annotations

import math
import random

import pytest

from orloj_rt.engine import Distribution
from orloj_rt.policies import STEP_POLICIES, is_step_policy, make_policy
from orloj_rt.policies.step_interface import RunningMember, StepDecision, StepPolicy

C = [1.0 + 0.15 * b for b in range(8)]  # c(1..8)


def build(name, prior=None, **params):
    p = make_policy(name, max_batch=len(C), inflation=C, step=0.1, **params)
    if prior is not None:
        p.set_default_distribution(prior)
    return p


@pytest.mark.parametrize("name", sorted(STEP_POLICIES))
def test_every_step_policy_is_built_by_the_factory(name, spread):
    p = build(name, spread)
    assert isinstance(p, StepPolicy) and is_step_policy(name) and p.name == name
    assert (p.max_batch, p.step) == (8, 0.1)
    hint = 0.7 if name == "oracle-step" else None  # the oracle reads the true solo time
    p.enqueue(1, "default", 0.0, 10.0, hint)
    with pytest.raises(ValueError, match="already queued"):
        p.enqueue(1, "default", 0.0, 10.0, hint)
    with pytest.raises(ValueError, match="in the past"):
        p.enqueue(2, "default", 3.0, 1.0, hint)
    d = p.step_boundary(0.0, [])
    assert isinstance(d, StepDecision) and d.joined == [1] and len(p) == 0
    p.enqueue(3, "default", 0.0, 10.0, hint)
    p.remove(3)
    with pytest.raises(KeyError):
        p.remove(3)
    with pytest.raises(ValueError, match="step"):
        make_policy(name, max_batch=4, step=0.0)


def test_fcfs_step_fills_free_places_in_arrival_order_and_drops_nobody():
    p = build("fcfs-step")
    for rid, (arrival, deadline) in enumerate([(0.0, 9.0), (0.1, 0.2), (0.2, 0.5)]):
        p.enqueue(rid, "a", arrival, deadline)
    running = [RunningMember(9, "a", -5.0, 3)] * 6  # hopelessly late, yet kept
    d = p.step_boundary(1.0, running)
    assert d == StepDecision([0, 1], [], [])  # two free places, oldest first
    assert p.step_boundary(1.0, running + [None] * 2).joined == []  # full


def test_edf_step_ends_and_drops_the_expired_and_admits_by_deadline():
    p = build("edf-step")
    for rid, deadline in enumerate([5.0, 0.5, 3.0, 4.0]):
        p.enqueue(rid, "a", 0.0, deadline)
    running = [RunningMember(7, "a", 0.9, 2), RunningMember(8, "a", 6.0, 2)]
    d = p.step_boundary(1.0, running)
    assert d.ended == [7] and d.dropped == [1]
    assert d.joined == [2, 3, 0]  # 8 - 2 + 1 places, earliest deadlines first


# ----------------------------------------------------------------------- orloj-step
def test_orloj_step_chances_are_conditional_distributions():
    prior = Distribution.from_mean_cov(1.0, 1.0)
    p = build("orloj-step", prior)
    for k in (0, 3, 10, 25):
        for slack in (0.35, 1.0, 2.4):
            for b in (1, 4):
                m = math.floor(slack / (C[b - 1] * 0.1) + 1e-9)
                want = prior.conditional_cdf(k * 0.1, m * 0.1)
                assert p.chance("default", k, slack, b) == pytest.approx(want, abs=1e-12)


def test_orloj_step_drops_the_hopeless_and_ends_the_lost(point_mass):
    # every request needs exactly 1.0 of solo work: 10 steps
    p = build("orloj-step", point_mass)
    p.enqueue(0, "a", 0.0, 0.95)  # cannot finish even alone: dropped
    p.enqueue(1, "a", 0.0, 5.0)
    running = [RunningMember(10, "a", 0.55, 5),  # 5 steps left, 5 fit alone: kept
               RunningMember(11, "a", 0.35, 5)]  # 5 steps left, 3 fit: ended
    d = p.step_boundary(0.0, running)
    assert d.dropped == [0]
    assert d.ended == [11]
    assert 10 not in d.ended


def test_orloj_step_admits_when_nobody_is_hurt_and_protects_a_tight_member(spread):
    # solo work spread evenly over [0.5, 1.5]
    p = build("orloj-step", spread)
    p.enqueue(1, "a", 0.0, 20.0)
    roomy = [RunningMember(10, "a", 20.0, 2)]
    assert p.step_boundary(0.0, roomy).joined == [1]

    # a member with 1.2 done needs at most 3 more steps: alone all 3 fit in 0.32, in a
    # batch of two only 2 (chance (F(1.4) - F(1.2)) / (1 - F(1.2)) = 2/3). A newcomer
    # whose own chance there is F(0.7) = 0.2 would take 1/3 from it: it waits
    tight = [RunningMember(10, "a", 0.32, 12)]
    p = build("orloj-step", spread)
    p.enqueue(2, "a", 0.0, 0.85)
    assert p.chance("a", 12, 0.32, 1) == pytest.approx(1.0)
    assert p.chance("a", 12, 0.32, 2) == pytest.approx(2 / 3, abs=0.01)
    assert p.chance("a", 0, 0.85, 2) == pytest.approx(0.2, abs=0.01)
    d = p.step_boundary(0.0, tight)
    assert d.joined == [] and d.ended == [] and len(p) == 1
    # without the marginal test it joins
    q = build("orloj-step", spread, marginal=False)
    q.enqueue(2, "a", 0.0, 0.85)
    assert q.step_boundary(0.0, tight).joined == [2]
    # a newcomer with a better chance than the member's loss joins
    r = build("orloj-step", spread)
    r.enqueue(3, "a", 0.0, 1.5)
    assert r.chance("a", 0, 1.5, 2) > 1 / 3
    assert r.step_boundary(0.0, tight).joined == [3]


def test_orloj_step_ends_a_member_that_costs_the_others_more_than_it_brings(spread):
    # two tight members finish only in a batch of two; a third, with little chance,
    # would make both miss
    p = build("orloj-step", spread)
    tight = [RunningMember(10, "a", 0.36, 12), RunningMember(11, "a", 0.36, 12)]
    weak = RunningMember(12, "a", 0.85, 0)  # 6 steps in a batch of 3: F(0.6) = 0.1
    assert p.chance("a", 12, 0.36, 2) == pytest.approx(1.0)
    assert p.chance("a", 12, 0.36, 3) == pytest.approx(2 / 3, abs=0.01)
    assert p.chance("a", 0, 0.85, 3) == pytest.approx(0.1, abs=0.01)
    d = p.step_boundary(0.0, tight + [weak])
    assert d.ended == [12]
    q = build("orloj-step", spread, marginal=False)
    assert q.step_boundary(0.0, tight + [weak]).ended == []


def test_orloj_step_admits_the_best_use_of_a_place_first(spread):
    # one free place; the freshest request has the best chance per step of place used
    p = build("orloj-step", spread)
    running = [RunningMember(100 + i, "a", 50.0, 1) for i in range(7)]
    p.enqueue(1, "a", 0.0, 1.3)
    p.enqueue(2, "a", 0.0, 9.0)
    assert p.step_boundary(0.0, running).joined == [2]
    q = build("orloj-step", spread, order="deadline")
    q.enqueue(1, "a", 0.0, 1.3)
    q.enqueue(2, "a", 0.0, 9.0)
    assert q.step_boundary(0.0, running).joined == [1]


def test_orloj_step_learning_keeps_the_tail_of_ended_members():
    # members run until they finish or pass 1.0 of work; the ended ones are censored
    truth = Distribution.from_mean_cov(1.0, 1.0)
    p = build("orloj-step", truth)
    rng = random.Random(11)
    for _ in range(3000):
        x = truth.quantile(rng.random())
        steps = max(1, math.ceil(x / 0.1 - 1e-9))
        if steps <= 10:
            p.observe_finished("default", steps)
        else:
            p.observe_ended("default", 10)
    learned = p.distribution("default")
    assert learned.cdf(1.0) == pytest.approx(truth.cdf(1.0), abs=0.03)
    assert learned.mean() == pytest.approx(truth.mean(), rel=0.1)
    # without the imputation the ended members would vanish: P(X > 1) would fall to 0
    q = build("orloj-step", truth, learn=False)
    q.observe_ended("default", 10)
    assert q.distribution("default").samples_added == truth.samples_added


def test_orloj_step_keeps_a_member_that_outlived_every_sample_while_it_has_slack():
    # every sample says 1.0 of work (10 steps); a member at step 15 is longer than any
    learned = Distribution.from_samples([1.0] * 50)
    p = build("orloj-step", learned)
    law = p.law("default")
    assert law.top <= 15  # the member is beyond the table
    # memoryless beyond the support, with the distribution's mean (about 10 steps)
    assert 0.0 < p.chance("default", 15, 0.5, 1) < p.chance("default", 15, 5.0, 1) < 1.0
    assert p.chance("default", 15, 0.05, 1) == 0.0  # not even one step fits: no chance
    d = p.step_boundary(0.0, [RunningMember(1, "default", 100.0, 15)])
    assert d.ended == []  # a minute of slack: it runs on
    d = p.step_boundary(0.0, [RunningMember(1, "default", 0.05, 15)])
    assert d.ended == [1]  # no step fits before its deadline
    # ending it past the support teaches F that longer requests exist
    before = learned.cdf(1.5)
    p.observe_ended("default", 15)
    assert p.distribution("default").cdf(1.5) < before


def test_orloj_step_checks_its_parameters(spread):
    with pytest.raises(ValueError, match="theta"):
        build("orloj-step", theta=1.5)
    with pytest.raises(ValueError, match="order"):
        build("orloj-step", order="lifo")
    with pytest.raises(ValueError, match="set_default_distribution"):
        p = build("orloj-step")
        p.enqueue(1, "a", 0.0, 1.0)
        p.step_boundary(0.0, [])


def test_oracle_step_knows_every_solo_time(spread):
    p = build("oracle-step", spread)
    with pytest.raises(ValueError, match="true solo time"):
        p.enqueue(1, "a", 0.0, 5.0)
    p.enqueue(1, "a", 0.0, 0.35, 0.3)  # 3 steps: fits alone, exactly
    p.enqueue(2, "a", 0.0, 0.35, 0.4)  # 4 steps: cannot fit, dropped
    d = p.step_boundary(0.0, [])
    assert d.joined == [1] and d.dropped == [2]
    p.enqueue(3, "a", 0.0, 0.8, 0.45)  # 5 steps: 0.575 in a batch of two
    p.enqueue(4, "a", 0.0, 0.75, 0.45)  # a chance alone, none in a batch of two: it waits
    # member 1 has 1 step left and 0.15 of slack: in a batch of two it still makes it
    d = p.step_boundary(0.2, [RunningMember(1, "a", 0.35, 2)])
    assert d.joined == [3] and d.ended == [] and d.dropped == [] and len(p) == 1


def test_orloj_step_does_not_take_a_member_about_to_finish_for_a_long_one():
    # 80% of requests need 2 steps, 20% need 16. A runtime scheduler decides for the
    # worker's next boundary before it hears whether a member at step 1 finished at step
    # 2 (RunningMember.unseen): taking "still running at step 2" as seen would make every
    # member a long one, hopeless with 8 steps of slack, and end the 80% about to finish.
    bimodal = Distribution.from_samples([0.15] * 80 + [1.55] * 20)
    p = build("orloj-step", bimodal)
    law = p.law("default")
    assert law.prob(1, 1 + 8) == pytest.approx(0.8, abs=0.02)  # seen at 1: likely short
    assert law.prob(2, 8) == 0.0  # seen at 2: a long one, 14 steps to go
    about_to_finish = RunningMember(1, "default", 0.8, 2, unseen=1)
    assert p.step_boundary(0.0, [about_to_finish]).ended == []
    seen_long = RunningMember(1, "default", 0.8, 2)  # unseen=0: it did survive step 2
    assert p.step_boundary(0.0, [seen_long]).ended == [1]
    # the steps it occupies after the boundary: the unseen one is not counted again
    assert law.stay(1, 8, 1) == pytest.approx(0.2 * 8 / 1.0, abs=0.1)


def test_orloj_step_keeps_bounded_per_app_state(spread):
    """Issue 19, item 3: apps beyond the cap share the overflow app and are served; an
    app with nothing queued not seen for app_idle_s is forgotten when a new one comes."""
    from orloj_rt.engine.apps import OVERFLOW_APP

    p = build("orloj-step", spread, max_apps=4, app_idle_s=5.0)
    for rid in range(30):
        p.enqueue(rid, f"tenant-{rid}", 0.0, 50.0)
    assert p.apps == ["tenant-0", "tenant-1", "tenant-2", OVERFLOW_APP]
    served = []
    running: list[RunningMember] = []
    now = 0.0
    while len(p):
        d = p.step_boundary(now, running)
        served += d.joined + d.dropped
        running = []  # every member finishes at once
        now += 0.01
    assert sorted(served) == list(range(30))
    p.observe_finished("tenant-29", 12)  # learns into the overflow app: no new app
    assert len(p.apps) == 4
    p.enqueue(100, "busy", 1.0, 100.0)  # no room: the overflow app's
    p.enqueue(101, "fresh", 10.0, 100.0)  # every idle app is due: forgotten
    assert set(p.apps) == {OVERFLOW_APP, "fresh"}  # the overflow app has one queued
    assert p.apps_evicted == 3
    assert not p.forget_app(OVERFLOW_APP)  # queued
    d = p.step_boundary(10.0, [])
    assert sorted(d.joined + d.dropped) == [100, 101]
    assert p.forget_app("fresh") and p.apps == [OVERFLOW_APP]


def test_orloj_step_state_does_not_grow_with_the_apps_seen(spread):
    p = build("orloj-step", spread)
    now = 0.0
    for rid in range(5_000):
        app = f"passing-{rid}"
        p.enqueue(rid, app, now, now + 100.0)
        assert p.step_boundary(now, []).joined == [rid]
        p.observe_finished(app, 10)
        now += 0.1
    assert len(p.apps) <= p._apps.max_apps
    assert len(p._dists) <= p._apps.max_apps and len(p._laws) <= p._apps.max_apps
