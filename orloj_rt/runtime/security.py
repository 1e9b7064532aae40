"""Safe defaults for the client socket: where it listens, who may talk, how big a frame.

- **Loopback unless told otherwise.** `check_bind()` refuses an endpoint that other
  machines can reach (anything but 127.0.0.0/8, ::1, localhost, ipc:// and inproc://)
  unless the operator passed `--allow-remote`. An `ipc://` socket file is made 0600.
- **CURVE.** With `--curve-keys DIR` the frontend's ROUTER is a CURVE server (encrypted,
  and the client must know the server's public key), and a ZAP handler admits only the
  client public keys in `DIR/authorized_clients/`. Anyone else's handshake fails inside
  ZeroMQ: the frontend never sees a frame from them. `create_keys()` (the `orloj-rt keys`
  command) makes the directory:

      DIR/                          0700
        server.key                  the server's public certificate: give it to clients
        server.key_secret           the server's secret certificate, 0600: stays here
        authorized_clients/NAME.key each admitted client's public certificate
        NAME.key, NAME.key_secret   a client's certificate pair (secret 0600): give both,
                                    with server.key, to that client only

  A client passes `ClientKeys.load(DIR, "NAME")` (or the directory itself) to `Client`.
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
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("orloj_rt.security")

SERVER_CERT = "server"
AUTHORIZED_DIR = "authorized_clients"
DEFAULT_CLIENT = "client"
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
    from orloj_rt.runtime.wire import MAX_HEADER_BYTES

    largest = MAX_HEADER_BYTES
    for m in models:
        spec = getattr(m, "spec", m)
        for t in spec.inputs:
            largest = max(largest, t.max_nbytes)
    return largest


# ---------------------------------------------------------------------- CURVE keys
class KeysError(ValueError):
    """A key directory or file is missing or unreadable; the text says what to run."""


def _secret_file_ok(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path,
                    stat.S_IMODE(mode))  # fmt: skip


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise KeysError(f"{path} does not exist: make the keys with `orloj-rt keys "
                        f"{path.parent}`")  # fmt: skip
    public, secret = zmq.auth.load_certificate(path)
    if need_secret:
        if not secret:
            raise KeysError(f"{path} holds no secret key (use the .key_secret file)")
        _secret_file_ok(path)
    return public, secret


@dataclass(frozen=True)
class ServerKeys:
    """What the frontend needs for CURVE: its own pair and the admitted clients' keys."""

    public: bytes
    secret: bytes
    authorized_dir: str

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ServerKeys:
        d = Path(directory)
        if not d.is_dir():
            raise KeysError(f"--curve-keys {d}: not a directory; make one with "
                            f"`orloj-rt keys {d}`")  # fmt: skip
        public, secret = _load(d / f"{SERVER_CERT}.key_secret", need_secret=True)
        auth = d / AUTHORIZED_DIR
        if not auth.is_dir():
            raise KeysError(f"{auth} does not exist: add a client with `orloj-rt keys {d} "
                            "--client NAME`")  # fmt: skip
        if not list(auth.glob("*.key")):
            log.warning("%s holds no client key: no client can connect", auth)
        return cls(public, secret, str(auth))


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs for CURVE: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str = DEFAULT_CLIENT) -> ClientKeys:
        """From a directory holding `server.key` and `NAME.key_secret`."""
        d = Path(directory)
        return cls.from_files(d / f"{SERVER_CERT}.key", d / f"{name}.key_secret")

    @classmethod
    def from_files(cls, server_public_file, client_secret_file) -> ClientKeys:
        server_public, _ = _load(Path(server_public_file), need_secret=False)
        public, secret = _load(Path(client_secret_file), need_secret=True)
        return cls(server_public, public, secret)

    def apply(self, sock) -> None:
        """Makes `sock` (before connect) a CURVE client of the server."""
        import zmq

        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def client_keys(keys) -> ClientKeys | None:
    """`keys` as ClientKeys: None, a ClientKeys, or a directory made by `orloj-rt keys`."""
    if keys is None or isinstance(keys, ClientKeys):
        return keys
    return ClientKeys.load(keys)


def create_keys(directory: str | os.PathLike, clients: Iterable[str] = (DEFAULT_CLIENT,),
                force: bool = False) -> list[Path]:  # fmt: skip
    """Makes (or adds to) a key directory (see the module docstring); the files written.
    An existing server pair is kept, so that clients can be added later; an existing
    client pair is an error unless `force`."""
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise KeysError("this libzmq was built without CURVE support")
    old_umask = os.umask(0o077)  # no moment where a secret file is readable by others
    try:
        return _create_keys(Path(directory), list(clients), force)
    finally:
        os.umask(old_umask)


def _create_keys(d: Path, clients: list[str], force: bool) -> list[Path]:
    import zmq.auth

    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    auth = d / AUTHORIZED_DIR
    auth.mkdir(mode=0o700, exist_ok=True)
    written: list[Path] = []
    if force or not (d / f"{SERVER_CERT}.key_secret").exists():
        pub, sec = zmq.auth.create_certificates(d, SERVER_CERT)
        os.chmod(sec, 0o600)
        os.chmod(pub, 0o644)
        written += [Path(pub), Path(sec)]
    for name in clients:
        if not name or "/" in name or name.startswith(".") or name == SERVER_CERT:
            raise KeysError(f"bad client name {name!r}: use letters, digits, - and _")
        if (d / f"{name}.key_secret").exists() and not force:
            raise KeysError(f"{d / name}.key_secret exists already (pass --force to replace)")
        pub, sec = zmq.auth.create_certificates(d, name)
        os.chmod(sec, 0o600)
        target = auth / f"{name}.key"
        target.write_bytes(Path(pub).read_bytes())
        for public_file in (Path(pub), target):
            os.chmod(public_file, 0o644)  # public: readable, as the name says
        written += [Path(pub), Path(sec), target]
    return written


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
