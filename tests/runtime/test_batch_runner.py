"""Batch assembly and execution without processes: zero-copy batches of one, padding,
bfloat16, batch invariants, and the warm-up profile (c(b), work fit)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec  # noqa: E402
from orloj_rt.runtime.batch_runner import (  # noqa: E402
    BatchError,
    BatchRunner,
    fit_work,
    interpolate_inflation,
)


class Echo(torch.nn.Module):
    """Returns its input and the length of each row's non-padding prefix."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x, (x != 0).sum(1)


def runner(dtype="float32", model=None, max_batch=4) -> BatchRunner:
    spec = ModelSpec(
        "echo",
        inputs=(TensorSpec("x", dtype, (-1,), max_shape=(8,)),),
        outputs=(TensorSpec("y", dtype, (-1,), max_shape=(8,)), TensorSpec("n", "int64", ())),
        max_batch_size=max_batch,
        work_output="n",
    )
    return BatchRunner(ModelEntry(spec, "unused:unused"), model or Echo(), "cpu")


def test_a_batch_of_one_reads_the_input_in_place():
    r = runner()
    x = np.array([1, 2, 3], np.float32)
    r.run([[x]])
    assert r.module.seen.data_ptr() == x.ctypes.data  # no copy: torch.from_numpy of the view


def test_variable_dims_are_padded_with_the_pad_value():
    r = runner()
    (y, n), work = r.run([[np.array([1, 2], np.float32)], [np.array([3, 4, 5, 6], np.float32)]])
    assert y.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6]]
    assert work == [2, 4] and n.tolist() == [2, 4]


def test_bfloat16_travels_as_its_bits():
    r = runner("bfloat16")
    bits = torch.tensor([1.5, -2.0], dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    (y, _), _ = r.run([[bits]])
    assert y.view(np.uint16).tolist() == [bits.tolist()]


@pytest.mark.parametrize(
    "model, text",
    [
        (lambda x: (x[:1], (x != 0).sum(1)), "expected 2 rows"),
        (lambda x: x, "returned 1 outputs"),
        (lambda x: (x[:, None], (x != 0).sum(1)), "has shape"),
        (lambda x: (x, "not a tensor"), "expected 2 rows"),
    ],
)
def test_broken_batch_invariants_fail_the_batch(model, text):
    class Wrap(torch.nn.Module):
        def forward(self, x):
            return model(x)

    r = runner(model=Wrap())
    members = [[np.array([1, 2], np.float32)], [np.array([3], np.float32)]]
    with pytest.raises(BatchError, match=text):
        r.run(members)


def test_batch_larger_than_max_is_refused():
    with pytest.raises(BatchError, match="exceeds"):
        runner(max_batch=2).run([[np.ones(1, np.float32)]] * 3)


def test_inflation_is_interpolated_and_never_decreasing():
    c = interpolate_inflation({1: 1.0, 2: 1.5, 4: 1.4, 8: 3.0}, 8)
    assert c[0] == 1.0 and c[1] == 1.5 and c[3] == 1.5  # the dip at 4 is flattened
    assert c[5] == pytest.approx(1.4 + 1.6 * 2 / 4) and c[7] == 3.0
    assert all(b >= a for a, b in zip(c, c[1:], strict=False))
    assert interpolate_inflation({1: 1.0}, 3) == [1.0, 1.0, 1.0]


def test_work_fit():
    work = [1, 2, 3, 4]
    solo = [0.5 + 2 * w for w in work]
    a, k = fit_work(work, solo)
    assert a == pytest.approx(0.5) and k == pytest.approx(2.0)
    assert fit_work([3, 3, 3], [1.0, 1.1, 0.9]) is None


def test_profile_measures_a_prior_and_inflation():
    r = runner()
    ex = [{"x": np.ones(1 + i % 8, np.float32)} for i in range(8)]
    prof = r.profile(ex)
    assert len(prof.solo_times) == 8 and all(t > 0 for t in prof.solo_times)
    assert len(prof.inflation) == 4 and prof.inflation[0] == 1.0
