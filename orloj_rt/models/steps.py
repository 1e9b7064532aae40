"""Iterative models as step functions: what step-level batching (issue 8) drives.

A dynamic model that iterates (a generation loop: one step per token; an early-exit
encoder: one step per layer) is written once, as step functions over a per-member state,
and its whole-batch `forward` is the plain loop over them:

    state = model.init_state(*inputs)        # prefill / embeddings; may finish members
    while not model.finished(state).all():
        state = model.step(state)            # one step for every unfinished member
    return model.outputs(state)              # the spec's outputs, one row per member

A state is a dict of tensors that all have the batch as dim 0, so that a step-level
scheduler can re-form the batch between two steps:

    running = model.select(state, keep)           # members that stay (a LongTensor)
    running = model.merge([running, newcomers])   # members that join

- `token` models (spec.step_kind == "token", e.g. `generate`): every step runs the same
  function; a newcomer joins after its own `init_state`.
- `layer` models (spec.step_kind == "layer", e.g. `early_exit`): step k runs layer k. A
  newcomer catches up first: `step` it alone until `model.progress(new)` equals the
  running members' progress, then merge. `step` also accepts members at different layers
  (it runs each layer on the members at it), at the price of one call per layer.

`progress(state)` is each member's steps so far (tokens generated, layers run); the
spec's `work_output` reports the same number when the member is done.

`merge` pads every dim after the batch dim to the longest state, with the model's
`STATE_PAD[key]` (default 0), so that states of different sequence lengths combine.

Forced depth (accuracy-scaling variants, `Variant.max_depth` in models/spec.py): a
`layer` model honours its `max_depth` attribute (None: its own exit rule): a member is
finished after at most that many layers, and its work output reports the layers it ran.
The worker sets it before each batch of a `max_depth` variant (runtime/batch_runner.py).

This module does not import torch at import time (the frontend and scheduler import the
models package); `StepModelMixin` imports it inside its methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

#: a generous bound on whole-batch loops: a model whose `finished` never turns true fails
#: the batch instead of hanging the worker
MAX_STEPS = 100_000


@runtime_checkable
class StepModel(Protocol):
    """The step interface of an iterative model (see the module docstring)."""

    def init_state(self, *inputs: Any) -> dict[str, Any]: ...

    def step(self, state: dict[str, Any]) -> dict[str, Any]: ...

    def finished(self, state: dict[str, Any]) -> Any: ...

    def progress(self, state: dict[str, Any]) -> Any: ...

    def outputs(self, state: dict[str, Any]) -> tuple[Any, ...]: ...

    def select(self, state: dict[str, Any], index: Any) -> dict[str, Any]: ...

    def merge(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]: ...


class StepModelMixin:
    """`forward` as the loop over the step functions, and generic `select` / `merge`.

    Mix into a `torch.nn.Module` that defines `init_state`, `step`, `finished`,
    `progress` and `outputs`."""

    #: per state key, the value that pads a dim in `merge` (default 0)
    STATE_PAD: Mapping[str, float | bool] = {}
    #: a forced maximum depth (layers) for a `layer` model, or None: its own exit rule
    max_depth: int | None = None

    def forward(self, *inputs):
        return run_steps(self, *inputs)

    def select(self, state: dict, index) -> dict:
        return {k: v[index] for k, v in state.items()}

    def merge(self, states: Sequence[dict]) -> dict:
        return merge_states(states, self.STATE_PAD)


def run_steps(model, *inputs):
    """The whole-batch loop: every member runs until the batch's longest is done."""
    state = model.init_state(*inputs)
    for _ in range(MAX_STEPS):
        if bool(model.finished(state).all()):
            return model.outputs(state)
        state = model.step(state)
    raise RuntimeError(f"{type(model).__name__}: not finished after {MAX_STEPS} steps")


def merge_states(states: Sequence[dict], pad: Mapping[str, float | bool] | None = None) -> dict:
    """Concatenates states along the batch dim, padding later dims to the largest."""
    import torch
    import torch.nn.functional as F

    if not states:
        raise ValueError("merge needs at least one state")
    if len(states) == 1:
        return dict(states[0])
    pad = pad or {}
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        ndim = parts[0].dim()
        target = [max(p.shape[d] for p in parts) for d in range(ndim)]
        padded = []
        for p in parts:
            widths: list[int] = []
            for d in range(ndim - 1, 0, -1):  # F.pad lists the last dim first
                widths += [0, target[d] - p.shape[d]]
            if any(widths):
                value = pad.get(key, 0)
                if p.dtype == torch.bool:
                    p = F.pad(p.to(torch.uint8), widths, value=int(bool(value))).bool()
                else:
                    p = F.pad(p, widths, value=value)
            padded.append(p)
        out[key] = torch.cat(padded)
    return out
