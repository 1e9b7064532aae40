"""The gateway process against one live server: KServe v2 over HTTP, driven by NVIDIA's
own client (`tritonclient[http]`) and by raw HTTP for what that client cannot send, every
HTTP error path, and a Prometheus scrape whose counters must match what was sent.

The last test shuts the module's server down (503 while it drains): keep it last."""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from dataclasses import dataclass
from urllib.request import urlopen

import numpy as np
import psutil
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.runtime.http_gateway import status_code

from .helpers import MODEL_REPO, RawDealer, running_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = ("noop.toml", "sleep.toml", "typed.toml", "typed.py", "flaky.toml", "flaky.py")
TIMEOUT_S = 30.0


@dataclass
class Gateway:
    server: object
    http: str  # http://127.0.0.1:PORT
    metrics: str  # http://127.0.0.1:PORT/metrics

    @property
    def hostport(self) -> str:
        return self.http.removeprefix("http://")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    d = tmp_path_factory.mktemp("gateway")
    repo = d / "repo"
    repo.mkdir()
    for name in MODELS:
        (repo / name).write_text((MODEL_REPO / name).read_text())
    with running_server(d, "--models", str(repo), "--http-port", "0", "--metrics-port", "0",
                        "--drain-timeout", "0.5") as server:  # fmt: skip
        line = server.ready_line
        http_url = re.search(r"; http (http://[^;)]+)", line)
        metrics_url = re.search(r"; metrics (http://[^;)]+)", line)
        assert http_url and metrics_url, line
        yield Gateway(server, http_url.group(1), metrics_url.group(1))


@pytest.fixture
def triton(gw):
    c = httpclient.InferenceServerClient(gw.hostport, connection_timeout=TIMEOUT_S,
                                         network_timeout=TIMEOUT_S)  # fmt: skip
    yield c
    c.close()


def post(gw: Gateway, path: str, body: bytes, headers: dict | None = None):
    """(status, headers, body) of one raw HTTP POST."""
    conn = http.client.HTTPConnection(gw.hostport.split(":")[0], int(gw.hostport.split(":")[1]),
                                      timeout=TIMEOUT_S)  # fmt: skip
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def infer_noop(triton, x: np.ndarray, binary: bool = True, **params):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    return triton.infer("noop", [inp], outputs=[out], parameters=params or None)


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# ---------------------------------------------------------------------- tritonclient
def test_health_and_metadata_with_tritonclient(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.get_server_metadata()["name"] == "orloj-rt"
    assert triton.is_model_ready("noop")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("noop")
    assert meta["name"] == "noop" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    typed = triton.get_model_metadata("typed", model_version="1")
    assert [t["datatype"] for t in typed["inputs"]] == ["FP16", "BF16", "BOOL", "UINT8",
                                                        "INT8", "INT32"]  # fmt: skip
    config = triton.get_model_config("noop")
    assert config["max_batch_size"] == 256 and config["input"][0]["data_type"] == "TYPE_FP32"


def test_binary_round_trip_with_tritonclient(triton):
    x = np.array([[1.5, -2.0, 3.25, 4.0]], np.float32)
    r = infer_noop(triton, x, binary=True, slo_ms=5000, app="http-test")
    y = r.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (1, 4)
    np.testing.assert_array_equal(y, x)
    resp = r.get_response()
    assert resp["outputs"][0]["parameters"]["binary_data_size"] == 16  # binary, not JSON
    params = resp["parameters"]
    assert params["met_slo"] is True and params["batch_size"] >= 1
    assert params["total_us"] >= params["exec_us"] > 0


def test_json_round_trip_and_a_batch_dimension(triton):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # three requests, batched on the server
    r = infer_noop(triton, x, binary=False)
    assert "data" in r.get_response()["outputs"][0]
    np.testing.assert_array_equal(r.as_numpy("y"), x)


def test_non_finite_json_outputs_are_strings_tritonclient_reads(triton):
    """NaN and the infinities: strings in the JSON answer (valid JSON, unlike Triton's bare
    tokens), which tritonclient's as_numpy() reads back as the same floats."""
    x = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)
    r = infer_noop(triton, x, binary=False)
    assert r.get_response()["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 0.5]
    y = r.as_numpy("y")
    assert y.dtype == np.float32 and np.isnan(y[0, 0]) and list(y[0, 1:]) == [np.inf, -np.inf,
                                                                              0.5]  # fmt: skip


def test_every_datatype_as_raw_binary_http(gw):
    """FP16, BF16 (raw 2-byte bits), BOOL, UINT8 with a variable dim, INT8, INT32: the
    binary extension by hand, without a batch dimension."""
    bf16_bits = np.array([0x3FC0, 0xC000], np.uint16)  # 1.5, -2.0
    tensors = [("h", "FP16", np.array([0.5, 0.25], np.float16)), ("b", "BF16", bf16_bits),
               ("m", "BOOL", np.array([True, False, True])),
               ("u", "UINT8", np.array([1, 2, 3, 4, 5], np.uint8)),
               ("i8", "INT8", np.array(-3, np.int8)),
               ("i32", "INT32", np.array([[1, 2], [3, 4]], np.int32))]  # fmt: skip
    head = {"id": "typed-1", "inputs": [
        {"name": n, "datatype": dt, "shape": list(a.shape),
         "parameters": {"binary_data_size": a.nbytes}} for n, dt, a in tensors],
        "outputs": [{"name": "total", "parameters": {"binary_data": False}},
                    {"name": "b_copy", "parameters": {"binary_data": True}}]}  # fmt: skip
    hj = json.dumps(head).encode()
    body = hj + b"".join(a.tobytes() for _, _, a in tensors)
    status, headers, data = post(gw, "/v2/models/typed/infer", body,
                                 {"Inference-Header-Content-Length": str(len(hj))})
    assert status == 200, data
    n = int(headers["Inference-Header-Content-Length"])
    resp = json.loads(data[:n])
    assert resp["id"] == "typed-1" and resp["model_name"] == "typed"
    total, b_copy = resp["outputs"]
    assert total["datatype"] == "FP32" and total["shape"] == []
    assert total["data"] == [pytest.approx(0.75 - 0.5 + 2 + 15 - 3 + 10)]
    assert b_copy["datatype"] == "BF16" and b_copy["parameters"]["binary_data_size"] == 4
    assert data[n:] == bf16_bits.tobytes()


# ---------------------------------------------------------------------- error paths
def test_unknown_model_is_404(triton):
    e = error_of(lambda: triton.infer("nope", [httpclient.InferInput("x", [1, 4], "FP32")
                                               .set_data_from_numpy(np.zeros((1, 4), np.float32))]))
    assert e.status() == "404" and "unknown model 'nope'" in e.message()
    e = error_of(lambda: triton.get_model_metadata("noop", model_version="7"))
    assert e.status() == "404" and "version" in e.message()


def test_a_bad_request_is_400_with_the_frontends_text(triton):
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 5), np.float32)))
    assert e.status() == "400" and "expects [4]" in e.message()
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), slo_ms="fast"))
    assert e.status() == "400" and "slo_ms" in e.message()


