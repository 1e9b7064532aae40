"""Fixtures for runtime tests: real servers (processes, sockets, shared memory) on the CPU.

Every server binds 127.0.0.1 on a free port, logs to a file in the test's tmp dir (shown
when a test fails), and is stopped at the end even when the test failed; the fixture then
checks that none of its processes and none of its /dev/shm segments outlived it.
"""

from __future__ import annotations

import pytest

from .helpers import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server per test module (startup costs seconds)."""
    with running_server(tmp_path_factory.mktemp("server")) as s:
        yield s
