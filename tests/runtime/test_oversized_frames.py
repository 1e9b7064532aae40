"""One oversized frame must not cost another request its reply (docs/protocol.md, "Frame
size"). Every frame up to --max-frame-bytes is read and, if wrong, answered `error` on the
same connection; a bigger frame makes ZeroMQ drop the connection, and the replies to the
client's other requests wait in the frontend's outbox until its socket reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import msgpack
import numpy as np
import pytest

from orloj_rt.client import Client, encode_infer
from orloj_rt.protocol.wire import MAX_APP_LEN
from tests.runtime.helpers import running_server

N_VALID = 400
# per batch of 64: the valid requests are in flight for ~0.7 s, and the first reply comes
# 100 ms after the last send, well after ZeroMQ has dropped the connection (a reply that
# ZeroMQ has taken for a connection and not yet written when it drops is lost with it)
SLEEP_MS = 100.0


def _repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sleep.toml").write_text(
        'builtin = "sleep"\nring_slots = 512\nmax_batch_size = 64\ndefault_slo_ms = 60000.0\n'
    )
    return repo


def _dealer(endpoint: str, routing_id: bytes | None):
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    return sock


def _sleep_frames(i: int) -> list:
    return [b"", *encode_infer(i, "sleep", {"ms": np.array(SLEEP_MS, np.float32)})]


def _collect(sock, want: int, timeout_s: float) -> dict:
    """id -> reply header, until `want` replies or the timeout."""
    got: dict = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        if sock.poll(100):
            frames = sock.recv_multipart()
            h = msgpack.unpackb(frames[1], raw=False)
            assert h["id"] not in got, f"a second reply to {h['id']}"
            got[h["id"]] = h
    return got


def _oversized(i: int, n_floats: int) -> list:
    """A sleep request whose one frame holds `n_floats` floats instead of one."""
    hdr = msgpack.packb({"v": 1, "id": i, "model": "sleep",
                         "inputs": [{"name": "ms", "dtype": "float32", "shape": []}]})  # fmt: skip
    return [b"", hdr, np.zeros(n_floats, np.float32).tobytes()]


def _stats(endpoint: str) -> dict:
    with Client(endpoint, timeout_s=10) as c:
        return c.stats()


def test_a_frame_far_beyond_any_model_is_answered_and_keeps_the_connection(tmp_path):
    """400 requests in flight on one DEALER, then one whose frame is 1.6 MB where the
    model takes 4 bytes: it is answered `error` with its id, and all 400 get their `ok`."""
    with running_server(tmp_path, "--models", str(_repo(tmp_path)), "--policy", "edf") as s:
        sock = _dealer(s.endpoint, routing_id=None)  # a plain raw client: no routing id
        try:
            for i in range(N_VALID):
                sock.send_multipart(_sleep_frames(i))
            sock.send_multipart(_oversized(-1, 400_000))
            got = _collect(sock, N_VALID + 1, 60)
        finally:
            sock.close(linger=0)
        assert got[-1]["status"] == "error" and "bytes" in got[-1]["error"], got.get(-1)
        missing = [i for i in range(N_VALID) if i not in got]
        assert not missing, f"{len(missing)} of {N_VALID} valid requests got no reply"
        assert all(got[i]["status"] == "ok" for i in range(N_VALID))


def test_an_oversized_header_is_answered_with_its_id(tmp_path):
    """A 70,000-character `app` (a header above its 64 KiB limit) is answered `error`
    with the request's id and a reason that names the limit on `app`."""
    with running_server(tmp_path, light=True) as s:
        sock = _dealer(s.endpoint, routing_id=None)
        try:
            hdr, *data = encode_infer(7, "noop", {"x": np.zeros(4, np.float32)},
                                      app="a" * 70_000)  # fmt: skip
            sock.send_multipart([b"", hdr, *data])
            sock.send_multipart([b"", *encode_infer(8, "noop", {"x": np.ones(4, np.float32)})])
            got = _collect(sock, 2, 30)
        finally:
            sock.close(linger=0)
        assert got[7]["status"] == "error" and f"at most {MAX_APP_LEN}" in got[7]["error"]
        assert got[8]["status"] == "ok"


