"""bench/e2e_finish_rate.py --variants without servers: what a cell's row counts (answered
within SLO, the accuracy of the variants that served them, utility) and the verdict
against the issue-17 target (orloj+variants >= 1.5x orloj)."""

from __future__ import annotations

import pytest

from orloj_rt.client.loadgen import Outcome

from ..bench_module import bench_module

pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)


@pytest.fixture(scope="module")
def e2e():
    yield from bench_module("e2e_finish_rate.py", "e2e_finish_rate_variants")


def _chunk(*outcomes):
    return (list(outcomes), 0.1, 1.0)  # (outcomes, scheduler CPU s, wall s)


def test_a_row_counts_answers_in_time_by_the_variant_that_served_them(e2e):
    acc = {"full": 1.0, "half": 0.9, "quarter": 0.8}
    row = e2e.variant_row([
        _chunk(Outcome("ok", 0.01, True, None, 4, "full"),
               Outcome("ok", 0.01, True, None, 4, "half"),
               Outcome("ok", 0.05, False, None, 4, "quarter")),  # late: no utility
        _chunk(Outcome("dropped"), Outcome("ok", 0.01, True, None, 2, "quarter")),
    ], acc)  # fmt: skip
    assert row["answered_in_slo"] == pytest.approx(3 / 5)
    assert row["mean_accuracy"] == pytest.approx((1.0 + 0.9 + 0.8) / 3)
    assert row["utility"] == pytest.approx((1.0 + 0.9 + 0.8) / 5)
    assert row["variants"] == {"full": {"ok": 1, "in_slo": 1}, "half": {"ok": 1, "in_slo": 1},
                               "quarter": {"ok": 2, "in_slo": 1}}  # fmt: skip
    # without variants every answer is the full model's
    plain = e2e.variant_row([_chunk(Outcome("ok", 0.01, True), Outcome("dropped"))], {})
    assert plain["mean_accuracy"] == 1.0 and plain["utility"] == 0.5


def test_the_verdict_is_the_ratio_of_answers_in_time(e2e):
    def row(slo, policy, in_slo, acc):
        return {"slo_ms": slo, "policy": policy, "answered_in_slo": in_slo, "slo_mult": 10,
                "rate": 800.0, "load": 2.0, "mean_accuracy": acc, "utility": in_slo * acc,
                "variants": {"half": {"ok": 5, "in_slo": 5}}}  # fmt: skip

    rows = [row(10, "orloj", 0.3, 1.0), row(10, "orloj+variants", 0.48, 0.93),
            row(20, "orloj", 0.4, 1.0), row(20, "orloj+variants", 0.5, 0.9)]
    lines, verdicts = e2e.variant_table(rows)
    assert [v["met"] for v in verdicts] == [True, False]
    assert verdicts[0]["ratio"] == pytest.approx(1.6)
    assert len(lines) == 2 + 2 and "**met**" in lines[2] and "**missed**" in lines[3]
