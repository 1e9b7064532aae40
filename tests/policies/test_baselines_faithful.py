"""The baselines as their real systems run them (issue 14): known answers on hand-made queues.

nexus: the duty cycle fixes the batch size (largest b with 2 l(b) <= SLO) and a sliding
window drops the heads that cannot finish within l(window). fifo: Triton's preferred
batch sizes, a queue delay from the SLO, and the queue timeout. clockwork: power-of-two
batch sizes.
"""

from __future__ import annotations

import math

import pytest

from orloj_rt.policies import make_policy
from orloj_rt.policies.fifo import powers_of_two

# l(b) = c(b) x E[max of b] with every solo time 1: l = 1, 1.5, 2, 2.5 for b = 1..4
INFLATION = [1.0, 1.5, 2.0, 2.5]


def nexus(point_mass):
    p = make_policy("nexus", max_batch=4, inflation=INFLATION)
    p.set_default_distribution(point_mass)
    return p


# ---------------------------------------------------------------------------- nexus
def test_nexus_duty_cycle_batch_size(point_mass):
    p = nexus(point_mass)
    # the largest b with 2 l(b) <= SLO; 1 when even 2 l(1) does not fit
    assert [p.batch_size(s) for s in (1.0, 2.0, 2.9, 3.0, 4.0, 5.0, 100.0)] == [
        1, 1, 1, 2, 3, 4, 4,
    ]  # fmt: skip


def test_nexus_batch_is_the_duty_cycle_not_the_slack(point_mass):
    p = nexus(point_mass)
    for rid in range(10):
        p.enqueue(rid, "default", 0.0, 4.0)  # SLO 4: 2 l(3) = 4 fits, 2 l(4) = 5 does not
    d = p.decide(0.0)
    # l(4) = 2.5 would meet every deadline, but the duty cycle caps the batch at 3
    assert d.batch == [0, 1, 2] and d.dropped == []


def test_nexus_sliding_window_skips_stale_heads(point_mass):
    p = nexus(point_mass)
    for rid, arrival in enumerate([0.0, 0.5, 1.5, 2.0, 2.5, 3.0]):
        p.enqueue(rid, "default", arrival, arrival + 4.0)  # SLO 4: b = 3
    # at 3.0 the window of 3 ends at 3.0 + l(3) = 5.0: the heads due at 4.0 and 4.5
    # cannot make it and are dropped; the window slides to the next three
    d = p.decide(3.0)
    assert d.dropped == [0, 1]
    assert d.batch == [2, 3, 4]
    assert len(p) == 1


def test_nexus_window_shrinks_with_the_queue(point_mass):
    p = nexus(point_mass)
    p.enqueue(1, "default", 0.0, 4.0)  # SLO 4: b = 3
    p.enqueue(2, "default", 1.0, 5.0)
    # window = min(3, 2) = 2: 2.6 + l(2) = 4.1 > 4, so the head goes; then the window is
    # min(3, 1) = 1: 2.6 + l(1) = 3.6 <= 5
    d = p.decide(2.6)
    assert d.dropped == [1]
    assert d.batch == [2]


def test_nexus_a_head_that_fits_is_kept(point_mass):
    p = nexus(point_mass)
    p.enqueue(1, "default", 0.0, 4.0)
    p.enqueue(2, "default", 0.0, 4.0)
    d = p.decide(2.0)  # window 2: 2.0 + 1.5 = 3.5 <= 4
    assert d.batch == [1, 2] and d.dropped == []


def test_nexus_the_head_request_sets_the_slo(point_mass):
    p = nexus(point_mass)
    p.enqueue(1, "default", 0.0, 3.0)  # SLO 3: b = 2
    for rid in range(2, 6):
        p.enqueue(rid, "default", 0.0, 10.0)  # SLO 10: b = 4
    assert p.decide(0.0).batch == [1, 2]  # the head's SLO: a batch of 2
    assert p.decide(0.0).batch == [3, 4, 5]  # now an SLO-10 head: b = 4, 3 left


def test_nexus_drops_everything_hopeless(point_mass):
    p = nexus(point_mass)
    p.enqueue(1, "default", 0.0, 1.0)
    p.enqueue(2, "default", 0.0, 1.5)
    d = p.decide(0.8)
    assert d.dropped == [1, 2] and d.batch == [] and len(p) == 0


