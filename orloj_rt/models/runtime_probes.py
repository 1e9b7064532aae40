"""Models that measure and test the runtime itself rather than serve anything.

- `noop`: returns its input; the runtime's own cost per request (throughput benchmark).
- `tiny_mlp`: a two-layer MLP on 16 floats; the added-latency benchmark's "tiny model".
- `sleep`: sleeps for the longest `ms` in its batch; tests and demos control its time
  exactly, including from the client side.

None is served by default; a model repository names them with `builtin = "noop"`.
"""

from __future__ import annotations

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

NOOP_SPEC = ModelSpec(
    name="noop",
    inputs=(TensorSpec("x", "float32", (4,)),),
    outputs=(TensorSpec("y", "float32", (4,)),),
    max_batch_size=256,
    default_slo_ms=1000.0,
    ring_slots=4096,
    description="returns its input: measures the runtime's own cost",
)

TINY_MLP_SPEC = ModelSpec(
    name="tiny_mlp",
    inputs=(TensorSpec("x", "float32", (16,)),),
    outputs=(TensorSpec("y", "float32", (4,)),),
    max_batch_size=64,
    default_slo_ms=100.0,
    description="two-layer MLP on 16 floats (random weights)",
)

SLEEP_SPEC = ModelSpec(
    name="sleep",
    inputs=(TensorSpec("ms", "float32", ()),),
    outputs=(TensorSpec("ms", "float32", ()),),
    max_batch_size=8,
    default_slo_ms=1000.0,
    ring_slots=64,
    description="sleeps for the longest `ms` of its batch",
)


def build_noop():
    from torch import nn

    class Noop(nn.Module):
        def forward(self, x):
            return x

    return Noop()


def build_tiny_mlp(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def build_sleep():
    import time

    from torch import nn

    class Sleep(nn.Module):
        def forward(self, ms):
            time.sleep(float(ms.max()) / 1000.0)
            return ms

    return Sleep()


def sleep_examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    return [{"ms": np.array(1.0, dtype=np.float32)} for _ in range(n)]


NOOP = ModelEntry(spec=NOOP_SPEC, factory="orloj_rt.models.runtime_probes:build_noop")
TINY_MLP = ModelEntry(spec=TINY_MLP_SPEC, factory="orloj_rt.models.runtime_probes:build_tiny_mlp")
SLEEP = ModelEntry(
    spec=SLEEP_SPEC,
    factory="orloj_rt.models.runtime_probes:build_sleep",
    examples="orloj_rt.models.runtime_probes:sleep_examples",
)
