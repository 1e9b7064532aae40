"""Cost-hint classes in the serving core (orloj_rt/serving/hints.py): edges from the hints
seen, each class learning its own law from its members' work reports, drift, and what the
policies do with the classes."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.serving import ServingCore
from orloj_rt.serving.hints import (
    HINT_TUNING,
    MIN_FIT_HINTS,
    REFIT_EVERY,
    HintClasses,
    class_app,
    quantile_edges,
)
from orloj_rt.sim.simulator import SimModel, warmup_profile


def _core(policy="orloj", classes=2, warmup=None, warmup_hints=None, max_batch=8):
    core = ServingCore([SimModel("sim", max_batch)], policy, {"hint_classes": classes}, 1,
                       timer=lambda: 0.0)  # fmt: skip
    rng = np.random.default_rng(0)
    solo = rng.lognormal(np.log(0.01), 0.5, 64) if warmup is None else warmup
    core.worker_ready(0, [warmup_profile(solo, [1.0 + 0.1 * b for b in range(max_batch)],
                                         warmup_hints)])  # fmt: skip
    return core


def _serve_one_by_one(core, laws, n, rng, t0=0.0):
    """n requests, each alone: hint h ~ U(lo, hi) and solo time law(rng), the laws
    [(lo, hi, law)] taken in turn (equal shares); every report gives the member's work."""
    t = t0
    for i in range(n):
        lo, hi, law = laws[i % len(laws)]
        hint = rng.uniform(lo, hi)
        x = law(rng)
        core.submit([(i, 0, "a", t, t + 1e6, hint, 0, 0)])
        (run,) = core.dispatch(t)
        assert run.tokens == [i]
        core.batch_done(0, 0, True, x, [x])
        t += x
    return t


def test_edges_are_quantiles_and_a_class_is_a_hint_range():
    assert quantile_edges(range(100), 4) == [24.5, 49.5, 74.5]  # midway
    assert quantile_edges([1.0] * 50 + [2.0] * 50, 4) == [1.0, 1.5, 2.0]
    assert quantile_edges([1.0] * 80 + [2.0] * 20, 4) == [1.0]  # equal cuts merge
    hc = HintClasses(4)
    for h in range(MIN_FIT_HINTS - 1):
        assert not hc.observe(float(h)) and hc.class_of(1.0) is None
    assert hc.observe(63.0) and hc.edges == [15.5, 31.5, 47.5]
    assert [hc.class_of(h) for h in (0.0, 16.0, 31.4, 60.0)] == [0, 1, 1, 3]


def test_each_class_learns_its_own_law_from_its_members_reports():
    """Two well-separated laws under two hint ranges: each class's learned mean converges
    to its own law's, not to the app's mixture."""
    rng = np.random.default_rng(1)
    core = _core(classes=2)
    short = (1.0, 2.0, lambda r: r.lognormal(np.log(0.002), 0.2))  # mean about 2.04 ms
    long_ = (10.0, 20.0, lambda r: r.lognormal(np.log(0.050), 0.2))  # about 51 ms
    _serve_one_by_one(core, [short, long_], 600, rng)
    stats = core.models[0].stats()
    apps = stats["apps"]
    assert stats["hint_classes"]["a"]["fits"] >= 1
    edge = stats["hint_classes"]["a"]["classes"][0]["hint_below"]
    assert 2.0 <= edge <= 10.0  # between the two ranges
    assert apps[class_app("a", 0)]["source"] == "learned"
    assert apps[class_app("a", 0)]["mean_solo_ms"] == pytest.approx(2.04, rel=0.1)
    assert apps[class_app("a", 1)]["mean_solo_ms"] == pytest.approx(51.0, rel=0.1)
    # and the policy holds them: its class distributions' means are the laws'
    pol = core.models[0].policy
    if hasattr(pol, "_dists"):  # the pure twin
        idx = pol._apps.get(class_app("a", 1))
        assert pol._dists[idx].mean() == pytest.approx(0.051, rel=0.15)


def test_a_drift_in_the_hint_range_moves_the_edges_and_rebuilds_the_classes():
    rng = np.random.default_rng(2)
    core = _core(classes=2)
    law = lambda r: r.lognormal(np.log(0.004), 0.2)  # noqa: E731
    t = _serve_one_by_one(core, [(1.0, 2.0, law), (3.0, 4.0, law)], 400, rng)
    hc = core.models[0].hints.apps["a"]
    before = list(hc.edges)
    assert 2.0 <= before[0] <= 3.0
    # the hints drift up tenfold (a new client, a new tokenizer): the edges follow
    _serve_one_by_one(core, [(10.0, 20.0, law), (30.0, 40.0, law)], 5 * REFIT_EVERY, rng, t)
    assert hc.refits >= 2
    assert 20.0 <= hc.edges[0] <= 30.0, hc.edges
    # every class was rebuilt from the pairs in its new range: both have samples again
    apps = core.models[0].stats()["apps"]
    assert apps[class_app("a", 0)]["samples"] > 0 and apps[class_app("a", 1)]["samples"] > 0