def test_replies_wait_for_a_client_whose_connection_dropped(tmp_path):
    """Above --max-frame-bytes ZeroMQ drops the connection without the frontend reading
    the frame; the client's socket reconnects with its routing id, and the replies to
    its 400 other requests, which were in flight, arrive all the same."""
    limit = 64 * 1024
    with running_server(tmp_path, "--models", str(_repo(tmp_path)), "--policy", "edf",
                        "--max-frame-bytes", str(limit)) as s:  # fmt: skip
        sock = _dealer(s.endpoint, b"orloj-test-" + os.urandom(8))
        try:
            for i in range(N_VALID):
                sock.send_multipart(_sleep_frames(i))
            sock.send_multipart(_oversized(-1, limit))  # 4 x the limit: never read
            got = _collect(sock, N_VALID, 60)
            assert not sock.poll(300), "a reply to the frame that was never read"
        finally:
            sock.close(linger=0)
        missing = [i for i in range(N_VALID) if i not in got]
        assert not missing, f"{len(missing)} of {N_VALID} valid requests got no reply"
        assert all(h["status"] == "ok" for h in got.values())
        stats = _stats(s.endpoint)
        assert stats["received"] == N_VALID  # the big frame never reached the frontend
        assert stats["replies_expired"] == 0 and stats["replies_waiting"] == 0


def test_max_frame_bytes_below_a_model_input_stops_the_start(tmp_path):
    from tests.runtime.helpers import run_cli

    r = run_cli("start", "--models", str(_repo(tmp_path)), "--cpu-workers", "1",
                "--max-frame-bytes", "2", timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "--max-frame-bytes 2 is below" in r.stderr and "raise it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_async_client_keeps_its_replies_beside_an_oversized_request(tmp_path):
    """AsyncClient sets a routing id (wire.new_routing_id): 100 valid requests in flight
    beside one whose frame is above --max-frame-bytes all get `ok`; the oversized one,
    never read by the server, ends in the client's own timeout."""
    from orloj_rt.client import AsyncClient

    limit = 64 * 1024
    ms = np.array(SLEEP_MS, np.float32)

    async def drive(endpoint):
        async with AsyncClient(endpoint, timeout_s=30) as c:
            valid = [asyncio.ensure_future(c.infer("sleep", {"ms": ms})) for _ in range(100)]
            await asyncio.sleep(0.01)
            big = asyncio.ensure_future(
                c.infer("sleep", {"ms": np.zeros(limit, np.float32)}, timeout_s=3))
            results = await asyncio.gather(*valid)
            with contextlib.suppress(TimeoutError):
                await big
                raise AssertionError("the oversized request was answered")
            return results

    with running_server(tmp_path, "--models", str(_repo(tmp_path)), "--policy", "edf",
                        "--max-frame-bytes", str(limit)) as s:  # fmt: skip
        results = asyncio.run(drive(s.endpoint))
    assert [r.status for r in results] == ["ok"] * 100


def _http_post(port: int, path: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("bad", ["shape", "app"])
def test_one_bad_http_request_does_not_stall_the_others(tmp_path, bad):
    """20 concurrent KServe v2 requests to a model that sleeps 100 ms, plus one with a
    shape far beyond the model's (a ~100 KB body) or a 70,000-character `app`: all 20 are
    answered `200` within seconds and the bad one gets `400` naming the problem. (Before,
    the bad one made ZeroMQ drop the gateway's own connection: 16 of 20 got 504 after
    65 s.)"""
    import re
    from concurrent.futures import ThreadPoolExecutor

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sleep.toml").write_text(
        'builtin = "sleep"\nring_slots = 64\nmax_batch_size = 1\ndefault_slo_ms = 60000.0\n')
    (repo / "early_exit.toml").write_text('builtin = "early_exit"\n')
    good = {"inputs": [{"name": "ms", "datatype": "FP32", "shape": [], "data": [100.0]}]}
    if bad == "shape":
        path = "/v2/models/early_exit/infer"
        body = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [20_000],
                            "data": [3] * 20_000}]}  # fmt: skip
    else:
        path = "/v2/models/sleep/infer"
        body = dict(good, parameters={"app": "a" * 70_000})
    with running_server(tmp_path, "--models", str(repo), "--http-port", "0",
                        "--policy", "edf") as s:  # fmt: skip
        port = int(re.search(r"; http http://127\.0\.0\.1:(\d+)", s.ready_line).group(1))
        t0 = time.monotonic()
        with ThreadPoolExecutor(21) as pool:
            futs = [pool.submit(_http_post, port, "/v2/models/sleep/infer", good, 30)
                    for _ in range(20)]  # fmt: skip
            time.sleep(0.05)
            code, reply = _http_post(port, path, body, 30)
            results = [f.result() for f in futs]
        elapsed = time.monotonic() - t0
    assert code == 400, (code, reply)
    assert ("max_shape" in reply["error"] or "outside" in reply["error"]) if bad == "shape" \
        else "app" in reply["error"], reply  # fmt: skip
    assert [c for c, _ in results] == [200] * 20, results
    assert elapsed < 15, f"the 20 took {elapsed:.1f} s (20 x 100 ms of work)"
