# The Orloj decision engine (orloj_decide.hpp).
from libc.stdint cimport int64_t
from libcpp cimport bool
from libcpp.vector cimport vector

from batch_model cimport Group
from histogram cimport Histogram
from status cimport Status

cdef extern from "orloj_decide.hpp" namespace "orloj" nogil:
    cdef cppclass OrlojEngine:
        OrlojEngine(const vector[double]& c, double theta, double epsilon, bool fallback,
                    bool pools, const vector[int]& pool_sizes)
        int max_batch()
        double c(int b)
        int num_apps()
        int num_active()
        size_t size()
        bool has_id(int64_t id)
        size_t queued(int a)
        bool has_dist(int a)
        Histogram& dist(int a)
        int add_app()
        void reset_app(int a)
        void set_dist(int a, const Histogram& h)
        Status enqueue(int64_t id, int a, double deadline)
        Status remove(int64_t id)
        Status remove_many(const vector[int64_t]& ids, size_t* failed)
        void decide(double now, vector[int64_t]* batch, vector[int64_t]* dropped)
        void drop_hopeless(double now, vector[int64_t]* dropped)
        double evaluate(double now, vector[int64_t]* batch)
        void set_weight(int a, double w)
        void set_patience(double p)
        double patience()
        void set_price_share(double k)
        void set_epsilon(double e)
        double epsilon()
        double price_share()
        double wake()
        void set_batch_limit(int b)
        int batch_limit()
        double weight(int a)
        void groups_of(const vector[int]& counts, vector[Group]* groups)
