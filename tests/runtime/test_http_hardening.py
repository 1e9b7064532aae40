"""The KServe v2 gateway against sloppy and hostile HTTP (issue 19, items 4, 5, 7, 8, 9):
idle and slow connections are closed (header, body and keep-alive timeouts, set here with
the `orloj-rt start` flags to a second or so), bodies over the limit are refused, every
response is counted, and JSON tensor data is taken only in the datatype's own JSON type.

One live server (the light models: noop, sleep) serves the module; the unit tests at the
end need none."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import types
from pathlib import Path

import numpy as np
import pytest

from orloj_rt.runtime.http_gateway import (
    MIN_BODY_LIMIT,
    Gateway,
    GatewayOptions,
    HttpError,
    HttpLimits,
    KServeApp,
    _json_tensor,
    _json_values,
    _parse_inputs,
)

from .helpers import running_server

HEADER_S, BODY_S, KEEPALIVE_S = 1.0, 1.0, 3.0
MAX_BODY = 64 << 10
SLACK_S = 3.0  # a loaded 2-core machine: timers fire late, never early
DOCS = Path(__file__).resolve().parents[2] / "docs" / "http.md"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening")
    with running_server(d, "--http-port", "0", "--metrics-port", "0", "--drain-timeout", "0.5",
                        "--http-header-timeout", str(HEADER_S),
                        "--http-body-timeout", str(BODY_S),
                        "--http-keepalive-timeout", str(KEEPALIVE_S),
                        "--http-max-body-bytes", str(MAX_BODY), light=True) as server:  # fmt: skip
        http = re.search(r"; http http://127\.0\.0\.1:(\d+)", server.ready_line)
        metrics = re.search(r"; metrics (http://[^;)]+)", server.ready_line)
        assert http and metrics, server.ready_line
        yield types.SimpleNamespace(server=server, port=int(http.group(1)),
                                    metrics=metrics.group(1))  # fmt: skip


def connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None,
                  close: bool = False) -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length (what aiohttp sends here)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers.get("content-length", 0))
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk, "closed in the middle of a response body"
        rest += chunk
    return status, headers, rest[:n]


def exchange(srv, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    with connect(srv) as s:
        s.sendall(request_bytes(method, path, body, headers, close=True))
        return read_response(s)


def closed_after(s: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes `s` (whatever it sends first is read and dropped),
    or None if it is still open after limit_s."""
    t0 = time.monotonic()
    while (left := limit_s - (time.monotonic() - t0)) > 0:
        s.settimeout(left)
        try:
            if not s.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - t0
    return None


