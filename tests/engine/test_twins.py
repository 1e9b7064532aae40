"""The compiled engine against its pure-Python twin (compiled-only tests).

Both are driven through the same random scenarios; decisions must be identical, ties
broken the same way, and every probability equal within 1e-9 (in practice, bit for bit).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def make_dist(mod, spec, seed):
    kind, mean, cov, window = spec
    if kind == "prior":
        return mod.Distribution.from_mean_cov(mean, cov, window=window)
    rng = random.Random(seed)
    samples = [rng.lognormvariate(0, max(cov, 1e-3)) * mean for _ in range(50)]
    d = mod.Distribution(window=window)
    for x in samples:
        d.add(x)
    return d


dist_specs = st.tuples(
    st.sampled_from(["prior", "samples"]),
    st.floats(1e-4, 0.1),
    st.sampled_from([0.0, 0.02, 0.3, 1.0, 2.5]),
    st.sampled_from([0, 50, 2000]),
)


@given(spec=dist_specs, seed=st.integers(0, 2**20),
       probes=st.lists(st.floats(0, 1.0), min_size=1, max_size=30))
@settings(max_examples=150, deadline=None)
def test_distributions_agree(native, pure_engine, spec, seed, probes):
    a = make_dist(native, spec, seed)
    b = make_dist(pure_engine, spec, seed)
    for t in probes:
        assert a.cdf(t) == pytest.approx(b.cdf(t), abs=1e-9)
        assert a.quantile(min(t, 1.0)) == pytest.approx(b.quantile(min(t, 1.0)), rel=1e-9)
    assert a.mean() == pytest.approx(b.mean(), rel=1e-9)
    for n in (1, 7, 32):
        assert a.expected_max(n) == pytest.approx(b.expected_max(n), rel=1e-9)
    assert a.to_state() == b.to_state()


@given(specs=st.lists(dist_specs, min_size=1, max_size=3),
       sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       t=st.floats(0, 0.5), seed=st.integers(0, 2**20))
@settings(max_examples=80, deadline=None)
def test_batch_latency_agrees(native, pure_engine, specs, sizes, t, seed):
    out = []
    for mod in (native, pure_engine):
        dists = [make_dist(mod, s, seed) for s in specs]
        members = [d for d, n in zip(dists, sizes, strict=False) for _ in range(n)]
        infl = mod.Inflation(32, 0.15)
        out.append((mod.batch_cdf(t, members, infl), mod.batch_mean(members, infl)))
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-9)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-9)


scenario = st.fixed_dictionaries({
    "max_batch": st.sampled_from([1, 2, 8, 32]),
    "alpha": st.sampled_from([0.0, 0.15, 0.5]),
    "theta": st.floats(0.3, 0.95),
    "epsilon": st.floats(0.0, 0.3),
    "fallback": st.booleans(),
    "patience": st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    "price_share": st.sampled_from([1.0, 0.5, 0.1]),
    "pools": st.booleans(),
    # (pool_dense, pool_step): the default ladder, every size, sparse ones
    "ladder": st.sampled_from([(8, 1.6), (8, 2**0.5), (1, 1.0), (2, 2.0)]),
    "apps": st.lists(dist_specs, min_size=1, max_size=4),
    "seed": st.integers(0, 2**30),
})


def run_scenario(mod, sc):
    rng = random.Random(sc["seed"])
    policy = mod.OrlojPolicy(max_batch=sc["max_batch"], alpha=sc["alpha"], theta=sc["theta"],
                             epsilon=sc["epsilon"], fallback=sc["fallback"],
                             patience=sc["patience"], price_share=sc["price_share"],
                             pools=sc["pools"], pool_dense=sc["ladder"][0],
                             pool_step=sc["ladder"][1])  # fmt: skip
    names = [f"app{i}" for i in range(len(sc["apps"]))]
    for i, (name, spec) in enumerate(zip(names, sc["apps"], strict=True)):
        policy.set_distribution(name, make_dist(mod, spec, sc["seed"] + i))
    trace = []
    now, rid = 0.0, 0
    for _ in range(25):
        for _ in range(rng.randint(0, 30)):
            # equal deadlines on purpose now and then, to exercise the (deadline, id) ties
            dl = now + (rng.choice([0.01, 0.05]) if rng.random() < 0.2 else rng.uniform(0, 0.3))
            policy.enqueue(rid, rng.choice(names), now, dl)
            rid += 1
        if rid and rng.random() < 0.1:
            try:
                policy.remove(rng.randrange(rid))
                trace.append("removed")
            except KeyError:
                trace.append("unknown")
        d = policy.decide(now)
        trace.append((tuple(d.batch), tuple(d.dropped), tuple(d.rejected),
                      policy.next_wakeup(now)))  # fmt: skip
        for _member in d.batch:
            if rng.random() < 0.5:
                policy.observe_solo(rng.choice(names), rng.uniform(0.001, 0.05))
        now += rng.uniform(0, 0.03)
    trace.append(len(policy))
    return trace


@given(sc=scenario)
@settings(max_examples=150, deadline=None)
def test_decisions_agree(native, pure_engine, sc):
    assert run_scenario(native, sc) == run_scenario(pure_engine, sc)