def test_a_failing_model_is_400(triton):
    inp = httpclient.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[666, 1]], np.float32))
    e = error_of(lambda: triton.infer("flaky", [inp]))
    assert e.status() == "400" and "magic input 666" in e.message()


def test_dropped_is_503_with_the_reason(gw, triton):
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), slo_ms=0.001))
    assert e.status() == "503" and "could no longer finish" in e.message()
    status, headers, body = post(gw, "/v2/models/noop/infer", json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0, 0, 0, 0]}],
         "parameters": {"slo_ms": 0.001}}).encode())  # fmt: skip
    assert status == 503 and json.loads(body)["status"] == "dropped"
    assert headers.get("Retry-After") == "1"


def test_rejected_when_overloaded_is_429(gw, triton):
    """sleep has 3 ring slots: with 3 slow requests in flight (ZeroMQ clients), an HTTP
    request finds the ring full, through the same frontend path."""
    with RawDealer(gw.server.endpoint) as d:
        for i in range(3):
            d.send(encode_infer(i, "sleep", {"ms": np.array(500, np.float32)}))
        time.sleep(0.15)
        inp = httpclient.InferInput("ms", [1], "FP32")
        inp.set_data_from_numpy(np.array([1], np.float32))
        e = error_of(lambda: triton.infer("sleep", [inp]))
        assert e.status() == "429" and "ring is full" in e.message()
        statuses = sorted(d.recv()[0]["status"] for _ in range(3))
        assert statuses == ["ok"] * 3


