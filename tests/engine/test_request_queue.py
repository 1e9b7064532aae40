"""RequestQueue: (key, id) order, removal by id, windows, against a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_order_and_ties(eng):
    q = eng.RequestQueue()
    for rid, key in [(5, 2.0), (3, 1.0), (9, 2.0), (1, 3.0), (4, 2.0)]:
        q.push(rid, key)
    assert list(q) == [(1.0, 3), (2.0, 4), (2.0, 5), (2.0, 9), (3.0, 1)]
    assert q.first() == (1.0, 3) and q.last() == (3.0, 1)
    assert q.window(2.0, 2) == [(2.0, 4), (2.0, 5)]
    assert q.window(2.5, 10) == [(3.0, 1)]
    assert q.head(2) == [(1.0, 3), (2.0, 4)]
    assert q.pop_below(2.5) == [3, 4, 5, 9]
    assert len(q) == 1 and 1 in q and 3 not in q


def test_errors(eng):
    q = eng.RequestQueue()
    q.push(1, 1.0)
    with pytest.raises(ValueError, match="already queued"):
        q.push(1, 2.0)
    with pytest.raises(KeyError, match="unknown request id 2"):
        q.remove(2)
    with pytest.raises(ValueError, match="NaN"):
        q.push(2, float("nan"))
    assert q.remove(1) == 1.0
    assert q.first() is None


ops = st.lists(
    st.tuples(st.sampled_from(["push", "remove", "pop_below", "window"]),
              st.integers(0, 400), st.floats(0, 10, allow_nan=False)),
    max_size=400,
)


@given(ops=ops)
@settings(max_examples=100, deadline=None)
def test_matches_a_sorted_list(eng, ops):
    # enough operations to split and merge the compiled engine's sorted blocks
    q = eng.RequestQueue()
    ref: dict[int, float] = {}
    for op, rid, key in ops:
        if op == "push":
            if rid in ref:
                with pytest.raises(ValueError):
                    q.push(rid, key)
            else:
                q.push(rid, key)
                ref[rid] = key
        elif op == "remove":
            if rid in ref:
                assert q.remove(rid) == ref.pop(rid)
            else:
                with pytest.raises(KeyError):
                    q.remove(rid)
        elif op == "pop_below":
            expect = sorted((k, r) for r, k in ref.items() if k < key)
            assert q.pop_below(key) == [r for _, r in expect]
            for _, r in expect:
                del ref[r]
        else:
            expect = sorted((k, r) for r, k in ref.items() if k >= key)[: rid % 7]
            assert q.window(key, rid % 7) == expect
        assert len(q) == len(ref)
    assert list(q) == sorted((k, r) for r, k in ref.items())
