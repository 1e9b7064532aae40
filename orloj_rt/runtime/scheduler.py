"""The scheduler process: one policy per model, the workers' dispatcher, online learning.

    frontend --Submit--> scheduler --RunBatch--> worker i      (one channel each)
             <--Discard / SchedulerStats--   <--WorkerReady / BatchDone--

Single-threaded and event-driven. Whenever a worker is idle, it asks the models' policies
for a batch (round robin over the models with queued work, so that no model starves) and
sends the batch's ring slots to that worker. Requests a policy drops or rejects go back to
the frontend in one `Discard` per scheduling pass.

What it decides and learns lives in the serving core (orloj_rt/serving/: `ServingCore`,
one `ModelCore` per model), which has no IO and no clock; this process translates
messages into the core's calls and its results into messages, and owns what is IO: the
channels, the poll loop, the hang watch and the stats tick. The simulator drives the same
core on a virtual clock.

Step-level batching (serving/steps.py): a model with steps under a step policy
(orloj-step, fcfs-step, ...) is not dispatched in batches. Each worker runs its members
step by step and reports every boundary (`StepProgress`) without waiting; the model's
`StepCoordinator` asks the step policy about the worker's next boundary and sends the
answer (`StepUpdate`: who joins, who is ended), which the worker applies when it gets
there. A model without steps under a step policy is served in whole batches by the
policy's whole-batch counterpart (orloj-step -> orloj, fcfs-step -> fifo, edf-step -> edf).

Worker crashes (docs/reliability.md): a worker's channel closing is how the scheduler
learns that it died. It dispatches nothing more to it, and sends the batch it was running
to the frontend (`WorkerLost`), which re-queues or answers each member. The supervisor's
`AttachWorker` brings the restarted worker's channel; it gets batches after its
`WorkerReady` (a restarted worker sends no profile: the first warm-up's is kept). While
no worker at all is ready, requests whose deadline passes are dropped here, since no
policy decision runs to drop them. A worker that hangs instead of dying (it has a batch or
step members and has said nothing for `hang_timeout_s`) is reported to the supervisor
(`WorkerHung`), which kills it; from there it is a crash like any other.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle

from orloj_rt.cluster.publish import state_publisher
from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.channel import Channel, ChannelClosed
from orloj_rt.runtime.proc import (
    InstanceConfig,
    child_main,
    dispatch_message,
    drain_parent,
    send_to_parent,
    settle_memory,
)
from orloj_rt.serving.core import Dispatch, ServingCore
from orloj_rt.serving.learning import MIN_APP_SAMPLES  # noqa: F401 - re-exported for tests
from orloj_rt.serving.model import STATS_MAX_APPS  # noqa: F401 - re-exported for tests

log = logging.getLogger("orloj_rt.scheduler")

STATS_INTERVAL_S = 1.0
MIN_WAKEUP_MS = 0.2  # a policy whose wake-up time has passed cannot make the loop spin
EXPIRE_SWEEP_S = 0.05  # while no worker is ready: how often expired requests are dropped
#: while a worker runs members step by step, its reports are read this often (and whenever
#: something else wakes the scheduler), not as each arrives: see `_update_quiet`
STEP_TICK_S = 0.001


class _WorkerState:
    """A worker as this process sees it: its channel and pid, and when it was last heard
    of (the hang watch). Whether it is ready and what it runs are the core's."""

    __slots__ = ("index", "channel", "pid", "last_heard", "hang_reported", "core")

    def __init__(self, index: int, channel: Channel, core) -> None:
        self.index = index
        self.channel = channel
        self.pid = 0
        self.core = core  # its serving.core.WorkerCore
        # when it last had news for us or we for it (a batch, an update, a report): the
        # hang watch measures its silence from here
        self.last_heard = 0.0
        self.hang_reported = 0  # the pid already reported hung (WorkerHung goes once)


