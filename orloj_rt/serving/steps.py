"""Step-level batching in the scheduler: a step policy per model, driven by the workers'
step boundaries, with no round trip per step.

Which models are served step by step (`orloj_rt.policies.serving_mode`): those that
declare a step kind (`spec.step_kind`, "token" or "layer") when the instance's policy is
a step policy (`orloj-step`, `fcfs-step`, `edf-step`, `oracle-step`). A model without steps under a
step policy is served in whole batches by the policy's whole-batch counterpart
(`WHOLE_BATCH_FALLBACK`: orloj-step -> orloj, fcfs-step -> fifo, edf-step -> edf), and the
scheduler logs it at start. A whole-batch policy serves every model in whole batches.

The conversation with a worker (messages.py): after every step the worker sends a
`StepProgress` (who runs, with the steps each has run; who finished; the step's time)
and goes on with its next step at once. For each, `StepCoordinator.on_progress` records
it and the scheduler, once its socket is drained, calls the policy's
`step_boundary(now, running)` and sends what it decided as a `StepUpdate`. The worker
drains its socket without waiting at each boundary, so an update computed from boundary
k's report is applied at boundary k + 1, when the step in progress ends. The policy is
therefore asked about that boundary: its `now` is the report's time plus the expected
step time, c(b) x step, and every reported member has one step more. An update the worker
has not applied yet (its report echoes the last `seq` it applied) still counts: its
newcomers are members (with 0 steps) and its ended members are gone, so that a batch
never exceeds the model's maximum, however late a message is. A worker with nobody
running is asked about at once, whenever requests wait.

Answers: dropped requests and ended members are answered `dropped` by the frontend
(`Discard`) at once, and the ended members leave the worker's batch at its next
boundary; finished members are answered by the worker (`Results`). The frontend answers
each request once, whoever speaks first, so a member that finishes while its end is on
the way gets one answer. A dead worker's members (running, or sent and not yet seen
running) go to the frontend in `WorkerLost`, like a whole batch: re-queued once or
answered `error` (docs/reliability.md).

Learning: each finished member's steps are an exact sample of its solo work (steps x
step), each ended member's a censored one (`observe_ended`). An app keeps the warm-up
prior until it has `MIN_APP_SAMPLES` finished members, as in whole-batch serving.

Step times are learned too: the warm-up measures one step of the model alone in a quiet
process (c(b) x step), but a served step also pays the worker's own work (moving rows,
answering, reporting: `overhead_s` in the reports) and shares the machine with the
frontend, the scheduler and anything else. From every report the coordinator keeps an
exponential average of the model's time over its prediction and of the overhead per
step, and gives the policy the resulting wall time of a step of each size
(`set_step_times`). Without it, orloj-step admitted on a step that took 3x what the
warm-up said on a loaded 2-core machine, and most of whom it admitted missed.
"""

from __future__ import annotations

import logging

from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.step_times import StepTimes
from orloj_rt.serving.learning import MIN_APP_SAMPLES, prior_of

log = logging.getLogger("orloj_rt.scheduler")

#: Step times learned online (`StepCoordinator._learn_step_time`): each report moves the
#: estimate by this share per timed step it covers (an exponential average over about
#: 1 / STEP_TIME_RATE steps), and the policy hears of it when it moved this much
STEP_TIME_RATE = 0.02
STEP_TIME_PUSH = 0.05




class _Run:
    """One worker's running batch of one model, as the scheduler knows it."""

    __slots__ = ("running", "outstanding", "seq", "at", "dirty")

    def __init__(self) -> None:
        self.running: dict[int, int] = {}  # token -> steps run, at the last report
        self.outstanding: list = []  # (seq, joined tokens, ended tokens): not yet applied
        self.seq = 1
        self.at = 0.0  # the last report's boundary time
        self.dirty = False  # a report arrived: decide for the next boundary

    def pending(self) -> tuple[list[int], set[int]]:
        joined: list[int] = []
        ended: set[int] = set()
        for _, j, e in self.outstanding:
            joined += j
            ended |= e
        return joined, ended

    def idle(self) -> bool:
        """Nobody runs and nobody is on the way: ask the policy whenever requests wait."""
        return not self.running and not any(j for _, j, _ in self.outstanding)


