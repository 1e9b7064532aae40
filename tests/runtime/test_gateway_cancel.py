"""A client of a gateway that gives up cancels its request (issue 18): an HTTP client that
disconnects, a gRPC call whose deadline passes. Against a live server: the cancelled
requests are counted `cancelled` in `stats`, and the server serves on."""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pytest

from orloj_rt.client import Client

from .helpers import MODEL_REPO, running_server

grpc = pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    d = tmp_path_factory.mktemp("gateway_cancel")
    repo = d / "repo"
    repo.mkdir()
    for name in ("noop.toml", "sleep.toml"):
        (repo / name).write_text((MODEL_REPO / name).read_text())
    with running_server(d, "--models", str(repo), "--http-port", "0", "--grpc-port", "0",
                        "--drain-timeout", "0.5") as server:  # fmt: skip
        line = server.ready_line
        server.http = re.search(r"; http http://(127\.0\.0\.1:\d+)", line).group(1)
        server.grpc = re.search(r"; grpc (127\.0\.0\.1:\d+)", line).group(1)
        yield server


def cancelled(endpoint: str, before: int = 0, want: int | None = None) -> int:
    """The sleep model's `cancelled` count (waits up to 5 s for `want`)."""
    with Client(endpoint, timeout_s=10) as c:
        deadline = time.monotonic() + 5
        while True:
            n = c.stats()["models"]["sleep"]["cancelled"]
            if want is None or n - before >= want or time.monotonic() > deadline:
                return n
            time.sleep(0.05)


def test_an_http_client_that_disconnects_cancels_its_request(gw):
    before = cancelled(gw.endpoint)
    host, port = gw.http.split(":")
    body = json.dumps({"inputs": [{"name": "ms", "shape": [1], "datatype": "FP32",
                                   "data": [800]}], "parameters": {"slo_ms": 10000}}).encode()
    head = (f"POST /v2/models/sleep/infer HTTP/1.1\r\nHost: {gw.http}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(head + body)
    time.sleep(0.2)  # it runs now
    s.close()  # the client gives up
    after = cancelled(gw.endpoint, before, want=1)
    assert after - before == 1
    with Client(gw.endpoint, timeout_s=10) as c:  # the server serves on
        assert c.infer("sleep", {"ms": np.float32(1)}, slo_ms=10000).status == "ok"


def test_a_grpc_call_past_its_deadline_cancels_its_request(gw):
    before = cancelled(gw.endpoint)
    channel = grpc.insecure_channel(gw.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.ModelInferRequest(model_name="sleep")
    inp = req.inputs.add(name="ms", datatype="FP32")
    req.raw_input_contents.append(np.array([800], np.float32).tobytes())
    inp.shape.extend([1])
    req.parameters["slo_ms"].double_param = 10000.0
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    channel.close()
    after = cancelled(gw.endpoint, before, want=1)
    assert after - before == 1
