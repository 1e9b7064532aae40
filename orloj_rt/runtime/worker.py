"""A worker process: one device (a GPU, or the CPU), every model, one batch at a time.

    scheduler --RunBatch--> worker --Results + data frames--> frontend   (channels)
              <--WorkerReady / BatchDone--

At start it builds every model, warms each up and profiles it (solo times, c(b), the
work fit; on CUDA it also captures its graphs), and sends the profiles to the scheduler in
`WorkerReady`. Then, per batch: check that every slot still holds the request the
descriptor names (its generation), view the inputs in the ring, run, send the outputs to
the frontend as zero-copy frames, and report the batch time to the scheduler. A model
that raises fails its batch's members with `error` replies; the worker serves on.

Step-level batching (runtime/step_runner.py, docs/runtime.md): for a model the scheduler
drives step by step, the worker keeps the running members' state between steps and never
waits for the scheduler. It loops: read whatever `StepUpdate`s have arrived (poll with no
timeout), apply them (ended members leave, newcomers join after their own init_state and,
for a `layer` model, a catch-up), run one step, answer the members that are done, and
send a `StepProgress`. Whole batches of other models run between two steps.

A restarted worker (the previous one died; docs/reliability.md) is started with
`profile=False`: it runs each model once at batch size 1 and at the largest batch (lazy
initialisation, allocator growth) and reports ready without profiles, because the
scheduler keeps what the first warm-up measured. That keeps its recovery short.

Variants (accuracy scaling, docs/models.md): for a model that declares variants and is
served in whole batches, the worker holds a runner per variant (batch_runner.py,
`variant_runners`) and runs each batch with the one its `RunBatch.variant` names; the
`Results` say which variant served the members. A name the model does not declare fails
the batch's members with `error`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from multiprocessing.connection import Connection

from orloj_rt.policies import serving_mode
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.step_times import StepTimes
from orloj_rt.runtime.batch_runner import (
    PROFILE_SOLO_EXAMPLES,
    BatchError,
    examples_for,
    make_runner,
    variant_runners,
)
from orloj_rt.runtime.channel import Channel, ChannelClosed
from orloj_rt.runtime.proc import (
    InstanceConfig,
    attach_rings,
    child_main,
    dispatch_message,
    drain_parent,
    settle_memory,
)

log = logging.getLogger("orloj_rt.worker")

#: a stepping model's StepProgress goes out at each boundary where members came or went,
#: and otherwise at most this often: the scheduler reads reports every STEP_TICK_S (1 ms)
STEP_REPORT_MIN_S = 0.001


class _StepAccount(StepTimes):
    """What one model's next StepProgress reports: the steps since the last one."""

    __slots__ = ("sent", "finished", "failed")

    def __init__(self, sent: float = 0.0) -> None:
        super().__init__()
        self.sent = sent  # time.monotonic() of the last report
        self.finished: list = []
        self.failed: list = []


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
        from orloj_rt.runtime.batch_runner import BatchRunner
        from orloj_rt.runtime.step_runner import make_step_batch

        self.runners = []
        self.variants: dict[int, dict] = {}  # model index -> {variant name: its runner}
        self.steps: dict = {}  # model index -> StepBatch, for the models served step by step
        for i, entry in enumerate(config.models):
            t0 = time.monotonic()
            module = build_module(entry)
            if serving_mode(entry.spec, config.policy)[1]:
                runner = BatchRunner(entry, module, self.device)  # whole-batch graphs: none
                examples = examples_for(entry, 1) if runner._on_cuda else None
                self.steps[i] = make_step_batch(
                    runner, lambda *a, m=i: self._emit_step(m, *a), examples)
            else:
                runner = make_runner(entry, module, self.device)
                self.variants[i] = variant_runners(entry, module, runner, self.device,
                                                   build_module)  # fmt: skip
            self.runners.append(runner)
            log.info("model %s built on %s in %.2f s%s", entry.spec.name, self.device,
                     time.monotonic() - t0,
                     " (step-level batching)" if i in self.steps else "")  # fmt: skip
        self._step_updates: dict[int, list] = {}  # model -> StepUpdates not yet applied
        self._step_applied: dict[int, int] = {}  # model -> the last update's seq applied
        self._step_acc = {m: _StepAccount() for m in self.steps}  # since the last report
        self._step_end = (0.0, 0.0)  # perf_counter, process_time at the last cycle's end
        self._step_timed = False  # whether the time since then was all step cycles
        self._coord = [0.0, 0.0]  # wall, CPU reading updates and reporting, this cycle
        self.scheduler = Channel(scheduler_sock, f"worker {index}<->scheduler")
        self.frontend = Channel(frontend_sock, f"worker {index}->frontend")
        self._handlers = {
            msgs.RunBatch: self._on_run_batch,
            msgs.StepUpdate: self._on_step_update,
        }
        self._parent_handlers = {msgs.Shutdown: self._on_shutdown}

    def _own_variant_runners(self) -> list:
        """The variants' runners with a module of their own (`factory_args`)."""
        return [r for i, by_name in self.variants.items() for r in by_name.values()
                if r.module is not self.runners[i].module]  # fmt: skip

    def quick_warm_up(self, runners=None) -> None:
        """What a restarted worker does instead of profiling: one batch of 1 and one of
        the largest size per model, so that the first real batch does not pay the lazy
        initialisation."""
        for runner in self.runners if runners is None else runners:
            t0 = time.monotonic()
            ex = examples_for(runner.entry, 1)[0]
            req = [ex[t.name] for t in runner.spec.inputs]
            runner.run([req])
            runner.run([req] * runner.spec.max_batch_size)
            log.info("model %s warmed up in %.2f s (no profiling: the scheduler keeps the "
                     "first warm-up's)", runner.spec.name, time.monotonic() - t0)  # fmt: skip

    def warm_up(self) -> list:
        from orloj_rt.protocol.derived_hint import example_hints
        from orloj_rt.runtime.step_runner import profile_steps

        profiles = []
        for i, runner in enumerate(self.runners):
            t0 = time.monotonic()
            examples = examples_for(runner.entry, PROFILE_SOLO_EXAMPLES)
            prof = runner.profile(examples)
            if i in self.steps:
                prof = prof._replace(steps=profile_steps(runner, examples))
            # the examples' derived hints (a model that declares `hint`) seed its classes
            prof = prof._replace(hints=example_hints(runner.spec, examples))
            profiles.append(list(prof))
            log.info("model %s profiled in %.2f s: solo mean %.3f ms, c(max) %.2f%s",
                     runner.spec.name, time.monotonic() - t0,
                     1e3 * sum(prof.solo_times) / len(prof.solo_times), prof.inflation[-1],
                     f"; one step {prof.steps[0] * 1e3:.3f} ms, step c(max) "
                     f"{prof.steps[1][-1]:.2f}" if prof.steps else "")  # fmt: skip
        return profiles

    # ------------------------------------------------------------------ loop
    def run(self, profile: bool = True) -> None:
        if profile:
            profiles = self.warm_up()
            self.quick_warm_up(self._own_variant_runners())
        else:
            self.quick_warm_up([*self.runners, *self._own_variant_runners()])
            profiles = []
        settle_memory()
        ready = msgs.WorkerReady(self.index, os.getpid(), self.device, profiles)
        self.scheduler.send([msgs.encode(ready)])
        self.poller = poller = select.poll()
        sched_fd, front_fd = self.scheduler.fileno(), self.frontend.fileno()
        poller.register(sched_fd, select.POLLIN)
        self._watching = {sched_fd: False, front_fd: False}
        parent_fd = self.conn.fileno()
        poller.register(parent_fd, select.POLLIN)
        try:
            while not self._stopping:
                self._watch_output(self.scheduler)
                self._watch_output(self.frontend)
                # while members run step by step, poll only looks: the next step is due
                stepping = self._stepping()
                if stepping:
                    t0, c0 = time.perf_counter(), time.process_time()
                else:
                    self._step_timed = False
                for fd, ev in poller.poll(0 if stepping else None):
                    if fd == parent_fd:
                        self._drain_parent()
                    elif fd == front_fd:
                        if self.frontend.flush():
                            for done in self._done_after_flush:
                                self.scheduler.send(done)
                            self._done_after_flush.clear()
                    elif fd == sched_fd:
                        if ev & select.POLLOUT:
                            self.scheduler.flush()
                        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            for parts in self.scheduler.recv():
                                self._dispatch(parts)
                if stepping:
                    self._coord[0] += time.perf_counter() - t0
                    self._coord[1] += time.process_time() - c0
                if stepping or self._step_updates:
                    self._step_cycle()
        except ChannelClosed as exc:
            log.info("stopping: %s", exc)  # the scheduler or frontend is gone
        self._close()

    def _watch_output(self, ch: Channel) -> None:
        """POLLOUT only while a channel has output waiting, so that poll() can sleep. (A
        syscall only when that changes: between two steps every microsecond counts.)"""
        fd = ch.fileno()
        want = ch.wants_write
        if self._watching.get(fd) == want:
            return
        self._watching[fd] = want
        if ch is self.scheduler:
            self.poller.modify(fd, select.POLLIN | (select.POLLOUT if want else 0))
        elif want:
            self.poller.register(fd, select.POLLOUT)
        else:
            with contextlib.suppress(KeyError):
                self.poller.unregister(fd)

    def _dispatch(self, parts: list) -> None:
        dispatch_message(parts, self._handlers, "the scheduler channel", log)

    def _drain_parent(self) -> None:
        if not drain_parent(self.conn, self._parent_handlers, log):
            self._stopping = True

    def _on_shutdown(self, msg: msgs.Shutdown) -> None:
        self._stopping = True

    # ------------------------------------------------------------------ one batch
    def _on_run_batch(self, msg: msgs.RunBatch) -> None:
        self._step_timed = False  # this batch's time is not the steps' overhead
        started = time.monotonic()
        t0 = time.perf_counter()
        runner = self.runners[msg.model]
        variant = msg.variant
        if variant is not None:
            runner = self.variants.get(msg.model, {}).get(variant)
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
            if runner is None:
                spec = self.runners[msg.model].spec
                declared = ", ".join(v.name for v in spec.variants) or "none"
                raise BatchError(f"internal error: model {spec.name!r} has no variant "
                                 f"{variant!r} served in whole batches (declared: "
                                 f"{declared})")  # fmt: skip
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
            name = self.runners[msg.model].spec.name
            text = str(exc) if isinstance(exc, BatchError) else (
                f"model {name!r} failed: {type(exc).__name__}: {exc}"
            )
            log.warning("batch %d of %s failed: %s", msg.batch_id, name, text)
            errors = [text] * b
            shapes = [None] * b
            data = []
            work = None
            ok = False
        exec_s = time.perf_counter() - t0
        results = msgs.Results(msg.model, tokens, started, int(exec_s * 1e6), shapes, errors,
                               0, variant)  # fmt: skip
        # the output arrays are not copied in user space: sendmsg gathers the memoryviews,
        # and any part the kernel does not take now stays referenced in the outbox
        self.frontend.send([msgs.encode(results), *data])
        done = [msgs.encode(msgs.BatchDone(self.index, msg.batch_id, msg.model, ok, exec_s,
                                           work))]  # fmt: skip
        self._send_after_results(done)

    def _send_after_results(self, parts: list) -> None:
        # NOTE: BatchDone and StepProgress tell the scheduler that requests are answered;
        # they must not overtake results still in our outbox, or a death now would leave
        # those requests with no answer and no one to re-queue them (the kernel keeps what
        # was written, not that); and they keep their order among themselves
        if self.frontend.wants_write or self._done_after_flush:
            self._done_after_flush.append(parts)
        else:
            self.scheduler.send(parts)

    # ------------------------------------------------------------------ step by step
    def _on_step_update(self, msg: msgs.StepUpdate) -> None:
        if msg.model not in self.steps:
            # not ours to step: every newcomer gets an answer, and the scheduler hears it
            text = f"internal error: model {msg.model} is not served step by step here"
            log.error(text)
            for token, _slot, _gen in msg.joined:
                self._emit_step(msg.model, token, None, text, time.monotonic(), 1)
            failed = [t for t, _s, _g in msg.joined]
            self._send_after_results([msgs.encode(msgs.StepProgress(
                self.index, msg.model, msg.seq, time.monotonic(), [], [], [], failed, 0, 0,
                0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))])  # fmt: skip
            return
        self._step_updates.setdefault(msg.model, []).append(msg)

    def _stepping(self) -> bool:
        return bool(self._step_updates) or any(len(b) for b in self.steps.values())

    def _step_cycle(self) -> None:
        """One boundary and one step of every model with members or updates (module
        docstring), and its StepProgress where members came or went or STEP_REPORT_MIN_S
        passed. A report wakes nobody: the scheduler reads a stepping worker's reports
        at its own pace (scheduler.py, `_update_quiet`), so it costs this process a send.

        Accounting (StepProgress): the wall and CPU time from the end of the last cycle
        to the end of this one that the model's calls did not use is the overhead of
        step-level batching; of it, reading updates (the poll before this cycle) and
        building and sending reports (after the last cycle) is the coordination."""
        models = [m for m, b in self.steps.items() if len(b) or m in self._step_updates]
        changed = []
        model_total = model_cpu = 0.0
        for m in models:
            batch = self.steps[m]
            batch.begin()
            updates = self._step_updates.pop(m, [])
            if updates:
                self._apply_step_updates(m, batch, updates)
            batch.step()
            acc = self._step_acc[m]
            acc.finished += batch.finished
            acc.failed += batch.failed
            if batch.size:
                acc.n_steps += 1
                acc.members += batch.size
            model_total += batch.model_s
            model_cpu += batch.model_cpu_s
            changed.append(bool(updates or batch.finished or batch.failed or not len(batch)))
        end, end_cpu = time.perf_counter(), time.process_time()
        if self._step_timed and models:
            k = len(models)
            overhead = max(0.0, end - self._step_end[0] - model_total) / k
            overhead_cpu = max(0.0, end_cpu - self._step_end[1] - model_cpu) / k
            for m in models:
                acc = self._step_acc[m]
                acc.timed += 1
                acc.model_s += self.steps[m].model_s
                acc.overhead_s += overhead
                acc.model_cpu_s += self.steps[m].model_cpu_s
                acc.overhead_cpu_s += overhead_cpu
                acc.coord_s += self._coord[0] / k
                acc.coord_cpu_s += self._coord[1] / k
        now = time.monotonic()
        for m, change in zip(models, changed, strict=True):
            acc = self._step_acc[m]
            if change or now - acc.sent >= STEP_REPORT_MIN_S:
                running, steps = self.steps[m].progress()
                report = msgs.StepProgress(
                    self.index, m, self._step_applied.get(m, 0), now, running, steps,
                    acc.finished, acc.failed, acc.n_steps, acc.members, acc.timed,
                    acc.model_s, acc.overhead_s, acc.model_cpu_s, acc.overhead_cpu_s,
                    acc.coord_s, acc.coord_cpu_s)  # fmt: skip
                self._send_after_results([msgs.encode(report)])
                self._step_acc[m] = _StepAccount(now)
        # the reports count in the next cycle's coordination (and overhead)
        t1, c1 = time.perf_counter(), time.process_time()
        self._coord = [t1 - end, c1 - end_cpu]
        self._step_end = (end, end_cpu)
        self._step_timed = True

    def _apply_step_updates(self, m: int, batch, updates: list) -> None:
        ended = set()
        joined = []
        for u in updates:
            ended.update(u.ended)
            joined += u.joined
        self._step_applied[m] = updates[-1].seq
        batch.end(ended)
        ring = self.rings[m]
        members = []
        for token, slot, gen in joined:
            if token in ended:
                continue  # ended before it joined: its answer is the scheduler's
            if ring.generation(slot) != gen:
                text = f"internal error: ring slot {slot} was reused before the request ran"
                batch.failed.append(token)
                self._emit_step(m, token, None, text, time.monotonic(), 1)
                continue
            members.append((token, ring.views(slot)))
        batch.join(members)

    def _emit_step(self, model: int, token: int, arrays, error, started: float,
                   size: int) -> None:  # fmt: skip
        """One step member's answer, at once: its outputs, or its error."""
        exec_us = int((time.monotonic() - started) * 1e6)
        if error is None:
            shapes = [[list(a.shape[1:]) for a in arrays]]
            data = [memoryview(a).cast("B") for a in arrays]
            results = msgs.Results(model, [token], started, exec_us, shapes, None, size)
        else:
            data = []
            results = msgs.Results(model, [token], started, exec_us, [None], [error], size)
        self.frontend.send([msgs.encode(results), *data])

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
