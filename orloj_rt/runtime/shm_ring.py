"""Shared-memory input rings: one per model, written by the frontend, read by workers.

A request's tensors are copied once, by the frontend, from its ZeroMQ frames into a slot
of its model's ring. Only small descriptors (slot, generation) travel through sockets; a
worker views the slot in place (`np.frombuffer` -> `torch.from_numpy`) and never copies it
before the batch is assembled.

Segment layout (all integers little-endian; every region 64-byte aligned)::

    0           64                          data_off = 64 + align64(S * E)
    +-----------+---------------------------+---------------------------------------------+
    | header    | slot table: S entries     | data area: S slots of slot_bytes each       |
    |           | of E bytes each           |                                             |
    +-----------+---------------------------+---------------------------------------------+

    header (64 B)                    slot table entry k, E = align8(8 + 4 * max(n_dims, 1))
    +----------+----------------+   +------------------+----------------------------------+
    | 0  u8[8] | magic ORLJRING |   | 0  u64           | generation: bumped by the        |
    | 8  u32   | layout version |   |                  | frontend each time slot k is     |
    | 12 u32   | S  (n_slots)   |   |                  | handed out                       |
    | 16 u64   | slot_bytes     |   | 8  i32[n_dims]   | every dim of every input, inputs |
    | 24 u32   | E  (entry B)   |   |                  | in spec order (the request's     |
    | 28 u32   | n_inputs       |   |                  | actual shape, variable dims too) |
    | 32 u32   | n_dims         |   +------------------+----------------------------------+
    | 36 u32   | creator pid    |   slot k, at data_off + k * slot_bytes
    | 40 u64   | data_off       |   +------------------+------------------+-----+
    | 48 ...   | reserved       |   | input 0 region   | input 1 region   | ... |
    +----------+----------------+   | align64(max B)   | align64(max B)   |     |
                                    +------------------+------------------+-----+
    An input's bytes are C-order and packed from its region's start at the request's own
    shape (not the maximum), so a view needs only the shape from the slot table.

Slot states. The frontend is the only allocator; the free list lives in its memory, not
in the segment, because no other process ever allocates or frees:

    state    | owner              | enters when                 | leaves when
    ---------+--------------------+-----------------------------+---------------------------
    FREE     | frontend free list | ring created; reply sent    | a request is admitted
    FILLED   | scheduler (queue)  | data, dims, generation      | dispatched, or dropped
             |                    | written; descriptor sent    | (-> frontend, -> FREE)
    RUNNING  | one worker         | batch descriptor received   | the worker sends results
    ANSWERED | frontend           | results or drop received    | reply sent (-> FREE)

Why plain stores suffice: no process polls the segment. A slot changes hands only through
a socket message (a `channel.Channel`) sent after every store to it, and a socket
send/receive pair (two syscalls around a locked kernel queue) orders memory across
processes. The generation check in the worker
catches a descriptor that outlived its slot (a bug, or a request answered early).

Ownership (as in CPython's multiprocessing.shared_memory): the creator (the supervisor)
unlinks; attachers only close. Class-level defaults make `close()` safe on a half-built
object. A ring pickles as its name and layout, never its bytes. Segment names carry the
instance (supervisor pid and start time), so `remove_stale_segments()` can tell a live
instance's segments from those a killed one left behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orloj_rt.models.spec import DTYPES, ModelSpec

try:
    import _posixshmem  # CPython's shm_open/shm_unlink, as used by multiprocessing
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

log = logging.getLogger(__name__)

MAGIC = b"ORLJRING"
LAYOUT_VERSION = 1
HEADER_BYTES = 64
ALIGN = 64
SEGMENT_PREFIX = "orloj_rt."
SHM_DIR = "/dev/shm"
_HEADER = struct.Struct("<8sIIQIIIIQ")  # magic, version, S, slot_bytes, E, n_inputs,
#                                         n_dims, creator pid, data_off


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class RingLayout:
    """Where everything is in one model's ring; a pure function of its spec and size."""

    n_slots: int
    input_dtypes: tuple[str, ...]  # numpy storage dtypes, spec order
    input_offsets: tuple[int, ...]  # byte offset of each input's region inside a slot
    input_max_nbytes: tuple[int, ...]
    dims_offsets: tuple[int, ...]  # index of each input's first dim in the entry's dims
    input_ndims: tuple[int, ...]
    slot_bytes: int
    entry_bytes: int
    data_off: int

    @classmethod
    def from_spec(cls, spec: ModelSpec, n_slots: int | None = None) -> RingLayout:
        n_slots = spec.ring_slots if n_slots is None else n_slots
        offsets, maxes, dims_offsets, ndims = [], [], [], []
        pos = dpos = 0
        for t in spec.inputs:
            offsets.append(pos)
            maxes.append(t.max_nbytes)
            pos += _align(max(t.max_nbytes, 1))
            dims_offsets.append(dpos)
            ndims.append(len(t.shape))
            dpos += len(t.shape)
        entry = _align(8 + 4 * max(dpos, 1), 8)
        return cls(
            n_slots=n_slots,
            input_dtypes=tuple(DTYPES[t.dtype][0] for t in spec.inputs),
            input_offsets=tuple(offsets),
            input_max_nbytes=tuple(maxes),
            dims_offsets=tuple(dims_offsets),
            input_ndims=tuple(ndims),
            slot_bytes=pos,
            entry_bytes=entry,
            data_off=HEADER_BYTES + _align(n_slots * entry),
        )

    @property
    def n_dims(self) -> int:
        return sum(self.input_ndims)

    @property
    def total_bytes(self) -> int:
        return self.data_off + self.n_slots * self.slot_bytes


