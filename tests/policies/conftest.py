"""Policy test fixtures: tiny hand-made queues on the active engine (compiled or pure)."""

from __future__ import annotations

import pytest

from orloj_rt.engine import Distribution


@pytest.fixture
def point_mass():
    """A prior where every solo time is exactly 1.0: batch times are known in advance."""
    return Distribution.from_samples([1.0] * 100)


@pytest.fixture
def spread():
    """A prior with solo times spread evenly over [0.5, 1.5]."""
    return Distribution.from_samples([0.5 + i / 999 for i in range(1000)])
