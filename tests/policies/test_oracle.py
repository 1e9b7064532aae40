"""oracle: the clairvoyant twin of orloj never dispatches a request that cannot finish."""

from __future__ import annotations

import random

import pytest

from orloj_rt.policies import make_policy


def test_never_dispatches_a_request_that_cannot_finish():
    rng = random.Random(7)
    c = [1.0 + 0.15 * b for b in range(8)]
    for trial in range(60):
        p = make_policy("oracle", max_batch=8, inflation=c)
        solo, deadline = {}, {}
        now = rng.uniform(0, 5)
        for rid in range(rng.randint(1, 40)):
            solo[rid] = rng.lognormvariate(0, 1)
            deadline[rid] = now + rng.uniform(0, 6)
            p.enqueue(rid, "default", 0.0, deadline[rid], solo[rid])
        while len(p):
            d = p.decide(now)
            for rid in d.dropped:  # dropped only when hopeless even alone
                assert c[0] * solo[rid] > deadline[rid] - now, trial
            if not d.batch:
                assert len(p) == 0
                break
            run = c[len(d.batch) - 1] * max(solo[r] for r in d.batch)
            for rid in d.batch:
                assert now + run <= deadline[rid] + 1e-12, trial
            now += run


def test_prefers_the_batch_that_finishes_more_per_unit_of_time():
    c = [1.0, 1.1, 1.2]
    p = make_policy("oracle", max_batch=3, inflation=c)
    p.enqueue(1, "default", 0.0, 2.0, 0.5)
    p.enqueue(2, "default", 0.0, 2.0, 1.9)  # only fits alone
    p.enqueue(3, "default", 0.0, 3.0, 0.4)
    # [1, 3] finishes 2 in 1.1 * 0.5; [1] alone 1 in 0.5; [1, 2, 3] misses
    assert p.decide(0.0).batch == [1, 3]


def test_needs_the_true_time():
    p = make_policy("oracle", max_batch=2)
    with pytest.raises(ValueError, match="true solo time"):
        p.enqueue(1, "default", 0.0, 1.0)
    assert getattr(p, "clairvoyant", False)
