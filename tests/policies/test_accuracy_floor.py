"""The accuracy floor (`min_accuracy`, orloj_rt/policies/accuracy_floor.py): its budget,
the variant choice it rations, and the mean accuracy it keeps through the serving core."""

from __future__ import annotations

import pytest

from orloj_rt.engine import Distribution
from orloj_rt.policies import make_policy
from orloj_rt.policies.accuracy_floor import BANK_REQUESTS, AccuracyFloor
from orloj_rt.policies.utility import UtilityPolicy

VARIANTS = (("full", 1.0, 1.0), ("half", 0.5, 0.93), ("quarter", 0.25, 0.85))


def test_the_budget_allows_a_cheap_variant_only_as_far_as_answers_paid_for_it():
    f = AccuracyFloor(0.9, [1.0, 0.93, 0.85])
    assert f.allows(0, 8) == 8 and f.allows(1, 8) == 8  # at or above the floor: always
    assert f.allows(2, 8) == 0  # nothing earned yet
    for _ in range(10):
        f.answered(1, True)  # 10 x 0.03 earned
    assert f.credit == pytest.approx(0.3)
    assert f.allows(2, 8) == 6  # 6 x 0.05 = 0.3
    f.dispatched(2, 6)
    assert f.allows(2, 8) == 0  # in flight, it is spoken for
    f.answered(2, False)  # a late one takes nothing
    assert f.allows(2, 8) == 1
    for _ in range(5):
        f.answered(2, True)
    assert f.credit == pytest.approx(0.05) and f.pending == pytest.approx(0.0)
    f.answered(1, False)  # a late answer earns nothing
    assert f.credit == pytest.approx(0.05)


def test_the_budget_is_capped():
    f = AccuracyFloor(0.9, [1.0, 0.85])
    for _ in range(10 * BANK_REQUESTS):
        f.answered(0, True)
    assert f.credit == pytest.approx(BANK_REQUESTS * 0.1)


@pytest.mark.parametrize("floor", [1.5, -0.1, float("nan")])
def test_a_bad_floor_names_the_parameter(floor):
    with pytest.raises(ValueError, match="min_accuracy"):
        make_policy("orloj", max_batch=8, variants=VARIANTS, min_accuracy=floor)


def test_a_floor_above_every_variant_says_how_far_to_lower_it():
    with pytest.raises(ValueError, match="lower it to at most 0.9"):
        AccuracyFloor(0.95, [0.9, 0.8])


def policy(**kw) -> UtilityPolicy:
    p = make_policy("orloj", max_batch=8, variants=VARIANTS, **kw)
    assert isinstance(p, UtilityPolicy)
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    return p


def overloaded(p: UtilityPolicy, first: int = 0, n: int = 400) -> None:
    # far more than any variant drains within the SLO, arriving fast: overload, where
    # without a floor the cheapest variant earns the most utility per unit of time
    for i in range(first, first + n):
        p.enqueue(i, "a", i * 0.001, i * 0.001 + 1.2)


def test_under_overload_the_floor_keeps_the_cheapest_variant_out_until_paid_for():
    free = policy()
    overloaded(free)
    assert free.decide(0.4).variant == 2  # quarter, without a floor

    p = policy(min_accuracy=0.9)
    overloaded(p)
    d = p.decide(0.4)
    assert d.batch and p.variants[d.variant].accuracy >= 0.9, d
    for _ in d.batch:  # its members answered in time earn the budget
        p.observe_outcome("a", True, d.variant)
    earned = len(d.batch) * (p.variants[d.variant].accuracy - 0.9)
    cap = int(earned / 0.05 + 1e-9)
    # from now on quarter may serve at most what was earned
    served_cheap = 0
    for _ in range(20):
        d = p.decide(0.4)
        if not d.batch:
            break
        if d.variant == 2:
            served_cheap += len(d.batch)
    assert served_cheap <= cap


def test_without_outcomes_the_floor_never_lets_a_cheaper_variant_run():
    p = policy(min_accuracy=0.93)
    overloaded(p)
    for _ in range(30):
        d = p.decide(0.4)
        if d.batch:
            assert p.variants[d.variant].accuracy >= 0.93


def test_through_the_serving_core_the_answers_keep_the_floor():
    from orloj_rt.sim.experiment import SimConfig, run_policy
    from orloj_rt.sim.workloads import WorkloadSpec, generate

    spec = WorkloadSpec(solo="lognormal", slo=5.0, load=4.0, requests=1500, seed=3)
    req = generate(spec)
    out = {}
    for floor in (0.0, 0.9):
        cfg = SimConfig(spec, policies=("orloj+variants",), variants=VARIANTS,
                        policy_params={"orloj+variants": {"min_accuracy": floor}})
        out[floor] = run_policy(cfg, "orloj+variants", req)
    assert out[0.0]["mean_accuracy"] < 0.9  # the floor has work to do here
    assert out[0.9]["mean_accuracy"] >= 0.9 - 1e-9  # the floor, up to rounding
    assert out[0.9]["variants"]["quarter"] > 0  # rationed, not banned


def test_a_batch_lost_with_its_worker_frees_its_share_of_the_budget():
    """A batch below the floor is counted in flight until its members are answered; a
    worker that dies answers them with an error, not in time, and the share it held is
    free again (it used to stay spoken for)."""
    from orloj_rt.policies.utility import VariantSpec
    from orloj_rt.serving import ServingCore
    from orloj_rt.sim.simulator import SimModel, warmup_profile

    variants = tuple(VariantSpec(n, a, c) for n, c, a in VARIANTS)
    core = ServingCore([SimModel("m", 8, None, variants)], "orloj", {"min_accuracy": 0.9},
                       1, timer=lambda: 0.0)  # fmt: skip
    core.worker_ready(0, [warmup_profile([1.0] * 50, [1 + 0.15 * b for b in range(8)])])
    floor = core.models[0].policy._floor
    floor.credit = 0.8  # earned before: room for a few cheap answers
    core.submit([(i, 0, "a", 0.0, 1.5, None, 0, 0) for i in range(40)])
    (run,) = core.dispatch(0.0)
    assert run.variant in ("half", "quarter")  # a tight SLO, a long queue, credit to spend
    assert floor.pending > 0
    tokens, _ = core.worker_lost(0)
    assert sorted(tokens) == sorted(run.tokens)
    assert floor.pending == pytest.approx(0.0)
    assert floor.credit == pytest.approx(0.8)  # nothing earned by answers that failed
