"""The built-in models on the CPU: early exit is input-driven and batch time follows the
deepest member; the static CNN and the probes have the shapes their specs say."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from orloj_rt.models import early_exit  # noqa: E402
from orloj_rt.models.builtin import BUILTIN_MODELS  # noqa: E402
from orloj_rt.models.loading import build_module  # noqa: E402
from orloj_rt.runtime.batch_runner import BatchRunner  # noqa: E402

SEED = 7


@pytest.fixture(scope="module")
def ee_runner():
    torch.set_num_threads(1)
    entry = BUILTIN_MODELS["early_exit"]
    return BatchRunner(entry, build_module(entry), "cpu")


def test_exit_depth_is_driven_by_the_input(ee_runner):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    for depth in range(1, early_exit.NUM_LAYERS + 1):
        tok = early_exit.tokens_for_depth(depth, int(rng.integers(1, 33)), rng)
        outputs, work = ee_runner.run([[tok]])
        assert work == [depth]
        assert outputs[1].tolist() == [depth] and outputs[0].shape == (1, 10)


def test_batch_time_grows_with_its_longest_member(ee_runner):
    """Eight shallow members (1 layer) against seven shallow and one deep (12 layers): the
    one deep member makes the whole batch run every layer."""
    rng = np.random.default_rng(SEED)
    shallow = [[early_exit.tokens_for_depth(1, 16, rng)] for _ in range(8)]
    mixed = shallow[:7] + [[early_exit.tokens_for_depth(12, 16, rng)]]

    def median_time(batch) -> float:
        ee_runner.run(batch)
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            ee_runner.run(batch)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_shallow, t_mixed = median_time(shallow), median_time(mixed)
    _, work = ee_runner.run(mixed)
    assert work == [1] * 7 + [12]
    print(f"batch of 8: all 1 layer {t_shallow * 1e3:.2f} ms, one 12-layer member "
          f"{t_mixed * 1e3:.2f} ms")  # fmt: skip
    assert t_mixed > 2.0 * t_shallow


def test_members_are_independent_of_their_batch(ee_runner):
    """Padding and batch-mates change neither a member's logits nor its depth."""
    rng = np.random.default_rng(SEED)
    a = early_exit.tokens_for_depth(3, 5, rng)
    b = early_exit.tokens_for_depth(9, 20, rng)
    alone, _ = ee_runner.run([[a]])
    together, work = ee_runner.run([[a], [b]])
    assert work == [3, 9]
    np.testing.assert_allclose(alone[0][0], together[0][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet_static", "noop", "tiny_mlp", "sleep"])
def test_other_models_match_their_specs(name):
    from orloj_rt.runtime.batch_runner import examples_for

    entry = BUILTIN_MODELS[name]
    runner = BatchRunner(entry, build_module(entry), "cpu")
    ex = examples_for(entry, 3)
    members = [[e[t.name] for t in entry.spec.inputs] for e in ex]
    outputs, work = runner.run(members)
    assert work is None
    for arr, t in zip(outputs, entry.spec.outputs, strict=True):
        assert arr.shape == (3, *t.shape)
