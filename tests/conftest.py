"""Suite-wide: the `once` marker. `make test` runs the suite twice, with the compiled
engine and with the pure twin (ORLOJ_RT_PURE=1). Tests marked `once` exercise nothing
that differs between the two (a gateway's protocol, the metrics pipeline, a C client, a
benchmark's harness) and take long: they run in the compiled pass only, and the pure pass
reports them skipped with that reason."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ORLOJ_RT_PURE") != "1":
        return
    skip = pytest.mark.skip(reason="engine-independent: run in the compiled-engine pass only")
    for item in items:
        if item.get_closest_marker("once") is not None:
            item.add_marker(skip)
