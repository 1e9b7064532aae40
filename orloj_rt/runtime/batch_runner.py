"""Running one model's batches on one device: assembly, padding, CUDA graphs, profiling.

Used by the worker process, and directly by tests and benchmarks (no sockets here).

Input path (no copy before the batch exists): the worker hands over, per member, the
numpy views of its ring slot (`np.frombuffer`). A batch of one becomes `torch.from_numpy`
of the view with a batch dimension added: the model reads shared memory directly. A
larger batch is gathered once into a new array (`np.stack`, or a padded array where a
variable dim differs); on CUDA, into a pinned staging buffer and then the device.

CUDA graphs (`CudaGraphRunner`; untested here: no GPU was available when it was written,
see docs/runtime.md): one graph per (batch bucket, shape bucket) combination, captured at
warm-up into one shared memory pool, largest first. Each graph owns persistent input
buffers; a batch is padded up to its buckets (batch padding repeats member 0, so that the
padding rows compute something valid; variable dims use the spec's `pad_value`), copied
into the buffers, replayed, and its outputs sliced back to the real members.

Variants (accuracy scaling, `ModelSpec.variants`; `variant_runners`): one runner per
declared variant. The full model's is the model's own runner; a `max_depth` variant's
shares its module and sets the module's forced depth (`max_depth`, models/steps.py)
around each of its batches (and around its graph capture, where graphs are used), putting
it back after; a `factory_args` variant's runs a module of its own, built with those
arguments merged over the model's (and captures its own graphs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import statistics
import time
from collections.abc import Sequence

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec
from orloj_rt.protocol.messages import ModelProfile

log = logging.getLogger("orloj_rt.worker")

PROFILE_SOLO_EXAMPLES = 24  # example requests timed alone: the prior's samples
PROFILE_REPS = 3  # repetitions per timed point (the fastest is kept: see profile())
PROFILE_INFLATION_EXAMPLES = 3  # examples whose batches of b copies give c(b)
MAX_CUDA_GRAPHS = 256  # above this many bucket combinations, capture is refused


class BatchError(Exception):
    """The model broke a batch invariant; every member of the batch fails with this text."""


def torch_dtypes():
    import torch

    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }


def default_examples(spec: ModelSpec, rng: np.random.Generator, n: int) -> list[dict]:
    """Requests at the largest shape: normal floats, zero integers (safe as indices)."""
    from orloj_rt.models.spec import DTYPES

    out = []
    for _ in range(n):
        req = {}
        for t in spec.inputs:
            np_dtype = np.dtype(DTYPES[t.dtype][0])
            if t.dtype in ("float32", "float16"):
                req[t.name] = rng.standard_normal(t.max_shape).astype(np_dtype)
            else:
                req[t.name] = np.zeros(t.max_shape, dtype=np_dtype)
        out.append(req)
    return out


class BatchRunner:
    """Eager execution of one model's batches (CPU, and CUDA for uncapturable models).

    Besides `run`, the step runner (step_runner.py) uses its pieces: `input_tensors` (the
    members' inputs as one batch on the device), `extract_outputs` (a model's outputs as
    checked numpy arrays), `on_cuda` and `synchronize`."""

    def __init__(self, entry: ModelEntry, module, device: str = "cpu"):
        import torch

        self.torch = torch
        self.entry = entry
        self.spec = entry.spec
        self.device = torch.device(device)
        self.module = module.to(self.device)
        dt = torch_dtypes()
        self.in_dtypes = [dt[t.dtype] for t in self.spec.inputs]
        self.out_dtypes = [dt[t.dtype] for t in self.spec.outputs]
        self.pad_values = [t.pad_value for t in self.spec.inputs]
        self.work_index = next(
            (i for i, t in enumerate(self.spec.outputs) if t.name == self.spec.work_output), None
        )
        self._on_cuda = self.device.type == "cuda"
        # a variant's forced maximum depth, set on the module around each batch (None: off)
        self.max_depth: int | None = None
        self.variant: str | None = None  # the variant this runner serves (None: the model)

    def forced_depth(self):
        """A context in which the module stops after `max_depth` layers (a no-op without
        one); the module's previous setting comes back after."""
        if self.max_depth is None:
            return contextlib.nullcontext()
        return _forced_depth(self.module, self.max_depth)

    # ------------------------------------------------------------------ one batch
    def run(self, members: Sequence[Sequence[np.ndarray]]):
        """Runs one batch. `members[j][i]` is member j's input i (spec order), a numpy array
        at the request's own shape. Returns (outputs, work): one C-contiguous CPU numpy
        array per output with the batch as dim 0, and per-member work or None."""
        b = len(members)
        if b == 0:
            raise BatchError("empty batch")
        if b > self.spec.max_batch_size:
            raise BatchError(f"batch of {b} exceeds max_batch_size {self.spec.max_batch_size}")
        with self.torch.inference_mode(), self.forced_depth():
            outputs = self._forward(members)
        return self.extract_outputs(outputs, b)

    @property
    def on_cuda(self) -> bool:
        """Whether the model runs on a CUDA device."""
        return self._on_cuda

    def synchronize(self) -> None:
        """Waits for the work queued on the device (nothing to wait for on the CPU)."""
        if self._on_cuda:
            self.torch.cuda.synchronize(self.device)

    def input_tensors(self, members: Sequence[Sequence[np.ndarray]]) -> list:
        """The members' inputs as one batch: a tensor per input (spec order), on the
        model's device; variable dims padded to the longest member with the input's
        `pad_value`. `members[j][i]` is member j's input i, as for `run`."""
        tensors = []
        for i in range(len(self.spec.inputs)):
            t = self._to_tensor(self._gather([m[i] for m in members], i), i)
            if self._on_cuda:
                t = t.to(self.device, non_blocking=True)
            tensors.append(t)
        return tensors

    def _to_tensor(self, arr: np.ndarray, i: int):
        t = self.torch.from_numpy(arr)
        if self.spec.inputs[i].dtype == "bfloat16":  # stored as uint16 bits
            t = t.view(self.torch.bfloat16)
        return t

    def _gather(self, views: list[np.ndarray], i: int) -> np.ndarray:
        """One input's batch as one array: a view for b == 1, one copy otherwise."""
        if len(views) == 1:
            return views[0][None]
        shape0 = views[0].shape
        if all(v.shape == shape0 for v in views):
            return np.stack(views)
        target = tuple(max(v.shape[d] for v in views) for d in range(len(shape0)))
        out = np.full((len(views), *target), self.pad_values[i], dtype=views[0].dtype)
        for j, v in enumerate(views):
            out[(j, *(slice(0, s) for s in v.shape))] = v
        return out

    def _forward(self, members):
        return self.module(*self.input_tensors(members))

    def extract_outputs(self, result, b: int):
        """A model's result for `b` members (a tensor, a tuple or list in spec order, or a
        dict by output name) as (outputs, work): one C-contiguous CPU numpy array per
        output with the members as dim 0 (rows beyond `b`, a bucket's padding, are cut),
        and per-member work or None. BatchError if it does not match the spec."""
        torch = self.torch
        spec = self.spec
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            try:
                result = tuple(result[t.name] for t in spec.outputs)
            except KeyError as exc:
                raise BatchError(f"model {spec.name!r} returned no output {exc}") from None
        if not isinstance(result, (tuple, list)) or len(result) != len(spec.outputs):
            n = len(result) if isinstance(result, (tuple, list)) else type(result).__name__
            raise BatchError(f"model {spec.name!r} returned {n} outputs; its spec declares "
                             f"{len(spec.outputs)}")  # fmt: skip
        arrays = []
        for o, t, dtype in zip(result, spec.outputs, self.out_dtypes, strict=True):
            if not isinstance(o, torch.Tensor) or o.dim() == 0 or o.shape[0] < b:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise BatchError(f"model {spec.name!r} output {t.name!r}: expected {b} rows "
                                 f"(one per request), got {got}")  # fmt: skip
            if o.shape[0] != b:  # padded up to a batch bucket
                o = o[:b]
            row = tuple(o.shape[1:])
            if row != t.shape and (len(row) != len(t.shape) or any(
                want not in (-1, got) for want, got in zip(t.shape, row, strict=True)
            )):  # fmt: skip
                raise BatchError(f"model {spec.name!r} output {t.name!r} has shape {list(row)} "
                                 f"per request; its spec says {list(t.shape)}")  # fmt: skip
            if o.dtype != dtype:
                o = o.to(dtype)
            if self._on_cuda:
                o = o.cpu()
            if not o.is_contiguous():
                o = o.contiguous()
            arrays.append(o.view(torch.int16).numpy() if dtype == torch.bfloat16 else o.numpy())
        work = None
        if self.work_index is not None:
            work = arrays[self.work_index].reshape(b).tolist()
        return arrays, work

    # ------------------------------------------------------------------ warm-up
    def timed(self, members) -> float:
        start = time.perf_counter()
        self.run(members)
        self.synchronize()
        return time.perf_counter() - start

    def profile(self, examples: list[dict]) -> ModelProfile:
        """Warms the model up and measures its solo times, c(b), and work fit."""
        spec = self.spec
        reqs = [[ex[t.name] for t in spec.inputs] for ex in examples]
        for b in (1, spec.max_batch_size, 1):  # lazy init, allocator growth
            self.run([reqs[0]] * b)
        # the fastest of the repetitions: on a machine shared with other work, noise only
        # adds time, and a preempted repetition would skew c(b) for the whole run (a
        # median over 3 let one busy moment turn c(16) = 2.4 into 8.2)
        solo, work = [], []
        for r in reqs:
            solo.append(min(self.timed([r]) for _ in range(PROFILE_REPS)))
            if self.work_index is not None:
                work.append(self.run([r])[1][0])
        order = sorted(range(len(reqs)), key=lambda j: solo[j])
        picks = {order[len(order) // 2], order[(3 * len(order)) // 4], order[-1]}
        buckets = spec.batch_buckets
        ratios = {b: [] for b in buckets}
        for j in sorted(picks)[:PROFILE_INFLATION_EXAMPLES]:
            for b in buckets:
                t1s, tbs = [], []
                for _ in range(PROFILE_REPS if b > 1 else 0):  # interleaved: a drift in
                    t1s.append(self.timed([reqs[j]]))  # the machine's load hits both
                    tbs.append(self.timed([reqs[j]] * b))
                ratios[b].append(min(tbs) / min(t1s) if t1s else 1.0)
        at = {b: max(1.0, statistics.fmean(r)) for b, r in ratios.items()}
        inflation = interpolate_inflation(at, spec.max_batch_size)
        fit = fit_work(work, solo) if work else None
        return ModelProfile(solo, inflation, fit)


def interpolate_inflation(at: dict[int, float], max_batch: int) -> list[float]:
    """c(1..max_batch) from measured buckets: linear in between, c(1) = 1, never
    decreasing (a larger batch never runs faster than a smaller one's members alone)."""
    points = sorted(at.items())
    if points[0][0] != 1:
        points.insert(0, (1, 1.0))
    table = []
    k = 0
    for b in range(1, max_batch + 1):
        while k + 1 < len(points) - 1 and points[k + 1][0] < b:
            k += 1
        (b0, c0), (b1, c1) = points[k], points[min(k + 1, len(points) - 1)]
        c = c0 if b1 == b0 else c0 + (c1 - c0) * (b - b0) / (b1 - b0)
        table.append(c)
    table[0] = 1.0
    for i in range(1, len(table)):
        table[i] = max(table[i], table[i - 1], 1.0)
    return table


def fit_work(work: Sequence[int], solo: Sequence[float]) -> list[float] | None:
    """Least squares solo ~ a + k * work, with a, k >= 0; None if work never varies."""
    n = len(work)
    if n < 2 or len(set(work)) < 2:
        return None
    mw = sum(work) / n
    ms = sum(solo) / n
    sww = sum((w - mw) ** 2 for w in work)
    k = sum((w - mw) * (s - ms) for w, s in zip(work, solo, strict=True)) / sww
    k = max(k, 0.0)
    a = max(ms - k * mw, 0.0)
    if a == 0.0 and k == 0.0:
        return None
    return [a, k]


class CudaGraphRunner(BatchRunner):
    """CUDA execution through captured graphs, one per (batch bucket, shape bucket).

    Untested: written without a GPU at hand (see docs/runtime.md). Falls back to eager for
    models with `cuda_graphs = False`, which `make_runner` never hands here.
    """

    def __init__(self, entry: ModelEntry, module, device: str):
        super().__init__(entry, module, device)
        torch = self.torch
        spec = self.spec
        per_input = []
        for t in spec.inputs:
            combos = list(itertools.product(*t.buckets)) if t.buckets else [()]
            per_input.append(combos)
        self.shape_combos = list(itertools.product(*per_input))
        n_graphs = len(self.shape_combos) * len(spec.batch_buckets)
        if n_graphs > MAX_CUDA_GRAPHS:
            raise ValueError(
                f"model {spec.name!r} would need {n_graphs} CUDA graphs (batch buckets x shape "
                f"buckets); the limit is {MAX_CUDA_GRAPHS}: use fewer buckets, or set "
                "cuda_graphs = false"
            )
        self.graphs: dict = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _bucket_shape(self, i: int, combo: tuple) -> tuple[int, ...]:
        t = self.spec.inputs[i]
        shape = list(t.max_shape)
        for d, size in zip(t.variable_dims, combo, strict=True):
            shape[d] = size
        return tuple(shape)

    def capture(self) -> None:
        """Captures every graph, largest batch first, into one shared memory pool (a
        variant's under its forced depth)."""
        with self.forced_depth():
            self._capture()

    def _capture(self) -> None:
        torch = self.torch
        for bb in sorted(self.spec.batch_buckets, reverse=True):
            for combo in self.shape_combos:
                shapes = [self._bucket_shape(i, c) for i, c in enumerate(combo)]
                static_in = [
                    torch.full((bb, *s), self.pad_values[i], dtype=self.in_dtypes[i],
                               device=self.device)  # fmt: skip
                    for i, s in enumerate(shapes)
                ]
                staging = [
                    torch.empty((bb, *s), dtype=self.in_dtypes[i], pin_memory=True)
                    for i, s in enumerate(shapes)
                ]
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(3):  # warm-up on a side stream, as capture requires
                        self.module(*static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
                    static_out = self.module(*static_in)
                self.graphs[(bb, tuple(combo))] = (graph, static_in, staging, static_out)
        torch.cuda.synchronize(self.device)
        log.info("model %s: captured %d CUDA graphs", self.spec.name, len(self.graphs))

    def _forward(self, members):
        torch = self.torch
        spec = self.spec
        b = len(members)
        bb = spec.bucket_batch(b)
        combo = []
        for i, t in enumerate(spec.inputs):
            if not t.variable_dims:
                combo.append(())
                continue
            longest = [max(m[i].shape[d] for m in members) for d in range(len(t.shape))]
            combo.append(tuple(t.bucket_shape(longest)[d] for d in t.variable_dims))
        graph, static_in, staging, static_out = self.graphs[(bb, tuple(combo))]
        for i, t in enumerate(spec.inputs):
            host = staging[i]
            if t.dtype == "bfloat16":  # numpy has no bfloat16: write its bits as uint16
                host_np = host.view(torch.int16).numpy().view(np.uint16)
            else:
                host_np = host.numpy()
            if t.variable_dims:
                host_np.fill(self.pad_values[i])
            for j in range(bb):
                v = members[j if j < b else 0][i]  # padding rows repeat member 0
                host_np[(j, *(slice(0, s) for s in v.shape))] = v
            static_in[i].copy_(host, non_blocking=True)
        graph.replay()
        # NOTE: the staging buffers are reused by the next batch; the .cpu() copies in
        # extract_outputs synchronise the stream, so the next batch cannot overwrite them early
        return static_out


def make_runner(entry: ModelEntry, module, device: str,
                max_depth: int | None = None) -> BatchRunner:  # fmt: skip
    """Eager on CPU and for uncapturable models; CUDA graphs otherwise. `max_depth`: a
    variant's forced depth, set around its batches (and its capture)."""
    if device.startswith("cuda") and entry.spec.cuda_graphs:
        runner = CudaGraphRunner(entry, module, device)
        runner.max_depth = max_depth
        runner.capture()
        return runner
    runner = BatchRunner(entry, module, device)
    runner.max_depth = max_depth
    return runner


@contextlib.contextmanager
def _forced_depth(module, depth: int):
    before = module.max_depth
    module.max_depth = depth
    try:
        yield
    finally:
        module.max_depth = before


def check_forced_depth(entry: ModelEntry, module) -> None:
    """A ConfigError naming the model's file and the variant's field (a ValueError for a
    model served without a file) when a `max_depth` variant is declared for a module that
    cannot honour it (no `max_depth` attribute: models/steps.py), or deeper than its
    layers (`num_layers`, where the module says)."""
    from orloj_rt.models.repository import ConfigError

    spec = entry.spec
    for v in spec.variants:
        if v.max_depth is None:
            continue
        problem = fix = None
        layers = getattr(module, "num_layers", None)
        if not hasattr(module, "max_depth"):
            problem = (f"model {spec.name!r}: variant {v.name!r} declares max_depth = "
                       f"{v.max_depth}, but its module ({type(module).__name__}) has no "
                       "`max_depth` attribute")  # fmt: skip
            fix = ("a forced depth needs a `layer` step model that honours it (derive it "
                   "from orloj_rt.models.steps.StepModelMixin and stop a member after "
                   "max_depth layers), or declare the variant with factory_args")
        elif isinstance(layers, int) and v.max_depth > layers:
            problem = (f"model {spec.name!r}: variant {v.name!r} declares max_depth = "
                       f"{v.max_depth}, but the model has {layers} layers")
            fix = f"declare max_depth in 1..{layers}"
        if problem is None:
            continue
        if entry.config is not None:
            raise ConfigError(entry.config, f"variants ({v.name!r}).max_depth", problem,
                              fix)  # fmt: skip
        raise ValueError(f"{problem}. Fix: {fix}")


def variant_runners(entry: ModelEntry, module, runner: BatchRunner, device: str,
                    build=None) -> dict[str, BatchRunner]:  # fmt: skip
    """A runner per declared variant (module docstring), by name; {} for a model without
    variants. `runner` is the full model's (`module`'s); `build(entry)` builds a
    `factory_args` variant's module (default: models.loading.build_module)."""
    spec = entry.spec
    if not spec.variants:
        return {}
    check_forced_depth(entry, module)
    out: dict[str, BatchRunner] = {}
    for v in spec.variants:
        if v.is_full:
            r = runner
        elif v.max_depth is not None:
            r = make_runner(entry, module, device, v.max_depth)
        else:
            if build is None:
                from orloj_rt.models.loading import build_module as build
            own = dataclasses.replace(entry, factory_args={**entry.factory_args,
                                                           **(v.factory_args or {})})
            r = make_runner(own, build(own), device)
        if r is not runner:
            r.variant = v.name
        out[v.name] = r
    return out


def examples_for(entry: ModelEntry, n: int, seed: int = 0) -> list[dict]:
    from orloj_rt.models.loading import resolve

    rng = np.random.default_rng(seed)
    if entry.examples:
        ex = list(resolve(entry.examples)(rng, n))
    else:
        ex = default_examples(entry.spec, rng, n)
    if not ex:
        raise ValueError(f"model {entry.spec.name!r}: its examples function returned none")
    for req in ex:
        for t in entry.spec.inputs:
            if t.name not in req:
                raise ValueError(f"model {entry.spec.name!r}: an example lacks input {t.name!r}")
            if math.prod(np.shape(req[t.name])) == 0 and t.variable_dims:
                raise ValueError(f"model {entry.spec.name!r}: an example input is empty")
    return ex
