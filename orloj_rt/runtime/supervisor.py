"""The supervisor: `orloj-rt start`'s own process. It owns the instance's resources.

    supervisor --spawn--> frontend, scheduler, worker 0..N-1     (multiprocessing "spawn")
               <--Pipe--> each child: ChildReady / ChildFailed up, Shutdown / ClusterState down

It removes the shared-memory segments a killed instance left behind, creates one input
ring per model (and is the one process that unlinks them), creates the socket pairs the
children talk over (frontend-scheduler, scheduler-worker i, worker i-frontend) and hands
each child its ends, spawns the children, and watches them through their process
sentinels, their pipes and a signal wake-up fd, all in one
`multiprocessing.connection.wait`. (A restarted worker will get fresh socket pairs, whose
other ends reach the scheduler and frontend over their pipes with
`multiprocessing.reduction.send_handle`.)

Shutdown is data: SIGTERM or SIGINT only wakes the loop, which then sends `Shutdown` to
the frontend (it stops admitting, finishes or answers what is in flight, and exits), then
to the scheduler and the workers, waits for every exit, and unlinks the rings. A child
that fails or dies unexpectedly stops the instance the same way, with exit code 1
(restarting it with backoff is a later step; the sentinel watch is where it plugs in).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from orloj_rt.models.spec import ModelEntry
from orloj_rt.runtime import messages as msgs
from orloj_rt.runtime.channel import Channel
from orloj_rt.runtime.proc import InstanceConfig, set_process_title
from orloj_rt.runtime.shm_ring import (
    RingLayout,
    ShmRing,
    instance_id,
    remove_stale_segments,
    segment_name,
)
from orloj_rt.runtime.wire import DEFAULT_ENDPOINT

log = logging.getLogger("orloj_rt.supervisor")

FRONTEND_EXIT_GRACE_S = 5.0  # after its drain, for the frontend to flush and exit
CHILD_EXIT_TIMEOUT_S = 10.0  # for the scheduler and workers (a worker ends its batch first)
KILL_WAIT_S = 3.0


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
    worker_threads: int = 1


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
        self.children: list[_Child] = []
        self.rings: list[ShmRing] = []
        self.instance = ""
        self._signals: list[int] = []
        self._sig_r = self._sig_w = -1
        self._serving = False
        self._failure = ""

    # ------------------------------------------------------------------ public
    def run(self) -> int:
        """Starts the instance and serves until a signal or a failure; the exit code."""
        set_process_title("orloj-rt: supervisor")
        try:
            self._start()
            code = self._watch()
        except StartupError as exc:
            self._failure = str(exc)
            code = 1
        finally:
            self._stop_children(self._failure or "the server is shutting down")
            self._release()
        if self._failure:
            log.error("%s", self._failure)
        return code

    # ------------------------------------------------------------------ start
    def _start(self) -> None:
        for name in remove_stale_segments():
            log.warning("removed stale shared-memory segment /dev/shm/%s (its instance is gone)",
                        name)  # fmt: skip
        opts = self.options
        self.instance = instance_id()
        layouts = tuple(RingLayout.from_spec(e.spec) for e in opts.models)
        names = tuple(segment_name(self.instance, i) for i in range(len(opts.models)))
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
        )
        from orloj_rt.runtime.frontend import run_frontend_process
        from orloj_rt.runtime.scheduler import run_scheduler_process
        from orloj_rt.runtime.worker import run_worker_process

        n = len(opts.devices)
        fe_sched = Channel.pair()
        sched_worker = [Channel.pair() for _ in range(n)]
        worker_fe = [Channel.pair() for _ in range(n)]
        ctx = multiprocessing.get_context("spawn")
        # children inherit an ignored SIGINT from birth: Ctrl-C reaches the whole process
        # group, and only the supervisor decides how to shut down
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._spawn(ctx, "scheduler", 0, run_scheduler_process,
                        (config, fe_sched[1], [p[0] for p in sched_worker]))  # fmt: skip
            for i in range(n):
                self._spawn(ctx, "worker", i, run_worker_process,
                            (config, i, sched_worker[i][1], worker_fe[i][0]))  # fmt: skip
            self._spawn(ctx, "frontend", 0, run_frontend_process,
                        (config, fe_sched[0], [p[1] for p in worker_fe]))  # fmt: skip
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

    def _spawn(self, ctx, role: str, index: int, target, args: tuple) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        name = role if role != "worker" else f"worker-{index}"
        # the pipe goes right after the config (and the worker's index): see run_*_process
        k = 2 if role == "worker" else 1
        args = (*args[:k], child_conn, *args[k:])
        proc = ctx.Process(target=target, args=args, name=name, daemon=False)
        proc.start()
        child_conn.close()  # the child's end lives in the child; EOF here means it died
        self.children.append(_Child(role, index, proc, parent_conn, pid=proc.pid))

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
            watched: list = [self._sig_r]
            for c in self.children:
                if not c.exited:
                    watched.append(c.process.sentinel)
                    if c.pipe_open:
                        watched.append(c.conn)
            timeout = None if self._serving else max(0.0, deadline - time.monotonic())
            ready = wait(watched, timeout)
            if not ready and not self._serving:
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
            child.ready = True
            child.pid = msg.pid
            if msg.role == "frontend":
                self.endpoint = msg.info.get("endpoint", self.options.bind)
            self._publish_state()
            if not self._serving and all(c.ready for c in self.children):
                self._serving = True
                log.info("serving on %s", self.endpoint)
                if self.on_ready is not None:
                    self.on_ready(self.endpoint)
        elif isinstance(msg, msgs.ChildFailed):
            label = msg.role if msg.role != "worker" else f"worker {msg.index}"
            when = "while serving" if self._serving else "at start"
            self._failure = f"{label} (pid {msg.pid}) failed {when}: {msg.error}"
        else:
            log.error("unexpected %s from a child; ignored", type(msg).__name__)

    def _on_exit(self, child: _Child) -> None:
        child.exited = True
        child.process.join(0)
        if not self._failure:
            self._failure = (f"{child.label} (pid {child.pid}) exited unexpectedly with code "
                             f"{child.process.exitcode}; stopping the instance")  # fmt: skip

    def _find(self, role: str, index: int) -> _Child | None:
        for c in self.children:
            if c.role == role and c.index == index:
                return c
        return None

    def _publish_state(self) -> None:
        workers = [c for c in self.children if c.role == "worker"]
        ready = sum(c.ready for c in workers)
        sched = self._find("scheduler", 0)
        state = msgs.ClusterState(
            "ok" if ready == len(workers) else "degraded",
            len(workers),
            ready,
            {
                "supervisor": os.getpid(),
                "frontend": 0,  # the frontend fills in its own
                "scheduler": sched.pid if sched else 0,
                "workers": [c.pid for c in workers],
            },
        )
        self._send(self._find("frontend", 0), state)

    def _send(self, child: _Child | None, msg) -> None:
        if child is None or child.exited:
            return
        with contextlib.suppress(OSError, ValueError):
            child.conn.send_bytes(msgs.encode(msg))

    # ------------------------------------------------------------------ stop
    def _shutdown(self, reason: str) -> None:
        """The orderly path: the frontend drains first, then the rest stops."""
        front = self._find("frontend", 0)
        if front is not None and not front.exited:
            self._send(front, msgs.Shutdown(self.options.drain_timeout_s, reason))
            front.process.join(self.options.drain_timeout_s + FRONTEND_EXIT_GRACE_S)
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
        _stop_resource_tracker()


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