# ---------------------------------------------------------------------------- fifo
def test_fifo_default_preferred_sizes_are_powers_of_two():
    assert powers_of_two(32) == [2, 4, 8, 16, 32]
    assert powers_of_two(24) == [2, 4, 8, 16]
    assert powers_of_two(1) == []
    assert make_policy("fifo", max_batch=8).preferred_batch_sizes == [2, 4, 8]


def test_fifo_dispatches_the_largest_preferred_size():
    p = make_policy("fifo", max_batch=8)
    for rid in range(5):
        p.enqueue(rid, "default", 0.1 * rid, 0.1 * rid + 10.0)  # SLO 10: delay 1.0
    d = p.decide(0.5)
    assert d.batch == [0, 1, 2, 3]  # 5 queued, maximum 8: the preferred 4
    # the fifth alone is no preferred size: held until its delay, 0.4 + 1.0
    assert p.decide(0.5).batch == []
    assert p.next_wakeup(0.5) == pytest.approx(1.4)
    assert p.decide(1.4).batch == [4]
    assert p.next_wakeup(1.4) is None


def test_fifo_a_full_batch_goes_at_once():
    p = make_policy("fifo", max_batch=8)
    for rid in range(12):
        p.enqueue(rid, "default", 0.0, 10.0)
    assert p.decide(0.0).batch == list(range(8))
    assert p.decide(0.0).batch == [8, 9, 10, 11]  # preferred 4


def test_fifo_not_a_power_of_two_maximum():
    p = make_policy("fifo", max_batch=24)
    for rid in range(30):
        p.enqueue(rid, "default", 0.0, 10.0)
    assert len(p.decide(0.0).batch) == 16  # the largest preferred size
    # the delay has run out for the oldest: Triton sends the whole pending batch
    assert len(p.decide(1.0).batch) == 14


def test_fifo_queue_delay_derives_from_the_slo():
    p = make_policy("fifo", max_batch=8)
    p.enqueue(1, "default", 0.0, 2.0)  # SLO 2: delay 0.1 x 2 = 0.2
    held = p.decide(0.1)
    assert held.batch == [] and held.rejected == [] and len(p) == 1
    assert p.next_wakeup(0.1) == pytest.approx(0.2)
    p.enqueue(2, "default", 0.15, 2.15)
    assert p.decide(0.15).batch == [1, 2]  # a preferred 2 forms: no more waiting


def test_fifo_once_the_delay_runs_out_the_whole_pending_batch_goes():
    p = make_policy("fifo", max_batch=8, preferred_batch_sizes=[4])
    for rid, arrival in enumerate([0.0, 0.3, 0.6]):
        p.enqueue(rid, "default", arrival, arrival + 10.0)  # delay 1.0 each
    assert p.decide(0.9).batch == []  # 3 < 4: held
    assert p.next_wakeup(0.9) == pytest.approx(1.0)  # the oldest's delay
    assert p.decide(1.0).batch == [0, 1, 2]  # not a preferred size, sent as is


def test_fifo_with_5_queued_past_the_delay_sends_5():
    p = make_policy("fifo", max_batch=8)
    for rid in range(5):
        p.enqueue(rid, "default", 0.0, 1.0)  # delay 0.1
    assert p.decide(0.2).batch == [0, 1, 2, 3, 4]


def test_fifo_the_earliest_delay_among_the_pending_counts():
    p = make_policy("fifo", max_batch=8, preferred_batch_sizes=[4])
    p.enqueue(1, "default", 0.0, 10.0)  # delay 1.0: until 1.0
    p.enqueue(2, "default", 0.1, 2.1)  # delay 0.2: until 0.3
    assert p.decide(0.2).batch == []
    assert p.next_wakeup(0.2) == pytest.approx(0.3)
    assert p.decide(0.3 + 1e-9).batch == [1, 2]


