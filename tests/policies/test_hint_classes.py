"""Cost hints: a hint picks a class, and orloj batches short requests with short ones."""

from __future__ import annotations

import pytest

from orloj_rt.policies import make_policy
from orloj_rt.policies.hint_classes import HintClassPolicy


def two_class_profile():
    # short requests (0.2) have hints near 1, long ones (2.0) hints near 10
    solo = [0.2] * 500 + [2.0] * 500
    hints = [1.0 + (i % 7) * 0.01 for i in range(500)] + [10.0 + (i % 7) for i in range(500)]
    return solo, hints


def test_fit_cuts_the_hints_at_quantiles(spread):
    solo, hints = two_class_profile()
    p = HintClassPolicy.fit(make_policy("orloj", max_batch=4), solo, hints, classes=2)
    assert p.hint_class("default", 1.03) == 0
    assert p.hint_class("default", 12.0) == 1
    assert p.hint_class("default", None) is None
    assert p.hint_class("other", 12.0) is None  # an app without classes
    inner = p.inner
    assert inner.distribution("default#h0").mean() == pytest.approx(0.2, rel=1e-6)
    assert inner.distribution("default#h1").mean() == pytest.approx(2.0, rel=1e-6)
    assert p.name == "orloj+hint"


def test_short_requests_batch_together(spread):
    solo, hints = two_class_profile()
    inner = make_policy("orloj", max_batch=4, inflation=[1.0, 1.1, 1.2, 1.3], pools=True)
    inner.set_default_distribution(spread)
    p = HintClassPolicy.fit(inner, solo, hints, classes=2)
    # alternating short and long, every deadline 1.0 away: only a batch of shorts fits
    for rid in range(8):
        p.enqueue(rid, "default", 0.0, 1.0 + 0.001 * rid, 1.0 if rid % 2 == 0 else 12.0)
    decision = p.decide(0.0)
    assert decision.batch == [0, 2, 4, 6]
    assert sorted(decision.dropped) == [1, 3, 5, 7]  # a 2.0 request cannot make 1.0
    assert len(p) == 0


def test_requests_without_a_hint_use_the_app(spread):
    solo, hints = two_class_profile()
    inner = make_policy("orloj", max_batch=2)
    inner.set_default_distribution(spread)
    p = HintClassPolicy.fit(inner, solo, hints, classes=2)
    p.enqueue(1, "default", 0.0, 5.0)
    assert inner.queued("default") == 1
    p.remove(1)
    assert len(p) == 0


def test_fit_checks_its_profile():
    with pytest.raises(ValueError, match="one hint per solo time"):
        HintClassPolicy.fit(make_policy("orloj", max_batch=2), [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="classes"):
        HintClassPolicy.fit(make_policy("orloj", max_batch=2), [1.0], [1.0], classes=0)
