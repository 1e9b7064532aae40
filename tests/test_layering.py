"""The import rules the package docstrings state, checked in a fresh interpreter each:

- the engine (orloj_rt.engine) imports neither zmq nor torch;
- the serving core (orloj_rt.serving) and the protocol (orloj_rt.protocol) import neither
  zmq nor torch, nor any runtime module;
- the frontend and the scheduler process never import torch, nor does the gateway process
  (whose gRPC module imports its generated messages only when it builds its server);
- the client (orloj_rt.client) imports no runtime module, whatever it is used for (a
  `Client` with CURVE keys included);
- the worker imports nothing scheduler-side (orloj_rt.serving, runtime.scheduler);
- the policies import the engine's public face, never orloj_rt.engine.pure.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_after(code: str) -> set[str]:
    """The modules loaded once `code` ran in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, check=True)  # fmt: skip
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def runtime_modules(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m == "orloj_rt.runtime" or m.startswith("orloj_rt.runtime."))


@pytest.mark.parametrize(("what", "code", "forbidden"), [
    ("engine", "import orloj_rt.engine, orloj_rt.policies", {"zmq", "torch"}),
    ("serving core", "import orloj_rt.serving, orloj_rt.serving.hints", {"zmq", "torch"}),
    ("protocol", "import orloj_rt.protocol.wire, orloj_rt.protocol.messages, "
                 "orloj_rt.protocol.keys, orloj_rt.protocol.derived_hint", {"zmq", "torch"}),
    ("frontend", "import orloj_rt.runtime.frontend", {"torch"}),
    ("scheduler", "import orloj_rt.runtime.scheduler", {"torch"}),
    # the gateway process's modules; grpc_gateway imports its generated messages only when
    # it builds its server (they clash with tritonclient's in one process: docs/grpc.md)
    ("gateway", "import orloj_rt.runtime.gateway_common, orloj_rt.runtime.http_gateway, "
                "orloj_rt.runtime.grpc_gateway",
     {"torch", "orloj_rt.runtime.grpc_proto.grpc_predict_v2_pb2"}),
])  # fmt: skip
def test_forbidden_imports(what, code, forbidden):
    mods = imported_after(code)
    assert not forbidden & mods, f"{what} imports {sorted(forbidden & mods)}"


@pytest.mark.parametrize("code", [
    "import orloj_rt.serving, orloj_rt.serving.hints",
    "import orloj_rt.protocol.wire, orloj_rt.protocol.messages, orloj_rt.protocol.keys, "
    "orloj_rt.protocol.derived_hint",
    "import orloj_rt.client, orloj_rt.client.loadgen",
    # a client in use: its socket, CURVE keys from a directory, a request's encoding
    "import tempfile, numpy as np\n"
    "from orloj_rt.client import Client, encode_infer\n"
    "from orloj_rt.protocol.keys import create_keys\n"
    "d = tempfile.mkdtemp()\ncreate_keys(d)\n"
    "Client('tcp://127.0.0.1:1', curve_keys=d).close()\n"
    "encode_infer(1, 'm', {'x': np.zeros(2, np.float32)})",
])  # fmt: skip
def test_no_runtime_module(code):
    assert runtime_modules(imported_after(code)) == []


def test_the_worker_imports_nothing_scheduler_side():
    mods = imported_after("import orloj_rt.runtime.worker")
    bad = sorted(m for m in mods if m.startswith("orloj_rt.serving")
                 or m == "orloj_rt.runtime.scheduler")  # fmt: skip
    assert bad == []


def test_policies_use_the_engines_public_face():
    offenders = []
    for path in sorted((ROOT / "orloj_rt" / "policies").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "orloj_rt.engine.pure"):  # fmt: skip
                offenders.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("orloj_rt.engine.pure")]  # fmt: skip
    assert offenders == []