class ShmRing:
    """One model's input ring (see the module docstring for the layout and states)."""

    # class-level defaults: close() and __del__ work on a half-built object
    _fd = -1
    _mmap: mmap.mmap | None = None
    _view: memoryview | None = None
    _gens: np.ndarray | None = None
    _dims: np.ndarray | None = None
    _view_cache: dict | None = None
    _owner = False
    _unlinked = False
    name = ""

    def __init__(self, name: str, layout: RingLayout, *, create: bool = False):
        if _posixshmem is None:  # pragma: no cover
            raise RuntimeError("shared-memory rings need a POSIX system")
        self.name = name
        self.layout = layout
        # a model without variable dims has the same views of a slot for every request
        self._fixed_shape = None
        size = layout.total_bytes
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        self._owner = create
        try:
            if create:
                # owner-only whatever the umask (which may also have removed the owner's
                # bits): other users must not read requests or write the slots
                os.fchmod(self._fd, 0o600)
                os.ftruncate(self._fd, size)
            elif os.fstat(self._fd).st_size < size:
                raise ValueError(
                    f"ring {name}: segment is {os.fstat(self._fd).st_size} bytes, the layout "
                    f"needs {size}: it was created for another model spec"
                )
            self._mmap = mmap.mmap(self._fd, size)
            self._view = memoryview(self._mmap)
            if create:
                self._view[:HEADER_BYTES] = _HEADER.pack(
                    MAGIC, LAYOUT_VERSION, layout.n_slots, layout.slot_bytes,
                    layout.entry_bytes, len(layout.input_offsets), layout.n_dims,
                    os.getpid(), layout.data_off,
                ).ljust(HEADER_BYTES, b"\0")  # fmt: skip
            else:
                self._check_header()
            entry, s = layout.entry_bytes, layout.n_slots
            self._gens = np.ndarray(
                (s,), dtype="<u8", buffer=self._mmap, offset=HEADER_BYTES, strides=(entry,)
            )
            self._dims = np.ndarray(
                (s, max(layout.n_dims, 1)),
                dtype="<i4",
                buffer=self._mmap,
                offset=HEADER_BYTES + 8,
                strides=(entry, 4),
            )
        except BaseException:
            self.close()
            if create:
                self.unlink()
            raise

    @classmethod
    def create(cls, name: str, layout: RingLayout) -> ShmRing:
        return cls(name, layout, create=True)

    @classmethod
    def attach(cls, name: str, layout: RingLayout) -> ShmRing:
        return cls(name, layout, create=False)

    def _check_header(self) -> None:
        magic, version, s, slot_bytes, entry, n_in, n_dims, _pid, data_off = _HEADER.unpack(
            bytes(self._view[: _HEADER.size])
        )
        lay = self.layout
        if magic != MAGIC or version != LAYOUT_VERSION:
            raise ValueError(f"ring {self.name}: not an orloj-rt ring of layout {LAYOUT_VERSION}")
        got = (s, slot_bytes, entry, n_in, n_dims, data_off)
        want = (lay.n_slots, lay.slot_bytes, lay.entry_bytes, len(lay.input_offsets),
                lay.n_dims, lay.data_off)  # fmt: skip
        if got != want:
            raise ValueError(f"ring {self.name}: header {got} does not match the layout {want}")

    def __reduce__(self):
        return (ShmRing.attach, (self.name, self.layout))

    # ------------------------------------------------------------------ frontend side
    def write(
        self, slot: int, generation: int, frames: Sequence, shapes: Sequence[Sequence[int]]
    ) -> None:
        """Copies one request's input frames (spec order) into `slot`.

        The caller has validated every byte size against the layout.
        """
        lay = self.layout
        base = lay.data_off + slot * lay.slot_bytes
        view = self._view
        dims = self._dims[slot]
        for i, frame in enumerate(frames):
            start = base + lay.input_offsets[i]
            n = len(frame)
            view[start : start + n] = frame
            d0 = lay.dims_offsets[i]
            shape = shapes[i]
            dims[d0 : d0 + len(shape)] = shape
        # NOTE: the generation is stored last by convention only; the descriptor message
        # sent after this call is what publishes the slot (see the module docstring).
        self._gens[slot] = generation

    # ------------------------------------------------------------------ worker side
    def generation(self, slot: int) -> int:
        return int(self._gens[slot])

    def shapes(self, slot: int) -> list[tuple[int, ...]]:
        lay = self.layout
        row = self._dims[slot].tolist()
        return [
            tuple(row[d0 : d0 + nd])
            for d0, nd in zip(lay.dims_offsets, lay.input_ndims, strict=True)
        ]

    def set_fixed_shapes(self, shapes: list[tuple[int, ...]]) -> None:
        """Declares that every request has these input shapes (no variable dims): `views`
        then builds each slot's views once and hands out the same ones."""
        self._fixed_shape = [tuple(s) for s in shapes]
        self._view_cache = {}

    def views(self, slot: int) -> list[np.ndarray]:
        """Zero-copy numpy views of a slot's inputs at their actual shapes (spec order)."""
        cache = self._view_cache
        if cache is not None:
            v = cache.get(slot)
            if v is None:
                v = cache[slot] = self._make_views(slot, self._fixed_shape)
            return v
        return self._make_views(slot, self.shapes(slot))

    def _make_views(self, slot: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        lay = self.layout
        base = lay.data_off + slot * lay.slot_bytes
        out = []
        for i, shape in enumerate(shapes):
            count = math.prod(shape)
            arr = np.frombuffer(
                self._mmap, dtype=lay.input_dtypes[i], count=count,
                offset=base + lay.input_offsets[i],
            )  # fmt: skip
            out.append(arr.reshape(shape))
        return out

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Releases this process's mapping; the segment stays until the creator unlinks."""
        self._gens = self._dims = self._view_cache = None
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # numpy views still point into the ring; the mapping goes with the process
                log.debug("ring %s: views still alive at close; leaving the mapping", self.name)
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Removes the segment's name (creator only); mappings stay valid until closed."""
        if not self._owner or self._unlinked or not self.name:
            return
        self._unlinked = True
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + self.name)

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.unlink()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


