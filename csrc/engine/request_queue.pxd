# The (key, id)-ordered request queue (request_queue.hpp).
from libc.stdint cimport int64_t
from libcpp cimport bool
from libcpp.vector cimport vector

from status cimport Status

cdef extern from "request_queue.hpp" namespace "orloj" nogil:
    cdef struct QEntry:
        double key
        int64_t id

    cdef cppclass SortedBlocks:
        cppclass Pos:
            pass
        size_t size()
        bool empty()
        const QEntry& first()
        const QEntry& last()
        Pos begin()
        bool at_end(const Pos& p)
        const QEntry& at(const Pos& p)
        void next(Pos& p)
        Pos lower_bound(double key)

    cdef cppclass RequestQueue:
        size_t size()
        bool empty()
        bool contains(int64_t id)
        Status push(int64_t id, double key)
        Status remove(int64_t id, double* key_out)
        Status key_of(int64_t id, double* key_out)
        const SortedBlocks& order()
        void pop_below(double key, vector[int64_t]* out)
