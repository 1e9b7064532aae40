"""`orloj-rt stop`: ask a local server to shut down cleanly (SIGTERM to its supervisor)."""

from __future__ import annotations

import sys

LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "[::1]", "*")


def register(sub) -> None:
    from orloj_rt.protocol.wire import DEFAULT_ENDPOINT

    p = sub.add_parser(
        "stop",
        help="stop the server listening on an endpoint of this machine",
        description=(
            "Find the server at ENDPOINT through its `health` answer and send SIGTERM to its "
            "supervisor, which drains in-flight requests and removes its shared memory. "
            "Waits until it has exited."
        ),
    )
    p.add_argument("--bind", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help="the endpoint the server listens on (default: %(default)s)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="how long to wait for it to exit (default: %(default)s)")  # fmt: skip
    p.add_argument("--curve-keys", metavar="DIR",
                   help="for a server started with --curve-keys: a directory holding "
                   "server.key and client.key_secret (see `orloj-rt keys`)")  # fmt: skip
    p.set_defaults(func=run)


def is_local(endpoint: str) -> bool:
    if endpoint.startswith("ipc://"):
        return True
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
        return host in LOCAL_HOSTS
    return False


def run(args) -> int:
    import os
    import signal

    import psutil

    from orloj_rt.client import Client
    from orloj_rt.runtime.proc import WaitTimeout, wait_until

    if not is_local(args.bind):
        print(f"orloj-rt stop: {args.bind} is not on this machine; stop the server where it "
              "runs (SIGTERM to its supervisor)", file=sys.stderr)  # fmt: skip
        return 2
    from orloj_rt.runtime.security import KeysError

    try:
        with Client(args.bind, timeout_s=min(5.0, args.timeout),
                    curve_keys=args.curve_keys) as c:  # fmt: skip
            health = c.health()
    except TimeoutError:  # (an OSError too: first)
        hint = "" if args.curve_keys else " (if it requires CURVE, pass --curve-keys DIR)"
        print(f"orloj-rt stop: no server answers at {args.bind}{hint}", file=sys.stderr)
        return 1
    except (KeysError, OSError) as exc:
        print(f"orloj-rt stop: --curve-keys: {exc}", file=sys.stderr)
        return 2
    pid = int(health.get("pids", {}).get("supervisor", 0))
    if pid <= 0 or not psutil.pid_exists(pid):
        print(f"orloj-rt stop: the server at {args.bind} reported no usable supervisor pid",
              file=sys.stderr)  # fmt: skip
        return 1
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGTERM)

    def exited() -> bool:
        # a zombie has exited; only its parent (not us) can reap it
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        wait_until(exited, args.timeout, f"the server (pid {pid}) to exit", "--timeout")
    except WaitTimeout as exc:
        print(f"orloj-rt stop: {exc}; check the server's log", file=sys.stderr)
        return 1
    print(f"orloj-rt: stopped the server at {args.bind} (pid {pid})")
    return 0
