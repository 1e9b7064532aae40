"""The gateway's gRPC port (--grpc-port) against one live server: KServe v2 / Open
Inference Protocol over gRPC, driven by NVIDIA's own client (`tritonclient[grpc]`) and by
its generated stub for what that client does not send (typed `contents`, raw mistakes,
trailing metadata).

This process imports tritonclient's generated `inference.*` messages; it must never import
orloj_rt.runtime.grpc_proto (the same message names in protobuf's default pool).
orloj_rt.runtime.grpc_gateway itself is safe: it imports the generated modules only
when it builds its server."""

from __future__ import annotations

import ipaddress
import re
import threading
import time

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.models.builtin import BUILTIN_MODELS

from .helpers import MODEL_REPO, RawDealer, running_server

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)

TEST_MODELS = ("noop.toml", "sleep.toml", "typed.toml", "typed.py", "flaky.toml", "flaky.py")
BUILTINS = sorted(BUILTIN_MODELS)  # minilm_early_exit where its weights are installed
TIMEOUT_S = 30.0
OK = "StatusCode.OK"
NOT_FOUND = "StatusCode.NOT_FOUND"
INVALID = "StatusCode.INVALID_ARGUMENT"
DROPPED = "StatusCode.DEADLINE_EXCEEDED"
REJECTED = "StatusCode.RESOURCE_EXHAUSTED"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """One server: the test models, and every built-in model under its own name (each
    file `builtin = NAME`; noop and sleep come from the test repository's files)."""
    d = tmp_path_factory.mktemp("grpc_gateway")
    repo = d / "repo"
    repo.mkdir()
    for name in TEST_MODELS:
        (repo / name).write_text((MODEL_REPO / name).read_text())
    for name in BUILTINS:
        if not (repo / f"{name}.toml").exists():
            (repo / f"{name}.toml").write_text(f'builtin = "{name}"\n')
    with running_server(d, "--models", str(repo), "--grpc-port", "0",
                        "--drain-timeout", "0.5") as server:  # fmt: skip
        m = re.search(r"; grpc (127\.0\.0\.1:\d+)", server.ready_line)
        assert m, server.ready_line
        server.grpc = m.group(1)
        yield server


@pytest.fixture
def triton(gw):
    c = grpcclient.InferenceServerClient(gw.grpc)
    yield c
    c.close()


@pytest.fixture
def stub(gw):
    """tritonclient's generated stub on a channel of its own: raw requests."""
    channel = grpc.insecure_channel(gw.grpc)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def infer_noop(triton, x: np.ndarray, **params):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return triton.infer("noop", [inp], parameters=params or None, client_timeout=TIMEOUT_S)


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---------------------------------------------------------------------- health, metadata
def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta.name == "orloj-rt" and meta.version
    assert triton.is_model_ready("noop") and triton.is_model_ready("noop", "1")
    m = triton.get_model_metadata("noop", as_json=True)
    assert m["name"] == "noop" and m["versions"] == ["1"] and m["platform"] == "orloj-rt"
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "4"]}]
    typed = triton.get_model_metadata("typed", model_version="1")
    assert [t.datatype for t in typed.inputs] == ["FP16", "BF16", "BOOL", "UINT8", "INT8",
                                                  "INT32"]  # fmt: skip
    assert list(typed.inputs[3].shape) == [-1, -1]  # the batch dim and a variable dim


def test_unknown_model_or_version_is_not_found(triton):
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    for call in (lambda: triton.is_model_ready("nope"),
                 lambda: triton.get_model_metadata("nope"),
                 lambda: triton.infer("nope", [x])):  # fmt: skip
        e = error_of(call)
        assert e.status() == NOT_FOUND and "unknown model 'nope'" in e.message()
    e = error_of(lambda: triton.get_model_metadata("noop", model_version="7"))
    assert e.status() == NOT_FOUND and "version" in e.message()


# ---------------------------------------------------------------------- inference
def small_inputs(name: str) -> dict[str, np.ndarray]:
    """A small request for a built-in model: variable dims of 4, token ids 1..4."""
    out = {}
    for t in BUILTIN_MODELS[name].spec.inputs:
        shape = [4 if d < 0 else d for d in t.shape]
        if t.dtype == "int64":
            out[t.name] = (np.arange(int(np.prod(shape))) % 4 + 1).reshape(shape)
        else:
            out[t.name] = np.full(shape, 0.5, dtype=t.dtype)  # sleep: half a millisecond
    return out