@pytest.mark.parametrize("case", [
    "not json", "header length too long", "binary size mismatch", "trailing binary",
    "no inputs", "unknown datatype", "bf16 as json", "data count", "unknown output",
    "ragged batch", "batch above max",
])  # fmt: skip
def test_malformed_http_requests_are_400(gw, case):
    x4 = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    binx = {"name": "x", "datatype": "FP32", "shape": [1, 4],
            "parameters": {"binary_data_size": 16}}  # fmt: skip
    raw = np.zeros(4, np.float32).tobytes()
    model, hlen, extra = "noop", None, b""
    doc: object = {"inputs": [x4]}
    if case == "not json":
        doc = None
    elif case == "header length too long":
        hlen = "99999"
    elif case == "binary size mismatch":
        doc, extra = {"inputs": [dict(binx, parameters={"binary_data_size": 12})]}, raw
    elif case == "trailing binary":
        doc, extra = {"inputs": [binx]}, raw + b"xx"
    elif case == "no inputs":
        doc = {"inputs": []}
    elif case == "unknown datatype":
        doc = {"inputs": [dict(x4, datatype="BYTES")]}
    elif case == "bf16 as json":
        model, doc = "typed", {"inputs": [{"name": "b", "datatype": "BF16", "shape": [2],
                                           "data": [1.0, 2.0]}]}  # fmt: skip
    elif case == "data count":
        doc = {"inputs": [dict(x4, data=[1, 2, 3])]}
    elif case == "unknown output":
        doc = {"inputs": [x4], "outputs": [{"name": "z"}]}
    elif case == "ragged batch":
        model = "typed"
        doc = {"inputs": [{"name": "h", "datatype": "FP16", "shape": [1, 2], "data": [1, 2]},
                          {"name": "i8", "datatype": "INT8", "shape": [2], "data": [1, 2]}]}
    elif case == "batch above max":
        doc = {"inputs": [dict(x4, shape=[257, 4], data=[0.0] * (257 * 4))]}
    head = b"{not json" if doc is None else json.dumps(doc).encode()
    headers = {}
    if extra or hlen:
        headers["Inference-Header-Content-Length"] = hlen or str(len(head))
    status, _, body = post(gw, f"/v2/models/{model}/infer", head + extra, headers)
    assert status == 400, (case, body)
    assert json.loads(body)["error"]


