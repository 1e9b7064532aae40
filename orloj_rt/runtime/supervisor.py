"""The supervisor: `orloj-rt start`'s own process. It owns the instance's resources.

    supervisor --spawn--> frontend, scheduler                    (multiprocessing "spawn")
               --fork server--> worker 0..N-1       (forked from a process that imported torch)
               <--Pipe--> each child: ChildReady / ChildFailed up, Shutdown / ClusterState /
                          AttachWorker (+ a file descriptor) down

It removes the shared-memory segments a killed instance left behind, creates one input
ring per model (and is the one process that unlinks them), creates the socket pairs the
children talk over (frontend-scheduler, scheduler-worker i, worker i-frontend) and hands
each child its ends, spawns the children, and watches them through their process
sentinels, their pipes and a signal wake-up fd, all in one
`multiprocessing.connection.wait`.

A worker that dies while the instance serves is restarted (docs/reliability.md): at once
the first time, then with a doubling backoff (`restart_delay`) while it keeps dying
within `RESTART_STABLE_S` of becoming ready; after `MAX_START_FAILURES` deaths in a row
before it was ever ready, the instance stops. The new worker gets fresh socket pairs; the
scheduler's and the frontend's ends reach them over their pipes (`AttachWorker`, then the
descriptor with `multiprocessing.reduction.send_handle`). It skips the profiling (the
scheduler keeps what the first warm-up learned) and is forked from a fork server that has
imported torch already, so that it serves again well within a second or two. The
scheduler answers the batch the dead worker was running through the frontend
(`WorkerLost`) and dispatches nothing to the new one before its `WorkerReady`. A worker
that hangs instead of dying (work held for `hang_timeout_s` without a report) is reported
by the scheduler (`WorkerHung`) and killed here, which makes it a death like any other.

The frontend and the scheduler are not restarted: the frontend holds the clients'
connections and the scheduler every queue, so a new one could not answer what the old
one held. When either dies the instance stops (exit code 1), the frontend answering what
is in flight when it is the one still alive; a process manager may start it again.

Shutdown is data: SIGTERM or SIGINT only wakes the loop, which then sends `Shutdown` to
the frontend (it stops admitting, finishes or answers what is in flight, and exits), then
to the scheduler and the workers, waits for every exit, and unlinks the rings. A second
signal during the drain ends it at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.reduction import send_handle

from orloj_rt.models.spec import ModelEntry
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.wire import DEFAULT_ENDPOINT
from orloj_rt.runtime.channel import Channel
from orloj_rt.runtime.gateway_common import (
    GatewayOptions,
    HttpLimits,
    internal_endpoint,
    listen_host,
)
from orloj_rt.runtime.proc import InstanceConfig, set_process_title
from orloj_rt.runtime.security import (
    DEFAULT_MAX_FRAME_BYTES,
    KeysError,
    ServerKeys,
    check_bind,
    internal_keypair,
    is_local_endpoint,
    max_frame_bytes,
)
from orloj_rt.runtime.shm_ring import (
    RingLayout,
    ShmRing,
    instance_id,
    remove_stale_segments,
    segment_name,
)

log = logging.getLogger("orloj_rt.supervisor")

FRONTEND_EXIT_GRACE_S = 5.0  # after its drain, for the frontend to flush and exit
CHILD_EXIT_TIMEOUT_S = 2.0  # for the scheduler and workers, once the frontend is done
KILL_WAIT_S = 3.0
RESTART_BACKOFF_S = 0.5  # the second restart in a row waits this long, then it doubles
RESTART_BACKOFF_MAX_S = 10.0
RESTART_STABLE_S = 1.0  # a worker ready this long before it died starts the backoff over
MAX_START_FAILURES = 5  # deaths in a row before ever being ready: the instance stops
WORKER_START_METHOD_ENV = "ORLOJ_RT_WORKER_START"  # "forkserver" (default) or "spawn"
WORKER_PRELOAD = ["orloj_rt.runtime.worker_preload"]  # what the fork server imports once


def restart_delay(failures: int) -> float:
    """The wait before restarting a worker that died `failures` times in a row."""
    if failures <= 1:
        return 0.0
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (failures - 2))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "(exit status unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"with code {code}"


class StartupError(RuntimeError):
    """The instance could not start; the text says why and what to change."""


@dataclass
class ServerOptions:
    models: list[ModelEntry]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    bind: str = DEFAULT_ENDPOINT
    policy: str = "orloj"
    policy_params: dict = field(default_factory=dict)
    log_level: str = "INFO"
    ready_timeout_s: float = 180.0
    drain_timeout_s: float = 5.0
    hang_timeout_s: float = 60.0  # see InstanceConfig; 0: never treat a worker as hung
    worker_threads: int = 1
    # the gateway process (gateway_common.py): KServe v2 over HTTP (http_gateway.py) and
    # gRPC (grpc_gateway.py), Prometheus /metrics; it runs only when a port is given; it
    # listens on loopback unless allow_remote
    http_port: int | None = None
    metrics_port: int | None = None
    allow_remote: bool = False
    grpc_port: int | None = None
    # the HTTP ports' timeouts and body limit (--http-header-timeout ...)
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # a key directory (`orloj-rt keys DIR`): clients must speak CURVE with an admitted key
    curve_keys: str = ""
    # the client socket's ZMQ_MAXMSGSIZE (security.py): at least every model's largest input
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES


@dataclass
class _Child:
    role: str
    index: int
    process: multiprocessing.process.BaseProcess
    conn: object
    ready: bool = False
    pid: int = 0
    exited: bool = False
    pipe_open: bool = True  # False once the child's end of its pipe is closed
    started_at: float = 0.0  # time.monotonic()
    ready_at: float = 0.0
    epoch: int = 0  # a worker's incarnation: 0 at start, +1 per restart
    last_error: str = ""  # what its ChildFailed said, if it sent one

    @property
    def label(self) -> str:
        return self.role if self.role != "worker" else f"worker {self.index}"


class Supervisor:
    def __init__(self, options: ServerOptions, on_ready: Callable[[str], None] | None = None):
        if not options.models:
            raise StartupError("no models to serve")
        if not options.devices:
            raise StartupError("no workers: give at least one device")
        self.options = options
        self.on_ready = on_ready
        self.endpoint = ""
        self.urls: dict[str, str] = {}  # the gateway's: {"http", "metrics", "grpc"}
        self.children: list[_Child] = []
        self.rings: list[ShmRing] = []
        self.instance = ""
        self._signals: list[int] = []
        self._sig_r = self._sig_w = -1
        self._serving = False
        self._stopping = False
        self._failure = ""
        self._operator_failure = False
        self._config: InstanceConfig | None = None
        self._ctx = self._worker_ctx = None
        self._run_worker = None
        self._restart_at: dict[int, float] = {}  # worker index -> when to restart it
        self._failures: dict[int, int] = {}  # worker index -> deaths in a row (backoff)
        self._start_failures: dict[int, int] = {}  # ... of which before it was ready
        self._died_at: dict[int, float] = {}  # worker index -> when it last died
        self._restarts = {"crashed": 0, "hung": 0}  # worker restarts by cause (metrics)

    # ------------------------------------------------------------------ public
    def run(self) -> int:
        """Starts the instance and serves until a signal or a failure; the exit code.
        Afterwards this process ignores SIGTERM and SIGINT: it is expected to exit."""
        set_process_title("orloj-rt: supervisor")
        try:
            self._start()
            code = self._watch()
        except StartupError as exc:
            self._fail(str(exc))
            code = 1
        finally:
            self._stopping = True
            self._stop_children(self._failure or "the server is shutting down")
            self._release()
        if self._failure and self._operator_failure:
            print(f"orloj-rt start: {self._failure}", file=sys.stderr, flush=True)
            return 2
        if self._failure:
            log.error("stopped after a failure (exit code 1): %s", self._failure)
        return code

    # ------------------------------------------------------------------ start
    def _start(self) -> None:
        for name in remove_stale_segments():
            log.warning("removed stale shared-memory segment /dev/shm/%s (its instance is gone)",
                        name)  # fmt: skip
        opts = self.options
        problem = check_bind(opts.bind, opts.allow_remote)
        if problem:
            raise StartupError(problem)
        keys_dir = ""
        if opts.curve_keys:
            try:
                ServerKeys.load(opts.curve_keys)  # fail here, with the text, not in the frontend
            except (KeysError, OSError, ValueError) as exc:
                raise StartupError(f"--curve-keys: {exc}") from None
            keys_dir = os.path.abspath(opts.curve_keys)
        elif not is_local_endpoint(opts.bind):
            log.warning("listening on %s without --curve-keys: every client that reaches it "
                        "is served", opts.bind)  # fmt: skip
        self.instance = instance_id()
        layouts = tuple(RingLayout.from_spec(e.spec) for e in opts.models)
        names = tuple(segment_name(self.instance, i) for i in range(len(opts.models)))
        gw = GatewayOptions(opts.http_port, opts.metrics_port, listen_host(opts.allow_remote),
                            opts.http_limits, opts.grpc_port)  # fmt: skip
        gateway = gw.any_port
        for name, layout in zip(names, layouts, strict=True):
            self.rings.append(ShmRing.create(name, layout))
        config = InstanceConfig(
            instance=self.instance,
            models=tuple(opts.models),
            ring_names=names,
            ring_layouts=layouts,
            client_endpoint=opts.bind,
            devices=tuple(opts.devices),
            policy=opts.policy,
            policy_params=dict(opts.policy_params),
            log_level=opts.log_level,
            worker_threads=opts.worker_threads,
            supervisor_pid=os.getpid(),
            curve_keys=keys_dir,
            max_frame_bytes=max(opts.max_frame_bytes, max_frame_bytes(opts.models)),
            internal_endpoint=internal_endpoint(self.instance) if gateway else "",
            internal_curve=internal_keypair() if keys_dir and gateway else (),
            hang_timeout_s=opts.hang_timeout_s,
        )
        from orloj_rt.runtime.frontend import run_frontend_process
        from orloj_rt.runtime.gateway_common import run_gateway_process
        from orloj_rt.runtime.scheduler import run_scheduler_process
        from orloj_rt.runtime.worker import run_worker_process

        n = len(opts.devices)
        fe_sched = Channel.pair()
        sched_worker = [Channel.pair() for _ in range(n)]
        worker_fe = [Channel.pair() for _ in range(n)]
        self._ctx = ctx = multiprocessing.get_context("spawn")
        self._worker_ctx = _worker_context()
        self._config = config
        self._run_worker = run_worker_process
        # children inherit an ignored SIGINT from birth: Ctrl-C reaches the whole process
        # group, and only the supervisor decides how to shut down
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._spawn(ctx, "scheduler", 0, run_scheduler_process,
                        (config, fe_sched[1], [p[0] for p in sched_worker]))  # fmt: skip
            for i in range(n):
                self._spawn(self._worker_ctx, "worker", i, run_worker_process,
                            (config, i, sched_worker[i][1], worker_fe[i][0]))  # fmt: skip
            self._spawn(ctx, "frontend", 0, run_frontend_process,
                        (config, fe_sched[0], [p[1] for p in worker_fe]))  # fmt: skip
            if gateway:  # it only talks to the frontend, over config.internal_endpoint
                self._spawn(ctx, "gateway", 0, run_gateway_process, (config, gw))
        finally:
            signal.signal(signal.SIGINT, previous)
            # the children hold their ends now; ours must close, or no end ever sees EOF
            for pair in (fe_sched, *sched_worker, *worker_fe):
                for sock in pair:
                    sock.close()
        self._install_signal_wakeup()
        log.info("instance %s: %d model(s), %d worker(s) on %s, policy %s",
                 self.instance, len(opts.models), len(opts.devices), ",".join(opts.devices),
                 opts.policy)  # fmt: skip

    def _spawn(self, ctx, role: str, index: int, target, args: tuple) -> _Child:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        name = role if role != "worker" else f"worker-{index}"
        # the pipe goes right after the config (and the worker's index): see run_*_process
        k = 2 if role == "worker" else 1
        args = (*args[:k], child_conn, *args[k:])
        proc = ctx.Process(target=target, args=args, name=name, daemon=False)
        proc.start()
        child_conn.close()  # the child's end lives in the child; EOF here means it died
        child = _Child(role, index, proc, parent_conn, pid=proc.pid, started_at=time.monotonic())
        self.children.append(child)
        return child

    def _install_signal_wakeup(self) -> None:
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        signal.set_wakeup_fd(self._sig_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # shutdown is data: the handler only records it; the watch loop acts on it
        self._signals.append(signum)

    # ------------------------------------------------------------------ watch
    def _watch(self) -> int:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while True:
            if self._signals:
                name = signal.Signals(self._signals[0]).name
                log.info("%s received: shutting down", name)
                self._shutdown(f"the server is shutting down ({name})")
                return 0
            if self._failure:
                return 1
            if self._serving:
                self._run_timers(time.monotonic())
                if self._failure:
                    return 1
            watched: list = [self._sig_r]
            for c in self.children:
                if not c.exited:
                    watched.append(c.process.sentinel)
                    if c.pipe_open:
                        watched.append(c.conn)
            if self._serving:
                timeout = self._next_timer(time.monotonic())
            else:
                timeout = max(0.0, deadline - time.monotonic())
            ready = wait(watched, timeout)
            if not ready and not self._serving and time.monotonic() >= deadline:
                waiting = [c.label for c in self.children if not c.ready]
                raise StartupError(
                    f"not ready after {self.options.ready_timeout_s:g} s (still waiting for: "
                    f"{', '.join(waiting)}); raise --ready-timeout if warm-up is slow here"
                )
            for obj in ready:
                if obj == self._sig_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._sig_r, 512)
                    continue
                child = self._child_of(obj)
                if child is None:
                    continue
                if obj is child.conn:
                    self._drain_child(child)
                else:
                    self._on_exit(child)

    def _child_of(self, obj) -> _Child | None:
        for c in self.children:
            if obj is c.conn or obj == c.process.sentinel:
                return c
        return None

    def _drain_child(self, child: _Child) -> None:
        try:
            while child.conn.poll():
                try:
                    msg = msgs.decode(child.conn.recv_bytes())
                except msgs.UnknownMessage as exc:
                    log.error("%s sent a malformed message (%s); ignored", child.label, exc)
                    continue
                self._on_message(msg)
        except (EOFError, OSError):
            child.pipe_open = False  # the sentinel reports the exit

    def _on_message(self, msg) -> None:
        if isinstance(msg, msgs.ChildReady):
            child = self._find(msg.role, msg.index)
            if child is None:
                log.error("ready message from unknown %s %d", msg.role, msg.index)
                return
            if msg.role == "worker" and (child.exited or msg.pid != child.process.pid):
                return  # from an incarnation that died since: the scheduler relayed it late
            child.ready = True
            child.ready_at = time.monotonic()
            child.pid = msg.pid
            if msg.role == "worker" and child.epoch:
                since = child.ready_at - self._died_at.get(msg.index, child.started_at)
                log.info("worker %d restarted: pid %d is ready %.2f s after its predecessor "
                         "died", msg.index, msg.pid, since)  # fmt: skip
            if msg.role == "frontend":
                self.endpoint = msg.info.get("endpoint", self.options.bind)
            elif msg.role == "gateway":
                self.urls = dict(msg.info)
            self._publish_state()
            if not self._serving and all(c.ready for c in self.children):
                self._serving = True
                log.info("serving on %s", self.endpoint)
                if self.on_ready is not None:
                    self.on_ready(self.endpoint)
        elif isinstance(msg, msgs.ChildFailed):
            label = msg.role if msg.role != "worker" else f"worker {msg.index}"
            if msg.role == "worker" and self._serving:
                # it exits next; its sentinel fires and it is restarted (see _on_exit)
                child = self._find("worker", msg.index)
                if child is not None and child.process.pid == msg.pid:
                    child.last_error = msg.error
                log.error("%s (pid %d) failed: %s", label, msg.pid, msg.error)
                return
            if msg.operator and not self._serving:
                self._fail(msg.error, operator=True)  # the text is the whole story
                return
            when = "while serving" if self._serving else "at start"
            self._fail(f"{label} (pid {msg.pid}) failed {when}: {msg.error}")
        elif isinstance(msg, msgs.WorkerHung):
            self._kill_hung(msg)
        else:
            log.error("unexpected %s from a child; ignored", type(msg).__name__)

    def _kill_hung(self, msg: msgs.WorkerHung) -> None:
        """The scheduler saw worker `msg.worker` hold work for `silent_s` without a word
        (a model call that never returns, a stuck kernel): killed, its exit takes the crash
        path (its requests re-queued or answered, the worker restarted)."""
        child = self._find("worker", msg.worker)
        if child is None or child.exited or child.process.pid != msg.pid:
            return  # it died or was replaced since: nothing to kill
        child.last_error = (f"hung: {msg.what} got no report for {msg.silent_s:.1f} s "
                            f"(--hang-timeout {self.options.hang_timeout_s:g})")  # fmt: skip
        log.error("worker %d (pid %d) is hung: %s got no report for %.1f s (--hang-timeout "
                  "%g s); killing it", msg.worker, msg.pid, msg.what, msg.silent_s,
                  self.options.hang_timeout_s)  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            child.process.kill()

    def _fail(self, text: str, operator: bool = False) -> None:
        """Records the first failure (the instance stops with exit code 1) and logs it now:
        the log says what happened when it happened, not only after the stop. `operator`:
        the operator must fix something (a port in use, a model config); the stop then
        says only that, and the exit code is 2, as for a problem found before the start."""
        if not self._failure:
            self._failure = text
            self._operator_failure = operator
            if not operator:
                log.error("%s", text)

    def _on_exit(self, child: _Child) -> None:
        child.exited = True
        child.ready = False
        # the sentinel (a pipe) can close a moment before the exit status is there to reap
        child.process.join(0.5)
        if self._failure or self._stopping:
            return
        how = describe_exit(child.process.exitcode)
        if child.role == "worker" and self._serving:
            self._worker_died(child, how)
            return
        role_note = {
            "frontend": "it held the clients' connections: requests in flight with it are "
                        "lost; clients see their timeout",
            "scheduler": "the requests it held are answered 'rejected' by the frontend",
        }.get(child.role, "")  # fmt: skip
        self._fail(f"{child.label} (pid {child.pid}) exited unexpectedly {how}; stopping the "
                   f"instance{f' ({role_note})' if role_note else ''}")  # fmt: skip

    # ------------------------------------------------------------------ worker restarts
    def _worker_died(self, child: _Child, how: str) -> None:
        i = child.index
        now = time.monotonic()
        stable = child.ready_at and now - child.ready_at >= RESTART_STABLE_S
        failures = self._failures[i] = 1 if stable else self._failures.get(i, 0) + 1
        if child.ready_at:
            self._start_failures[i] = 0
        else:
            self._start_failures[i] = self._start_failures.get(i, 0) + 1
        self._died_at[i] = now
        _kill_orphan(child)
        why = f": {child.last_error}" if child.last_error else ""
        if self._start_failures[i] >= MAX_START_FAILURES:
            self._fail(f"worker {i} died {self._start_failures[i]} times in a row before it "
                       f"was ready (last: pid {child.pid} {how}{why}); stopping the instance")
            return
        delay = restart_delay(failures)
        self._restart_at[i] = now + delay
        self._restarts["hung" if child.last_error.startswith("hung:") else "crashed"] += 1
        when = "now" if delay == 0 else f"in {delay:g} s ({failures} deaths in a row)"
        log.warning("worker %d (pid %d) exited unexpectedly %s%s; restarting it %s", i,
                    child.pid, how, why, when)  # fmt: skip
        self._publish_state()

    def _next_timer(self, now: float) -> float | None:
        """Seconds until a restart is due or a restarted worker's warm-up times out."""
        due = list(self._restart_at.values())
        for c in self.children:
            if c.role == "worker" and not c.exited and not c.ready and c.started_at < math.inf:
                due.append(c.started_at + self.options.ready_timeout_s)
        return max(0.0, min(due) - now) if due else None

    def _run_timers(self, now: float) -> None:
        for i, due in sorted(self._restart_at.items()):
            if due > now:
                continue
            del self._restart_at[i]
            try:
                self._restart_worker(i)
            except (OSError, ValueError) as exc:
                self._fail(f"could not restart worker {i} ({type(exc).__name__}: {exc}); "
                           "stopping the instance")  # fmt: skip
                return
        for c in self.children:
            if (c.role == "worker" and not c.exited and not c.ready
                    and now >= c.started_at + self.options.ready_timeout_s):  # fmt: skip
                log.error("restarted worker %d (pid %d) is not ready after %g s; killing it "
                          "(raise --ready-timeout if its warm-up is that slow)", c.index, c.pid,
                          self.options.ready_timeout_s)  # fmt: skip
                with contextlib.suppress(OSError, ValueError):
                    c.process.kill()
                c.started_at = math.inf  # its exit restarts it; do not kill it twice

    def _restart_worker(self, i: int) -> None:
        """A new worker i on fresh socket pairs; the scheduler's and the frontend's ends
        reach them over their pipes (AttachWorker, then the descriptor)."""
        old = self._find("worker", i)
        sched, front = self._find("scheduler", 0), self._find("frontend", 0)
        if sched is None or front is None or sched.exited or front.exited:
            raise OSError("the scheduler or the frontend is gone")
        epoch = (old.epoch if old is not None else 0) + 1
        sched_pair, fe_pair = Channel.pair(), Channel.pair()
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # see _start
            try:
                # profile=False: the scheduler keeps the first warm-up's profile
                args = (self._config, i, sched_pair[1], fe_pair[0], False)
                child = self._spawn(self._worker_ctx, "worker", i, self._run_worker, args)
            finally:
                signal.signal(signal.SIGINT, previous)
            child.epoch = epoch
            if old is not None:
                self.children.remove(old)
                with contextlib.suppress(Exception):
                    old.conn.close()
                with contextlib.suppress(Exception):
                    old.process.close()
            for dest, sock in ((sched, sched_pair[0]), (front, fe_pair[1])):
                dest.conn.send_bytes(msgs.encode(msgs.AttachWorker(i, child.pid, epoch)))
                send_handle(dest.conn, sock.fileno(), dest.pid)
        finally:
            for pair in (sched_pair, fe_pair):
                for sock in pair:
                    sock.close()
        log.info("worker %d restarting as pid %d (restart %d)", i, child.pid, epoch)
        self._publish_state()

    def _find(self, role: str, index: int) -> _Child | None:
        for c in self.children:
            if c.role == role and c.index == index:
                return c
        return None

    def _publish_state(self) -> None:
        workers = sorted((c for c in self.children if c.role == "worker"), key=lambda c: c.index)
        ready = sum(c.ready for c in workers)
        sched = self._find("scheduler", 0)
        pids = {
            "supervisor": os.getpid(),
            "frontend": 0,  # the frontend fills in its own
            "scheduler": sched.pid if sched else 0,
            "workers": [0 if c.exited else c.pid for c in workers],
        }
        gateway = self._find("gateway", 0)
        if gateway is not None:  # --http-port, --metrics-port, --grpc-port
            pids["gateway"] = 0 if gateway.exited else gateway.pid
        state = msgs.ClusterState(
            "ok" if ready == len(workers) else "degraded",
            len(workers),
            ready,
            pids,
            dict(self._restarts),
        )
        self._send(self._find("frontend", 0), state)

    def _send(self, child: _Child | None, msg) -> None:
        if child is None or child.exited:
            return
        with contextlib.suppress(OSError, ValueError):
            child.conn.send_bytes(msgs.encode(msg))

    # ------------------------------------------------------------------ stop
    def _shutdown(self, reason: str) -> None:
        """The orderly path: the frontend drains first, then the rest stops. A second
        signal during the drain tells the frontend to answer what is left at once."""
        self._stopping = True
        front = self._find("frontend", 0)
        if front is not None and not front.exited:
            self._send(front, msgs.Shutdown(self.options.drain_timeout_s, reason))
            seen = len(self._signals)
            end = time.monotonic() + self.options.drain_timeout_s + FRONTEND_EXIT_GRACE_S
            while True:
                left = end - time.monotonic()
                if left <= 0 or wait([front.process.sentinel], 0):
                    break
                wait([front.process.sentinel, self._sig_r], left)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._sig_r, 512)
                if len(self._signals) > seen:
                    seen = len(self._signals)
                    log.info("%s received again: ending the drain now",
                             signal.Signals(self._signals[-1]).name)  # fmt: skip
                    self._send(front, msgs.Shutdown(0.0, reason))
        self._stop_children(reason)

    def _stop_children(self, reason: str) -> None:
        alive = [c for c in self.children if c.process.is_alive()]
        front = self._find("frontend", 0)
        if front in alive:  # it answers what is in flight before the others go
            self._send(front, msgs.Shutdown(0.0, reason))
            front.process.join(FRONTEND_EXIT_GRACE_S)
        for c in alive:
            self._send(c, msgs.Shutdown(0.0, reason))
        end = time.monotonic() + CHILD_EXIT_TIMEOUT_S
        for c in alive:
            c.process.join(max(0.0, end - time.monotonic()))
        for c in alive:
            if c.process.is_alive():
                log.warning("%s (pid %d) did not stop in time; terminating it", c.label, c.pid)
                c.process.terminate()
                c.process.join(KILL_WAIT_S)
            if c.process.is_alive():
                c.process.kill()
                c.process.join(KILL_WAIT_S)
        for c in self.children:
            c.exited = True
            if c.process.exitcode not in (0, None) and not self._failure:
                log.warning("%s exited with code %s", c.label, c.process.exitcode)

    def _release(self) -> None:
        for c in self.children:
            with contextlib.suppress(Exception):
                c.conn.close()
            with contextlib.suppress(Exception):
                c.process.close()
        for r in self.rings:
            r.close()
            r.unlink()
        self.rings = []
        if self._sig_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._sig_r)
            os.close(self._sig_w)
            self._sig_r = self._sig_w = -1
            # the instance is gone and the exit code decided: a late SIGTERM (a second
            # `stop`, a launcher's) must not kill the rest of the teardown, where Python
            # has put the default action back (which would exit with -15, not our code)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
        _stop_forkserver()
        _stop_resource_tracker()


