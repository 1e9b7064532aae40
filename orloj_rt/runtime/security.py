"""Safe defaults for the client socket: where it listens, who may talk, how big a frame.

- **Loopback unless told otherwise.** `check_bind()` refuses an endpoint that other
  machines can reach (anything but 127.0.0.0/8, ::1, localhost, ipc:// and inproc://)
  unless the operator passed `--allow-remote`. An `ipc://` socket file is made 0600.
- **CURVE.** With `--curve-keys DIR` the frontend's ROUTER is a CURVE server (encrypted,
  and the client must know the server's public key), and a ZAP handler admits only the
  client public keys in `DIR/authorized_clients/`. Anyone else's handshake fails inside
  ZeroMQ: the frontend never sees a frame from them. The key files, and `create_keys()`
  (the `orloj-rt keys` command) that makes them, are in orloj_rt/protocol/keys.py, which
  the clients share.
- **Frame size.** The ROUTER's `ZMQ_MAXMSGSIZE` is `--max-frame-bytes` (default 64 MiB,
  `DEFAULT_MAX_FRAME_BYTES`), and never less than `max_frame_bytes()`, the largest frame a
  valid request can hold (the largest model input, or the header limit). It bounds what
  one frame can make the frontend allocate. It is deliberately far above any valid
  frame: everything below it is read and, if wrong for its model, answered `error` on the
  same connection. A frame above it is not read: ZeroMQ drops that connection (per frame,
  not per message), and the outbox (outbox.py) keeps the client's other replies for its
  reconnect.
- Shared-memory segments are created 0600 (`shm_ring.ShmRing.create`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable

from orloj_rt.protocol.keys import (  # noqa: F401 - the server's side uses them from here
    AUTHORIZED_DIR,
    DEFAULT_CLIENT,
    SERVER_CERT,
    ClientKeys,
    KeysError,
    ServerKeys,
    client_keys,
    create_keys,
)

log = logging.getLogger("orloj_rt.security")

LOCAL_TRANSPORTS = ("ipc://", "inproc://")


# ---------------------------------------------------------------------- where to listen
def endpoint_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint (brackets removed from IPv6), else None."""
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint[len("tcp://") :]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach `endpoint` (loopback tcp, ipc, inproc)."""
    if endpoint.startswith(LOCAL_TRANSPORTS):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False  # udp, pgm, ws, ...: assume the network
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name


def check_bind(endpoint: str, allow_remote: bool) -> str | None:
    """None if the server may bind `endpoint`; else the reason, naming the flag."""
    if allow_remote or is_local_endpoint(endpoint):
        return None
    return (
        f"--bind {endpoint} would accept connections from other machines; orloj-rt binds "
        "127.0.0.1 unless told otherwise. Pass --allow-remote to listen beyond this machine "
        "(and --curve-keys DIR so that only clients holding a key are served; see "
        "docs/reliability.md)"
    )


def restrict_ipc_socket(endpoint: str) -> None:
    """Makes a bound ipc:// socket file owner-only (libzmq creates it with the umask)."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    if path and not path.startswith("@"):  # "@": the abstract namespace has no file
        os.chmod(path, 0o600)


# ---------------------------------------------------------------------- frame size
DEFAULT_MAX_FRAME_BYTES = 64 << 20


def check_frame_limit(models: Iterable, limit: int) -> str:
    """Why `--max-frame-bytes limit` cannot serve `models`, or "" if it can."""
    need = max_frame_bytes(models)
    if limit >= need:
        return ""
    return (f"--max-frame-bytes {limit} is below the largest frame a valid request can "
            f"carry ({need} bytes, a model input at its max_shape): raise it to at least "
            f"{need}")  # fmt: skip


def max_frame_bytes(models: Iterable) -> int:
    """The largest frame a valid request can carry: a model input at its max_shape, or
    the header limit (`wire.MAX_HEADER_BYTES`). `models` are ModelEntry or ModelSpec."""
    from orloj_rt.protocol.wire import MAX_HEADER_BYTES

    largest = MAX_HEADER_BYTES
    for m in models:
        spec = getattr(m, "spec", m)
        for t in spec.inputs:
            largest = max(largest, t.max_nbytes)
    return largest


# ---------------------------------------------------------------------- CURVE keys
# the key files, shared with the clients: orloj_rt/protocol/keys.py
def start_authenticator(ctx, keys: ServerKeys, internal: tuple = ()):
    """A ZAP handler thread on `ctx` admitting the CURVE clients in keys.authorized_dir
    (read once, here: restart the server to admit a new client), and the instance's own
    internal public key, if any. It must run before the ROUTER binds; stop it before the
    context terminates."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("orloj_rt.security.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=keys.authorized_dir)
    if internal:
        auth.certs.setdefault("*", {})[internal[0]] = True
    log.info("CURVE on: %d client key(s) admitted from %s", len(auth.certs.get("*", {}))
             - bool(internal), keys.authorized_dir)  # fmt: skip
    return auth


def internal_keypair() -> tuple[bytes, bytes]:
    """A fresh (public, secret) pair for a connection inside the instance (the gateway)."""
    import zmq

    return zmq.curve_keypair()


def internal_client_keys(config) -> ClientKeys | None:
    """The keys a process of the instance (the HTTP gateway) connects to the frontend's
    ROUTER with when CURVE is on (`InstanceConfig.internal_curve`); None when it is off."""
    if not config.curve_keys or not config.internal_curve:
        return None
    server = ServerKeys.load(config.curve_keys)
    public, secret = config.internal_curve
    return ClientKeys(server.public, public, secret)


def make_curve_server(sock, keys: ServerKeys) -> None:
    import zmq

    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