@pytest.mark.parametrize("model", BUILTINS)
def test_every_builtin_model_in_binary(triton, model):
    spec = BUILTIN_MODELS[model].spec
    inputs = []
    for name, x in small_inputs(model).items():
        x = x[None]  # a batch dimension of 1, as tritonclient users send
        inp = grpcclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
        inp.set_data_from_numpy(x)
        inputs.append(inp)
    r = triton.infer(model, inputs, parameters={"slo_ms": 20_000}, client_timeout=TIMEOUT_S)
    resp = r.get_response()
    assert resp.model_name == model and resp.model_version == "1"
    assert len(resp.raw_output_contents) == len(spec.outputs)  # every output, in raw
    for t in spec.outputs:
        y = r.as_numpy(t.name)
        assert y is not None and y.dtype == np.dtype(t.dtype), (t.name, y)
        assert y.shape[0] == 1 and len(y.shape) == len(t.shape) + 1
        assert all(d < 0 or d == got for d, got in zip(t.shape, y.shape[1:], strict=True))
    assert resp.parameters["met_slo"].bool_param is True
    assert resp.parameters["batch_size"].int64_param >= 1
    assert resp.parameters["total_us"].int64_param >= resp.parameters["exec_us"].int64_param > 0


def test_noop_round_trip_a_batch_dimension_and_the_id(triton):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # three requests, batched on the server
    inp = grpcclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    r = triton.infer("noop", [inp], request_id="req-7",
                     outputs=[grpcclient.InferRequestedOutput("y")])  # fmt: skip
    np.testing.assert_array_equal(r.as_numpy("y"), x)
    assert r.get_response().id == "req-7"


def test_every_datatype_raw_with_tritonclient(triton):
    import ml_dtypes

    bf16 = np.array([1.5, -2.0], ml_dtypes.bfloat16)
    tensors = [("h", "FP16", np.array([0.5, 0.25], np.float16)), ("b", "BF16", bf16),
               ("m", "BOOL", np.array([True, False, True])),
               ("u", "UINT8", np.array([1, 2, 3, 4, 5], np.uint8)),
               ("i8", "INT8", np.array(-3, np.int8)),
               ("i32", "INT32", np.array([[1, 2], [3, 4]], np.int32))]  # fmt: skip
    inputs = []
    for name, dt, a in tensors:
        inp = grpcclient.InferInput(name, list(a.shape), dt)
        inp.set_data_from_numpy(a)
        inputs.append(inp)
    r = triton.infer("typed", inputs)
    assert r.as_numpy("total").item() == pytest.approx(0.75 - 0.5 + 2 + 15 - 3 + 10)
    assert r.as_numpy("b_copy").view(np.uint16).tolist() == bf16.view(np.uint16).tolist()


def test_typed_contents_inputs(stub):
    """Inputs as typed `contents` instead of raw bytes (as some clients send them)."""
    req = service_pb2.ModelInferRequest(model_name="noop")
    x = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([1.5, -2.0, 3.25, 4.0])
    resp = stub.ModelInfer(req, timeout=TIMEOUT_S)
    y = np.frombuffer(resp.raw_output_contents[0], np.float32)
    assert y.tolist() == [1.5, -2.0, 3.25, 4.0] and list(resp.outputs[0].shape) == [1, 4]

    req = service_pb2.ModelInferRequest(model_name="early_exit")
    t = req.inputs.add(name="tokens", datatype="INT64", shape=[1, 4])
    t.contents.int64_contents.extend([3, 17, 99, 250])
    resp = stub.ModelInfer(req, timeout=TIMEOUT_S)
    assert [o.name for o in resp.outputs] == ["logits", "exit_layer"]
    assert len(resp.raw_output_contents[1]) == 8  # one int64 exit layer

    req = service_pb2.ModelInferRequest(model_name="typed")
    h = np.array([0.5, 0.25], np.float16)
    b = np.array([0x3FC0, 0xC000], np.uint16)  # 1.5, -2.0 as bfloat16 bits
    for name, dt, shape, field, values in (
        ("m", "BOOL", [3], "bool_contents", [True, False, True]),
        ("u", "UINT8", [5], "uint_contents", [1, 2, 3, 4, 5]),
        ("i8", "INT8", [], "int_contents", [-3]),
        ("i32", "INT32", [2, 2], "int_contents", [1, 2, 3, 4]),
    ):  # fmt: skip
        t = req.inputs.add(name=name, datatype=dt, shape=shape)
        getattr(t.contents, field).extend(values)
    # FP16 and BF16 have no typed field: a request that mixes them in needs raw contents
    # for all, so this one sends them as raw and the rest typed: refused (one or the other)
    req.inputs.add(name="h", datatype="FP16", shape=[2])
    req.inputs.add(name="b", datatype="BF16", shape=[2])
    req.raw_input_contents.extend([b"", b"", b"", b"", h.tobytes(), b.tobytes()])
    e = rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT_S))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "one or the other" in e.details()


