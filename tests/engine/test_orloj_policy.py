"""The orloj policy on small queues with known right answers, and its bad input."""

from __future__ import annotations

import math

import pytest


def policy_with(eng, mean=0.010, cov=0.5, **kw):
    p = eng.OrlojPolicy(**kw)
    p.set_default_distribution(eng.Distribution.from_mean_cov(mean, cov))
    return p


def test_drops_only_the_hopeless(eng):
    p = policy_with(eng, max_batch=8, epsilon=0.05, theta=0.7)
    p.enqueue(1, "default", 0.0, 0.0005)  # far below any plausible solo time
    p.enqueue(2, "default", 0.0, 0.200)
    decision = p.decide(0.0)
    assert decision.dropped == [1]
    assert decision.batch == [2]
    assert len(p) == 0


def test_every_member_reaches_theta(eng):
    theta = 0.8
    p = policy_with(eng, max_batch=16, theta=theta, epsilon=0.01)
    for i in range(40):
        p.enqueue(i, "default", 0.0, 0.005 + 0.004 * i)
    now = 0.0
    decision = p.decide(now)
    assert decision.batch
    apps = ["default"] * len(decision.batch)
    for rid in decision.batch:
        slack = 0.005 + 0.004 * rid - now
        assert p.batch_cdf(slack, apps) >= theta - 1e-9
    # the batch is the most urgent admissible requests, in deadline order
    assert decision.batch == sorted(decision.batch)
    assert len(p) == 40 - len(decision.batch) - len(decision.dropped)


def test_prefers_the_full_batch_when_every_deadline_is_far(eng):
    # a point mass: a batch of b takes c(b) * 10 ms for sure; throughput favours the largest
    p = policy_with(eng, mean=0.010, cov=0.0, max_batch=4, alpha=0.15)
    for i in range(6):
        p.enqueue(i, "default", 0.0, 10.0 + i)
    assert p.decide(0.0).batch == [0, 1, 2, 3]


def test_pools_form_batches_on_their_ladder_only(eng):
    # three fast requests with far deadlines: a batch of 3 is the best (tested: every size),
    # but pools over several apps form only the ladder's sizes (here 1, 2, 4, 8), so two
    # run (app a's pool, the first of equal scores); with one app every size is a
    # candidate, pools or not
    from orloj_rt.engine.pure.orloj import pool_ladder

    assert pool_ladder(8, 2, 2.0) == [1, 2, 4, 8]
    assert pool_ladder(32, 8, 2**0.5) == [1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 23, 32]
    assert pool_ladder(64, 8, 1.6) == [1, 2, 3, 4, 5, 6, 7, 8, 13, 20, 33, 52]
    assert pool_ladder(6, 8, 2**0.5) == [1, 2, 3, 4, 5, 6]
    assert pool_ladder(32, 8, 1.0) == list(range(1, 33))

    def first_batch(apps, **kw):
        p = policy_with(eng, max_batch=8, cov=0.1, pools=True, **kw)
        for i in range(3):
            p.enqueue(i, apps[i % len(apps)], 0.0, 1.0 + 0.01 * i)
        return p.decide(0.0).batch

    assert first_batch(["a", "b"], pool_step=1.0) == [0, 1, 2]
    assert len(first_batch(["a", "b"], pool_dense=2, pool_step=2.0)) == 2
    assert first_batch(["a"], pool_dense=2, pool_step=2.0) == [0, 1, 2]
    # the largest batch a decision forms is always a candidate
    p = policy_with(eng, max_batch=8, cov=0.1, pools=True, pool_dense=2, pool_step=2.0)
    p.set_batch_limit(3)
    for i in range(3):
        p.enqueue(i, "ab"[i % 2], 0.0, 1.0 + 0.01 * i)
    assert p.decide(0.0).batch == [0, 1, 2]
    for bad in ({"pool_dense": 0}, {"pool_step": 0.5}, {"pool_step": math.inf}):
        with pytest.raises(ValueError, match="pool_"):
            eng.OrlojPolicy(pools=True, **bad)


def test_tight_deadline_goes_alone_rather_than_miss_in_a_batch(eng):
    # point mass 10 ms, c(2) = 1.5: request 0 (12 ms of slack) only makes it alone
    p = policy_with(eng, mean=0.010, cov=0.0, max_batch=2, alpha=0.5)
    p.enqueue(0, "default", 0.0, 0.012)
    p.enqueue(1, "default", 0.0, 0.012)
    first = p.decide(0.0)
    assert len(first.batch) == 1