def http_counts(srv) -> dict:
    """orloj_http_requests_total by (route, code)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(srv.metrics, timeout=10) as r:
        text = r.read().decode()
    return {(s.labels["route"], s.labels["code"]): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "orloj_http_requests_total"}  # fmt: skip


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def noop_body(data, datatype="FP32", **extra) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [4], "data": data}], **extra}
    return json.dumps(doc).encode()


def strict_json(body: bytes):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=refuse)


# ---------------------------------------------------------------------- item 7: timeouts
def test_idle_and_slow_connections_are_closed(srv):
    """The issue's 22 connections: 8 that send nothing, 7 with half their headers, 7 with
    all headers and half a body. All are closed within the header and body timeouts (the
    half bodies after a 408), while a normal request on a new connection is answered."""
    head = b"POST /v2/models/noop/infer HTTP/1.1\r\nHost: test\r\n"
    half_body = request_bytes("POST", "/v2/models/noop/infer", b"x" * 100)[:-60]
    socks = [connect(srv) for _ in range(22)]
    t0 = time.monotonic()
    for s in socks[8:15]:
        s.sendall(head)
    for s in socks[15:]:
        s.sendall(half_body)
    status, _, body = exchange(srv, "POST", "/v2/models/noop/infer", noop_body([1, 2, 3, 4]))
    assert status == 200, body
    assert strict_json(body)["outputs"][0]["data"] == [1, 2, 3, 4]
    limit = max(HEADER_S, BODY_S) + SLACK_S
    for s in socks[15:]:  # the body timeout answers before it closes
        status, headers, body = read_response(s)
        assert status == 408 and headers.get("connection", "").lower() == "close", body
        assert "--http-body-timeout" in strict_json(body)["error"]
    times = [closed_after(s, limit - (time.monotonic() - t0)) for s in socks]
    for s in socks:
        s.close()
    assert all(t is not None for t in times), f"still open after {limit} s: {times}"
    assert time.monotonic() - t0 >= min(HEADER_S, BODY_S) * 0.9  # closed by the timers


def test_a_trickle_of_header_bytes_does_not_keep_a_connection(srv):
    """The header timeout runs from the request's first byte: bytes that keep coming, each
    within the timeout of the last, do not extend it (slowloris)."""
    with connect(srv) as s:
        t0 = time.monotonic()
        payload = request_bytes("GET", "/v2", headers={"X-Pad": "a" * 200})
        closed = None
        for k in range(len(payload)):
            try:
                s.sendall(payload[k : k + 1])
            except OSError:
                closed = time.monotonic() - t0
                break
            if closed_after(s, 0.1) is not None:
                closed = time.monotonic() - t0
                break
        assert closed is not None and HEADER_S * 0.9 <= closed <= HEADER_S + SLACK_S, closed


def test_keepalive_idles_up_to_its_own_timeout(srv):
    """Requests on one keep-alive connection work; idle, it stays open past the header
    timeout and is closed after the keep-alive timeout."""
    with connect(srv) as s:
        for _ in range(2):
            s.sendall(request_bytes("GET", "/v2"))
            status, headers, body = read_response(s)
            assert status == 200 and strict_json(body)["name"] == "orloj-rt"
        t0 = time.monotonic()
        assert closed_after(s, HEADER_S + 0.6) is None  # idle, not a request in progress
        s.sendall(request_bytes("GET", "/v2"))  # still served
        assert read_response(s)[0] == 200
        t0 = time.monotonic()
        closed = closed_after(s, KEEPALIVE_S + SLACK_S)
    assert closed is not None and closed >= KEEPALIVE_S * 0.9, closed
    assert time.monotonic() - t0 >= KEEPALIVE_S * 0.9


# ---------------------------------------------------------------------- item 9: body limit
def test_a_body_over_the_limit_is_413_naming_the_flag(srv):
    ok = noop_body([1, 2, 3, 4], id="p" * (MAX_BODY - 200))
    assert len(ok) < MAX_BODY
    status, _, body = exchange(srv, "POST", "/v2/models/noop/infer", ok)
    assert status == 200, body
    big = noop_body([1, 2, 3, 4], id="p" * MAX_BODY)
    status, _, body = exchange(srv, "POST", "/v2/models/noop/infer", big)
    assert status == 413, body
    error = strict_json(body)["error"]
    assert f"limit of {MAX_BODY} bytes" in error and "--http-max-body-bytes" in error
    with connect(srv) as s:  # chunked: no Content-Length to refuse early
        chunk = big[: MAX_BODY + 10]
        s.sendall(b"POST /v2/models/noop/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode()
                  + chunk + b"\r\n0\r\n\r\n")  # fmt: skip
        status, _, body = read_response(s)
    assert status == 413 and "--http-max-body-bytes" in strict_json(body)["error"]


def test_the_default_body_limit_is_8_mib_or_a_full_json_batch(tmp_path):
    from orloj_rt.models.repository import load_repository

    from .helpers import light_repo

    specs = [e.spec for e in load_repository(str(light_repo(tmp_path)))]
    assert MIN_BODY_LIMIT == 8 << 20
    assert KServeApp(specs, None).max_body_bytes == 8 << 20
    assert KServeApp(specs, None, HttpLimits(max_body_bytes=1000)).max_body_bytes == 1000


# ---------------------------------------------------------------------- item 4: counting
def test_every_response_is_counted(srv):
    """Whatever answers (a handler, the middleware, aiohttp's own 400 for HTTP it cannot
    parse, a 404 for no route, a 413, a 408), the response is counted once."""
    before = http_counts(srv)
    assert exchange(srv, "GET", "/v2")[0] == 200
    assert exchange(srv, "GET", "/nothing/here")[0] == 404
    assert exchange(srv, "GET", "/v2/models/noop/infer")[0] == 405
    assert exchange(srv, "POST", "/v2/models/nope/infer", b"{}")[0] == 404
    assert exchange(srv, "POST", "/v2/models/noop/infer", b"[" * 20_000)[0] == 400
    assert exchange(srv, "POST", "/v2/models/noop/infer", b"x" * (MAX_BODY + 1))[0] == 413
    with connect(srv) as s:  # not HTTP at all: aiohttp's parser answers 400 itself
        s.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        assert read_response(s)[0] == 400
    with connect(srv) as s:
        s.sendall(request_bytes("POST", "/v2/models/noop/infer", b"x" * 100)[:-50])
        assert read_response(s)[0] == 408
    time.sleep(0.2)
    got = delta(http_counts(srv), before)
    infer = "/v2/models/{name}/infer"
    assert got == {("/v2", "200"): 1, ("unmatched", "404"): 1, ("unmatched", "405"): 1,
                   (infer, "404"): 1, (infer, "400"): 1, (infer, "413"): 1,
                   ("unmatched", "400"): 1, (infer, "408"): 1}, got  # fmt: skip


def _deep(depth: int, leaf=1):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("case", ["deep body", "deep data", "deep hint", "deep id",
                                  "deep output name", "huge slo_ms", "deep datatype"])  # fmt: skip
def test_deep_or_odd_json_is_400_not_500(srv, case):
    x = {"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
    if case == "deep body":
        body = b"[" * 20_000 + b"]" * 20_000  # within the body limit
    elif case == "deep data":
        body = json.dumps({"inputs": [dict(x, data=_deep(600))]}).encode()
    elif case == "deep hint":
        body = json.dumps({"inputs": [x], "parameters": {"hint": _deep(600)}}).encode()
    elif case == "deep id":
        body = json.dumps({"id": _deep(600), "inputs": [x]}).encode()
    elif case == "deep output name":
        body = json.dumps({"inputs": [x], "outputs": [{"name": _deep(600)}]}).encode()
    elif case == "huge slo_ms":
        body = json.dumps({"inputs": [x], "parameters": {"slo_ms": 10**400}}).encode()
    else:
        body = json.dumps({"inputs": [dict(x, datatype=_deep(600))]}).encode()
    before = http_counts(srv)
    status, _, reply = exchange(srv, "POST", "/v2/models/noop/infer", body)
    assert status == 400, reply
    assert strict_json(reply)["error"]
    got = delta(http_counts(srv), before)
    assert got == {("/v2/models/{name}/infer", "400"): 1}, got


def test_an_unexpected_error_is_a_counted_500_with_a_traceback(caplog, monkeypatch):
    """A bug in a handler: the middleware answers 500 in JSON, logs the traceback, and the
    response is counted (in process: no frontend is needed for GET /v2)."""

    async def broken(self, request):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(KServeApp, "server_metadata", broken)
    config = types.SimpleNamespace(internal_endpoint=f"ipc://@orloj_rt.test-{time.time_ns()}",
                                   models=(), curve_keys="", internal_curve=())  # fmt: skip

    async def scenario():
        gw = Gateway(config, GatewayOptions(http_port=0))
        await gw.start()
        try:
            port = int(gw.urls["http"].rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes("GET", "/v2", close=True))
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            count = gw.registry.get_sample_value("orloj_http_requests_total",
                                                 {"route": "/v2", "code": "500"})  # fmt: skip
            return raw, count
        finally:
            await gw.stop()

    raw = count = None
    with caplog.at_level("ERROR", logger="orloj_rt.gateway"):
        raw, count = asyncio.run(asyncio.wait_for(scenario(), 30))
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 500"), raw
    assert "ZeroDivisionError" in strict_json(body)["error"]
    assert count == 1
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# ---------------------------------------------------------------------- item 5: JSON types
WRONG = [  # (datatype, data, the value as the error names it)
    ("INT64", [1.7, 2, 3, 4], "1.7"),
    ("INT64", ["5", 2, 3, 4], '"5"'),
    ("INT64", [True, 2, 3, 4], "true"),
    ("FP32", [True, 2.0, 3.0, 4.0], "true"),
    ("FP32", [1e300, 2.0, 3.0, 4.0], "1e+300"),
    ("FP32", [1, 2, None, 4], "null"),
    ("INT8", [1, 2, 300, 4], "300"),
    ("UINT8", [1, -1, 3, 4], "-1"),
    ("INT32", [1, 2, 3, 2**31], str(2**31)),
    ("INT64", [1, 2, 3, 2**63], str(2**63)),
    ("FP16", [1.0, 70000.0, 0.0, 0.0], "70000.0"),
    ("BOOL", [1, 0, 1, 0], "1"),
]


@pytest.mark.parametrize("datatype,data,shown", WRONG)
def test_json_data_of_the_wrong_type_is_400_over_http(srv, datatype, data, shown):
    status, _, body = exchange(srv, "POST", "/v2/models/noop/infer", noop_body(data, datatype))
    assert status == 400, body
    error = strict_json(body)["error"]
    assert f"input 'x' ({datatype})" in error and f"holds {shown} " in error, error


@pytest.mark.parametrize("datatype,data,shown", WRONG)
def test_json_data_of_the_wrong_type_is_refused(datatype, data, shown):
    from orloj_rt.runtime.http_gateway import WIRE_DTYPES

    with pytest.raises(HttpError) as info:
        _json_tensor("x", datatype, WIRE_DTYPES[datatype], data)
    assert info.value.code == 400 and f"holds {shown} " in info.value.text


def _parsed(datatype: str, data, shape=None) -> np.ndarray:
    from orloj_rt.models.spec import DTYPES
    from orloj_rt.runtime.http_gateway import WIRE_DTYPES

    shape = shape if shape is not None else [len(data)]
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    (x,) = _parse_inputs(doc, memoryview(b""))
    return np.frombuffer(x.data, DTYPES[WIRE_DTYPES[datatype]][0])


def test_json_data_of_the_right_type_is_kept_exactly():
    assert _parsed("INT64", [2**63 - 1, -(2**63), 0]).tolist() == [2**63 - 1, -(2**63), 0]
    assert _parsed("INT8", [-128, 127]).tolist() == [-128, 127]
    assert _parsed("UINT8", [0, 255]).tolist() == [0, 255]
    assert _parsed("INT32", [[1, 2], [3, 4]], [2, 2]).tolist() == [1, 2, 3, 4]
    assert _parsed("FP32", [1, 2.5, -3, 3.4e38]).tolist() == [1, 2.5, -3, np.float32(3.4e38)]
    assert _parsed("FP16", [65504, 1e-8]).tolist() == [65504, 0]  # underflow is rounding
    nan_inf = _parsed("FP32", [float("nan"), float("inf"), float("-inf")])  # NaN tokens
    assert np.isnan(nan_inf[0]) and nan_inf[1] == np.inf and nan_inf[2] == -np.inf
    assert _parsed("BOOL", [[True], [False]], [2, 1]).tolist() == [True, False]
    assert _parsed("FP32", _deep(500, 7.0), []).tolist() == [7.0]  # evenly nested, deep
    assert _parsed("UINT8", [], [0]).tolist() == []


@pytest.mark.parametrize("data", [[[1, 2], [3]], [[1, 2], 3], [1, [2, 3], 4]])
def test_unevenly_nested_json_data_is_refused(data):
    with pytest.raises(HttpError, match="nested unevenly"):
        _json_tensor("x", "INT32", "int32", data)


# ---------------------------------------------------------------------- item 8: NaN out
def test_non_finite_outputs_are_valid_json(srv):
    """noop echoes its input: NaN and the infinities come back as strings in a strict JSON
    body, and exactly as binary data."""
    x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    head = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                        "parameters": {"binary_data_size": 16}}]}  # fmt: skip
    hj = json.dumps(head).encode()
    status, _, body = exchange(srv, "POST", "/v2/models/noop/infer", hj + x.tobytes(),
                               {"Inference-Header-Content-Length": str(len(hj))})  # fmt: skip
    assert status == 200, body
    assert strict_json(body)["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.5]
    hj = json.dumps(dict(head, outputs=[{"name": "y", "parameters": {"binary_data": True}}]))
    status, headers, body = exchange(srv, "POST", "/v2/models/noop/infer",
                                     hj.encode() + x.tobytes(),
                                     {"Inference-Header-Content-Length": str(len(hj))})  # fmt: skip
    n = int(headers["inference-header-content-length"])
    assert status == 200 and body[n:] == x.tobytes()


def test_json_values_spell_non_finite_floats_as_strings():
    f16 = np.array([np.nan, -np.inf, 2.0], np.float16).tobytes()
    assert _json_values(f16, "float16") == ["NaN", "-Infinity", 2.0]
    bf16 = np.array([0x7FC0, 0x7F80, 0x3FC0], np.uint16).tobytes()
    assert _json_values(bf16, "bfloat16") == ["NaN", "Infinity", 1.5]
    assert _json_values(np.array([1, 2], np.int64).tobytes(), "int64") == [1, 2]
    back = np.array(["NaN", "Infinity", "-Infinity", 1.5], dtype=np.float32)  # as_numpy()
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf and back[3] == 1.5


# ---------------------------------------------------------------------- the flags, docs
def test_the_flags_set_the_limits_and_refuse_nonsense(capsys):
    from orloj_rt.cli import build_parser
    from orloj_rt.cli._server_args import http_limits

    parse = build_parser().parse_args
    assert http_limits(parse(["start"])) == HttpLimits()
    args = parse(["start", "--http-header-timeout", "2.5", "--http-body-timeout", "30",
                  "--http-keepalive-timeout", "5", "--http-max-body-bytes", "1048576"])
    assert http_limits(args) == HttpLimits(2.5, 30.0, 5.0, 1 << 20)
    for flag, bad in [("--http-header-timeout", "0"), ("--http-body-timeout", "nan"),
                      ("--http-keepalive-timeout", "-1"), ("--http-max-body-bytes", "0")]:
        with pytest.raises(SystemExit) as info:
            parse(["start", flag, bad])
        assert info.value.code == 2
    assert "--http-max-body-bytes" in capsys.readouterr().err


def test_docs_name_the_limits_and_their_flags():
    text = DOCS.read_text()
    d = HttpLimits()
    for flag, default in [("--http-header-timeout", d.header_timeout_s),
                          ("--http-body-timeout", d.body_timeout_s),
                          ("--http-keepalive-timeout", d.keepalive_timeout_s)]:  # fmt: skip
        assert re.search(rf"`{flag} S`[^|]*\|[^|]*\b{default:g} s\b", text), flag
    assert "--http-max-body-bytes" in text and "8 MiB" in text
    assert "NaN" in text and "binary_data" in text


def test_the_help_states_the_defaults(capsys):
    from orloj_rt.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["start", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    d = HttpLimits()
    for flag, default in [("--http-header-timeout", d.header_timeout_s),
                          ("--http-body-timeout", d.body_timeout_s),
                          ("--http-keepalive-timeout", d.keepalive_timeout_s)]:  # fmt: skip
        assert re.search(rf"{flag} S .*?\(default: {default:g}\)", help_text), flag
