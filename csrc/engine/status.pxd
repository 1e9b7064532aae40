# Status codes returned by the C++ engine (status.h); _native.pyx maps them to exceptions.
cdef extern from "status.h" namespace "orloj":
    ctypedef int Status
    cdef Status OK
    cdef Status ERR_DUPLICATE_ID
    cdef Status ERR_UNKNOWN_ID
    cdef Status ERR_EMPTY_DIST
    cdef Status ERR_NO_DIST
    cdef Status ERR_BATCH_SIZE
