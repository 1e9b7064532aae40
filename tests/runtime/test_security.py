"""Safe defaults (docs/reliability.md): loopback unless --allow-remote, CURVE with
--curve-keys, ZMQ_MAXMSGSIZE from the largest model input, owner-only shared memory and
ipc sockets. Servers here bind 127.0.0.1 (or an ipc path) only."""

from __future__ import annotations

import os
import stat
import time

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol.wire import DEFAULT_ENDPOINT, MAX_HEADER_BYTES
from orloj_rt.runtime.security import (
    ClientKeys,
    check_bind,
    create_keys,
    is_local_endpoint,
    max_frame_bytes,
)
from orloj_rt.runtime.shm_ring import RingLayout, ShmRing, segment_name

from .helpers import instance_segments, light_repo, run_cli, running_server


# ---------------------------------------------------------------------- where to listen
@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5555", "tcp://127.0.0.1:*", "tcp://127.8.9.10:1", "tcp://[::1]:5555",
    "tcp://localhost:5555", "ipc:///tmp/orloj.sock", "ipc://@abstract", "inproc://x",
])  # fmt: skip
def test_local_endpoints_need_no_flag(endpoint):
    assert is_local_endpoint(endpoint) and check_bind(endpoint, False) is None


@pytest.mark.parametrize("endpoint", [
    "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.4:5555", "tcp://[::]:5555",
    "tcp://eth0:5555", "tcp://example.com:5555", "udp://127.0.0.1:5555", "ws://*:80",
])  # fmt: skip
def test_remote_endpoints_need_allow_remote(endpoint):
    assert not is_local_endpoint(endpoint)
    assert "--allow-remote" in check_bind(endpoint, False)
    assert check_bind(endpoint, True) is None


def test_the_default_endpoint_is_loopback():
    assert DEFAULT_ENDPOINT == "tcp://127.0.0.1:5555"
    assert "tcp://127.0.0.1:5555" in run_cli("start", "--help").stdout


def test_start_refuses_a_remote_bind_without_allow_remote(tmp_path):
    t0 = time.monotonic()
    r = run_cli("start", "--cpu-workers", "1", "--models", str(light_repo(tmp_path)),
                "--bind", "tcp://0.0.0.0:5599")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--allow-remote" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30  # refused before anything starts