def test_fallback_runs_the_best_long_shot(eng):
    # slack at the median: above epsilon, below theta
    for fallback, expect in ((True, [7]), (False, [])):
        p = eng.OrlojPolicy(max_batch=4, theta=0.9, epsilon=0.01, fallback=fallback)
        prior = eng.Distribution.from_mean_cov(0.010, 1.0)
        p.set_distribution("default", prior)
        p.enqueue(7, "default", 0.0, prior.quantile(0.5))
        decision = p.decide(0.0)
        assert decision.batch == expect
        assert decision.dropped == []


def _patient(eng, patience):
    """A policy that knows a short law (1 ms) and a long one (10 ms, CoV 1), after short
    requests reached theta at 0 and 2 ms (the gap the patience is measured against)."""
    p = eng.OrlojPolicy(max_batch=4, theta=0.9, epsilon=0.01, patience=patience)
    p.set_distribution("short", eng.Distribution.from_mean_cov(0.001, 0.1))
    long = eng.Distribution.from_mean_cov(0.010, 1.0)
    p.set_distribution("long", long)
    for rid, now in ((1, 0.0), (2, 0.002)):
        p.enqueue(rid, "short", now, now + 0.005)
        assert p.decide(now).batch == [rid]
        assert p.next_wakeup(now) is None
    return p, long


def test_a_patient_fallback_waits_while_requests_at_theta_keep_coming(eng):
    """A long request (10 ms expected alone) below theta waits with patience 1 and runs
    without it; once no decision has found a request at theta for longer than its
    expected time, the next long one runs."""
    for patience, expect in ((1.0, []), (0.0, [7])):
        p, long = _patient(eng, patience)
        p.enqueue(7, "long", 0.003, 0.003 + long.quantile(0.5))
        assert p.decide(0.003).batch == expect, patience
    p, long = _patient(eng, 1.0)
    p.enqueue(8, "long", 0.05, 0.05 + long.quantile(0.5))
    assert p.decide(0.05).batch == [8]  # 48 ms since the last: run it


def test_a_held_back_fallback_wakes_the_worker_when_its_wait_is_over(eng):
    """Held back at 3 ms, the request is looked at again at the last decision at theta +
    E[T] / patience without any arrival, and runs then; nothing held back, no wake-up."""
    p, long = _patient(eng, 1.0)
    p.enqueue(7, "long", 0.003, 0.003 + long.quantile(0.85))
    assert p.decide(0.003).batch == []
    wake = p.next_wakeup(0.003)
    assert wake is not None and 0.003 < wake < 0.003 + long.quantile(0.85)
    assert wake == pytest.approx(0.002 + long.mean(), rel=0.05)  # E[T] of a batch of one
    assert p.decide(wake).batch == [7]
    assert p.next_wakeup(wake) is None


def test_patience_is_set_and_checked(eng):
    p = eng.OrlojPolicy(max_batch=4)
    assert p.patience == 0.0
    p.set_patience(2)
    assert p.patience == 2.0
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="patience must be a finite number >= 0"):
            p.set_patience(bad)
        with pytest.raises(ValueError, match="patience must be a finite number >= 0"):
            eng.OrlojPolicy(max_batch=4, patience=bad)


def _short_and_longs(eng, share):
    """One short request (10 ms, the most urgent) and three long ones (30 ms), all with
    ample slack: alone, the short one scores 1 / 10 ms = 100 finishes per second; all
    four in one batch 4 / (c(4) 30 ms) = 92."""
    p = eng.OrlojPolicy(max_batch=4, theta=0.8, pools=True, price_share=share)
    p.set_distribution("short", eng.Distribution.from_mean_cov(0.010, 0.02))
    p.set_distribution("long", eng.Distribution.from_mean_cov(0.030, 0.02))
    p.enqueue(1, "short", 0.0, 1.0)
    for rid in (2, 3, 4):
        p.enqueue(rid, "long", 0.0, 1.0 + rid)
    return p


def test_a_price_on_the_workers_time_prefers_the_batch_that_finishes_more(eng):
    """Step 3 runs the short request alone (the best score); priced at half the best
    score, the batch of four is worth 4 - 50 x 0.0435 = 1.8 finishes net against the short
    one's 1 - 50 x 0.010 = 0.5, and runs; priced at 0.95 of it, the short one runs again.
    evaluate() gives the batch's own score."""
    assert _short_and_longs(eng, 1.0).decide(0.0).batch == [1]
    assert _short_and_longs(eng, 0.95).decide(0.0).batch == [1]
    p = _short_and_longs(eng, 0.5)
    score, ids = p.evaluate(0.0)
    assert ids == [1, 2, 3, 4]
    assert score == pytest.approx(4 / (1.45 * 0.030), rel=0.03)
    assert p.decide(0.0).batch == [1, 2, 3, 4]


