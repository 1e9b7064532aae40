"""docs/examples/orloj_client.c, compiled with libzmq and msgpack-c, against a live server:
the protocol works from a language other than Python. Skipped where the C headers or a
compiler are missing (Debian: apt-get install libzmq3-dev libmsgpack-dev)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "orloj_client.c"
pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)


@pytest.fixture(scope="module")
def c_client(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    headers = "#include <zmq.h>\n#include <msgpack.h>\n"
    probe = subprocess.run([cc, "-E", "-x", "c", "-"], input=headers, capture_output=True,
                           text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("libzmq or msgpack-c headers are missing (libzmq3-dev, libmsgpack-dev)")
    exe = tmp_path_factory.mktemp("c") / "orloj_client"
    build = subprocess.run([cc, "-Wall", "-Werror", "-O2", "-o", str(exe), str(EXAMPLE), "-lzmq",
                            "-lmsgpackc"], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    return exe


def test_the_c_example_talks_to_a_live_server(c_client, server):
    r = subprocess.run([str(c_client), server.endpoint], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reply to id 1: status ok" in r.stdout and "server status: ok" in r.stdout
    assert "reply to id 2: status ok" in r.stdout
    assert "output exit_layer: int64 [] = 3" in r.stdout
    assert "output logits: float32 [10] =" in r.stdout
    assert "reply to id 3: status ok" in r.stdout and "result: answered" in r.stdout


def test_the_c_example_reports_a_missing_server(c_client):
    r = subprocess.run([str(c_client), "tcp://127.0.0.1:1", "300"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and "no reply" in r.stderr
