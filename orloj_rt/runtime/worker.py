"""A worker process: one device (a GPU, or the CPU), every model, one batch at a time.

    scheduler --RunBatch--> worker --Results + data frames--> frontend   (channels)
              <--WorkerReady / BatchDone--

At start it builds every model, warms each up and profiles it (solo times, c(b), the
work fit; on CUDA it also captures its graphs), and sends the profiles to the scheduler in
`WorkerReady`. Then, per batch: check that every slot still holds the request the
descriptor names (its generation), view the inputs in the ring, run, send the outputs to
the frontend as zero-copy frames, and report the batch time to the scheduler. A model
that raises fails its batch's members with `error` replies; the worker serves on.

A restarted worker (the previous one died; docs/reliability.md) is started with
`profile=False`: it runs each model once at batch size 1 and at the largest batch (lazy
initialisation, allocator growth) and reports ready without profiles, because the
scheduler keeps what the first warm-up measured. That keeps its recovery short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from multiprocessing.connection import Connection

from orloj_rt.runtime import messages as msgs
from orloj_rt.runtime.batch_runner import (
    PROFILE_SOLO_EXAMPLES,
    BatchError,
    examples_for,
    make_runner,
)
from orloj_rt.runtime.channel import Channel, ChannelClosed
from orloj_rt.runtime.proc import InstanceConfig, attach_rings, child_main, settle_memory

log = logging.getLogger("orloj_rt.worker")


class Worker:
    def __init__(
        self, config: InstanceConfig, index: int, conn: Connection, scheduler_sock, frontend_sock
    ):
        import torch

        from orloj_rt.models.loading import build_module

        self.config = config
        self.index = index
        self.conn = conn
        self.device = config.devices[index]
        self._stopping = False
        self._done_after_flush: list = []  # BatchDone parts held until the results are out
        if self.device == "cpu":
            torch.set_num_threads(max(1, config.worker_threads))
        else:
            torch.cuda.set_device(torch.device(self.device))
        self.rings = attach_rings(config)
        for ring, entry in zip(self.rings, config.models, strict=True):
            if not any(t.variable_dims for t in entry.spec.inputs):
                ring.set_fixed_shapes([t.shape for t in entry.spec.inputs])
        self.runners = []
        for entry in config.models:
            t0 = time.monotonic()
            module = build_module(entry)
            self.runners.append(make_runner(entry, module, self.device))
            log.info("model %s built on %s in %.2f s", entry.spec.name, self.device,
                     time.monotonic() - t0)  # fmt: skip
        self.scheduler = Channel(scheduler_sock, f"worker {index}<->scheduler")
        self.frontend = Channel(frontend_sock, f"worker {index}->frontend")
        self._handlers = {msgs.RunBatch: self._on_run_batch}
        self._parent_handlers = {msgs.Shutdown: self._on_shutdown}

    def quick_warm_up(self) -> None:
        """What a restarted worker does instead of profiling: one batch of 1 and one of
        the largest size per model, so that the first real batch does not pay the lazy
        initialisation."""
        for runner in self.runners:
            t0 = time.monotonic()
            ex = examples_for(runner.entry, 1)[0]
            req = [ex[t.name] for t in runner.spec.inputs]
            runner.run([req])
            runner.run([req] * runner.spec.max_batch_size)
            log.info("model %s warmed up in %.2f s (no profiling: the scheduler keeps the "
                     "first warm-up's)", runner.spec.name, time.monotonic() - t0)  # fmt: skip

    def warm_up(self) -> list:
        profiles = []
        for runner in self.runners:
            t0 = time.monotonic()
            prof = runner.profile(examples_for(runner.entry, PROFILE_SOLO_EXAMPLES))
            profiles.append(list(prof))
            log.info("model %s profiled in %.2f s: solo mean %.3f ms, c(max) %.2f",
                     runner.spec.name, time.monotonic() - t0,
                     1e3 * sum(prof.solo_times) / len(prof.solo_times),
                     prof.inflation[-1])  # fmt: skip
        return profiles

    # ------------------------------------------------------------------ loop
    def run(self, profile: bool = True) -> None:
        if profile:
            profiles = self.warm_up()
        else:
            self.quick_warm_up()
            profiles = []
        settle_memory()
        ready = msgs.WorkerReady(self.index, os.getpid(), self.device, profiles)
        self.scheduler.send([msgs.encode(ready)])
        self.poller = poller = select.poll()
        sched_fd, front_fd = self.scheduler.fileno(), self.frontend.fileno()
        poller.register(sched_fd, select.POLLIN)
        parent_fd = self.conn.fileno()
        poller.register(parent_fd, select.POLLIN)
        try:
            while not self._stopping:
                self._watch_output(self.scheduler)
                self._watch_output(self.frontend)
                for fd, ev in poller.poll():
                    if fd == parent_fd:
                        self._drain_parent()
                    elif fd == front_fd:
                        if self.frontend.flush() and self._done_after_flush:
                            self.scheduler.send(self._done_after_flush.pop(0))
                    elif fd == sched_fd:
                        if ev & select.POLLOUT:
                            self.scheduler.flush()
                        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            for parts in self.scheduler.recv():
                                self._dispatch(parts)
        except ChannelClosed as exc:
            log.info("stopping: %s", exc)  # the scheduler or frontend is gone
        self._close()

    def _watch_output(self, ch: Channel) -> None:
        """POLLOUT only while a channel has output waiting, so that poll() can sleep."""
        fd = ch.fileno()
        if ch is self.scheduler:
            mask = select.POLLIN | (select.POLLOUT if ch.wants_write else 0)
            self.poller.modify(fd, mask)
        elif ch.wants_write:
            self.poller.register(fd, select.POLLOUT)
        else:
            with contextlib.suppress(KeyError):
                self.poller.unregister(fd)

    def _dispatch(self, parts: list) -> None:
        try:
            msg = msgs.decode(parts[0])
        except (msgs.UnknownMessage, ValueError, TypeError) as exc:
            log.error("ignored a malformed message: %s", exc)
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.error("no handler for %s here; ignored", type(msg).__name__)
            return
        handler(msg)

    def _drain_parent(self) -> None:
        try:
            while self.conn.poll():
                msg = msgs.decode(self.conn.recv_bytes())
                handler = self._parent_handlers.get(type(msg))
                if handler is None:
                    log.error("supervisor sent unexpected %s; ignored", type(msg).__name__)
                    continue
                handler(msg)
        except (EOFError, OSError):
            self._stopping = True

    def _on_shutdown(self, msg: msgs.Shutdown) -> None:
        self._stopping = True

    # ------------------------------------------------------------------ one batch
    def _on_run_batch(self, msg: msgs.RunBatch) -> None:
        started = time.monotonic()
        t0 = time.perf_counter()
        runner = self.runners[msg.model]
        ring = self.rings[msg.model]
        tokens = msg.tokens
        b = len(tokens)
        errors = None
        shapes: list = []
        data: list = []
        work = None
        stale = [j for j, (s, g) in enumerate(zip(msg.slots, msg.generations, strict=True))
                 if ring.generation(s) != g]  # fmt: skip
        try:
            if stale:
                raise BatchError(f"internal error: ring slots {stale} were reused before the "
                                 "batch ran")  # fmt: skip
            members = [ring.views(s) for s in msg.slots]
            arrays, work = runner.run(members)
            del members
            views = []
            for arr in arrays:
                # one flat byte view per output; each member's frame is a slice of it
                views.append((memoryview(arr).cast("B"), arr.nbytes // b, list(arr.shape[1:])))
            for j in range(b):
                shapes.append([shape for _, _, shape in views])
                for flat, row, _ in views:
                    data.append(flat[j * row : (j + 1) * row])
            ok = True
        except Exception as exc:  # noqa: BLE001 - every member gets the error as its answer
            text = str(exc) if isinstance(exc, BatchError) else (
                f"model {runner.spec.name!r} failed: {type(exc).__name__}: {exc}"
            )
            log.warning("batch %d of %s failed: %s", msg.batch_id, runner.spec.name, text)
            errors = [text] * b
            shapes = [None] * b
            data = []
            work = None
            ok = False
        exec_s = time.perf_counter() - t0
        results = msgs.Results(msg.model, tokens, started, int(exec_s * 1e6), shapes, errors)
        # the output arrays are not copied in user space: sendmsg gathers the memoryviews,
        # and any part the kernel does not take now stays referenced in the outbox
        self.frontend.send([msgs.encode(results), *data])
        done = [msgs.encode(msgs.BatchDone(self.index, msg.batch_id, msg.model, ok, exec_s,
                                           work))]  # fmt: skip
        # NOTE: BatchDone tells the scheduler the batch is answered; it must not overtake
        # results still in our outbox, or a death now would leave their requests with no
        # answer and no one to re-queue them (the kernel keeps what was written, not that)
        if self.frontend.wants_write:
            self._done_after_flush.append(done)
        else:
            self.scheduler.send(done)

    def _close(self) -> None:
        # what is still in the outboxes goes out before the channels close (bounded by the
        # peers reading; they are alive while we are asked to stop)
        deadline = time.monotonic() + 2.0
        for ch in (self.frontend, self.scheduler):
            try:
                while not ch.flush() and time.monotonic() < deadline:
                    select.select([], [ch.fileno()], [], 0.05)
            except ChannelClosed:
                pass
            ch.close()
        for r in self.rings:
            r.close()
        log.info("stopped")


def run_worker_process(
    config: InstanceConfig,
    index: int,
    conn: Connection,
    scheduler_sock,
    frontend_sock,
    profile: bool = True,
) -> None:
    """Entry point of worker `index` (started by the supervisor).

    `scheduler_sock` and `frontend_sock` are this process's ends of its socket pairs;
    `profile` is False for a restarted worker (see the module docstring)."""

    def body() -> None:
        Worker(config, index, conn, scheduler_sock, frontend_sock).run(profile)

    child_main("worker", index, config, conn, body)