def test_fifo_explicit_delay_and_no_delay():
    p = make_policy("fifo", max_batch=8, max_queue_delay=0.05)
    p.enqueue(1, "default", 0.0, 10.0)
    assert p.decide(0.0).batch == []
    assert p.next_wakeup(0.0) == pytest.approx(0.05)
    q = make_policy("fifo", max_batch=8, max_queue_delay=0.0)
    q.enqueue(1, "default", 0.0, 10.0)
    assert q.decide(0.0).batch == [1]  # no delay: nothing is held
    for rid in range(2, 7):
        q.enqueue(rid, "default", 0.0, 10.0)
    assert q.decide(0.0).batch == [2, 3, 4, 5]  # but the preferred 4 of 5 still
    z = make_policy("fifo", max_batch=8, queue_delay_fraction=0.0)
    z.enqueue(1, "default", 0.0, 10.0)
    assert z.decide(0.0).batch == [1]


def test_fifo_timeout_rejects_a_held_request():
    p = make_policy("fifo", max_batch=8, max_queue_delay=5.0)  # longer than the SLO
    p.enqueue(1, "default", 0.0, 1.0)  # SLO 1: the queue timeout
    assert p.decide(0.5).batch == []
    at = p.next_wakeup(0.5)
    assert at == math.nextafter(1.0, math.inf)  # just after it has waited its timeout
    d = p.decide(at)
    assert d.rejected == [1] and d.batch == [] and d.dropped == []
    assert len(p) == 0 and p.next_wakeup(at) is None


def test_fifo_timeout_rejects_before_batching():
    p = make_policy("fifo", max_batch=8)
    p.enqueue(1, "default", 0.0, 1.0)
    p.enqueue(2, "default", 0.5, 5.0)
    p.enqueue(3, "default", 0.6, 5.0)
    d = p.decide(1.2)
    assert d.rejected == [1]
    assert d.batch == [2, 3]


def test_fifo_rejects_bad_settings():
    with pytest.raises(ValueError, match="preferred batch sizes"):
        make_policy("fifo", max_batch=8, preferred_batch_sizes=[16])
    with pytest.raises(ValueError, match="queue_delay_fraction"):
        make_policy("fifo", max_batch=8, queue_delay_fraction=1.5)
    with pytest.raises(ValueError, match="max_queue_delay"):
        make_policy("fifo", max_batch=8, max_queue_delay=-1.0)


# ---------------------------------------------------------------------------- clockwork
def test_clockwork_batch_sizes_are_powers_of_two(point_mass):
    p = make_policy("clockwork", max_batch=8, inflation=[1.0 + 0.1 * i for i in range(8)])
    p.set_default_distribution(point_mass)
    for rid in range(7):
        p.enqueue(rid, "default", 0.0, 100.0)
    assert p.decide(0.0).batch == [0, 1, 2, 3]  # 7 queued: 4, not 7
    assert p.decide(0.0).batch == [4, 5]
    assert p.decide(0.0).batch == [6]


def test_clockwork_largest_power_of_two_below_the_maximum(point_mass):
    p = make_policy("clockwork", max_batch=6, inflation=[1.0 + 0.1 * i for i in range(6)])
    p.set_default_distribution(point_mass)
    for rid in range(6):
        p.enqueue(rid, "default", 0.0, 100.0)
    assert p.decide(0.0).batch == [0, 1, 2, 3]


def test_clockwork_power_of_two_that_meets_the_deadline(point_mass):
    p = make_policy("clockwork", max_batch=8, inflation=[1.0 + 0.5 * i for i in range(8)])
    p.set_default_distribution(point_mass)
    for rid in range(8):
        p.enqueue(rid, "default", 0.0, 3.0)
    # estimate(4) = 2.5 fits a slack of 3; estimate(5) = 3 would too, but 5 is no power
    # of two; estimate(8) = 4.5 does not fit
    assert p.decide(0.0).batch == [0, 1, 2, 3]


def test_fifo_delay_is_at_most_a_full_batchs_profiled_latency():
    """With a profile, a long SLO does not hold a lone request for 10% of it: the delay is
    capped at l(B) = c(B) x E[max of B solo times] (a 60 s SLO held requests for 6 s)."""
    from orloj_rt.engine import Distribution

    p = make_policy("fifo", max_batch=8, alpha=0.0)
    p.set_default_distribution(Distribution.from_mean_cov(0.010, 0.0))  # 10 ms, no spread
    p.enqueue(1, "a", 0.0, 60.0)
    assert p.decide(0.0).batch == []
    wake = p.next_wakeup(0.0)
    assert wake == pytest.approx(0.010, rel=0.05), wake  # not 6 s
    assert p.decide(wake).batch == [1]
