"""The policy registry: every name builds a Policy through the runtime's factory."""

from __future__ import annotations

import pytest

from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.policies import BASELINES, POLICIES, STEP_POLICIES, is_step_policy, make_policy


def test_every_policy_is_registered():
    assert set(POLICIES) == {"orloj", "fifo", "edf", "nexus", "clockwork", "oracle", "sjf-hint",
                             "loki-threshold"}
    assert set(BASELINES) <= set(POLICIES)
    # step-level policies have a registry of their own: the whole-batch scheduler's
    # choices (POLICIES) stay the policies it can drive
    assert set(STEP_POLICIES) == {"orloj-step", "fcfs-step", "edf-step", "oracle-step"}
    assert not set(STEP_POLICIES) & set(POLICIES)
    assert all(is_step_policy(n) for n in STEP_POLICIES)
    assert not any(is_step_policy(n) for n in POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_make_policy_builds_each(name, spread):
    table = [1.0 + 0.15 * b for b in range(8)]
    policy = make_policy(name, max_batch=8, inflation=table)
    assert isinstance(policy, Policy)
    assert policy.name == name
    policy.set_default_distribution(spread)
    hint = 0.7 if name == "oracle" else None
    policy.enqueue(1, "default", 0.0, 10.0, hint)
    assert len(policy) == 1
    now = 0.0
    if name == "fifo":
        # Triton's queue delay holds a lone request (no preferred size) for a tenth of
        # its SLO, and says when to ask again
        assert policy.decide(now).batch == []
        now = policy.next_wakeup(now)
        assert now == pytest.approx(1.0)
    decision = policy.decide(now)
    assert isinstance(decision, Decision)
    assert decision.batch == [1]
    assert len(policy) == 0


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_queue_contract(name, spread):
    policy = make_policy(name, max_batch=4)
    policy.set_default_distribution(spread)
    hint = 0.7 if name == "oracle" else None
    policy.enqueue(1, "default", 0.0, 5.0, hint)
    with pytest.raises(ValueError, match="already queued"):
        policy.enqueue(1, "default", 0.0, 5.0, hint)
    with pytest.raises(ValueError, match="in the past"):
        policy.enqueue(2, "default", 3.0, 1.0, hint)
    policy.remove(1)
    with pytest.raises(KeyError):
        policy.remove(1)
    assert len(policy) == 0


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: clockwork, edf, fifo.*fcfs-step"):
        make_policy("lifo", max_batch=4)