def test_parameters_reach_the_server(gw, triton):
    """slo_ms, app and hint travel as request parameters, checked by the frontend."""
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), slo_ms=0.001))
    assert e.status() == DROPPED and "could no longer finish" in e.message()
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), slo_ms="fast"))
    assert e.status() == INVALID and "slo_ms" in e.message()
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), app="a" * 500))
    assert e.status() == INVALID and "app" in e.message()
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 4), np.float32), hint="long"))
    assert e.status() == INVALID and "hint" in e.message()
    for _ in range(3):
        infer_noop(triton, np.ones((1, 4), np.float32), app="grpc-app", hint=3, slo_ms=20_000)
    deadline = time.monotonic() + 10  # the scheduler reports its apps once a second
    with Client(gw.endpoint, timeout_s=TIMEOUT_S) as c:
        while "grpc-app" not in (apps := c.stats()["models"]["noop"]["scheduler"]["apps"]):
            assert time.monotonic() < deadline, apps
            time.sleep(0.2)


# ---------------------------------------------------------------------- error paths
def test_malformed_requests_are_invalid_argument_with_a_reason(triton, stub):
    e = error_of(lambda: infer_noop(triton, np.zeros((1, 5), np.float32)))
    assert e.status() == INVALID and "expects [4]" in e.message()  # the frontend's text

    def raw(mutate) -> grpc.RpcError:
        req = service_pb2.ModelInferRequest(model_name="noop")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
        mutate(req)
        return rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT_S))

    cases = {
        "takes 16": lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12),
        "one entry per input": lambda r: r.raw_input_contents.append(b""),
        "not served": lambda r: setattr(r.inputs[0], "datatype", "BYTES"),
        "no inputs": lambda r: (r.ClearField("inputs"), r.ClearField("raw_input_contents")),
        "unknown output 'z'": lambda r: r.outputs.add(name="z"),
        "no data": lambda r: r.ClearField("raw_input_contents"),
        "batch dimension 300": lambda r: (r.inputs[0].ClearField("shape"),
                                          r.inputs[0].shape.extend([300, 4]),
                                          r.raw_input_contents.__setitem__(0, b"\0" * 4800)),
    }  # fmt: skip
    for reason, mutate in cases.items():
        e = raw(mutate)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (reason, e)
        assert reason in e.details(), (reason, e.details())
        assert ("orloj-status", "error") not in (e.trailing_metadata() or ()), reason

    # typed contents: out of range, of the wrong field, of the wrong count
    def typed(dt, field, values, shape) -> grpc.RpcError:
        req = service_pb2.ModelInferRequest(model_name="typed")
        t = req.inputs.add(name="i8", datatype=dt, shape=shape)
        getattr(t.contents, field).extend(values)
        return rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT_S))

    assert "outside INT8's range" in typed("INT8", "int_contents", [300], []).details()
    assert "INT8 takes int_contents" in typed("INT8", "int64_contents", [3], []).details()
    assert "has 2 values" in typed("INT8", "int_contents", [1, 2], []).details()
    assert "raw_input_contents" in typed("FP16", "fp32_contents", [1.0], []).details()


def test_a_failing_model_is_invalid_argument(triton):
    inp = grpcclient.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[666, 1]], np.float32))
    e = error_of(lambda: triton.infer("flaky", [inp]))
    assert e.status() == INVALID and "magic input 666" in e.message()