class Scheduler:
    def __init__(self, config: InstanceConfig, conn: Connection, frontend_sock, worker_socks):
        self.config = config
        self.conn = conn
        self.core = ServingCore([e.spec for e in config.models], config.policy,
                                config.policy_params, len(config.devices))  # fmt: skip
        self.models = self.core.models
        self.frontend = Channel(frontend_sock, "scheduler<->frontend")
        self.workers = [
            _WorkerState(i, Channel(s, f"scheduler<->worker {i}"), self.core.workers[i])
            for i, s in enumerate(worker_socks)
        ]
        self._next_batch_id = 1
        self._stopping = False
        self._next_stats = 0.0
        self._next_sweep = 0.0
        self._quiet: dict[int, _WorkerState] = {}  # fd -> a stepping worker, read per tick
        # on a cluster node only (orloj-rt cluster start): the state the router routes by
        self._publisher = state_publisher(config)

        # type -> handler, per peer; an unknown type has its own explicit branch
        self._frontend_handlers = {msgs.Submit: self._on_submit, msgs.Cancel: self._on_cancel}
        self._worker_handlers = {
            msgs.WorkerReady: self._on_worker_ready,
            msgs.BatchDone: self._on_batch_done,
            msgs.StepProgress: self._on_step_progress,
        }
        self._parent_handlers = {
            msgs.Shutdown: self._on_shutdown,
            msgs.AttachWorker: self._on_attach_worker,
        }
        self._channels = {self.frontend.fileno(): (self.frontend, self._frontend_handlers)}
        for w in self.workers:
            self._channels[w.channel.fileno()] = (w.channel, self._worker_handlers)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        send_to_parent(self.conn, msgs.ChildReady("scheduler", 0, os.getpid(), {}))
        settle_memory()
        self.poller = poller = select.poll()
        for fd in self._channels:
            poller.register(fd, select.POLLIN)
        parent_fd = self.conn.fileno()
        poller.register(parent_fd, select.POLLIN)
        channels = self._channels
        while not self._stopping:
            events = poller.poll(self._poll_timeout_ms())
            if len(events) > 1:  # the supervisor first: a Shutdown explains closed channels
                events.sort(key=lambda e: e[0] != parent_fd)
            for fd, ev in events:
                if fd == parent_fd:
                    self._drain_parent()
                    continue
                entry = channels.get(fd)
                if entry is not None:
                    self._service(entry[0], entry[1], ev)
            for w in list(self._quiet.values()):  # stepping workers: their reports so far
                if w.channel.sock is not None:
                    self._service(w.channel, self._worker_handlers, select.POLLIN)
            if not self.core.idle and not self.core.any_ready():
                self._expire_unservable(time.monotonic())
            elif self._next_sweep:
                self._next_sweep = 0.0
            self._schedule()
            self._update_quiet()
            now = time.monotonic()
            if self._publisher is not None:
                self._publisher.tick(self.core, now)
            if now >= self._next_stats:
                self._next_stats = now + STATS_INTERVAL_S
                self.core.evict_idle(now)
                self._send_stats()
                self._watch_hangs(now)
        self._close()

    def _poll_timeout_ms(self) -> float:
        """Until a policy wants another look (a batching delay), else the stats tick."""
        now = time.monotonic()
        wake = self._next_stats
        if not self.core.idle and self._next_sweep and self._next_sweep < wake:
            wake = self._next_sweep  # no worker is ready and requests are queued
        w = self.core.next_wakeup(now)
        if w is not None and w < wake:
            wake = w
        if self._publisher is not None and self._publisher.next_at < wake:
            wake = self._publisher.next_at
        if self._quiet and now + STEP_TICK_S < wake:
            wake = now + STEP_TICK_S
        return max(MIN_WAKEUP_MS, (wake - now) * 1000.0)

    def _update_quiet(self) -> None:
        """A worker that runs members step by step, and no whole batch, reports every
        boundary; waking up for each report would cost that worker a wake-up of this
        process per step (on a small machine the woken process often takes the waker's
        CPU: 100-200 us measured per report). So its channel is polled without POLLIN
        (a report wakes nobody; a close still does, as POLLHUP) and read each time this
        loop runs: at least every STEP_TICK_S, and at once when a request arrives."""
        for w in self.workers:
            fd = w.channel.fileno()
            quiet = (w.core.ready and w.core.busy_batch is None
                     and w.channel.sock is not None
                     and bool(self.core.stepping(w.index)))  # fmt: skip
            if quiet == (fd in self._quiet):
                continue
            if quiet:
                self._quiet[fd] = w
            else:
                del self._quiet[fd]
            if self._channels.get(fd, (None,))[0] is w.channel:
                self.poller.modify(fd, self._mask(w.channel))

    def _mask(self, ch: Channel) -> int:
        fd = ch.fileno()
        return ((0 if fd in self._quiet else select.POLLIN)
                | (select.POLLOUT if ch.wants_write else 0))  # fmt: skip

    def _service(self, ch: Channel, handlers: dict, ev: int) -> None:
        try:
            if ev & select.POLLOUT and ch.flush():
                self.poller.modify(ch.fileno(), self._mask(ch))
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                for parts in ch.recv():
                    self._handle(ch, handlers, parts)
        except ChannelClosed:
            # the frontend closes first at every shutdown; a worker's close is news
            level = logging.INFO if ch is self.frontend or self._stopping else logging.WARNING
            log.log(level, "%s closed by its peer", ch.name)
            self.poller.unregister(ch.fileno())
            del self._channels[ch.fileno()]
            self._quiet.pop(ch.fileno(), None)
            for w in self.workers:
                if w.channel is ch:
                    self._lose_worker(w, self._exit_reason(w))

    def _handle(self, ch: Channel, handlers: dict, parts: list) -> None:
        dispatch_message(parts, handlers, ch.name, log)

    def _send(self, ch: Channel, parts: list) -> bool:
        try:
            ch.send(parts)
        except ChannelClosed:
            return False
        if ch.wants_write:
            self.poller.modify(ch.fileno(), self._mask(ch))
        return True

    def _drain_parent(self) -> None:
        if not drain_parent(self.conn, self._parent_handlers, log):
            self._stopping = True

    # ------------------------------------------------------------------ handlers
    def _on_submit(self, msg: msgs.Submit) -> None:
        self.core.submit(msg.requests)

    def _on_cancel(self, msg: msgs.Cancel) -> None:
        results = self.core.cancel(msg.tokens)
        self._send(self.frontend, [msgs.encode(msgs.Cancelled(results))])

    def _on_worker_ready(self, msg: msgs.WorkerReady) -> None:
        w = self.workers[msg.worker]
        w.pid = msg.pid
        # a restarted worker sends no profiles: the first warm-up's stay in force
        self.core.worker_ready(msg.worker, msg.profiles)
        log.info("worker %d (pid %d, %s) ready", msg.worker, msg.pid, msg.device)
        send_to_parent(self.conn, msgs.ChildReady("worker", msg.worker, msg.pid,
                                                  {"device": msg.device}))  # fmt: skip

    def _on_batch_done(self, msg: msgs.BatchDone) -> None:
        self.workers[msg.worker].last_heard = time.monotonic()
        if not self.core.batch_done(msg.worker, msg.model, msg.ok, msg.exec_s, msg.work):
            log.error("worker %d reported batch %d, which it was not running",
                      msg.worker, msg.batch_id)  # fmt: skip

    def _on_step_progress(self, msg: msgs.StepProgress) -> None:
        problem = self.core.step_progress(msg)
        if problem is not None:
            log.error("%s; ignored", problem)
            return
        if 0 <= msg.worker < len(self.workers):
            self.workers[msg.worker].last_heard = time.monotonic()

    def _on_shutdown(self, msg: msgs.Shutdown) -> None:
        self._stopping = True

    # ------------------------------------------------------------------ dispatch
    def _schedule(self) -> None:
        core = self.core
        if core.idle:
            for run in core.dispatch(time.monotonic()):
                self._send_batch(run)
        if any(mq.steps is not None for mq in self.models):
            now = time.monotonic()
            for worker, update in core.step_updates(now):
                w = self.workers[worker]
                w.last_heard = now
                if not self._send(w.channel, [msgs.encode(update)]):
                    self._lose_worker(w, "its channel is closed")
        dropped, rejected, errors = core.take_discards()
        if dropped or rejected or errors:
            discard = msgs.Discard(dropped, rejected, errors,
                                   "rejected by the scheduling policy")  # fmt: skip
            self._send(self.frontend, [msgs.encode(discard)])

    def _send_batch(self, run: Dispatch) -> None:
        w = self.workers[run.worker]
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        msg = msgs.RunBatch(batch_id, run.model, run.tokens, run.slots, run.generations,
                            run.variant)  # fmt: skip
        w.last_heard = time.monotonic()
        if not self._send(w.channel, [msgs.encode(msg)]):
            self._lose_worker(w, "its channel is closed")  # the frontend re-queues the batch

    # ------------------------------------------------------------------ worker crashes
    def _exit_reason(self, w: _WorkerState) -> str:
        if w.pid and w.hang_reported == w.pid:
            return (f"it hung and was killed after {self.config.hang_timeout_s:g} s without "
                    "a report (--hang-timeout)")  # fmt: skip
        return "it exited"

    def _lose_worker(self, w: _WorkerState, reason: str) -> None:
        """Worker `w` is gone: nothing more is dispatched to it, and the batch it was
        running goes to the frontend (`WorkerLost`), which alone knows which members are
        still unanswered, to be re-queued or answered. Idempotent."""
        ch = w.channel
        fd = ch.fileno()
        entry = self._channels.get(fd)
        if entry is not None and entry[0] is ch:
            self.poller.unregister(fd)
            del self._channels[fd]
        if self._quiet.get(fd) is w:
            del self._quiet[fd]
        ch.close()
        tokens, what = self.core.worker_lost(w.index)
        if not tokens:
            return
        log.warning("worker %d (pid %d) is gone (%s) with %s; the frontend re-queues or "
                    "answers them", w.index, w.pid, reason, " and ".join(what))  # fmt: skip
        lost = msgs.WorkerLost(w.index, w.pid, tokens, f"{reason} while running its batch")
        self._send(self.frontend, [msgs.encode(lost)])

    def _watch_hangs(self, now: float) -> None:
        """Reports to the supervisor each worker that holds work and has been silent for
        longer than `hang_timeout_s`: a whole batch with no BatchDone, or step members with
        no StepProgress. Checked once per stats tick, so a hang is seen within
        `hang_timeout_s + STATS_INTERVAL_S`. A legitimately long batch looks the same:
        the timeout must exceed the longest batch a model may run."""
        limit = self.config.hang_timeout_s
        if not limit > 0:
            return
        for w in self.workers:
            if w.channel.sock is None or w.pid == 0 or w.hang_reported == w.pid:
                continue
            silent = now - w.last_heard
            if silent <= limit:
                continue
            busy = w.core.busy_batch
            if busy is not None:
                what = f"a batch of {len(busy)} of {self.models[w.core.busy_model].name}"
            else:
                stepping = self.core.stepping(w.index)
                if not stepping:
                    continue
                what = f"step members of {', '.join(stepping)}"
            w.hang_reported = w.pid
            log.error("worker %d (pid %d) has run %s for %.1f s without a report; asking the "
                      "supervisor to kill it (--hang-timeout %g s)", w.index, w.pid, what,
                      silent, limit)  # fmt: skip
            send_to_parent(self.conn, msgs.WorkerHung(w.index, w.pid, silent, what))

    def _drain_dead(self, ch: Channel) -> None:
        """Handles what a dead worker sent before it died (a BatchDone), up to its EOF."""
        for _ in range(1000):  # bounded: a dead peer reaches EOF after what it wrote
            if ch.sock is None:
                return
            try:
                batch = ch.recv()
            except (ChannelClosed, OSError):
                return
            if not batch:
                return
            for parts in batch:
                self._handle(ch, self._worker_handlers, parts)

    def _on_attach_worker(self, msg: msgs.AttachWorker) -> None:
        # NOTE: the descriptor follows the message on the pipe: take it before anything else
        fd = recv_handle(self.conn)
        w = self.workers[msg.worker]
        if w.channel.sock is not None:  # its death not handled yet: what it sent counts
            self._drain_dead(w.channel)
            self._lose_worker(w, self._exit_reason(w))
        w.channel = Channel(socket.socket(fileno=fd), f"scheduler<->worker {msg.worker}")
        w.pid = msg.pid
        self.core.worker_attached(msg.worker)  # nothing goes to it before its WorkerReady
        self._channels[w.channel.fileno()] = (w.channel, self._worker_handlers)
        self.poller.register(w.channel.fileno(), select.POLLIN)
        log.info("worker %d: restarted as pid %d (restart %d); it gets batches once ready",
                 msg.worker, msg.pid, msg.epoch)  # fmt: skip

    def _expire_unservable(self, now: float) -> None:
        """No worker is ready (every one died and restarts), so no decision runs to drop
        what can no longer finish: the core drops the queued requests whose deadline has
        passed, every EXPIRE_SWEEP_S while any is queued (the loop's next `_schedule`
        sends them to the frontend)."""
        if now < self._next_sweep:
            return
        queued = self.core.expire(now)
        self._next_sweep = now + EXPIRE_SWEEP_S if queued else 0.0

    def _send_stats(self) -> None:
        stats = msgs.SchedulerStats(self.core.stats())
        self._send(self.frontend, [msgs.encode(stats)])

    def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        self.frontend.close()
        for w in self.workers:
            w.channel.close()
        log.info("stopped")


def run_scheduler_process(
    config: InstanceConfig, conn: Connection, frontend_sock, worker_socks: list
) -> None:
    """Entry point of the scheduler process (spawned by the supervisor).

    `frontend_sock` and `worker_socks` are this process's ends of the socket pairs to the
    frontend and to each worker."""

    def body() -> None:
        Scheduler(config, conn, frontend_sock, worker_socks).run()

    child_main("scheduler", 0, config, conn, body)
