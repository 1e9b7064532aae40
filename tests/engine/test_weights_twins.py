"""App weights, weight levels, batch limits, price shares, epsilon changes, evaluate() and
drop_hopeless(): the compiled engine against its pure twin, and what weights change
(issue 17; price shares and epsilon changes, issue 15)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def scenario(mod, seed, weights, pools, share=1.0):
    rng = random.Random(seed)
    # pools "sparse": pooled sizes 1, 2, 4, 8 and the batch limit (5 is not on the ladder)
    kw = {"pool_dense": 2, "pool_step": 2.0} if pools == "sparse" else {}
    p = mod.OrlojPolicy(max_batch=8, pools=bool(pools), price_share=share, **kw)
    p.set_default_distribution(mod.Distribution.from_mean_cov(0.01, 0.5))
    apps = [f"a{i}" for i in range(len(weights))]
    for i, a in enumerate(apps):
        d = mod.Distribution()
        for _ in range(60):
            d.add(rng.lognormvariate(0, 0.6) * 0.01 * (1 + i))
        p.set_distribution(a, d)
        p.set_app_weight(a, weights[i])
    now = 0.0
    log = []
    rid = 0
    for _ in range(25):
        for _ in range(rng.randint(0, 12)):
            p.enqueue(rid, rng.choice(apps), now, now + rng.uniform(0.0, 0.2))
            rid += 1
        if rng.random() < 0.3:
            p.set_batch_limit(rng.choice([0, 1, 2, 5]))
        if rng.random() < 0.1:
            p.set_epsilon(rng.choice([0.02, 0.1, 0.3]))
        score, ids = p.evaluate(now)
        log.append(("evaluate", round(score, 12), list(ids)))
        if rng.random() < 0.3:
            log.append(("drop", sorted(p.drop_hopeless(now))))
        d = p.decide(now)
        log.append(("decide", list(d.batch), sorted(d.dropped)))
        now += rng.uniform(0.0, 0.03)
    return log


@given(seed=st.integers(0, 2**20),
       weights=st.lists(st.sampled_from([1.0, 2.0, 10.0]), min_size=1, max_size=4),
       pools=st.sampled_from([False, True, "sparse"]), share=st.sampled_from([1.0, 0.5]))
@settings(max_examples=60, deadline=None)
def test_weighted_decisions_agree(native, pure_engine, seed, weights, pools, share):
    assert (scenario(native, seed, weights, pools, share)
            == scenario(pure_engine, seed, weights, pools, share))  # fmt: skip


def test_evaluate_is_what_decide_dispatches(eng):
    p = eng.OrlojPolicy(max_batch=4)
    p.set_default_distribution(eng.Distribution.from_mean_cov(0.01, 0.3))
    for i in range(10):
        p.enqueue(i, "a", 0.0, 0.02 + 0.01 * i)
    score, ids = p.evaluate(0.0)
    assert len(p) == 10 and score > 0
    assert list(p.decide(0.0).batch) == list(ids)


def test_a_heavy_app_is_served_before_an_older_light_one(eng):
    """Two requests, room for one: the weighted one goes first although it is younger."""
    def first(weight):
        p = eng.OrlojPolicy(max_batch=1)
        p.set_default_distribution(eng.Distribution.from_mean_cov(0.01, 0.05))
        p.enqueue(1, "light", 0.0, 0.012)
        p.enqueue(2, "heavy", 0.0, 0.0125)
        p.set_app_weight("heavy", weight)
        return list(p.decide(0.0).batch)

    assert first(1.0) == [1]
    assert first(10.0) == [2]


def test_weight_must_be_positive(eng):
    p = eng.OrlojPolicy()
    with pytest.raises(ValueError, match="weight"):
        p.set_app_weight("a", 0.0)


def test_a_batch_limit_caps_the_batch(eng):
    p = eng.OrlojPolicy(max_batch=8)
    p.set_default_distribution(eng.Distribution.from_mean_cov(0.01, 0.1))
    for i in range(8):
        p.enqueue(i, "a", 0.0, 1.0)
    p.set_batch_limit(2)
    assert len(p.decide(0.0).batch) == 2
    p.set_batch_limit(None)
    assert len(p.decide(0.0).batch) == 6
    with pytest.raises(ValueError, match="batch limit"):
        p.set_batch_limit(-1)


def draw_ids(rng, queued, most):
    """Up to `most` queued ids in random order, with now and then a repeated or an
    unknown id inside."""
    ids = rng.sample(queued, rng.randint(1, most))
    k = rng.randrange(len(ids) + 1)
    bad = rng.choice([None, "dup", "unknown"])
    if bad == "dup" and k:
        ids.insert(k, ids[k - 1])
    elif bad == "unknown":
        ids.insert(k, 10_000 + k)
    return ids


def removals(mod, seed):
    """remove_many with a run of queued ids, a duplicate or an unknown id inside, then
    decisions: what each call raised and what was decided."""
    rng = random.Random(seed)
    p = mod.OrlojPolicy(max_batch=8, pools=bool(seed % 2))
    p.set_default_distribution(mod.Distribution.from_mean_cov(0.01, 0.5))
    for rid in range(300):  # several blocks of the sorted queue
        p.enqueue(rid, f"a{rid % 3}", 0.0, rng.uniform(0.005, 0.5))
    log = []
    queued = list(range(300))
    for _ in range(6):
        ids = draw_ids(rng, queued, 40)
        try:
            p.remove_many(ids)
            log.append(("ok", len(p)))
        except KeyError:
            log.append(("KeyError", len(p)))
        queued = [r for r in queued if r not in set(ids)]  # some may still be queued
        d = p.decide(0.0)
        log.append((list(d.batch), sorted(d.dropped)))
        queued = [r for r in queued if r not in set(d.batch) | set(d.dropped)]
    return log


@pytest.mark.parametrize("seed", range(6))
def test_remove_many_agrees(native, pure_engine, seed):
    assert removals(native, seed) == removals(pure_engine, seed)


def removals_also(mod, seed):
    """remove_many(ids, also=...) over three policies holding the same requests (as the
    variants' engines do), a repeated or unknown id now and then: what each call raised,
    and what each policy then holds and decides."""
    rng = random.Random(seed)
    ps = [mod.OrlojPolicy(max_batch=8) for _ in range(3)]
    for k, p in enumerate(ps):
        p.set_default_distribution(mod.Distribution.from_mean_cov(0.01 / (k + 1), 0.5))
    for rid in range(200):
        app, dl = f"a{rid % 3}", rng.uniform(0.005, 0.5)
        for p in ps:
            p.enqueue(rid, app, 0.0, dl)
    log = []
    queued = list(range(200))
    for _ in range(5):
        ids = draw_ids(rng, queued, 30)
        try:
            ps[0].remove_many(ids, ps[1:])
            log.append("ok")
        except KeyError:
            log.append("KeyError")
        log.append([len(p) for p in ps])
        queued = [r for r in queued if r not in set(ids)]
    log.append([list(p.evaluate(0.0)[1]) for p in ps])
    return log


@pytest.mark.parametrize("seed", range(4))
def test_remove_many_also_agrees(native, pure_engine, seed):
    assert removals_also(native, seed) == removals_also(pure_engine, seed)


def test_remove_many_also_removes_from_every_policy(eng):
    ps = [eng.OrlojPolicy(max_batch=4) for _ in range(3)]
    for p in ps:
        p.set_default_distribution(eng.Distribution.from_mean_cov(0.01, 0.5))
        for rid in range(6):
            p.enqueue(rid, "a", 0.0, 0.1 + rid * 0.01)
    ps[0].remove_many([1, 3], ps[1:])
    assert [len(p) for p in ps] == [4, 4, 4]
    with pytest.raises(KeyError):
        ps[0].remove_many([0, 99], ps[1:])  # 0 goes from the first, then 99 fails there
    assert [len(p) for p in ps] == [3, 4, 4]
