# The execution-time histogram (histogram.hpp).
from libc.stdint cimport int64_t, uint64_t
from libcpp cimport bool
from libcpp.vector cimport vector

cdef extern from "histogram.hpp" namespace "orloj" nogil:
    double ipow(double x, int n)

    cdef cppclass Histogram:
        Histogram()
        Histogram(int bins, double lo, double hi, int window)
        Histogram(const Histogram&)
        int bins()
        double lo()
        double hi()
        int window()
        uint64_t version()
        int64_t samples_added()
        bool empty()
        const vector[double]& edges()
        bool same_grid(const Histogram&)
        int bin_of(double x)
        void add(double x)
        void add_many(const double* xs, int64_t n)
        double count()
        void ready()
        double cdf(double x)
        double conditional_cdf(double w, double t)
        double quantile(double p)
        double mean()
        double support_min()
        double support_max()
        void emax_table(int nmax, double* out)
        void touch()
        vector[double]& raw_w()
        vector[double]& raw_s()
        vector[double]& raw_q()
        vector[double]& raw_mn()
        vector[double]& raw_mx()
        double g()
        double g_last()
        void set_raw(double g, double g_last, int64_t n)
