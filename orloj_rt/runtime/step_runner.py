"""Step-level batching inside a worker: the running members' state, joins, leaves, steps.

Used by the worker process (`worker.py` turns the scheduler's `StepUpdate`s into calls
here and reports each boundary), and directly by tests and benchmarks (no sockets here).

A model served step by step implements the step interface (orloj_rt/models/steps.py):
`init_state`, `step`, `finished`, `progress`, `outputs`. One `StepBatch` per such model
holds the members running on this worker, and at every step boundary

1. removes the members the scheduler ended (`end`);
2. admits newcomers (`join`): one batched `init_state` (a `token` model's prefill, a
   `layer` model's embeddings); a `layer` newcomer then **catches up**: the newcomers run
   alone, layer by layer, until they reach the layer the batch is at (members that are
   done during the catch-up are answered at once), and only then join the batch, so that
   every step of the batch runs one layer for every member. This is LazyBatching's
   catch-up; the batch waits for it (docs/results.md measures it against whole batches);
3. runs one step for every member (`step`), answers the members that are done at once,
   and removes them.

The state lives in rows (`StateRows`): per state key, one tensor of `capacity` rows
allocated once; the running members are rows 0..n-1, and the model's step runs on views of
them. A member that leaves moves the last row into its place (one row copied, not the
batch, as a `select` would: at 16 members of `generate` a select copies 5 MB, 0.7 ms,
half a step); a newcomer is written into the next free row. States of different extents
(a `layer` model's sequence length) are padded with the model's `STATE_PAD`, as `merge`
does, so the rows behave as the merged state would.

CUDA graphs (`StepGraphs`; untested: no GPU was available when it was written, see
docs/runtime.md): for a `token` model with `cuda_graphs = true`, one graph per batch
bucket captures `step` on the rows, padding rows repeating row 0. Capture is guarded: a
step that cannot be captured (a host sync, a shape that changes), or whose replay differs
from the eager step on the same state, leaves the model eager, with a log line.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from orloj_rt.runtime.batch_runner import PROFILE_REPS, BatchError, BatchRunner

log = logging.getLogger("orloj_rt.worker")

#: warm-up examples whose step times give the step's solo time and c(b)
PROFILE_STEP_EXAMPLES = 3
#: steps run before timing one (lazy initialisation, a realistic cache position)
PROFILE_WARM_STEPS = 2

#: emit(token, outputs or None, error text or None, started, batch size): one answer
Emit = Callable[[int, list | None, str | None, float, int], None]


def is_step_model(module) -> bool:
    """Whether `module` implements the step interface (orloj_rt/models/steps.py)."""
    return all(callable(getattr(module, name, None))
               for name in ("init_state", "step", "finished", "progress", "outputs"))  # fmt: skip


class StateRows:
    """The running members' state as rows of preallocated tensors (module docstring).

    `base[key]` has `capacity` rows; members are rows 0..n-1, and `view()` is the state
    the model's functions see: `base[key][:n]` (views, no copy). A step's result for the
    keys it did not update in place (small tensors, usually: positions, counters) is kept
    as it is and copied into the rows only when they change (`_sync`), not every step."""

    def __init__(self, pad: Mapping[str, float | bool], capacity: int):
        self.pad = dict(pad)
        self.capacity = capacity
        self.base: dict = {}
        self.n = 0
        self._rows: dict | None = None  # base[key][:n], once built
        self._view: dict | None = None  # the state as of the last step (some keys fresh)

    def _row_views(self) -> dict:
        if self._rows is None:
            self._rows = {k: b[: self.n] for k, b in self.base.items()}
        return self._rows

    def view(self) -> dict:
        if self._view is None:
            self._view = self._row_views()
        return self._view

    def _sync(self) -> None:
        """Copies into the rows the keys that the last steps returned as new tensors."""
        view, rows = self._view, self._rows
        if view is not None and view is not rows:
            for k, v in view.items():
                if v is not rows[k]:
                    rows[k].copy_(v)
        self._view = None

    def _changed(self) -> None:
        self._rows = None
        self._view = None

    def row(self, r: int) -> dict:
        """Member r's state as a batch of one (views)."""
        self._sync()
        return {k: b[r : r + 1] for k, b in self.base.items()}

    def _alloc(self, key: str, rows: int, shape, like):
        import torch

        return torch.full((rows, *shape), self.pad.get(key, 0), dtype=like.dtype,
                          device=like.device)  # fmt: skip

    def append(self, state: Mapping) -> None:
        """Writes the m members of `state` into rows n..n+m-1."""
        if not state:
            raise BatchError("the model's init_state returned an empty state")
        self._sync()
        m = int(next(iter(state.values())).shape[0])
        if self.base and set(state) != set(self.base):
            raise BatchError(f"state keys changed: {sorted(state)} after {sorted(self.base)}")
        if self.n + m > self.capacity:
            # the scheduler keeps a batch within max_batch_size; growing beats failing
            log.warning("step batch of %d exceeds its capacity %d; growing it", self.n + m,
                        self.capacity)  # fmt: skip
            self._grow(rows=max(self.n + m, 2 * self.capacity))
        for key, v in state.items():
            if v.shape[0] != m:
                raise BatchError(f"state key {key!r} has {v.shape[0]} rows, expected {m}")
            b = self.base.get(key)
            if b is None:
                b = self.base[key] = self._alloc(key, self.capacity, v.shape[1:], v)
            elif b.dim() != v.dim():
                raise BatchError(f"state key {key!r} changed rank: {tuple(v.shape)} after "
                                 f"{tuple(b.shape)}")  # fmt: skip
            need = [max(x, y) for x, y in zip(b.shape[1:], v.shape[1:], strict=True)]
            if need != list(b.shape[1:]):  # a longer sequence than any so far: pad the rows
                nb = self._alloc(key, self.capacity, need, b)
                nb[(slice(0, self.n), *(slice(0, s) for s in b.shape[1:]))] = b[: self.n]
                b = self.base[key] = nb
            dst = b[self.n : self.n + m]
            if tuple(v.shape[1:]) == tuple(dst.shape[1:]):
                dst.copy_(v)
            else:
                dst.fill_(self.pad.get(key, 0))
                dst[(slice(None), *(slice(0, s) for s in v.shape[1:]))] = v
        self.n += m
        self._changed()

    def _grow(self, rows: int) -> None:
        self._sync()
        for key, b in self.base.items():
            nb = self._alloc(key, rows, b.shape[1:], b)
            nb[: self.n] = b[: self.n]
            self.base[key] = nb
        self.capacity = rows
        self._changed()

    def write_back(self, new: Mapping) -> None:
        """Takes a step's result as the state: keys the step updated in place are the row
        views already; the others are kept as returned until the rows change."""
        view = self.view()
        if new.keys() != view.keys():
            raise BatchError(f"the step changed the state's keys: {sorted(new)} after "
                             f"{sorted(view)}")  # fmt: skip
        for key, v in new.items():
            cur = view[key]
            if v is not cur and v.shape != cur.shape:
                raise BatchError(f"the step changed state key {key!r} from "
                                 f"{tuple(cur.shape)} to {tuple(v.shape)}")  # fmt: skip
        self._view = dict(new)

    def remove(self, rows: Iterable[int]) -> list[tuple[int, int]]:
        """Removes `rows`; the last live row moves into each hole. Returns the moves
        (from, to), in order, for the caller's per-row bookkeeping."""
        self._sync()
        moves = []
        for r in sorted(set(rows), reverse=True):  # the last row is always a live one
            last = self.n - 1
            if r != last:
                for b in self.base.values():
                    b[r] = b[last]
                moves.append((last, r))
            self.n -= 1
        self._changed()
        return moves

    def clear(self) -> None:
        self.n = 0
        self._changed()


