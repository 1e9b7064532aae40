"""Priority tiers through the serving core (issue 17): a descriptor's ninth field reaches
the policy; a tier the policy cannot take is an error reply naming `priority`."""

from __future__ import annotations

from orloj_rt.serving import ServingCore
from orloj_rt.sim.simulator import SimModel, warmup_profile

C = [1.0 + 0.15 * b for b in range(4)]


def core_with(policy="orloj", params=None, max_batch=1):
    core = ServingCore([SimModel("m", max_batch)], policy, params, 1, timer=lambda: 0.0)
    core.worker_ready(0, [warmup_profile([1.0] * 50, C[:max_batch])])
    return core


def test_a_top_tier_descriptor_is_served_first():
    for policy in ("orloj", "fifo"):
        core = core_with(policy, {"max_queue_delay": 0.0} if policy == "fifo" else None)
        core.submit([(1, 0, "a", 0.0, 1.2, None, 0, 0),
                     (2, 0, "a", 0.1, 1.25, None, 1, 0, 1)])  # fmt: skip
        (run,) = core.dispatch(0.1)
        assert run.tokens == [2], policy
        assert run.variant is None  # the model has no variants


def test_a_tier_beyond_the_tier_weights_is_an_error_naming_priority():
    core = core_with("orloj", {"tier_weights": [1, 10]})
    core.submit([(1, 0, "a", 0.0, 5.0, None, 0, 0, 5)])
    _, _, errors = core.take_discards()
    assert len(errors) == 1 and errors[0][0] == 1
    assert "priority 5 is out of range" in errors[0][1]
    assert not core.dispatch(0.0)


def test_the_core_feeds_fairness_the_outcomes():
    core = core_with("orloj", {"fairness": 1.0}, max_batch=4)
    policy = core.models[0].policy
    token = 0
    for _ in range(40):
        # app b's requests are late or dropped, app a's finish
        descs = [(token + i, 0, app, 0.0, dl, None, 0, 0)
                 for i, (app, dl) in enumerate([("a", 50.0), ("a", 50.0), ("b", 0.5),
                                                ("b", 0.5)])]  # fmt: skip
        token += 4
        core.submit(descs)
        for run in core.dispatch(0.0):
            core.batch_done(run.worker, 0, True, 1.0, None)  # ends at 1.0: b is late
        core.take_discards()
    assert policy.multiplier("b") > 1.0 > policy.multiplier("a")
