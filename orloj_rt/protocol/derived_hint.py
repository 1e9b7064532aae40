"""Server-derived cost hints: a model's `hint` declaration, compiled into a function.

A request may carry a cost `hint` (docs/protocol.md). A model may also declare how the
server derives one from the request itself (`ModelSpec.hint`, docs/models.md):

    length(NAME)        the size of input NAME's variable dim: read from its shape
    length(NAME, AXIS)  the size of dim AXIS (one request's dims, no batch dim)
    nonzero(NAME)       the non-zero entries of integer input NAME: its tokens when 0 pads

`compile_hint(spec)` parses the declaration once, at start (the spec checked it when it
was built, `models.spec.parse_hint`), and returns a `HintDeriver`: the frontend calls it
with every validated request's own hint, shapes and frames (bytes or any buffer, as
`wire.RequestValidator.check` returns them). A client's hint wins; otherwise the derived
one is computed: length() from the shape alone, nonzero() with one `np.frombuffer` (no
copy) and one `np.count_nonzero`, a few microseconds (bench/e2e_overhead.py). A failure
(none is expected once the request's shapes and sizes are validated) never reaches the
frontend's loop: the request then goes on without a hint, and the first failure, then
every power-of-two-th, is logged.

Pure numpy, no torch, no sockets: the frontend imports it (tests/test_layering.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from orloj_rt.models.spec import DTYPES, HintRule, ModelSpec

log = logging.getLogger("orloj_rt.frontend")

#: (shapes, frames) of one request, in the model's input order -> its derived hint
HintFunction = Callable[[Sequence, Sequence], float]


def compile_rule(rule: HintRule) -> HintFunction:
    """The function that computes `rule`'s hint from one request's shapes and frames."""
    index = rule.index
    if rule.form == "length":
        axis = rule.axis

        def length(shapes: Sequence, frames: Sequence) -> float:
            return float(shapes[index][axis])

        return length
    if rule.form == "nonzero":
        dtype = np.dtype(DTYPES[rule.dtype][0])
        frombuffer, count_nonzero = np.frombuffer, np.count_nonzero

        def nonzero(shapes: Sequence, frames: Sequence) -> float:
            return float(count_nonzero(frombuffer(frames[index], dtype)))

        return nonzero
    raise ValueError(f"unknown hint form {rule.form!r}")


class HintDeriver:
    """One model's derived hint: `deriver(client_hint, shapes, frames)` is the hint the
    request carries to the scheduler: the client's when it sent one, else the derived one,
    else (deriving it failed) None."""

    __slots__ = ("model", "declaration", "rule", "compute", "failures")

    def __init__(self, model: str, declaration: str, rule: HintRule):
        self.model = model
        self.declaration = declaration
        self.rule = rule
        self.compute = compile_rule(rule)
        self.failures = 0

    def __call__(self, client_hint: float | None, shapes: Sequence,
                 frames: Sequence) -> float | None:  # fmt: skip
        if client_hint is not None:
            return client_hint
        try:
            return self.compute(shapes, frames)
        except Exception as exc:  # noqa: BLE001 - no hint, never a crash
            self.failures = n = self.failures + 1
            if n & (n - 1) == 0:
                log.warning("model %s: deriving the hint %r failed (%s: %s; %d time(s) so "
                            "far); the request goes on without a hint", self.model,
                            self.declaration, type(exc).__name__, exc, n)  # fmt: skip
            return None


def compile_hint(spec: ModelSpec) -> HintDeriver | None:
    """The model's `HintDeriver`, or None when it declares no `hint`."""
    rule = spec.hint_rule
    if rule is None:
        return None
    return HintDeriver(spec.name, spec.hint or "", rule)


def example_hints(spec: ModelSpec, examples: Sequence[dict]) -> list | None:
    """The derived hint of each warm-up example (a dict of arrays by input name), as the
    frontend would derive it from the request; None when the model declares no `hint`.
    A worker sends them with its profile: they seed the hint classes (serving/hints.py)."""
    deriver = compile_hint(spec)
    if deriver is None:
        return None
    out = []
    for ex in examples:
        arrays = [np.ascontiguousarray(ex[t.name], dtype=DTYPES[t.dtype][0])
                  for t in spec.inputs]  # fmt: skip
        out.append(deriver(None, [list(a.shape) for a in arrays], [a.tobytes() for a in arrays]))
    return out