class StepBatch:
    """The members of one step model running on this worker (module docstring)."""

    def __init__(self, runner: BatchRunner, emit: Emit):
        self.runner = runner
        self.model = runner.module
        self.spec = runner.spec
        self.layer = self.spec.step_kind == "layer"
        self.emit = emit
        pad = getattr(self.model, "STATE_PAD", {}) or {}
        self.rows = StateRows(pad, self.spec.max_batch_size)
        self.tokens: list[int] = []  # per row
        self.started: list[float] = []  # per row: when the member joined
        self.steps: list[int] = []  # per row: its progress (a step adds one to every row)
        self.graphs: StepGraphs | None = None
        # per boundary, read by the worker's report
        self.finished: list = []  # [token, steps]
        self.failed: list[int] = []
        self.model_s = 0.0  # init_state, catch-up and step calls: wall time
        self.model_cpu_s = 0.0  # and CPU time (every thread of the process)
        self.size = 0  # members the step ran

    def __len__(self) -> int:
        return self.rows.n

    def begin(self) -> None:
        """Called at the start of a boundary: resets what the report collects."""
        self.finished = []
        self.failed = []
        self.model_s = 0.0
        self.model_cpu_s = 0.0
        self.size = 0

    def _account(self, t0: float, c0: float) -> None:
        self.model_s += time.perf_counter() - t0
        self.model_cpu_s += time.process_time() - c0

    # ------------------------------------------------------------------ ending
    def end(self, tokens: Iterable[int]) -> None:
        """Stops the running members among `tokens` (their answer is the scheduler's);
        tokens not running here (finished already, or never joined) are ignored."""
        where = {t: r for r, t in enumerate(self.tokens)}
        rows = [where[t] for t in tokens if t in where]
        if rows:
            self._remove(rows)

    def _remove(self, rows: list[int]) -> None:
        for src, dst in self.rows.remove(rows):
            self.tokens[dst] = self.tokens[src]
            self.started[dst] = self.started[src]
            self.steps[dst] = self.steps[src]
        keep = self.rows.n
        del self.tokens[keep:]
        del self.started[keep:]
        del self.steps[keep:]

    # ------------------------------------------------------------------ joining
    def join(self, members: Sequence[tuple[int, Sequence[np.ndarray]]]) -> None:
        """Admits `members`, (token, input arrays in spec order) each: one batched
        init_state, a `layer` model's catch-up, then rows. Members done by then are
        answered at once; a model error fails the newcomers only."""
        if not members:
            return
        torch = self.runner.torch
        started = time.monotonic()
        tokens = [t for t, _ in members]
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with torch.inference_mode():
                inputs = self.runner.input_tensors([m for _, m in members])
                state = self.model.init_state(*inputs)
                tokens, state = self._leave_early(tokens, state, started)
                if self.layer and tokens and self.rows.n:
                    tokens, state = self._catch_up(tokens, state, started)
                steps = self.model.progress(state).tolist() if tokens else []
        except Exception as exc:  # noqa: BLE001 - the newcomers fail, the batch serves on
            self._account(t0, c0)
            self._fail(tokens, exc, started)
            return
        self._account(t0, c0)
        if tokens:
            self.rows.append(state)
            self.tokens += tokens
            self.started += [started] * len(tokens)
            self.steps += [int(k) for k in steps]

    def _leave_early(self, tokens: list[int], state: dict, started: float):
        """Answers the newcomers already done (a one-token generation); the rest stay."""
        done = self.model.finished(state)
        if not bool(done.any()):
            return tokens, state
        steps = self.model.progress(state).tolist()
        keep = []
        for j, d in enumerate(done.tolist()):
            if d:
                self._answer(tokens[j], {k: v[j : j + 1] for k, v in state.items()},
                             int(steps[j]), started, len(tokens))  # fmt: skip
            else:
                keep.append(j)
        if not keep:
            return [], state
        index = self.runner.torch.tensor(keep, device=next(iter(state.values())).device)
        return [tokens[j] for j in keep], self.model.select(state, index)

    def _catch_up(self, tokens: list[int], state: dict, started: float):
        """Steps the newcomers alone until they reach the batch's layer."""
        level = int(self.model.progress(self.rows.view()).max())
        for _ in range(level + 1):  # bounded: each step advances every newcomer
            if not tokens or int(self.model.progress(state).min()) >= level:
                break
            state = self.model.step(state)
            tokens, state = self._leave_early(tokens, state, started)
        return tokens, state

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        """One step for every running member; those done are answered and leave."""
        n = self.rows.n
        if not n:
            return
        torch = self.runner.torch
        self.size = n
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with torch.inference_mode():
                if self.graphs is not None and self.graphs.covers(n):
                    self.graphs.replay(self.rows)
                else:
                    self.rows.write_back(self.model.step(self.rows.view()))
                view = self.rows.view()
                done = self.model.finished(view)
                rows = torch.nonzero(done).flatten().tolist() if bool(done.any()) else []
                steps = self.model.progress(view).tolist() if rows else None
        except Exception as exc:  # noqa: BLE001 - every member gets the error as its answer
            self._account(t0, c0)
            tokens, starts = list(self.tokens), list(self.started)
            self.rows.clear()
            self.tokens.clear()
            self.started.clear()
            self.steps.clear()
            for t, s in zip(tokens, starts, strict=True):
                self._fail([t], exc, s)
            return
        self._account(t0, c0)
        self.steps = [k + 1 for k in self.steps]
        if rows:
            with torch.inference_mode():
                for r in rows:
                    self._answer(self.tokens[r], self.rows.row(r), int(steps[r]),
                                 self.started[r], n)  # fmt: skip
            self._remove(rows)

    def progress(self) -> tuple[list[int], list[int]]:
        """The running members' tokens and the steps each has run (counted here: every
        step adds one to every member's `progress`, which the model gave at its join)."""
        return list(self.tokens), list(self.steps)

    # ------------------------------------------------------------------ answers
    def _answer(self, token: int, state: dict, steps: int, started: float, size: int) -> None:
        try:
            arrays, _ = self.runner.extract_outputs(self.model.outputs(state), 1)
            # the rows are reused: the answer must not view them
            arrays = [np.array(a, copy=True) for a in arrays]
        except Exception as exc:  # noqa: BLE001 - this member's answer is the error
            self._fail([token], exc, started)
            return
        self.finished.append([token, steps])
        self.emit(token, arrays, None, started, size)

    def _fail(self, tokens: list[int], exc: BaseException, started: float) -> None:
        text = str(exc) if isinstance(exc, BatchError) else (
            f"model {self.spec.name!r} failed: {type(exc).__name__}: {exc}"
        )
        log.warning("step batch of %s: %s", self.spec.name, text)
        for t in tokens:
            self.failed.append(t)
            self.emit(t, None, text, started, len(tokens))


