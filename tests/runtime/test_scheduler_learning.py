"""The scheduler's online learning, on the active engine (compiled or pure twin)."""

from __future__ import annotations

import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol.messages import ModelProfile
from orloj_rt.serving.learning import MIN_APP_SAMPLES
from orloj_rt.serving.model import ModelCore


def queue(name: str, policy: str = "orloj", fit=None) -> ModelCore:
    entry = BUILTIN_MODELS[name]
    mq = ModelCore(0, entry.spec, policy)
    b = entry.spec.max_batch_size
    mq.configure(ModelProfile([0.001, 0.002, 0.003], [1.0 + 0.1 * i for i in range(b)], fit))
    return mq


def test_the_prior_comes_from_warm_up():
    mq = queue("noop")
    assert mq.prior_mean == pytest.approx(0.002)
    assert mq.policy.max_batch == 256
    mq.policy.enqueue(1, "new-app", 0.0, 10.0)  # an unseen app starts from the prior
    assert len(mq.policy) == 1


def test_batches_of_one_teach_solo_times_and_the_learned_distribution_replaces_the_prior():
    mq = queue("noop")
    for _ in range(MIN_APP_SAMPLES - 1):
        mq.learn(["a"], 0.010, None)
    st = mq.apps["a"]
    assert st.samples == MIN_APP_SAMPLES - 1 and not st.installed
    mq.learn(["a"], 0.010, None)
    assert st.installed and mq.stats()["apps"]["a"]["source"] == "learned"
    # the policy now believes 10 ms, not the 2 ms prior
    d = mq.policy.distribution("a")
    assert d.mean() == pytest.approx(0.010, rel=0.05)
    assert mq.stats()["apps"]["a"]["mean_solo_ms"] == pytest.approx(10.0)


def test_larger_batches_without_work_reports_teach_nothing_per_request():
    mq = queue("noop")
    mq.learn(["a", "b"], 0.010, None)
    assert mq.apps == {}


def test_work_reports_give_per_request_solo_times():
    mq = queue("early_exit", fit=[0.0005, 0.001])  # solo ~ 0.5 ms + 1 ms per layer
    c2 = mq.inflation[1]
    solos = mq.solo_times(2, 0.013 * c2, [12, 2])
    assert solos[0] == pytest.approx(0.013)  # the deepest member ran the whole batch
    assert solos[1] == pytest.approx(0.013 * (0.5 + 2) / (0.5 + 12))
    mq.learn(["x", "y"], 0.013 * c2, [12, 2])
    assert mq.apps["x"].samples == 1 and mq.apps["y"].samples == 1


@pytest.mark.parametrize("policy", ["fifo", "edf", "nexus", "clockwork"])
def test_every_registered_baseline_accepts_the_scheduler_calls(policy):
    from orloj_rt.policies import POLICIES

    if policy not in POLICIES:
        pytest.skip(f"{policy} is not registered")
    mq = queue("noop", policy)
    mq.policy.enqueue(1, "a", 0.0, 1.0)
    # fifo holds a lone request for its queue delay, and says until when
    d = mq.policy.decide(mq.policy.next_wakeup(0.0) or 0.0)
    assert d.batch == [1]
    mq.learn(["a"], 0.002, None)
