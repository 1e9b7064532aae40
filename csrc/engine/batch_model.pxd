# Batch latency over groups of members (batch_model.hpp).
from libcpp.vector cimport vector

from histogram cimport Histogram

cdef extern from "batch_model.hpp" namespace "orloj" nogil:
    cdef cppclass GaussTables:
        int max_points
        vector[vector[double]] nodes
        vector[vector[double]] weights

    GaussTables& gauss_tables()

    cdef struct Group:
        Histogram* dist
        int count

    double batch_cdf(double t, const vector[Group]& groups, double c)
    double mixed_expected_max(const vector[Group]& groups)