# ---------------------------------------------------------------------- warm-up
def profile_steps(runner: BatchRunner, examples: list[dict]) -> list:
    """[step_s, c(1..max_batch), steps per example] (`ModelProfile.steps`): one step's solo
    time, a step of b members over a step of one (from batches of b copies, at the batch
    buckets, interpolated), and the steps each example runs to its end."""
    from orloj_rt.runtime.batch_runner import interpolate_inflation

    torch = runner.torch
    model = runner.module
    spec = runner.spec
    reqs = [[ex[t.name] for t in spec.inputs] for ex in examples]
    with torch.inference_mode():
        states = [model.init_state(*runner.input_tensors([r])) for r in reqs]
        work = []
        for s in states:
            s = {k: v.clone() for k, v in s.items()}  # steps may update a state in place
            for _ in range(100_000):
                if bool(model.finished(s).all()):
                    break
                s = model.step(s)
            work.append(int(model.progress(s).max()))
        order = sorted(range(len(reqs)), key=lambda j: work[j])
        picks = sorted({order[len(order) // 2], order[(3 * len(order)) // 4], order[-1]})
        solo, ratios = [], {b: [] for b in spec.batch_buckets}
        for j in picks[:PROFILE_STEP_EXAMPLES]:
            one = _stepping_state(model, states[j])
            t1s = {b: [] for b in spec.batch_buckets}
            tbs = {b: [] for b in spec.batch_buckets}
            many = {b: _stepping_state(model, model.merge([states[j]] * b))
                    for b in spec.batch_buckets if b > 1}  # fmt: skip
            for _ in range(PROFILE_REPS):  # interleaved: a drift in the machine's load
                for b in spec.batch_buckets:  # hits both
                    t1s[b].append(_time_step(runner, model, one))
                    if b > 1:
                        tbs[b].append(_time_step(runner, model, many[b]))
            solo.append(min(t for ts in t1s.values() for t in ts))
            for b in spec.batch_buckets:
                ratios[b].append(min(tbs[b]) / min(t1s[b]) if b > 1 else 1.0)
    at = {b: max(1.0, statistics.fmean(r)) for b, r in ratios.items()}
    return [statistics.median(solo), interpolate_inflation(at, spec.max_batch_size), work]


def _stepping_state(model, state: dict) -> dict:
    """A copy of `state` advanced by a few steps, as a running batch's would be."""
    s = {k: v.clone() for k, v in state.items()}
    for _ in range(PROFILE_WARM_STEPS):
        s = model.step(s)
    return s


def _time_step(runner: BatchRunner, model, state: dict) -> float:
    # a step on a copy: the timed state is the same every repetition (a `layer` model at
    # its last layer would otherwise run nothing)
    s = {k: v.clone() for k, v in state.items()}
    runner.synchronize()
    t0 = time.perf_counter()
    model.step(s)
    runner.synchronize()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- CUDA graphs
class StepGraphs:
    """One CUDA graph of a `token` model's step per batch bucket, over a StepBatch's rows.

    Untested: written without a GPU at hand (docs/runtime.md). Capture needs a state whose
    extents are the same for every member (every key's shape after the batch dim), so the
    rows are allocated once at their final size and never reallocated; padding rows
    (n..bucket-1) repeat row 0, as the whole-batch CudaGraphRunner's do, so that they
    compute something valid; their results are ignored."""

    def __init__(self, batch: StepBatch, example: dict):
        self.batch = batch
        self.graphs: dict[int, tuple] = {}
        self.torch = batch.runner.torch
        rows = batch.rows
        rows.append(example)  # allocates every key at capacity rows
        rows.clear()
        self._base_ptrs = {k: b.data_ptr() for k, b in rows.base.items()}

    def capture(self, example: dict) -> bool:
        """Captures every bucket, largest first; False (and eager stepping) on any
        failure or mismatch."""
        torch = self.torch
        batch = self.batch
        model = batch.model
        device = batch.runner.device
        rows = batch.rows
        pool = torch.cuda.graph_pool_handle()
        try:
            for bb in sorted(batch.spec.batch_buckets, reverse=True):
                rows.clear()
                rows.append(model.merge([example] * bb))
                static_in = {k: b[:bb] for k, b in rows.base.items()}
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(3):
                        model.step({k: v.clone() for k, v in static_in.items()})
                torch.cuda.current_stream(device).wait_stream(side)
                # the check: the eager step on a copy, against the graph's first replay
                with torch.inference_mode():
                    want = model.step({k: v.clone() for k, v in static_in.items()})
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                    static_out = model.step(static_in)
                self.graphs[bb] = (graph, static_in, static_out)
                rows.clear()
                rows.append(model.merge([example] * bb))
                graph.replay()
                for k, v in static_out.items():
                    same = (torch.allclose(v, want[k], rtol=1e-4, atol=1e-5)
                            if v.is_floating_point() else torch.equal(v, want[k]))
                    if not same:
                        raise BatchError(f"replay differs from the eager step in {k!r}")
            torch.cuda.synchronize(device)
        except Exception as exc:  # noqa: BLE001 - eager stepping is always correct
            log.warning("model %s: step not captured in CUDA graphs (%s: %s); it steps "
                        "eagerly", batch.spec.name, type(exc).__name__, exc)  # fmt: skip
            self.graphs.clear()
            rows.clear()
            return False
        rows.clear()
        log.info("model %s: captured %d step graphs", batch.spec.name, len(self.graphs))
        return True

    def covers(self, n: int) -> bool:
        """A graph serves n members while the rows were never reallocated."""
        rows = self.batch.rows
        return n <= max(self.graphs, default=0) and all(
            b.data_ptr() == self._base_ptrs.get(k) for k, b in rows.base.items()
        )

    def replay(self, rows: StateRows) -> None:
        rows._sync()
        n = rows.n
        bb = self.batch.spec.bucket_batch(n)
        graph, static_in, static_out = self.graphs[bb]
        for b in rows.base.values():  # padding rows repeat row 0
            if bb > n:
                b[n:bb] = b[0:1]
        graph.replay()
        for k, v in static_out.items():
            if v is not static_in[k]:
                rows.base[k][:n].copy_(v[:n])


def make_step_batch(runner: BatchRunner, emit: Emit, examples: list[dict] | None = None):
    """A StepBatch for `runner`'s model; on CUDA, with step graphs where the spec allows
    (`cuda_graphs`, a `token` model) and capture succeeds."""
    if not is_step_model(runner.module):
        raise ValueError(
            f"model {runner.spec.name!r} declares step_kind {runner.spec.step_kind!r} but its "
            "module does not implement the step interface (init_state, step, finished, "
            "progress, outputs: orloj_rt/models/steps.py)"
        )
    batch = StepBatch(runner, emit)
    if (runner.on_cuda and runner.spec.cuda_graphs and runner.spec.step_kind == "token"
            and examples):  # fmt: skip
        torch = runner.torch
        with torch.inference_mode():
            ex = examples[0]
            example = runner.module.init_state(
                *runner.input_tensors([[ex[t.name] for t in runner.spec.inputs]])
            )
        try:
            graphs = StepGraphs(batch, example)
            if graphs.capture(example):
                batch.graphs = graphs
        except Exception as exc:  # noqa: BLE001 - eager stepping is always correct
            log.warning("model %s: no step graphs (%s); it steps eagerly", runner.spec.name,
                        exc)  # fmt: skip
            batch.rows.clear()
    return batch
