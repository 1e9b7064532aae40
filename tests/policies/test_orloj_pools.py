"""orloj's member choice across apps: pools of the fastest apps (`pools=True`), or one bar
for every app (the default), on the active engine; and the two engines against each other."""

from __future__ import annotations

import random

import pytest

from orloj_rt.engine import Distribution, OrlojPolicy


def fast_and_slow(max_batch=4, theta=0.8, pools=True):
    p = OrlojPolicy(max_batch=max_batch, inflation=[1.0 + 0.1 * b for b in range(max_batch)],
                    theta=theta, epsilon=0.01, pools=pools)
    p.set_distribution("fast", Distribution.from_mean_cov(0.1, 0.1))
    p.set_distribution("slow", Distribution.from_mean_cov(1.0, 0.1))
    return p


def test_fast_requests_are_not_held_back_by_slow_ones():
    p = fast_and_slow()
    # Fast requests with little slack can run four together (4 x 0.1 s in 0.13 s), but
    # not in a batch that may hold a slow request: a single bar for every app (the
    # slowest's) would admit them only one at a time.
    for rid in range(4):
        p.enqueue(rid, "slow", 0.0, 10.0 + 0.01 * rid)
    for rid in range(4, 8):
        p.enqueue(rid, "fast", 0.0, 0.5 + 0.01 * rid)
    decision = p.decide(0.0)
    assert decision.batch == [4, 5, 6, 7]
    assert p.decide(0.2).batch == [0, 1, 2, 3]


def test_one_bar_for_every_app_without_pools():
    p = fast_and_slow()
    q = fast_and_slow(pools=False)  # the default
    for policy in (p, q):
        for rid in range(4):
            policy.enqueue(rid, "slow", 0.0, 10.0 + 0.01 * rid)
        for rid in range(4, 8):
            policy.enqueue(rid, "fast", 0.0, 0.5 + 0.01 * rid)
    assert p.decide(0.0).batch == [4, 5, 6, 7]
    assert len(q.decide(0.0).batch) == 1  # the slow app's bar admits no fast request in a batch


@pytest.mark.parametrize("pools", [True, False])
def test_every_member_of_a_mixed_batch_reaches_theta(pools):
    rng = random.Random(3)
    theta = 0.8
    p = fast_and_slow(max_batch=8, theta=theta, pools=pools)
    app_of = {}
    deadline = {}
    for rid in range(60):
        app_of[rid] = rng.choice(["fast", "slow"])
        deadline[rid] = rng.uniform(0.05, 6.0)
        p.enqueue(rid, app_of[rid], 0.0, deadline[rid])
    now = 0.0
    while len(p):
        d = p.decide(now)
        if not d.batch:
            break
        apps = [app_of[r] for r in d.batch]
        if len(d.batch) > 1:
            for rid in d.batch:
                assert p.batch_cdf(deadline[rid] - now, apps) >= theta - 1e-9
        now += p.batch_mean(apps)
    assert len(p) == 0


@pytest.mark.parametrize("seed", range(40))
def test_twins_agree_with_many_apps(seed):
    """The compiled decision and the pure one, up to 8 apps (hint classes), with pools and
    with the original single bar, bit for bit."""
    native = pytest.importorskip("orloj_rt.engine._native")
    from orloj_rt.engine import pure

    def run(mod):
        rng = random.Random(seed)
        p = mod.OrlojPolicy(max_batch=rng.choice([4, 16, 32]), alpha=rng.choice([0.0, 0.15]),
                            theta=rng.uniform(0.5, 0.95), epsilon=rng.uniform(0.0, 0.2),
                            pools=seed % 3 != 0)
        names = [f"a{i}" for i in range(1 + seed % 8)]
        for i, name in enumerate(names):
            r = random.Random(seed * 31 + i)
            p.set_distribution(name, mod.Distribution.from_mean_cov(
                r.uniform(0.002, 0.05), r.choice([0.0, 0.1, 0.5, 1.0])))
        out, now, rid = [], 0.0, 0
        for _ in range(30):
            for _ in range(rng.randint(0, 60)):
                p.enqueue(rid, rng.choice(names), now, now + rng.uniform(0.0, 0.4))
                rid += 1
            d = p.decide(now)
            out.append((tuple(d.batch), tuple(d.dropped)))
            if rng.random() < 0.3:
                p.observe_solo(rng.choice(names), rng.uniform(0.001, 0.05))
            now += rng.uniform(0.0, 0.02)
        return out

    assert run(native) == run(pure)
