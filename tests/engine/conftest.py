"""Engine test fixtures.

Tests run against the active engine (`orloj_rt.engine`), so the CI's two passes
(ORLOJ_RT_PURE=0 and =1) cover both implementations. Twin tests compare the compiled
engine with the pure one directly; they apply only where the compiled engine is built, and
with ORLOJ_RT_PURE=0 a missing build is a failure, not a skip.
"""

from __future__ import annotations

import importlib
import os

import pytest

import orloj_rt.engine as engine_mod
from orloj_rt.engine import pure


@pytest.fixture(scope="session")
def eng():
    """The active engine's classes: Distribution, Inflation, RequestQueue, OrlojPolicy,
    batch_cdf, batch_mean."""
    return engine_mod


def load_native():
    try:
        return importlib.import_module("orloj_rt.engine._native")
    except ImportError:
        if os.environ.get("ORLOJ_RT_PURE") == "0":
            raise
        return None


@pytest.fixture(scope="session")
def native():
    mod = load_native()
    if mod is None:
        pytest.skip("compiled engine not built (compiled-only test)")
    return mod


@pytest.fixture(scope="session")
def pure_engine():
    return pure