def _worker_context():
    """The multiprocessing context workers start from. A fork server (by default) imports
    torch and the worker module once; each worker, the first ones and every restart, is
    forked from it, which takes milliseconds where a fresh interpreter importing torch took
    about 2 s on the development VM. The fork server holds no ZeroMQ context and no CUDA
    state; `ORLOJ_RT_WORKER_START=spawn` starts workers from scratch instead."""
    method = os.environ.get(WORKER_START_METHOD_ENV, "forkserver")
    if method not in ("forkserver", "spawn"):
        raise StartupError(f"{WORKER_START_METHOD_ENV}={method!r}: use forkserver or spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def _kill_orphan(child: _Child) -> None:
    """A forked worker's sentinel also fires if the fork server died, while the worker may
    still run: make sure it is gone before a new one takes its place."""
    import psutil

    try:
        proc = psutil.Process(child.pid)
        if proc.status() != psutil.STATUS_ZOMBIE and f"worker-{child.index}" in " ".join(
            proc.cmdline()
        ):
            proc.kill()
    except psutil.Error:
        pass


def _stop_forkserver() -> None:
    """Stops the fork server the workers came from, so that nothing outlives the instance."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def _stop_resource_tracker() -> None:
    """Stops the helper process that multiprocessing's "spawn" starts (we register nothing
    with it), so that the instance leaves no process behind when the supervisor exits;
    otherwise it lingers until it notices, a second or two later."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def run_supervisor_process(
    options: ServerOptions, on_ready: Callable[[str], None] | None = None
) -> int:
    """Entry point of the supervisor (`orloj-rt start` runs it in its own process)."""
    return Supervisor(options, on_ready).run()