def test_wrong_method_and_unknown_route(gw):
    conn = http.client.HTTPConnection(*gw.hostport.split(":"), timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/v2/models/noop/infer")
        r = conn.getresponse()
        assert r.status == 405 and json.loads(r.read())["error"]
        conn.request("GET", "/v3/nothing")
        r = conn.getresponse()
        assert r.status == 404 and json.loads(r.read())["error"]
    finally:
        conn.close()


def test_rejected_maps_to_429_when_loaded_and_503_when_not_serving():
    """The frontend's rejection texts (frontend.py, scheduler Discard) -> HTTP status."""
    assert status_code("rejected", "overloaded: model 'm''s input ring is full (3 requests "
                       "in flight); retry later, or raise the model's ring_slots") == 429
    assert status_code("rejected", "rejected by the scheduling policy") == 429
    assert status_code("rejected", "rejected by the scheduler") == 429
    assert status_code("rejected", "the server is shutting down (SIGTERM): not accepting new "
                       "requests") == 503  # fmt: skip
    assert status_code("rejected", "no worker is ready yet (the server is starting up)") == 503
    assert status_code("rejected", "worker 0 (pid 7) exited unexpectedly") == 503
    assert status_code("dropped", "dropped: ...") == 503
    assert status_code("error", "bad") == 400


# ---------------------------------------------------------------------- metrics
def scrape(gw: Gateway) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(gw.metrics, timeout=TIMEOUT_S) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_what_was_sent(gw, triton):
    app = "metrics-test"
    before = scrape(gw)
    with Client(gw.server.endpoint, timeout_s=TIMEOUT_S) as c:
        for i in range(5):
            assert c.infer("noop", {"x": np.full(4, i, np.float32)}, app=app, slo_ms=5000).ok
        assert c.infer("noop", {"x": np.zeros(4, np.float32)}, app=app,
                       slo_ms=0.001).status == "dropped"  # fmt: skip
        assert c.infer("noop", {"x": np.zeros(5, np.float32)}, app=app).status == "error"
        assert c.infer("nope", {"x": np.zeros(4, np.float32)}, app=app).status == "error"
        with RawDealer(gw.server.endpoint) as d:  # the sleep ring (3 slots) full: rejected
            for i in range(4):
                d.send(encode_infer(i, "sleep", {"ms": np.array(300, np.float32)}, app=app))
            got = sorted(d.recv()[0]["status"] for _ in range(4))
        assert got == ["ok", "ok", "ok", "rejected"]
    infer_noop(triton, np.zeros((2, 4), np.float32), app=app)  # HTTP: two more ok requests
    after = scrape(gw)

    def delta(name: str, **labels) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    req = "orloj_requests_total"
    assert delta(req, model="noop", app=app, status="ok") == 7
    assert delta(req, model="noop", app=app, status="dropped") == 1
    assert delta(req, model="noop", app=app, status="error") == 1
    assert delta(req, model="noop", app=app, status="rejected") == 0
    assert delta(req, model="sleep", app=app, status="ok") == 3
    assert delta(req, model="sleep", app=app, status="rejected") == 1
    assert delta(req, model="", app="", status="error") == 1  # the unknown model
    met = delta("orloj_requests_finished_within_slo_total", model="noop", app=app)
    late = delta("orloj_requests_late_total", model="noop", app=app)
    assert met + late == 7 and met >= 5
    for h in ("queue", "execution", "latency"):
        name = f"orloj_request_{h}_seconds"
        assert delta(name + "_count", model="noop", app=app) == 7
        assert delta(name + "_bucket", model="noop", app=app, le="+Inf") == 7
        assert delta(name + "_sum", model="noop", app=app) > 0
    assert delta("orloj_batch_size_count", model="sleep") == 3  # max_batch_size 1
    assert delta("orloj_batch_size_sum", model="sleep") == 3
    assert sample(after, "orloj_up") == 1
    assert sample(after, "orloj_workers") == 1 and sample(after, "orloj_workers_ready") == 1
    assert sample(after, "orloj_ring_slots", model="sleep") == 3
    assert sample(after, "orloj_ring_slots_in_use", model="sleep") == 0
    assert ("orloj_queue_length", (("model", "noop"),)) in after
    assert sample(after, "orloj_process_resident_memory_bytes", process="frontend") > 0
    assert delta("orloj_http_requests_total", route="/v2/models/{name}/infer", code="200") == 1
    # the scheduler's decision times arrive with its once-a-second SchedulerStats
    deadline = time.monotonic() + 5
    while delta("orloj_scheduler_decision_seconds_count", model="sleep") < 3:
        assert time.monotonic() < deadline, "no decision times reached /metrics"
        time.sleep(0.3)
        after = scrape(gw)


def test_openmetrics_is_negotiated(gw):
    from urllib.request import Request

    req = Request(gw.metrics, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urlopen(req, timeout=TIMEOUT_S) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().decode().rstrip().endswith("# EOF")


# ---------------------------------------------------------------------- exposure, shutdown
def test_off_by_default_in_the_options():
    """Without --http-port / --metrics-port no gateway runs (tests/cli/test_status.py
    checks a live default server listens on its ZeroMQ port only)."""
    from orloj_rt.cli import build_parser

    args = build_parser().parse_args(["start", "--cpu-workers", "1"])
    assert args.http_port is None and args.metrics_port is None and not args.allow_remote
    from orloj_rt.runtime.supervisor import ServerOptions

    opts = ServerOptions(models=[])
    assert opts.http_port is None and opts.metrics_port is None and not opts.allow_remote
    from orloj_rt.runtime.http_gateway import listen_host

    assert listen_host(False) == "127.0.0.1" and listen_host(True) == "0.0.0.0"


def listening(server) -> list:
    """(ip, port) of every TCP socket the server's processes listen on."""
    out = []
    for p in [psutil.Process(server.pid), *server.children]:
        try:  # psutil < 6 calls it connections()
            conns = (getattr(p, "net_connections", None) or p.connections)(kind="inet")
        except psutil.Error:
            continue
        out += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def test_the_http_ports_listen_on_loopback_only(gw):
    addrs = listening(gw.server)
    ports = {a.port for a in addrs}
    for url in (gw.http, gw.metrics):
        assert int(url.split(":")[2].split("/")[0]) in ports
    assert addrs and all(a.ip == "127.0.0.1" for a in addrs), addrs


def test_zz_shutdown_answers_503_while_draining(gw):
    """Last in the module: SIGTERM with a request in flight. The frontend drains (0.5 s):
    a new HTTP request is rejected at once (503), the slow one too when the drain ends;
    then the server exits 0 (the fixture checks the exit code and leftovers)."""
    results: dict = {}

    def slow() -> None:
        body = json.dumps({"inputs": [{"name": "ms", "datatype": "FP32", "shape": [],
                                       "data": [3000]}]}).encode()  # fmt: skip
        results["slow"] = post(gw, "/v2/models/sleep/infer", body)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    gw.server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    status, headers, body = post(gw, "/v2/models/noop/infer", json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}
    ).encode())  # fmt: skip
    assert status == 503, body
    assert "shutting down" in json.loads(body)["error"] and headers.get("Retry-After")
    t.join(TIMEOUT_S)
    assert not t.is_alive()
    status, _, body = results["slow"]
    assert status == 503 and json.loads(body)["status"] == "rejected", body
    assert gw.server.proc.wait(TIMEOUT_S) == 0