def test_the_warm_up_hints_seed_every_apps_classes():
    rng = np.random.default_rng(3)
    hints = rng.uniform(1.0, 100.0, 512)
    solo = hints * 1e-3  # the cost follows the hint
    core = _core(classes=4, warmup=solo, warmup_hints=hints)
    core.submit([(0, 0, "fresh", 0.0, 10.0, 90.0, 0, 0)])
    mq = core.models[0]
    assert mq.slots[0][2] == class_app("fresh", 3)  # classed at once, no hint seen before
    assert mq.stats()["apps"][class_app("fresh", 3)]["source"] == "learned"
    assert mq.stats()["apps"][class_app("fresh", 3)]["mean_solo_ms"] > 60.0


@pytest.mark.parametrize("policy", ["orloj", "sjf-hint"])
def test_with_exact_hints_short_requests_are_batched_with_short_ones(policy):
    """A hand-made queue of 4 short and 4 long requests (hints exact, the warm-up's pairs
    teaching the classes): the first batch holds the short ones only."""
    rng = np.random.default_rng(4)
    hints = np.concatenate([rng.uniform(1.0, 1.2, 256), rng.uniform(10.0, 12.0, 256)])
    core = _core(policy, classes=2, warmup=hints * 1e-3, warmup_hints=hints, max_batch=8)
    tokens = {}
    for i, h in enumerate([11.0, 1.1, 10.5, 1.05, 11.5, 1.15, 10.8, 1.0]):
        tokens[i] = h
        core.submit([(i, 0, "a", 0.0, 0.015, h, 0, 0)])  # a long one alone makes it, 5 not
    (run,) = core.dispatch(0.0)
    assert sorted(tokens[t] for t in run.tokens) == [1.0, 1.05, 1.1, 1.15], run.tokens


def test_orloj_is_tuned_for_classes_once_hints_class_requests():
    """orloj gets HINT_TUNING (patience, price share, epsilon) when the first request is
    filed under a hint class, not before (a model whose requests carry no hints keeps the
    defaults), and a key the params set is kept."""
    hints = list(np.linspace(1.0, 20.0, 64))
    core = _core("orloj", classes=2, warmup_hints=hints)
    engine = core.models[0].policy
    core.submit([(0, 0, "a", 0.0, 1.0, None, 0, 0)])
    assert (engine.patience, engine.price_share, engine.epsilon) == (0.0, 1.0, 0.1)
    core.submit([(1, 0, "a", 0.0, 1.0, 5.0, 0, 0)])
    assert core.models[0].slots[1][2].startswith(class_app("a", 0)[:-1])
    assert HINT_TUNING == {"patience": 0.5, "price_share": 0.5, "epsilon": 0.02}
    assert (engine.patience, engine.price_share, engine.epsilon) == (0.5, 0.5, 0.02)
    kept = ServingCore([SimModel("sim", 8)], "orloj",
                       {"hint_classes": 2, "patience": 0.25, "price_share": 0.75}, 1,
                       timer=lambda: 0.0)  # fmt: skip
    kept.worker_ready(0, [warmup_profile(np.full(64, 0.01), [1.0] * 8, hints)])
    kept.submit([(1, 0, "a", 0.0, 1.0, 5.0, 0, 0)])
    tuned = kept.models[0].policy
    assert (tuned.patience, tuned.price_share, tuned.epsilon) == (0.25, 0.75, 0.02)


def test_baselines_ignore_hints_and_zero_classes_turn_them_off():
    for policy, classes in (("fifo", 8), ("nexus", 8), ("orloj", 0)):
        core = _core(policy, classes=classes, warmup_hints=list(range(64)))
        core.submit([(0, 0, "a", 0.0, 1.0, 5.0, 0, 0)])
        assert core.models[0].hints is None
        assert core.models[0].slots[0][2] == "a"
        assert "hint_classes" not in core.models[0].stats()
    with pytest.raises(ValueError, match="hint_classes must be an integer >= 0"):
        _core("orloj", classes=-1)


def test_the_stats_list_at_most_64_hinted_apps_the_busiest_first():
    core = _core(classes=2)
    token = 0
    for a in range(70):
        for _ in range(1 + (a == 69) * 5):  # app 69 is the busiest
            core.submit([(token, 0, f"app{a}", 0.0, 1.0, float(a), 0, 0)])
            token += 1
    section = core.models[0].stats()["hint_classes"]
    assert len(section) == 64 and section["app69"]["hints_seen"] == 6
