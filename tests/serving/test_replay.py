"""One event sequence, two drivers of the serving core: the simulator's harness
(`simulate_serving`, virtual clock) and the scheduler process's message handlers (real
socket pairs, its clock replaced by the sequence's). They must decide the same: the same
batches for the same workers, the same drops and rejections, at every step."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from orloj_rt.engine.pure.batch_model import Inflation
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.channel import Channel
from orloj_rt.runtime.proc import InstanceConfig
from orloj_rt.sim.simulator import simulate_serving
from orloj_rt.sim.workloads import WorkloadSpec, generate

WORKERS = 2


def _recorded(policy: str, seed: int, hinted: bool = False) -> tuple[list, int]:
    """A simulated run's calls on the core and its decisions, and the maximum batch;
    `hinted`: the requests and the warm-up carry cost hints (hint classes in the core)."""
    spec = BUILTIN_MODELS["noop"].spec
    req = generate(WorkloadSpec(solo="bimodal", slo=3.0, load=3.0, requests=600, seed=seed,
                                hint_cv=0.6 if hinted else None,
                                prior_samples=2000 if hinted else 20_000))  # fmt: skip
    # times in seconds as the runtime sees them: one unit of solo work is 2 ms
    scale = 0.002
    trace: list = []
    hints = dict(hints=req.hint * scale, warmup_hints=req.prior_hint * scale) if hinted else {}
    simulate_serving(policy, req.arrival * scale, req.deadline * scale, req.solo * scale,
                     req.app, Inflation(spec.max_batch_size, 0.15).table,
                     req.prior * scale, workers=WORKERS, trace=trace, **hints)  # fmt: skip
    return trace, spec.max_batch_size


def _scheduler(model: str, policy: str):
    """A scheduler process's object for one built-in model, wired to socket pairs whose
    other ends play the frontend and the workers: (scheduler, frontend end, worker ends,
    the supervisor's pipe end, kept open)."""
    import select

    from orloj_rt.runtime.scheduler import Scheduler

    config = InstanceConfig(instance="replay", models=(BUILTIN_MODELS[model],),
                            ring_names=("unused",), ring_layouts=(None,), client_endpoint="",
                            devices=("cpu",) * WORKERS, policy=policy)  # fmt: skip
    parent, child = multiprocessing.Pipe(duplex=True)
    fe_a, fe_b = Channel.pair()
    pairs = [Channel.pair() for _ in range(WORKERS)]
    sched = Scheduler(config, child, fe_b, [a for a, _ in pairs])
    sched.poller = select.poll()  # run() makes it; here the handlers are called directly
    for ch, _h in sched._channels.values():
        sched.poller.register(ch.fileno(), select.POLLIN)
    frontend = Channel(fe_a, "frontend")
    workers = [Channel(b, f"worker {i}") for i, (_a, b) in enumerate(pairs)]
    return sched, frontend, workers, parent


def _drain(ch: Channel) -> list:
    out = []
    while True:
        got = ch.recv()
        if not got:
            return out
        out += [msgs.decode(parts[0]) for parts in got]


@pytest.mark.parametrize("policy", ["orloj", "fifo", "nexus", "clockwork", "orloj+hint",
                                    "sjf-hint+hint"])  # fmt: skip
def test_the_simulator_and_the_scheduler_process_decide_the_same(policy, monkeypatch):

    import orloj_rt.runtime.scheduler as scheduler_mod

    policy, hinted = policy.removesuffix("+hint"), policy.endswith("+hint")
    trace, _ = _recorded(policy, seed=7, hinted=hinted)
    sched, frontend, workers, _parent = _scheduler("noop", policy)
    clock = [0.0]
    monkeypatch.setattr(scheduler_mod.time, "monotonic", lambda: clock[0])
    batch_ids: dict[int, int] = {}
    compared = batches = 0
    try:
        for name, args in trace:
            if name == "worker_ready":
                w, profiles = args
                sched._on_worker_ready(msgs.WorkerReady(w, 1000 + w, "cpu", profiles))
            elif name == "submit":
                sched._on_submit(msgs.Submit(args[0]))
            elif name == "batch_done":
                w, model, ok, exec_s, work = args
                sched._on_batch_done(msgs.BatchDone(w, batch_ids[w], model, ok, exec_s, work))
            elif name == "dispatch":
                clock[0] = args[0]
                sched._schedule()
            else:  # "decided": what the simulator's core decided at that dispatch
                want_runs, want_dropped, want_rejected = args
                runs, dropped, rejected = [], [], []
                for i, ch in enumerate(workers):
                    for m in _drain(ch):
                        assert isinstance(m, msgs.RunBatch), m
                        runs.append((i, list(m.tokens)))
                        batch_ids[i] = m.batch_id
                for m in _drain(frontend):
                    if isinstance(m, msgs.Discard):
                        assert not m.errors, m.errors
                        dropped += m.dropped
                        rejected += m.rejected
                assert sorted(runs) == sorted(want_runs), (clock[0], runs, want_runs)
                assert dropped == list(want_dropped) and rejected == list(want_rejected)
                compared += 1
                batches += len(runs)
    finally:
        sched._close()
        for ch in (frontend, *workers):
            ch.close()
    assert compared > 500 and batches > 50, (compared, batches)
    if hinted:  # the classes were fitted, and requests were filed under them
        mq = sched.models[0]
        assert mq.stats()["hint_classes"]["default"]["fits"] >= 1
        assert any("#h" in app for app in mq.stats()["apps"]), mq.stats()["apps"]


def test_the_simulator_learns_through_the_core_as_the_runtime_does():
    """simulate_serving feeds per-request work: after 32 solo times an app's learned
    distribution replaces the warm-up prior, as in the scheduler process."""
    from orloj_rt.serving import ServingCore
    from orloj_rt.sim.simulator import SimModel, warmup_profile

    rng = np.random.default_rng(0)
    core = ServingCore([SimModel("sim", 8)], "orloj", None, 1, timer=lambda: 0.0)
    core.worker_ready(0, [warmup_profile(rng.lognormal(0, 1, 64), [1.0] * 8)])
    mq = core.models[0]
    for i in range(40):
        core.submit([(i, 0, "a", float(i), float(i) + 100.0, None, 0, 0)])
        (run,) = core.dispatch(float(i))
        core.batch_done(0, 0, True, 0.5 * len(run.tokens), [0.5] * len(run.tokens))
    assert mq.apps["a"].installed and mq.apps["a"].samples == 40


# ---------------------------------------------------------------------- step level
def _recorded_steps(policy: str, seed: int) -> list:
    """A step-level simulated run's calls on the core and its decisions."""
    from orloj_rt.sim.step_simulator import simulate_serving_steps

    spec = BUILTIN_MODELS["generate"].spec
    req = generate(WorkloadSpec(solo="lognormal", slo=1.5, load=8.0, requests=500, seed=seed))
    scale = 0.002  # one unit of solo work is 2 ms; a step a tenth of it
    trace: list = []
    simulate_serving_steps(policy, req.arrival * scale, req.deadline * scale,
                           req.solo * scale, req.app, Inflation(spec.max_batch_size, 0.15).table,
                           req.prior * scale, step=0.1 * scale, workers=WORKERS,
                           trace=trace)  # fmt: skip
    return trace


@pytest.mark.parametrize("policy", ["orloj-step", "fcfs-step"])
def test_the_step_simulator_and_the_scheduler_process_decide_the_same(policy, monkeypatch):
    """simulate_serving_steps' calls (warm-up profiles, arrivals, every StepProgress, every
    pass) replayed through the scheduler process's handlers: the same StepUpdates (seq,
    joined and ended tokens) on the same worker channels, and the same drops, each time."""

    import orloj_rt.runtime.scheduler as scheduler_mod

    trace = _recorded_steps(policy, seed=3)
    sched, frontend, workers, _parent = _scheduler("generate", policy)
    assert sched.models[0].step_level
    clock = [0.0]
    monkeypatch.setattr(scheduler_mod.time, "monotonic", lambda: clock[0])
    compared = updates = joined = ended = drops = 0
    try:
        for name, args in trace:
            if name == "worker_ready":
                w, profiles = args
                sched._on_worker_ready(msgs.WorkerReady(w, 1000 + w, "cpu", profiles))
            elif name == "submit":
                sched._on_submit(msgs.Submit(args[0]))
            elif name == "step_progress":
                sched._on_step_progress(msgs.StepProgress(*args[0]))
            elif name == "schedule":
                clock[0] = args[0]
                sched._schedule()
            else:  # "decided": the StepUpdates and drops of the simulator's pass
                want_updates, want_dropped = args
                got, dropped = [], []
                for i, ch in enumerate(workers):
                    for m in _drain(ch):
                        assert isinstance(m, msgs.StepUpdate), m
                        got.append((i, m.seq, [t for t, _s, _g in m.joined], list(m.ended)))
                for m in _drain(frontend):
                    if isinstance(m, msgs.Discard):
                        assert not m.errors and not m.rejected, m
                        dropped += m.dropped
                assert got == [tuple(u) for u in want_updates], (clock[0], got, want_updates)
                assert dropped == list(want_dropped), (clock[0], dropped, want_dropped)
                compared += 1
                updates += len(got)
                joined += sum(len(u[2]) for u in got)
                ended += sum(len(u[3]) for u in got)
                drops += len(dropped)
    finally:
        sched._close()
        for ch in (frontend, *workers):
            ch.close()
    assert compared > 1000 and updates > 200 and joined > 400, (compared, updates, joined)
    if policy == "orloj-step":  # at load 5 it drops and ends
        assert drops > 20 and ended > 0, (drops, ended)
    else:  # continuous batching gives up on nobody
        assert drops == 0 and ended == 0