def test_price_share_and_epsilon_are_set_and_checked(eng):
    p = eng.OrlojPolicy(max_batch=4)
    assert (p.price_share, p.epsilon) == (1.0, 0.1)
    p.set_price_share(0.5)
    p.set_epsilon(0.02)
    assert (p.price_share, p.epsilon) == (0.5, 0.02)
    with pytest.raises(ValueError, match="epsilon"):
        p.set_epsilon(1.5)
    for bad in (0.0, -0.5, 1.5, float("nan"), "1", True):
        with pytest.raises(ValueError, match=r"price_share must be a number in \(0, 1\]"):
            p.set_price_share(bad)
        with pytest.raises(ValueError, match=r"price_share must be a number in \(0, 1\]"):
            eng.OrlojPolicy(max_batch=4, price_share=bad)


def test_apps_have_their_own_distributions(eng):
    p = eng.OrlojPolicy(max_batch=4, theta=0.7, epsilon=0.05)
    p.set_distribution("fast", eng.Distribution.from_mean_cov(0.001, 0.1))
    p.set_distribution("slow", eng.Distribution.from_mean_cov(0.050, 0.1))
    p.enqueue(1, "slow", 0.0, 0.010)  # hopeless for a 50 ms model
    p.enqueue(2, "fast", 0.0, 0.010)  # easy for a 1 ms model
    decision = p.decide(0.0)
    assert decision.dropped == [1]
    assert decision.batch == [2]
    assert p.batch_mean(["fast", "slow"]) > p.batch_mean(["fast", "fast"])


def test_learns_online(eng):
    p = policy_with(eng, mean=0.010, cov=0.2, max_batch=1)
    before = p.distribution("default").mean()
    for _ in range(5000):
        p.observe_solo("default", 0.030)
    assert p.distribution("default").mean() > 2.5 * before
    p.observe_batch(["default"], 0.030)  # a batch of one is a solo time
    p.observe_batch(["default", "default"], 9.0)  # larger batches teach c(b), not X
    assert p.distribution("default").mean() < 0.031


def test_new_app_starts_from_the_default_prior(eng):
    p = policy_with(eng, mean=0.010, cov=0.5)
    p.enqueue(1, "newcomer", 0.0, 1.0)
    assert p.distribution("newcomer").mean() == pytest.approx(0.010, rel=0.01)
    assert p.queued("newcomer") == 1 and p.queued() == 1


def test_bad_input(eng):
    p = policy_with(eng, max_batch=4)
    p.enqueue(1, "default", 1.0, 2.0)
    with pytest.raises(ValueError, match="in the past"):
        p.enqueue(2, "default", 1.0, 0.5)
    with pytest.raises(ValueError, match="already queued"):
        p.enqueue(1, "default", 1.0, 2.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            p.enqueue(3, "default", 1.0, bad)
        with pytest.raises(ValueError, match="finite"):
            p.decide(bad)
    with pytest.raises(KeyError, match="unknown request id 99"):
        p.remove(99)
    with pytest.raises(ValueError, match="above the model's maximum"):
        p.batch_cdf(0.1, ["default"] * 5)
    with pytest.raises(ValueError, match="empty batch"):
        p.batch_mean([])
    with pytest.raises(KeyError, match="unknown app"):
        p.batch_cdf(0.1, ["nobody"])
    with pytest.raises(ValueError, match="probability"):
        eng.OrlojPolicy(theta=0.0)
    with pytest.raises(ValueError, match="one grid"):
        p.set_distribution("x", eng.Distribution.from_mean_cov(0.01, 0.5, bins=128))
    with pytest.raises(ValueError, match="empty distribution"):
        p.set_distribution("x", eng.Distribution())
    bare = eng.OrlojPolicy()
    with pytest.raises(ValueError, match="set_default_distribution"):
        bare.enqueue(1, "default", 0.0, 1.0)
    p.remove(1)
    assert len(p) == 0


def test_is_a_policy(eng):
    from orloj_rt.engine.interface import Policy

    p = eng.OrlojPolicy()
    assert isinstance(p, Policy)
    assert p.name == "orloj"
    assert p.next_wakeup(0.0) is None