# ---------------------------------------------------------------------- instance naming
def instance_id(pid: int | None = None) -> str:
    """`<pid>-<start time in centiseconds>`: unique per process lifetime, even across pid
    reuse, and checkable from outside."""
    import psutil

    pid = os.getpid() if pid is None else pid
    stamp = round(psutil.Process(pid).create_time() * 100)
    return f"{pid}-{stamp}"


def segment_name(instance: str, index: int) -> str:
    return f"{SEGMENT_PREFIX}{instance}.ring{index}"


def instance_alive(instance: str) -> bool:
    """Whether the process that created `instance` is still running."""
    import psutil

    try:
        pid_s, stamp_s = instance.split("-", 1)
        pid, stamp = int(pid_s), int(stamp_s)
    except ValueError:
        return False
    try:
        return round(psutil.Process(pid).create_time() * 100) == stamp
    except psutil.Error:
        return False


def remove_stale_segments() -> list[str]:
    """Unlinks the segments of instances that are no longer running; returns their names."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover
        return []
    removed = []
    for n in sorted(names):
        if not n.startswith(SEGMENT_PREFIX):
            continue
        instance = n[len(SEGMENT_PREFIX) :].split(".", 1)[0]
        if instance_alive(instance):
            continue
        try:
            _posixshmem.shm_unlink("/" + n)
            removed.append(n)
        except FileNotFoundError:
            pass
        except PermissionError:
            log.warning("stale shared-memory segment %s belongs to another user; left alone", n)
    return removed
