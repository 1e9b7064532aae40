"""Priorities and variants through live servers (issue 17): a bad `priority` is an `error`
reply naming the field (ZeroMQ and HTTP), replies of a model with variants name the one
that served them, and a request's tier reaches the scheduler's policy (fifo serves a
higher tier first, as Triton's priority levels do)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.models.early_exit import tokens_for_depth
from orloj_rt.protocol.wire import MAX_PRIORITY

from .helpers import RawDealer, header, running_server

VARIANTS = ("full", "half", "quarter")  # early_exit's built-in declarations


@pytest.fixture(scope="module")
def ee(tmp_path_factory):
    """orloj (which chooses among variants) serving early_exit with its variants, with
    the HTTP gateway."""
    d = tmp_path_factory.mktemp("variants")
    repo = d / "repo"
    repo.mkdir()
    (repo / "ee.toml").write_text('builtin = "early_exit"\nmax_batch_size = 4\n')
    grpc_port = ("--grpc-port", "0") if _has_grpc() else ()
    with running_server(d, "--models", str(repo), "--http-port", "0", *grpc_port) as server:
        m = re.search(r"; http (http://[^;)]+)", server.ready_line)
        assert m, server.ready_line
        g = re.search(r"; grpc (127\.0\.0\.1:\d+)", server.ready_line)
        server.grpc = g.group(1) if g else None
        yield server, m.group(1)


def _has_grpc() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("grpc", "tritonclient"))


@pytest.mark.parametrize("value", [MAX_PRIORITY + 1, -1, 1.5, True, "2"])
def test_a_bad_priority_is_an_error_reply_naming_the_field(ee, value):
    server, _ = ee
    tokens = tokens_for_depth(3, 8, np.random.default_rng(0))
    sock = RawDealer(server.endpoint)
    try:
        sock.send([header(id=41, model="early_exit", priority=value, inputs=[
            {"name": "tokens", "dtype": "int64", "shape": [8]}]), tokens.tobytes()])
        reply, _ = sock.recv()
    finally:
        sock.close()
    assert reply["status"] == "error" and reply["id"] == 41, reply
    assert '"priority"' in reply["error"] and f"0..{MAX_PRIORITY}" in reply["error"]


def test_replies_name_the_variant_that_served_them(ee):
    server, _ = ee
    rng = np.random.default_rng(1)
    with Client(server.endpoint, timeout_s=30) as c:
        assert [v["name"] for v in c.models()[0]["variants"]] == list(VARIANTS)
        for i in range(6):
            r = c.infer("early_exit", {"tokens": tokens_for_depth(1 + i, 8, rng)},
                        slo_ms=5000, priority=i % (MAX_PRIORITY + 1))  # fmt: skip
            assert r.ok and r.variant in VARIANTS, (r.status, r.error, r.variant)
            # the work output reports the layers run: never beyond the variant's depth
            depth = {"full": 12, "half": 6, "quarter": 3}[r.variant]
            assert int(r.outputs["exit_layer"]) == min(1 + i, depth)


def _post(url: str, doc: dict):
    req = urllib.request.Request(url, json.dumps(doc).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_priority_over_http(ee):
    _, http = ee
    url = f"{http}/v2/models/early_exit/infer"
    tokens = tokens_for_depth(2, 8, np.random.default_rng(2)).tolist()
    doc = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [8], "data": tokens}]}
    code, body = _post(url, {**doc, "parameters": {"priority": MAX_PRIORITY + 2}})
    assert code == 400 and '"priority"' in body["error"], body
    code, body = _post(url, {**doc, "parameters": {"priority": 3, "slo_ms": 5000}})
    assert code == 200 and body["parameters"]["variant"] in VARIANTS, body


def test_priority_and_variant_over_grpc(ee):
    server, _ = ee
    if server.grpc is None:
        pytest.skip("grpcio or tritonclient[grpc] is not installed")
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    tokens = tokens_for_depth(2, 8, np.random.default_rng(3))
    req = service_pb2.ModelInferRequest(model_name="early_exit")
    req.inputs.add(name="tokens", datatype="INT64", shape=[8])
    req.raw_input_contents.append(tokens.tobytes())
    req.parameters["priority"].int64_param = MAX_PRIORITY + 2
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert '"priority"' in info.value.details()
        req.parameters["priority"].int64_param = 2
        req.parameters["slo_ms"].double_param = 5000.0
        resp = stub.ModelInfer(req, timeout=30)
    assert resp.parameters["variant"].string_param in VARIANTS


def test_a_higher_tier_is_served_first_under_fifo(tmp_path):
    """One worker busy with a long request; three tier-0 requests, then one tier-5, queue
    behind it. fifo takes the higher tier first (batches of one: the order shows)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sleep.toml").write_text('builtin = "sleep"\nmax_batch_size = 1\nring_slots = 8\n')
    with running_server(tmp_path, "--models", str(repo), "--policy", "fifo") as server, \
            Client(server.endpoint, timeout_s=30) as c:  # fmt: skip
        def ms(v: float) -> dict:
            return {"ms": np.array(v, dtype=np.float32)}

        blocker = c.submit("sleep", ms(600), slo_ms=30000)
        time.sleep(0.1)  # it is running: the others queue behind it
        low = [c.submit("sleep", ms(20), slo_ms=30000) for _ in range(3)]
        high = c.submit("sleep", ms(20), slo_ms=30000, priority=5)
        results = {rid: c.result(rid) for rid in (blocker, *low, high)}
    assert all(r.ok for r in results.values()), [(r.status, r.error) for r in results.values()]
    queued = {rid: r.timing["queue_us"] for rid, r in results.items()}
    assert all(queued[high] < queued[rid] for rid in low), queued


def _burst_variants(server, n: int = 120, slo_ms: float = 40.0) -> list[str]:
    """The variants named by the ok replies of `n` requests sent at once with a tight SLO
    (more than the full model drains within it: overload)."""
    rng = np.random.default_rng(4)
    with Client(server.endpoint, timeout_s=30) as c:
        ids = [c.submit("early_exit", {"tokens": tokens_for_depth(12, 8, rng)}, slo_ms=slo_ms)
               for _ in range(n)]  # fmt: skip
        results = [c.result(rid) for rid in ids]
    return [r.variant for r in results if r.ok]


def test_a_declared_accuracy_floor_reaches_the_scheduler(tmp_path):
    """min_accuracy = 1.0 (the full model's accuracy) leaves the cheaper variants nothing
    to spend: every answer is the full model's, under the same burst in which a fresh
    server without a floor (the control) serves some with a cheaper variant."""
    got = {}
    for floor in ("", "min_accuracy = 1.0\n"):
        d = tmp_path / ("floor" if floor else "control")
        repo = d / "repo"
        repo.mkdir(parents=True)
        (repo / "ee.toml").write_text(f'builtin = "early_exit"\nmax_batch_size = 4\n{floor}')
        with running_server(d, "--models", str(repo)) as server:
            with Client(server.endpoint, timeout_s=30) as c:
                assert c.models()[0].get("min_accuracy") == (1.0 if floor else None)
            got[bool(floor)] = _burst_variants(server)
    assert set(got[False]) - {"full"}, got[False]  # the burst is overload: variants chosen
    assert got[True] and set(got[True]) == {"full"}, got[True]
