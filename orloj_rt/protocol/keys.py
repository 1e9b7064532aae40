"""CURVE key files: where a server's and its clients' keys live, loading and making them.

Shared by the server (runtime/security.py) and its clients (orloj_rt.client), so that a
client needs nothing of the runtime. The directory `orloj-rt keys DIR` makes:

    DIR/                          0700
      server.key                  the server's public certificate: give it to clients
      server.key_secret           the server's secret certificate, 0600: stays there
      authorized_clients/NAME.key each admitted client's public certificate
      NAME.key, NAME.key_secret   a client's certificate pair (secret 0600): give both,
                                  with server.key, to that client only
"""

from __future__ import annotations

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
