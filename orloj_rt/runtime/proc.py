"""What every runtime process does the same way: naming, logging, fatal errors, waiting.

Each role module (frontend, scheduler, worker) has a `run_<role>_process()` entry point
that calls `child_main()`: it names the process, configures logging to stderr, ignores
SIGINT (Ctrl-C reaches the whole process group; the supervisor alone decides how to shut
down), runs the role's loop, and on a fatal error sends `ChildFailed` to the supervisor
before exiting with code 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from orloj_rt.models.spec import ModelEntry
from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.channel import ChannelClosed
from orloj_rt.runtime.shm_ring import RingLayout

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(processName)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class InstanceConfig:
    """Everything a child needs to join one instance; pickled into each child."""

    instance: str
    models: tuple[ModelEntry, ...]
    ring_names: tuple[str, ...]
    ring_layouts: tuple[RingLayout, ...]
    client_endpoint: str  # the frontend's ROUTER (what clients connect to)
    devices: tuple[str, ...]  # one per worker: "cpu" or "cuda:N"
    policy: str = "orloj"
    policy_params: dict = field(default_factory=dict)
    log_level: str = "INFO"
    worker_threads: int = 1  # torch intra-op threads per CPU worker
    supervisor_pid: int = 0
    curve_keys: str = ""  # a key directory (security.ServerKeys): CURVE on the client socket
    max_frame_bytes: int = 0  # the client socket's ZMQ_MAXMSGSIZE (0: unlimited)
    # (public, secret) CURVE keys made at start for the gateway's connections (HTTP,
    # gRPC), when both CURVE and the gateway are on: security.internal_client_keys(config)
    internal_curve: tuple = ()
    # where the gateway reaches the frontend's ROUTER (an abstract ipc name), or "" when
    # no gateway runs (no --http-port, --metrics-port, --grpc-port): see gateway_common.py
    internal_endpoint: str = ""
    # a worker that has work and says nothing for this long is killed and restarted (the
    # scheduler watches, the supervisor kills: docs/reliability.md); 0 turns it off
    hang_timeout_s: float = 60.0


def set_process_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def configure_logging(level: str, process_name: str | None = None) -> None:
    if process_name:
        import multiprocessing

        multiprocessing.current_process().name = process_name
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def settle_memory() -> None:
    """Called once a process has built everything it keeps, before its loop: moves what
    exists out of the garbage collector's sight and makes collections rarer, so that a
    request's latency does not pay for a full collection of the startup objects."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def send_to_parent(conn: Connection, msg) -> None:
    with contextlib.suppress(OSError, ValueError):  # the supervisor is gone: nobody to tell
        conn.send_bytes(msgs.encode(msg))


def attach_rings(config: InstanceConfig) -> list:
    """This process's mappings of the instance's rings, in model order."""
    from orloj_rt.runtime.shm_ring import ShmRing

    return [
        ShmRing.attach(name, layout)
        for name, layout in zip(config.ring_names, config.ring_layouts, strict=True)
    ]


class StartupProblem(Exception):
    """Something the operator must fix before this process can run (a port in use): the
    text says what and how; reported as one line, without a traceback."""


def is_operator_problem(exc: BaseException) -> bool:
    """A start-up failure whose text is the whole story: a StartupProblem, or a model
    config error (models/repository.py ConfigError) found when a worker builds a model."""
    from orloj_rt.models.repository import ConfigError

    return isinstance(exc, StartupProblem | ConfigError)


def child_main(
    role: str,
    index: int,
    config: InstanceConfig,
    conn: Connection,
    body: Callable[[], None],
) -> None:
    """Runs `body` as the process `role` (see the module docstring); never returns."""
    name = role if role != "worker" else f"worker-{index}"
    set_process_title(f"orloj-rt: {name} [{config.instance}]")
    configure_logging(config.log_level, name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = logging.getLogger(f"orloj_rt.{role}")
    code = 0
    profile_dir = os.environ.get("ORLOJ_RT_PROFILE_DIR")  # developers: cProfile each process
    try:
        if profile_dir:
            import cProfile

            prof = cProfile.Profile()
            try:
                prof.runcall(body)
            finally:
                prof.dump_stats(os.path.join(profile_dir, f"{name}.{os.getpid()}.prof"))
        else:
            body()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, then exit 1
        code = 1
        if is_operator_problem(exc):  # the text says what to fix; a traceback says nothing
            log.error("fatal: %s", exc)
            if exc.__cause__ is not None:  # the user's own code failed: its traceback helps
                log.error("caused by:\n%s", "".join(traceback.format_exception(exc.__cause__)))
            send_to_parent(conn, msgs.ChildFailed(role, index, os.getpid(), str(exc), True))
        else:
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ChannelClosed):  # a peer exited first: its log says why
                log.warning("stopping: %s", text)
            else:
                log.error("fatal: %s\n%s", text, traceback.format_exc())
            send_to_parent(conn, msgs.ChildFailed(role, index, os.getpid(), text))
    finally:
        logging.shutdown()
    sys.exit(code)


# ---------------------------------------------------------------------- receive loops
def dispatch_message(parts: list, handlers: dict, where: str, log: logging.Logger,
                     *extra, guard: bool = False) -> None:  # fmt: skip
    """Decodes one channel message (`parts[0]` the struct, the rest its data frames) and
    calls its handler from the type -> handler table, `handler(msg, *extra)`. A message
    that does not decode, or has no handler here, is logged and ignored: one bad message
    must not stop a process. With `guard`, a handler that raises is logged with its
    traceback and the process goes on (the frontend: its clients still need answers)."""
    try:
        msg = msgs.decode(parts[0])
    except (msgs.UnknownMessage, ValueError, TypeError) as exc:
        log.error("ignored a malformed message on %s: %s", where, exc)
        return
    handler = handlers.get(type(msg))
    if handler is None:
        log.error("no handler for %s on %s; ignored", type(msg).__name__, where)
        return
    if not guard:
        handler(msg, *extra)
        return
    try:
        handler(msg, *extra)
    except Exception:  # noqa: BLE001 - a bad internal message must not stop the serving
        log.exception("%s: %s could not be handled", where, type(msg).__name__)


def drain_parent(conn: Connection, handlers: dict, log: logging.Logger) -> bool:
    """Handles every message the supervisor has sent on `conn` so far, through the type
    -> handler table. False once the supervisor is gone (the pipe closed): the caller
    stops."""
    try:
        while conn.poll():
            msg = msgs.decode(conn.recv_bytes())
            handler = handlers.get(type(msg))
            if handler is None:
                log.error("supervisor sent unexpected %s; ignored", type(msg).__name__)
                continue
            handler(msg)
    except (EOFError, OSError):
        return False
    return True


class WaitTimeout(TimeoutError):
    """A bounded wait ran out; the text names the knob that sets the bound."""


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    knob: str,
    spin_s: float = 0.0005,
    yield_s: float = 0.005,
    sleep_s: float = 0.02,
) -> None:
    """Spins briefly, then yields, then sleeps until `ready()`; WaitTimeout after
    `timeout_s` with a message naming `knob`, the setting that changes the bound."""
    start = time.monotonic()
    deadline = start + timeout_s
    while not ready():
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what} "
                              f"(raise {knob} to wait longer)")  # fmt: skip
        waited = now - start
        if waited < spin_s:
            continue
        if waited < spin_s + yield_s:
            os.sched_yield()
        else:
            time.sleep(min(sleep_s, max(deadline - now, 0.0)))