def test_dropped_and_rejected_are_told_apart(gw, stub):
    """dropped: DEADLINE_EXCEEDED; rejected (the sleep model's 3 ring slots taken by
    ZeroMQ clients): RESOURCE_EXHAUSTED; both with the reason in the details and the wire
    status in the trailing metadata."""
    req = service_pb2.ModelInferRequest(model_name="noop")
    req.inputs.add(name="x", datatype="FP32", shape=[4])
    req.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    req.parameters["slo_ms"].double_param = 0.001
    e = rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT_S))
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "dropped" in e.details()
    assert ("orloj-status", "dropped") in e.trailing_metadata()

    with RawDealer(gw.endpoint) as d:
        for i in range(3):
            d.send(encode_infer(i, "sleep", {"ms": np.array(500, np.float32)}))
        time.sleep(0.15)
        req = service_pb2.ModelInferRequest(model_name="sleep")
        req.inputs.add(name="ms", datatype="FP32", shape=[1])
        req.raw_input_contents.append(np.ones(1, np.float32).tobytes())
        e = rpc_error(lambda: stub.ModelInfer(req, timeout=TIMEOUT_S))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "ring is full" in e.details()
        assert ("orloj-status", "rejected") in e.trailing_metadata()
        assert sorted(d.recv()[0]["status"] for _ in range(3)) == ["ok"] * 3


def test_the_status_mapping():
    from orloj_rt.runtime.gateway_common import GatewayError
    from orloj_rt.runtime.grpc_gateway import grpc_code

    code = grpc.StatusCode
    assert grpc_code(GatewayError(503, "dropped: ...", "dropped")) == code.DEADLINE_EXCEEDED
    assert grpc_code(GatewayError(429, "overloaded: ...", "rejected")) == code.RESOURCE_EXHAUSTED
    assert grpc_code(GatewayError(503, "... shutting down", "rejected")) == code.UNAVAILABLE
    assert grpc_code(GatewayError(400, "bad", "error")) == code.INVALID_ARGUMENT
    assert grpc_code(GatewayError(400, "bad")) == code.INVALID_ARGUMENT
    assert grpc_code(GatewayError(404, "unknown model")) == code.NOT_FOUND
    assert grpc_code(GatewayError(504, "no answer")) == code.DEADLINE_EXCEEDED
    assert grpc_code(GatewayError(500, "a bug")) == code.INTERNAL


# ---------------------------------------------------------------------- streaming
def test_stream_infer(triton):
    """Triton's ModelStreamInfer: answers in the stream, failures as error_message."""
    got: list = []
    done = threading.Event()

    def callback(result, error) -> None:
        got.append((result, error))
        if len(got) == 3:
            done.set()

    triton.start_stream(callback)
    try:
        for i, slo in enumerate((20_000, 0.001, 20_000)):
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.full((1, 4), i, np.float32))
            triton.async_stream_infer("noop", [inp], request_id=f"s{i}",
                                      parameters={"slo_ms": slo})  # fmt: skip
        assert done.wait(TIMEOUT_S), got
    finally:
        triton.stop_stream()
    ok = {r.get_response().id: r.as_numpy("y") for r, e in got if e is None}
    assert sorted(ok) == ["s0", "s2"] and ok["s2"].tolist() == [[2.0] * 4]
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1 and "could no longer finish" in errors[0].message()


# ---------------------------------------------------------------------- exposure
def loopback(ip: str) -> bool:
    """127.0.0.1, or the same as gRPC's dual-stack socket shows it (::ffff:127.0.0.1)."""
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr) == ipaddress.ip_address("127.0.0.1")


def listening(server) -> list:
    """(ip, port) of every TCP socket the server's processes listen on."""
    import psutil

    out = []
    for p in [psutil.Process(server.pid), *server.children]:
        try:  # psutil < 6 calls it connections()
            conns = (getattr(p, "net_connections", None) or p.connections)(kind="inet")
        except psutil.Error:
            continue
        out += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def test_off_by_default_and_on_loopback(gw):
    from orloj_rt.cli import build_parser
    from orloj_rt.runtime.supervisor import ServerOptions

    assert build_parser().parse_args(["start", "--cpu-workers", "1"]).grpc_port is None
    assert ServerOptions(models=[]).grpc_port is None
    addrs = listening(gw)
    assert int(gw.grpc.rsplit(":", 1)[1]) in {a.port for a in addrs}
    assert addrs and all(loopback(a.ip) for a in addrs), addrs
    with Client(gw.endpoint, timeout_s=TIMEOUT_S) as c:
        assert c.health()["pids"]["gateway"] in [p.pid for p in gw.children]
