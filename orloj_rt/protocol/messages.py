"""Every message that crosses a process boundary inside one orloj-rt instance.

Only IPC structs belong here: one small typed struct per message, each with a single-byte
type tag, so that the whole conversation between the processes reads in one place. The
client wire protocol (docs/protocol.md) is not here: it lives in `wire.py`.

    who -> whom                  tag  message        carries
    ---------------------------  ---  -------------  -----------------------------------------
    frontend   -> scheduler      S    Submit         request descriptors (slot, deadline, tier)
    frontend   -> scheduler      K    Cancel         requests their clients cancelled
    scheduler  -> frontend       Q    Cancelled      where each cancelled request was
    scheduler  -> frontend       D    Discard        requests answered without running
    scheduler  -> frontend       T    SchedulerStats learned distributions, queues (for `stats`)
    scheduler  -> worker         B    RunBatch       one batch: tokens, ring slots, variant
    worker     -> scheduler      R    WorkerReady    warm-up profile: solo times, c(b), work fit
    worker     -> scheduler      F    BatchDone      measured batch time, per-request work
    worker     -> frontend       O    Results        + one data frame per output per member
    supervisor -> any child      X    Shutdown       stop (after draining for drain_s)
    supervisor -> frontend       C    ClusterState   pids and readiness, for `health`
    any child  -> supervisor     Y    ChildReady     the child serves (frontend: its endpoint)
    any child  -> supervisor     Z    ChildFailed    a fatal error, as text, before exiting
    scheduler  -> frontend       L    WorkerLost     a worker died: the batch it was running
    scheduler  -> supervisor     H    WorkerHung     a worker with work went silent: kill it
    supervisor -> sched., front. A    AttachWorker   a restarted worker; + one fd (send_handle)
    scheduler  -> worker         J    StepUpdate     step-level batching: who joins, who is ended
    worker     -> scheduler      P    StepProgress   step-level batching: a step boundary

Step-level batching (docs/runtime.md, "Step-level batching"): for a model whose steps the
scheduler drives, the worker never waits for the scheduler between two steps. At each
step boundary it sends a `StepProgress` (who runs, who finished, the step's times) and
goes on; the scheduler reads them at its own pace (every millisecond, and when requests
arrive) and answers with a `StepUpdate` that the worker drains, without waiting, at its
next step boundary. Ended members and dropped requests
are answered `dropped` by the scheduler (`Discard`); finished members by the worker
(`Results`).

Transport: a `channel.Channel` (a Unix socket pair) between each pair of processes that
talk: frontend <-> scheduler, scheduler <-> each worker, each worker -> frontend; and a
multiprocessing Pipe between the supervisor and each child. Encoding: a message's first
part is the tag byte followed by the struct's fields as one msgpack array, in declaration
order; `Results` has one more part per data frame. Messages only grow by appending
fields with defaults, so that a newer field never breaks an older reader.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(buf):
    return msgpack.unpackb(buf, raw=False, use_list=True, strict_map_key=False)


class UnknownMessage(ValueError):
    """A frame whose tag byte no struct here owns."""


# ------------------------------------------------------------------ frontend -> scheduler
class RequestDescriptor(NamedTuple):
    """One admitted request, as the scheduler sees it (its inputs stay in the ring)."""

    token: int  # the frontend's unique id for the request; the policy's req_id
    model: int  # index into the instance's model list
    app: str
    arrival: float  # time.monotonic() seconds when the frontend received it
    deadline: float  # arrival + slo
    hint: float | None
    slot: int
    generation: int
    # the request's priority tier (wire `priority`, 0..MAX_PRIORITY in protocol/wire.py;
    # higher = more important); appended last, so an 8-field tuple still reads as tier 0
    priority: int = 0


class Submit(NamedTuple):
    TAG = b"S"
    requests: list  # of RequestDescriptor field tuples


class Cancel(NamedTuple):
    """Requests whose clients cancelled them (`op: "cancel"`, docs/protocol.md)."""

    TAG = b"K"
    tokens: list


# ------------------------------------------------------------------ scheduler -> frontend
class Cancelled(NamedTuple):
    """The scheduler's answer to a `Cancel`: where each request was. "queued": it left
    its queue and never runs (its ring slot is free); "running": a worker runs it (its
    result is to be discarded; a step member is ended at its next boundary); "unknown":
    the scheduler holds it no more (its answer is on its way)."""

    TAG = b"Q"
    results: list  # [token, "queued" | "running" | "unknown"] pairs


class Discard(NamedTuple):
    """Requests the scheduler answers without running them."""

    TAG = b"D"
    dropped: list  # tokens that can no longer meet their SLO
    rejected: list  # tokens refused by an admission rule (e.g. a queue timeout)
    errors: list  # [token, text] pairs: the scheduler could not queue them
    reason: str = ""  # why, for the rejected ones


class SchedulerStats(NamedTuple):
    """Sent every second or so; the frontend adds it to `stats` answers."""

    TAG = b"T"
    models: dict  # model name -> {"queued", "batches", "mean_batch", "apps": {app: {...}}}


# ------------------------------------------------------------------ scheduler <-> worker
class RunBatch(NamedTuple):
    TAG = b"B"
    batch_id: int
    model: int
    tokens: list
    slots: list
    generations: list
    # the model variant to run the batch with (its name in the model's `variants`, the
    # serving core's `Dispatch.variant`); None: the model as built (no variants declared)
    variant: str | None = None


class ModelProfile(NamedTuple):
    """What a worker measured while warming one model up (times in seconds)."""

    solo_times: list  # batches of one over the model's example requests
    inflation: list  # c(b) for b = 1..max_batch_size, c(1) = 1
    work_fit: list | None  # [a, k]: solo time ~ a + k * work, where the model reports work
    # step-level batching only: [step_s, step inflation c(1..max_batch), example steps]:
    # one step's solo time, a step of b members over one of 1, and the steps each warm-up
    # example ran (its work); None for a model served in whole batches
    steps: list | None = None
    # each example's cost hint, where the model derives one (a `hint` declaration), in
    # solo_times' order; None without: they seed the hint classes (serving/hints.py)
    hints: list | None = None


class WorkerReady(NamedTuple):
    TAG = b"R"
    worker: int
    pid: int
    device: str
    profiles: list  # one ModelProfile field tuple per model, in model order


class BatchDone(NamedTuple):
    TAG = b"F"
    worker: int
    batch_id: int
    model: int
    ok: bool
    exec_s: float  # the worker's wall time for the batch: gather, run, extract outputs
    work: list | None  # per member, where the model reports work


# ------------------------------------------------------------------ worker -> frontend
class Results(NamedTuple):
    """A batch's answers; data frames follow, member by member, output by output.

    `errors` is None when every member succeeded; otherwise one entry per member: None,
    or the error text of a member that failed (a failed member has no data frames).
    """

    TAG = b"O"
    model: int
    tokens: list
    started: float  # time.monotonic() when the worker began the batch
    exec_us: int
    shapes: list  # per member: one shape per output (None for a failed member)
    errors: list | None = None
    batch_size: int = 0  # the batch the members ran in when it is not len(tokens) (steps)
    variant: str | None = None  # the variant that served them (RunBatch.variant)


# ------------------------------------------------------------------ supervisor <-> children
class Shutdown(NamedTuple):
    TAG = b"X"
    drain_s: float = 0.0  # the frontend finishes in-flight work for up to this long
    reason: str = "the server is shutting down"


class ClusterState(NamedTuple):
    TAG = b"C"
    status: str  # "ok" | "degraded" | "shutting_down"
    workers: int
    workers_ready: int
    pids: dict  # {"supervisor", "frontend", "scheduler", "workers": [...]}
    # worker restarts since the start, by cause: {"crashed": n, "hung": n}
    restarts: dict | None = None


class ChildReady(NamedTuple):
    TAG = b"Y"
    role: str  # "frontend" | "scheduler" | "worker"
    index: int  # the worker's index (0 for the others)
    pid: int
    info: dict  # frontend: {"endpoint": the bound endpoint}


class ChildFailed(NamedTuple):
    TAG = b"Z"
    role: str
    index: int
    pid: int
    error: str
    # the operator's to fix (a port in use, a wrong model config): `orloj-rt start` says it
    # in one line and exits 2, as it does for problems found before the start
    operator: bool = False


# ------------------------------------------------------------------ crash recovery
class WorkerLost(NamedTuple):
    """A worker died (its channel closed) while it ran the batch `tokens`, or before the
    scheduler's RunBatch reached it. The frontend, which alone knows which of them are
    still unanswered (the worker may have sent some results before dying), re-queues each
    unanswered one once if its deadline has not passed, and answers the rest `error`."""

    TAG = b"L"
    worker: int
    pid: int
    tokens: list
    reason: str = ""


class WorkerHung(NamedTuple):
    """Worker `worker` (process `pid`) has had work for `silent_s` seconds without a word:
    no BatchDone for its batch, no StepProgress for its members (`what` says which). Sent
    on the scheduler's pipe; the supervisor kills that process, and the worker crash path
    does the rest (WorkerLost, restart). The scheduler sends it once per process."""

    TAG = b"H"
    worker: int
    pid: int
    silent_s: float
    what: str


class AttachWorker(NamedTuple):
    """Worker `worker` was restarted as process `pid` (its `epoch`-th incarnation). Sent on
    the pipe to the scheduler and to the frontend, and followed on the same pipe by one
    file descriptor (`multiprocessing.reduction.send_handle`): that process's end of a
    fresh socket pair to the new worker, which the receiver takes with `recv_handle` at
    once, before reading anything else from the pipe."""

    TAG = b"A"
    worker: int
    pid: int
    epoch: int


# ------------------------------------------------------------------ step-level batching
class StepUpdate(NamedTuple):
    """The scheduler's decision for worker `worker`'s running batch of `model`, applied at
    the worker's next step boundary (it never waits for one). `joined`: [token, slot,
    generation] per request that joins; `ended`: tokens of running members to stop (their
    `dropped` answer is the scheduler's). `seq` numbers the updates per worker and model;
    the worker echoes the last it applied in `StepProgress.applied`."""

    TAG = b"J"
    model: int
    seq: int
    joined: list
    ended: list


class StepProgress(NamedTuple):
    """Worker `worker`'s batch of `model` at a step boundary, sent without waiting for an
    answer (the scheduler reads it at its own pace). `running`/`steps`: the members still
    running and the steps each has run; `finished`: [token, steps] per member done since
    the last report (its `Results` left for the frontend before this message); `failed`:
    tokens answered `error` (a stale ring slot, a model exception). `at`: time.monotonic()
    at the boundary. Since the last report: `n_steps` steps with `members` members in all;
    over the `timed` steps among them (those not interleaved with a whole batch or an idle
    wait), `model_s` in the model's calls (init_state, catch-up, step) and `overhead_s` in
    everything else the worker did for them (reading updates, moving rows, answering,
    reporting): wall time; `model_cpu_s` and `overhead_cpu_s`: the same as CPU time of
    the process (time.process_time()), which other processes on the machine do not
    inflate; `coord_s`, `coord_cpu_s`: the part of the overhead spent coordinating with
    the scheduler (looking for and reading updates, building and sending reports)."""

    TAG = b"P"
    worker: int
    model: int
    applied: int
    at: float
    running: list
    steps: list
    finished: list
    failed: list
    n_steps: int
    members: int
    timed: int
    model_s: float
    overhead_s: float
    model_cpu_s: float
    overhead_cpu_s: float
    coord_s: float
    coord_cpu_s: float


_BY_TAG: dict[int, Any] = {
    cls.TAG[0]: cls
    for cls in (
        Submit, Discard, SchedulerStats, RunBatch, WorkerReady, BatchDone, Results,
        Shutdown, ClusterState, ChildReady, ChildFailed, WorkerLost, WorkerHung, AttachWorker,
        StepUpdate, StepProgress, Cancel, Cancelled,
    )
}  # fmt: skip
assert len(_BY_TAG) == 18, "two messages share a tag"


def encode(msg) -> bytes:
    """The tag byte followed by the fields as one msgpack array."""
    return msg.TAG + _packb(tuple(msg))


def decode(buf):
    """The struct that `buf` (bytes or a buffer) encodes; UnknownMessage for a bad tag."""
    if not len(buf):
        raise UnknownMessage("empty message")
    cls = _BY_TAG.get(buf[0])
    if cls is None:
        raise UnknownMessage(f"unknown message tag {bytes(buf[:1])!r}")
    fields = _unpackb(memoryview(buf)[1:])
    # a newer sender may have appended fields: an older reader keeps the ones it knows
    return cls(*fields[: len(cls._fields)])
