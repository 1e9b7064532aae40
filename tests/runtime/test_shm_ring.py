"""The input ring: layout, zero-copy views, ownership (creator unlinks), pickling, staleness."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from orloj_rt.models.spec import ModelSpec, TensorSpec
from orloj_rt.runtime.shm_ring import (
    HEADER_BYTES,
    RingLayout,
    ShmRing,
    instance_alive,
    instance_id,
    remove_stale_segments,
    segment_name,
)

SPEC = ModelSpec(
    name="m",
    inputs=(
        TensorSpec("tokens", "int64", (-1,), max_shape=(32,)),
        TensorSpec("image", "float32", (3, 4)),
        TensorSpec("flag", "bool", ()),
    ),
    outputs=(TensorSpec("y", "float32", (1,)),),
    ring_slots=8,
)


@pytest.fixture
def ring():
    name = segment_name(instance_id(), 900 + os.getpid() % 50)
    r = ShmRing.create(name, RingLayout.from_spec(SPEC))
    yield r
    r.close()
    r.unlink()


def test_layout_is_aligned_and_sized_for_the_largest_request():
    lay = RingLayout.from_spec(SPEC)
    assert lay.input_offsets == (0, 256, 320)
    assert lay.slot_bytes == 384 and lay.slot_bytes % 64 == 0
    assert lay.data_off % 64 == 0 and lay.data_off >= HEADER_BYTES + 8 * lay.entry_bytes
    assert lay.total_bytes == lay.data_off + 8 * lay.slot_bytes
    assert lay.n_dims == 3  # tokens: 1, image: 2, flag: 0


def test_write_then_view_in_place(ring):
    tokens = np.arange(5, dtype=np.int64)
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    flag = np.array(True)
    frames = [tokens.tobytes(), image.tobytes(), flag.tobytes()]
    ring.write(3, 17, frames, [[5], [3, 4], []])
    assert ring.generation(3) == 17
    assert ring.shapes(3) == [(5,), (3, 4), ()]
    views = ring.views(3)
    assert views[0].tolist() == tokens.tolist()
    assert views[1].tolist() == image.tolist()
    assert bool(views[2]) is True
    # a view is the ring's memory, not a copy
    ring.write(3, 18, [np.full(5, 9, np.int64).tobytes(), image.tobytes(), flag.tobytes()],
               [[5], [3, 4], []])  # fmt: skip
    assert views[0].tolist() == [9] * 5
    del views


def test_attach_sees_the_creators_writes_and_checks_the_layout(ring):
    other = ShmRing.attach(ring.name, ring.layout)
    ring.write(0, 1, [np.ones(2, np.int64).tobytes(), np.zeros(12, np.float32).tobytes(),
                      b"\x00"], [[2], [3, 4], []])  # fmt: skip
    assert other.views(0)[0].tolist() == [1, 1]
    other.close()
    other.unlink()  # an attacher never unlinks
    assert os.path.exists(f"/dev/shm/{ring.name}")
    bigger = RingLayout.from_spec(SPEC, n_slots=9)
    with pytest.raises(ValueError, match="needs"):
        ShmRing.attach(ring.name, bigger)


def test_pickles_as_its_name(ring):
    data = pickle.dumps(ring)
    assert len(data) < 2000 < ring.layout.total_bytes
    clone = pickle.loads(data)
    assert clone.name == ring.name and not clone._owner
    clone.close()


def test_close_is_safe_twice_and_on_a_half_built_object(ring):
    ring.close()
    ring.close()
    half = ShmRing.__new__(ShmRing)
    half.close()
    half.unlink()


def test_creator_unlinks():
    name = segment_name(instance_id(), 999)
    with ShmRing.create(name, RingLayout.from_spec(SPEC)):
        assert os.path.exists(f"/dev/shm/{name}")
    assert not os.path.exists(f"/dev/shm/{name}")


def test_stale_segments_are_removed_and_live_ones_kept(ring):
    assert instance_alive(instance_id())
    assert not instance_alive("1-1") and not instance_alive("garbage")
    stale = ShmRing.create(segment_name("1-1", 0), RingLayout.from_spec(SPEC))
    stale.close()
    removed = remove_stale_segments()
    assert stale.name in removed
    assert ring.name not in removed and os.path.exists(f"/dev/shm/{ring.name}")