class _AppSteps:
    __slots__ = ("samples", "sum", "steps", "learned", "installed")

    def __init__(self, distribution_cls) -> None:
        self.samples = 0
        self.sum = 0.0  # of solo-time estimates (stats)
        self.steps = 0  # of the finished members' steps (stats)
        self.learned = distribution_cls()
        self.installed = False


class StepCoordinator:
    """One step-served model: its step policy's view of every worker (module docstring).

    `slots` is the scheduler's token -> (slot, generation, app, deadline, hint, classes)
    for the model's requests in flight; this class takes out those it answers or learns
    are answered."""

    def __init__(self, name: str, index: int, policy, slots: dict, step_s: float,
                 inflation: list[float], work_fit, workers: int):  # fmt: skip
        self.name = name
        self.index = index
        self.policy = policy
        self.slots = slots
        self.step_s = step_s
        self.inflation = inflation
        self.work_fit = work_fit  # (a, k): stats report solo times as the whole batches do
        self.runs = [_Run() for _ in range(workers)]
        self.cancelled: set[int] = set()  # members to end at their next boundary
        self.apps: dict[str, _AppSteps] = {}
        self.arrived = False  # requests arrived since the last pass: busy workers too
        # stats: steps, members per step; over the timed steps, the model's time and the
        # rest of the worker's (its overhead); reports; decisions
        self.times = StepTimes()
        self.reports = 0
        self.decisions = 0
        self.finished = 0
        self.ended = 0
        # a step of b members takes model_scale x c(b) x step_s + overhead_s_per_step of
        # wall time: learned from the reports (warm-up measures the model alone, in a
        # quiet process; serving adds the worker's own work and the machine's other load)
        self.model_scale = 1.0
        self.step_overhead_s = 0.0
        self._pushed = (1.0, 0.0)

    def step_time(self, b: int) -> float:
        """The expected wall time of a step of b members, as learned so far."""
        if b < 1:
            return 0.0
        c = self.inflation[min(b, len(self.inflation)) - 1]
        return self.model_scale * self.step_s * c + self.step_overhead_s

    def _learn_step_time(self, msg: msgs.StepProgress) -> None:
        """Fold a report's timed steps into the step-time model, and tell the policy when
        it moved (module docstring: `set_step_times`)."""
        if msg.timed <= 0 or msg.n_steps <= 0:
            return
        b = max(1, round(msg.members / msg.n_steps))
        c = self.inflation[min(b, len(self.inflation)) - 1]
        scale = min(max(msg.model_s / msg.timed / (self.step_s * c), 0.25), 20.0)
        overhead = max(msg.overhead_s / msg.timed, 0.0)
        w = 1.0 - (1.0 - STEP_TIME_RATE) ** msg.timed
        self.model_scale += w * (scale - self.model_scale)
        self.step_overhead_s += w * (overhead - self.step_overhead_s)
        old = self._pushed[0] * self.step_s + self._pushed[1]
        new = self.model_scale * self.step_s + self.step_overhead_s
        if abs(new - old) > STEP_TIME_PUSH * old:
            self._pushed = (self.model_scale, self.step_overhead_s)
            self.policy.set_step_times([self.step_time(b) for b in
                                        range(1, self.policy.max_batch + 1)])  # fmt: skip

    # ------------------------------------------------------------------ reports
    def on_progress(self, msg: msgs.StepProgress) -> None:
        """Called for each StepProgress of this model."""
        if not 0 <= msg.worker < len(self.runs):
            log.error("step progress from unknown worker %d; ignored", msg.worker)
            return
        run = self.runs[msg.worker]
        if run.outstanding:
            run.outstanding = [u for u in run.outstanding if u[0] > msg.applied]
        run.running = dict(zip(msg.running, msg.steps, strict=True))
        run.at = msg.at
        run.dirty = True
        slots = self.slots
        cancelled = self.cancelled
        for token, steps in msg.finished:
            cancelled.discard(token)
            entry = slots.pop(token, None)
            if entry is not None:  # else: ended by the policy while it finished
                self.finished += 1
                self._learn(entry[2], int(steps))
                if entry[5] is not None:  # its hint's classes keep (hint, solo work)
                    entry[5].pairs.append((entry[4], int(steps) * self.step_s))
        for token in msg.failed:
            cancelled.discard(token)
            slots.pop(token, None)
        self.reports += 1
        self.times.add(msg)
        self._learn_step_time(msg)

    def _learn(self, app: str, steps: int) -> None:
        from orloj_rt.engine import Distribution

        policy = self.policy
        st = self.apps.get(app)
        if st is None:
            st = self.apps[app] = _AppSteps(Distribution)
        work = steps * self.step_s
        st.samples += 1
        st.steps += steps
        if self.work_fit is not None:  # as whole-batch serving estimates it: comparable
            st.sum += self.work_fit[0] + self.work_fit[1] * steps
        else:
            st.sum += work
        if st.installed:
            policy.observe_finished(app, steps)
            return
        st.learned.add(work)
        if st.samples >= MIN_APP_SAMPLES:
            policy.set_distribution(app, st.learned)
            st.installed = True
            st.learned = None
            log.info("model %s app %s: learned distribution replaces the prior (%d samples, "
                     "mean %.1f steps)", self.name, app, st.samples,
                     st.sum / st.samples / (self.work_fit[1] if self.work_fit else self.step_s))

    def seed_app(self, app: str, works: list[float], prior) -> None:
        """App `app` (a hint class, serving/hints.py) starts over from these solo works:
        its own distribution if there are `MIN_APP_SAMPLES`, else `prior`."""
        from orloj_rt.engine import Distribution

        st = self.apps[app] = _AppSteps(Distribution)
        for work in works:
            steps = work / self.step_s
            st.samples += 1
            st.steps += round(steps)
            st.sum += self.work_fit[0] + self.work_fit[1] * steps if self.work_fit else work
            st.learned.add(work)
        if st.samples >= MIN_APP_SAMPLES:
            self.policy.set_distribution(app, st.learned)
            st.installed, st.learned = True, None
        else:
            self.policy.set_distribution(app, prior)

    def cancel(self, token: int) -> bool:
        """A client cancelled member `token`: it is ended at its worker's next boundary
        (`decide`). False if no worker runs it or has it on the way."""
        for run in self.runs:
            joined, ended = run.pending()
            if token in ended:
                return True  # being ended already
            if token in run.running or token in joined:
                self.cancelled.add(token)
                run.dirty = True
                return True
        return False

    # ------------------------------------------------------------------ decisions
    def wants_decision(self, worker: int) -> bool:
        """A report arrived; or requests wait and the worker runs nothing of this model;
        or requests arrived and its batch has a free place."""
        run = self.runs[worker]
        if run.dirty:
            return True
        if not len(self.policy):
            return False
        if run.idle():
            return True
        if not self.arrived:
            return False
        joined, ended = run.pending()
        return len(run.running) + len(joined) - len(ended) < self.policy.max_batch

    def decide(self, worker: int, now: float):
        """The policy's decision for `worker`'s next boundary: (StepUpdate or None, the
        tokens to answer `dropped`)."""
        from orloj_rt.policies.step_interface import RunningMember

        run = self.runs[worker]
        run.dirty = False
        slots = self.slots
        joined_pending, ended_pending = run.pending()
        at, ahead = now, 1
        if run.running:
            # a step is in progress: decide for the boundary where it ends, the first
            # after `now` as the last report and the step time foretell it. Whether a
            # member finishes in those `ahead` steps is not known yet: they are unseen
            # (RunningMember.unseen), or every member about to finish would look long.
            st = self.step_time(len(run.running))
            ahead = int((now - run.at) / st) + 1 if st > 0 and now > run.at else 1
            at = run.at + ahead * st
        members = []
        cut = []  # members their clients cancelled: ended, whatever the policy says
        for token, steps in [*((t, s + ahead) for t, s in run.running.items()),
                             *((t, 0) for t in joined_pending)]:  # fmt: skip
            entry = slots.get(token)
            if entry is None or token in ended_pending:
                continue
            if token in self.cancelled:
                cut.append(token)
            elif steps:
                members.append(RunningMember(token, entry[2], entry[3], steps, unseen=ahead))
            else:
                members.append(RunningMember(token, entry[2], entry[3], 0))
        for token in cut:
            self.cancelled.discard(token)
        if not members and not len(self.policy) and not cut:
            return None, []
        self.decisions += 1
        joined, dropped, ended = self.policy.step_boundary(at, members)
        if cut:
            ended = [*ended, *cut]
        answered = []
        for token in dropped:
            slots.pop(token, None)
            answered.append(token)
        steps_of = {m.id: m.steps for m in members}
        steps_of.update((t, run.running.get(t, 0)) for t in cut)
        for token in ended:
            entry = slots.pop(token, None)
            if entry is None:
                continue
            self.ended += 1
            self.policy.observe_ended(entry[2], steps_of.get(token, 0))
            answered.append(token)
        if not joined and not ended:
            return None, answered
        triples = []
        for token in joined:
            entry = slots[token]
            triples.append([token, entry[0], entry[1]])
        seq = run.seq
        run.seq += 1
        run.outstanding.append((seq, list(joined), set(ended)))
        return msgs.StepUpdate(self.index, seq, triples, list(ended)), answered

    # ------------------------------------------------------------------ failures
    def lose(self, worker: int) -> list[int]:
        """Worker `worker` is gone: the tokens of its members (running, or sent to it and
        not seen running), taken out; the caller sends them in WorkerLost."""
        run = self.runs[worker]
        joined, _ = run.pending()
        tokens = [t for t in [*run.running, *joined] if t in self.slots]
        for t in tokens:
            del self.slots[t]
            self.cancelled.discard(t)
        self.runs[worker] = _Run()
        return tokens

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        t = self.times
        n, timed = t.n_steps, t.timed
        step_ms = t.model_s / timed * 1e3 if timed else 0.0
        overhead_us = t.overhead_s / timed * 1e6 if timed else 0.0
        return {
            "batching": "step",
            "step_solo_ms": self.step_s * 1e3,
            "steps": n,
            "mean_members": t.members / n if n else 0.0,
            "timed_steps": timed,
            "mean_step_ms": step_ms,  # the model's calls, per timed step
            "mean_overhead_us": overhead_us,  # the rest of the worker's time, per step
            "overhead_share": overhead_us / 1e3 / step_ms if step_ms else 0.0,
            # the same in CPU time, which other processes on the machine do not inflate
            "mean_step_cpu_ms": t.model_cpu_s / timed * 1e3 if timed else 0.0,
            "mean_overhead_cpu_us": t.overhead_cpu_s / timed * 1e6 if timed else 0.0,
            "overhead_cpu_share": t.overhead_cpu_s / t.model_cpu_s
            if t.model_cpu_s else 0.0,
            # of the overhead, coordination with the scheduler (updates in, reports out)
            "mean_coord_us": t.coord_s / timed * 1e6 if timed else 0.0,
            "coord_share": t.coord_s / t.model_s if t.model_s else 0.0,
            "mean_coord_cpu_us": t.coord_cpu_s / timed * 1e6 if timed else 0.0,
            "coord_cpu_share": t.coord_cpu_s / t.model_cpu_s if t.model_cpu_s
            else 0.0,
            "reports": self.reports,
            "decisions": self.decisions,
            "finished": self.finished,
            "ended": self.ended,
            "running": sum(len(r.running) for r in self.runs),
            # the step-time model the policy decides with (learned online)
            "learned_step_1_ms": self.step_time(1) * 1e3,
            "learned_step_max_ms": self.step_time(len(self.inflation)) * 1e3,
        }

    def app_stats(self) -> dict:
        return {
            app: {
                "samples": st.samples,
                "mean_solo_ms": st.sum / st.samples * 1e3 if st.samples else 0.0,
                "mean_steps": st.steps / st.samples if st.samples else 0.0,
                "source": "learned" if st.installed else "prior",
            }
            for app, st in self.apps.items()
        }


def step_prior(step_s: float, works: list) -> tuple[float, float]:
    """The prior of solo work (mean, CoV) from the warm-up examples' steps."""
    times = [w * step_s for w in works if w > 0]
    if not times:
        return step_s, 1.0
    return prior_of(times)