# ---------------------------------------------------------------------- CURVE
def _refused(endpoint: str, keys: ClientKeys | None) -> tuple[bool, set]:
    """Sends a health request; (no reply within 1.5 s, the socket's monitor events)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    mon = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", msgpack.packb({"v": 1, "id": 1, "op": "health"})])
        events = set()
        deadline = time.monotonic() + 1.5
        replied = False
        while time.monotonic() < deadline and not replied:
            if mon.poll(50):
                events.add(recv_monitor_message(mon)["event"])
            replied = bool(sock.poll(0))
        return not replied, events
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)


def test_curve_refuses_clients_without_an_admitted_key_and_serves_those_with_one(tmp_path):
    keys = tmp_path / "keys"
    r = run_cli("keys", str(keys), "--client", "alice", "--client", "bob")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    for name in ("server", "alice", "bob"):
        assert stat.S_IMODE(os.stat(keys / f"{name}.key_secret").st_mode) == 0o600
    assert sorted(p.name for p in (keys / "authorized_clients").iterdir()) == [
        "alice.key", "bob.key"]  # fmt: skip
    again = run_cli("keys", str(keys), "--client", "alice")
    assert again.returncode == 2 and "exists already" in again.stderr
    with running_server(tmp_path, "--curve-keys", str(keys), light=True) as server:
        # no CURVE at all: the handshake fails (mechanism mismatch), nothing is answered
        refused, events = _refused(server.endpoint, None)
        assert refused and zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in events, events
        # CURVE with the server's key but a key the server does not admit: ZAP says no
        server_pub = ClientKeys.load(keys, "alice").server_public
        outsider = ClientKeys(server_pub, *zmq.curve_keypair())
        refused, events = _refused(server.endpoint, outsider)
        assert refused and zmq.EVENT_HANDSHAKE_FAILED_AUTH in events, events
        # admitted clients are served
        for name in ("alice", "bob"):
            with Client(server.endpoint, timeout_s=10,
                        curve_keys=ClientKeys.load(keys, name)) as c:  # fmt: skip
                assert c.health()["status"] == "ok"
                r = c.infer("noop", {"x": np.arange(4, dtype=np.float32)})
                assert r.ok and r.outputs["y"].tolist() == [0, 1, 2, 3]
        with Client(server.endpoint, timeout_s=1.5) as c, pytest.raises(TimeoutError):
            c.health()  # the Python client without keys: no answer
        assert run_cli("stop", "--bind", server.endpoint, "--timeout", "2").returncode == 1
        stop = run_cli("stop", "--bind", server.endpoint, "--curve-keys", str(keys),
                       "--timeout", "30")  # fmt: skip
        # `stop` reads DIR/client.key_secret: there is none in this directory
        assert stop.returncode == 2 and "client.key_secret" in stop.stderr


def test_curve_keys_directory_problems_are_explained(tmp_path):
    r = run_cli("start", "--cpu-workers", "1", "--models", str(light_repo(tmp_path)),
                "--curve-keys", str(tmp_path / "nokeys"), "--ready-timeout", "60")  # fmt: skip
    assert r.returncode == 1 and "orloj-rt keys" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_stop_with_curve_keys(tmp_path):
    keys = tmp_path / "keys"
    create_keys(keys)
    with running_server(tmp_path, "--curve-keys", str(keys), light=True) as server:
        r = run_cli("stop", "--bind", server.endpoint, "--curve-keys", str(keys),
                    "--timeout", "30")  # fmt: skip
        assert r.returncode == 0, r.stderr
        server.proc.wait(10)


# ---------------------------------------------------------------------- message size
def test_max_frame_bytes_is_the_largest_input_or_the_header_limit():
    m = BUILTIN_MODELS
    assert max_frame_bytes([m["noop"], m["sleep"]]) == MAX_HEADER_BYTES
    big = m["noop"].spec.replace(name="big", inputs=(
        m["noop"].spec.inputs[0].__class__("x", "float32", (100_000,)),))  # fmt: skip
    assert max_frame_bytes([m["noop"], big]) == 400_000


def _stats_received(endpoint: str) -> int:
    with Client(endpoint, timeout_s=10) as c:
        return c.stats()["received"]


def test_an_oversized_frame_is_refused_before_python_sees_it(tmp_path):
    """With --max-frame-bytes at its floor for the light models (their largest input is
    16 bytes, so the header limit, 64 KiB), a bigger frame makes ZeroMQ drop the
    connection without the frontend seeing the message (its `received` counter does not
    move); a frame at the limit still reaches it (answered `error`: wrong size); the
    client's next connection is served."""
    limit = MAX_HEADER_BYTES
    with running_server(tmp_path, "--max-frame-bytes", str(limit), light=True) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        mon = sock.get_monitor_socket()
        sock.connect(server.endpoint)
        try:
            before = _stats_received(server.endpoint)
            hdr = encode_infer(1, "noop", {"x": np.zeros(4, np.float32)})[0]
            sock.send_multipart([b"", hdr, b"\0" * (limit + 1)])
            events = set()
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                if mon.poll(50):
                    events.add(recv_monitor_message(mon)["event"])
            assert not sock.poll(0), "an oversized message was answered"
            assert zmq.EVENT_DISCONNECTED in events, events
            assert _stats_received(server.endpoint) == before
            # a frame at the limit reaches the frontend: answered, counted
            sock.send_multipart([b"", hdr, b"\0" * limit])
            assert sock.poll(10_000)
            reply = msgpack.unpackb(sock.recv_multipart()[1])
            assert reply["id"] == 1 and reply["status"] == "error" and "bytes" in reply["error"]
            # and the same socket (reconnected by ZeroMQ) is served as before
            sock.send_multipart([b"", *encode_infer(2, "noop", {"x": np.ones(4, np.float32)})])
            assert sock.poll(10_000)
            reply = msgpack.unpackb(sock.recv_multipart()[1])
            assert reply["id"] == 2 and reply["status"] == "ok"
            assert _stats_received(server.endpoint) == before + 2
        finally:
            sock.disable_monitor()
            mon.close(linger=0)
            sock.close(linger=0)


# ---------------------------------------------------------------------- file modes
def test_shared_memory_segments_are_owner_only(tmp_path):
    with running_server(tmp_path, light=True) as server:
        segments = instance_segments(server.pid)
        assert segments
        for name in segments:
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600, name


def test_shared_memory_is_owner_only_whatever_the_umask():
    name = segment_name(f"{os.getpid()}-1", 99)
    old = os.umask(0o000)
    try:
        ring = ShmRing.create(name, RingLayout.from_spec(BUILTIN_MODELS["noop"].spec, 2))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600
    finally:
        ring.close()
        ring.unlink()


def test_an_ipc_socket_is_owner_only(tmp_path):
    path = tmp_path / "orloj.sock"
    with running_server(tmp_path, "--bind", f"ipc://{path}", light=True) as server:
        assert server.endpoint == f"ipc://{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with Client(server.endpoint, timeout_s=10) as c:
            assert c.infer("noop", {"x": np.ones(4, np.float32)}).ok
