# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The compiled scheduling engine: Python classes over the C++ core in csrc/engine.

The classes and their behaviour, errors included, are those of the pure-Python twin in
orloj_rt/engine/pure (the executable specification); the tests run one body against both.
This layer validates arguments, calls C++ `with nogil`, and maps C++ status codes to
Python exceptions at once. C++ never throws and never sees an invalid argument.
"""

from libc.math cimport isfinite, isnan
from libc.stdint cimport int64_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.vector cimport vector

from batch_model cimport GaussTables, Group, gauss_tables, mixed_expected_max
from batch_model cimport batch_cdf as c_batch_cdf
from histogram cimport Histogram
from orloj_decide cimport OrlojEngine
from request_queue cimport QEntry, SortedBlocks
from request_queue cimport RequestQueue as CRequestQueue
from status cimport (
    ERR_BATCH_SIZE,
    ERR_DUPLICATE_ID,
    ERR_EMPTY_DIST,
    ERR_NO_DIST,
    ERR_UNKNOWN_ID,
    OK,
    Status,
)

from orloj_rt.engine.apps import DEFAULT_APP_IDLE_S, DEFAULT_MAX_APPS, AppTable
from orloj_rt.engine.interface import Decision
from orloj_rt.engine.pure.batch_model import DEFAULT_ALPHA, DEFAULT_MAX_BATCH
from orloj_rt.engine.pure.batch_model import Inflation as _PureInflation
from orloj_rt.engine.pure.distribution import (
    DEFAULT_BINS,
    DEFAULT_HI,
    DEFAULT_LO,
    DEFAULT_WINDOW,
    check_grid,
    check_time,
)
from orloj_rt.engine.pure.orloj import (
    DEFAULT_EPSILON,
    DEFAULT_POOL_DENSE,
    DEFAULT_POOL_STEP,
    DEFAULT_THETA,
    check_patience,
    check_price_share,
    check_probability,
    pool_ladder,
)
from orloj_rt.engine.quadrature import GAUSS, MAX_POINTS


cdef _load_gauss():
    cdef GaussTables* t = &gauss_tables()
    t.max_points = MAX_POINTS
    t.nodes.resize(MAX_POINTS + 1)
    t.weights.resize(MAX_POINTS + 1)
    for m in range(1, MAX_POINTS + 1):
        nodes, weights = GAUSS[m]
        t.nodes[m] = list(nodes)
        t.weights[m] = list(weights)


_load_gauss()


cdef int raise_status(Status status, object what) except -1:
    """Maps a C++ status to its Python exception (what: the id or app concerned)."""
    if status == OK:
        return 0
    if status == ERR_DUPLICATE_ID:
        raise ValueError(f"request id {what} is already queued")
    if status == ERR_UNKNOWN_ID:
        raise KeyError(f"unknown request id {what!r}: it is not queued")
    if status == ERR_EMPTY_DIST:
        raise ValueError(f"empty distribution for {what!r}")
    if status == ERR_NO_DIST:
        raise ValueError(f"no execution-time distribution for app {what!r}")
    if status == ERR_BATCH_SIZE:
        raise ValueError(f"batch size {what} is outside the model's range")
    raise RuntimeError(f"orloj-rt engine: unknown status {status}")


cdef inline double check_nan(object t, str what="time") except? -1.0:
    cdef double x = t
    if isnan(x):
        raise ValueError(f"{what} is NaN")
    return x


_new_tuple = tuple.__new__  # builds a Decision without NamedTuple.__new__'s Python frame

_EMPTY_MESSAGE = (
    "empty distribution: it has no samples yet; add measurements or build it "
    "with Distribution.from_samples / from_mean_cov"
)


# ===================================================================== Distribution
cdef class Distribution:
    """A histogram of solo execution times (seconds) with CDF, quantile and mean.

    See orloj_rt/engine/pure/distribution.py for the model.
    """

    cdef Histogram* h

    def __cinit__(self):
        self.h = NULL

    def __init__(self, bins=DEFAULT_BINS, lo=DEFAULT_LO, hi=DEFAULT_HI, window=DEFAULT_WINDOW):
        check_grid(bins, lo, hi)
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an integer >= 0 (0: never forget), got {window!r}")
        if window == 1:
            raise ValueError("window must be 0 (never forget) or at least 2 samples")
        if self.h != NULL:
            del self.h
        self.h = new Histogram(bins, float(lo), float(hi), window)

    def __dealloc__(self):
        if self.h != NULL:
            del self.h
            self.h = NULL

    @staticmethod
    cdef Distribution wrap_copy(const Histogram& src):
        cdef Distribution d = Distribution.__new__(Distribution)
        d.h = new Histogram(src)
        d.h.touch()
        return d

    # ------------------------------------------------------------- construction
    @classmethod
    def from_samples(cls, samples, **grid):
        d = cls(**grid)
        d.add_many(samples)
        return d

    @classmethod
    def from_mean_cov(cls, mean, cov, **grid):
        """A lognormal prior with this mean (seconds) and coefficient of variation."""
        from orloj_rt.engine.priors import lognormal_points

        return cls.from_samples(lognormal_points(mean, cov), **grid)

    def copy(self):
        return Distribution.wrap_copy(self.h[0])

    def to_state(self):
        """A msgpack/JSON-friendly snapshot; `from_state` rebuilds it in either engine."""
        return {
            "bins": self.h.bins(), "lo": self.h.lo(), "hi": self.h.hi(),
            "window": self.h.window(),
            "w": list(self.h.raw_w()), "s": list(self.h.raw_s()), "q": list(self.h.raw_q()),
            "mn": list(self.h.raw_mn()), "mx": list(self.h.raw_mx()),
            "g": self.h.g(), "g_last": self.h.g_last(), "n": self.h.samples_added(),
        }

    @classmethod
    def from_state(cls, state):
        cdef Distribution d = cls(state["bins"], state["lo"], state["hi"], state["window"])
        if not (len(state["w"]) == len(state["s"]) == len(state["q"]) == d.h.bins()):
            raise ValueError("distribution state: w, s and q must each have `bins` entries")
        if not (len(state["mn"]) == len(state["mx"]) == d.h.bins()):
            raise ValueError("distribution state: mn and mx must each have `bins` entries")
        cdef int k
        for k in range(d.h.bins()):
            d.h.raw_w()[k] = state["w"][k]
            d.h.raw_s()[k] = state["s"][k]
            d.h.raw_q()[k] = state["q"][k]
            d.h.raw_mn()[k] = state["mn"][k]
            d.h.raw_mx()[k] = state["mx"][k]
        d.h.set_raw(state["g"], state["g_last"], state["n"])
        return d

    def __reduce__(self):
        return (Distribution.from_state, (self.to_state(),))

    # ------------------------------------------------------------- properties
    @property
    def bins(self):
        return self.h.bins()

    @property
    def lo(self):
        return self.h.lo()

    @property
    def hi(self):
        return self.h.hi()

    @property
    def window(self):
        return self.h.window()

    @property
    def edges(self):
        return tuple(self.h.edges())

    @property
    def version(self):
        """Increases with every change; policies use it to refresh their caches."""
        return self.h.version()

    @property
    def samples_added(self):
        return self.h.samples_added()

    @property
    def count(self):
        """The effective number of samples: total weight over the newest sample's weight."""
        return self.h.count()

    def same_grid(self, Distribution other):
        return self.h.same_grid(other.h[0])

    # ------------------------------------------------------------- updates
    def bin_of(self, double x):
        return self.h.bin_of(x)

    def add(self, x):
        """Adds one measured solo time (seconds); older samples decay by one step."""
        cdef double v = x
        if not (isfinite(v) and v >= 0.0):
            check_time(v, "execution time")
        self.h.add(v)

    def add_many(self, samples):
        """Adds samples that all weigh what the next `add` would (one observation)."""
        cdef vector[double] xs
        for x in samples:
            xs.push_back(check_time(x, "execution time"))
        if xs.size():
            self.h.add_many(xs.data(), xs.size())

    # ------------------------------------------------------------- the model
    cdef int ready(self) except -1:
        if self.h.empty():
            raise ValueError(_EMPTY_MESSAGE)
        self.h.ready()
        return 0

    def cdf(self, t):
        """P(X <= t) for a solo execution time X."""
        cdef double x = check_nan(t)
        self.ready()
        return self.h.cdf(x)

    def conditional_cdf(self, w, t):
        """P(X <= w + t | X > w): the chance that a request which has done `w` seconds of
        solo work without finishing finishes within `t` more.

        (F(w + t) - F(w)) / (1 - F(w)), clamped to [0, 1]. 0 when t <= 0, and 0 when the
        model has no mass beyond w (a request that outlived every sample has no modelled
        chance: a step scheduler ends it).
        """
        cdef double x = check_nan(w)
        cdef double y = check_nan(t)
        self.ready()
        return self.h.conditional_cdf(x, y)

    def quantile(self, p):
        """The smallest t with P(X <= t) >= p, for p in [0, 1]."""
        cdef double q = p
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"a quantile needs p in [0, 1], got {p!r}")
        self.ready()
        return self.h.quantile(q)

    def mean(self):
        """The model's mean: the samples' mean, unless an in-bin spread was clipped."""
        self.ready()
        return self.h.mean()

    def support(self):
        """The smallest and largest time with positive density (or mass)."""
        self.ready()
        return (self.h.support_min(), self.h.support_max())

    def expected_max(self, n):
        """E[max of n independent solo times], exactly for the piecewise-linear model."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.ready()
        cdef int nn = n
        cdef vector[double] out = vector[double](nn + 1)
        self.h.emax_table(nn, out.data())
        return out[nn]

    def __repr__(self):
        if self.h.empty():
            return f"Distribution(bins={self.h.bins()}, empty)"
        return (
            f"Distribution(bins={self.h.bins()}, samples={self.h.samples_added()}, "
            f"mean={self.mean():.6g}s, p99={self.quantile(0.99):.6g}s)"
        )


# ===================================================================== Inflation
cdef class Inflation:
    """The batch-inflation table c(1..max_batch) of one model."""

    cdef vector[double] c_

    def __init__(self, max_batch=DEFAULT_MAX_BATCH, alpha=DEFAULT_ALPHA):
        ref = _PureInflation(max_batch, alpha)  # the one validation, one formula
        self.c_ = ref.table

    @classmethod
    def from_table(cls, table):
        """A profiled table: table[b - 1] = c(b), each finite and > 0."""
        ref = _PureInflation.from_table(table)
        cdef Inflation obj = Inflation.__new__(Inflation)
        obj.c_ = ref.table
        return obj

    @property
    def max_batch(self):
        return self.c_.size()

    @property
    def table(self):
        return list(self.c_)

    def c(self, b):
        if not isinstance(b, int) or b < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {b!r}")
        if b > <Py_ssize_t>self.c_.size():
            raise ValueError(
                f"batch size {b} is above the model's maximum batch size {self.c_.size()}"
            )
        return self.c_[b - 1]

    def __reduce__(self):
        return (Inflation.from_table, (list(self.c_),))

    def __repr__(self):
        return f"Inflation(max_batch={self.c_.size()}, c(max)={self.c_.back():.4g})"


cdef Inflation as_inflation(max_batch, alpha, inflation):
    if inflation is None:
        return Inflation(max_batch, alpha)
    if isinstance(inflation, Inflation):
        return inflation
    if isinstance(inflation, _PureInflation):
        return Inflation.from_table(inflation.table)
    return Inflation.from_table(inflation)


# ===================================================================== batch latency
cdef int group_members(dists, vector[Group]* groups) except -1:
    """(distribution, count) groups in order of first appearance; one grid; all ready."""
    cdef Distribution d
    cdef size_t i
    cdef cbool found
    if len(dists) == 0:
        raise ValueError("empty batch: a batch needs at least one member")
    groups.clear()
    for obj in dists:
        if not isinstance(obj, Distribution):
            raise TypeError(f"expected a Distribution of this engine, got {type(obj).__name__}")
        d = <Distribution>obj
        found = False
        for i in range(groups.size()):
            if groups[0][i].dist == d.h:
                groups[0][i].count += 1
                found = True
                break
        if not found:
            if groups.size() and not groups[0][0].dist.same_grid(d.h[0]):
                raise ValueError("batch members' distributions must share one grid")
            d.ready()
            groups.push_back(Group(d.h, 1))
    return 0


def batch_cdf(t, dists, inflation):
    """P(T_B <= t) for a batch whose members' distributions are `dists`."""
    cdef vector[Group] groups
    group_members(dists, &groups)
    cdef double c = as_inflation(None, None, inflation).c(len(dists))
    cdef double x = check_nan(t)
    return c_batch_cdf(x, groups, c)


def batch_mean(dists, inflation):
    """E[T_B]: exact for one app (closed form), Gauss-Legendre on each piece otherwise."""
    cdef vector[Group] groups
    group_members(dists, &groups)
    cdef int b = len(dists)
    cdef double c = as_inflation(None, None, inflation).c(b)
    cdef vector[double] out
    if groups.size() == 1:
        out.resize(b + 1)
        groups[0].dist.emax_table(b, out.data())
        return c * out[b]
    return c * mixed_expected_max(groups)


# ===================================================================== RequestQueue
cdef class RequestQueue:
    """Request ids ordered by (key, id), with O(log n) insertion and removal by id."""

    cdef CRequestQueue q

    def __len__(self):
        return self.q.size()

    def __contains__(self, req_id):
        return isinstance(req_id, int) and self.q.contains(req_id)

    def __iter__(self):
        """(key, id) pairs in order."""
        return iter(self.head(self.q.size()))

    def push(self, req_id, key):
        cdef int64_t rid = req_id
        cdef double k = check_nan(key, "queue key (deadline)")
        raise_status(self.q.push(rid, k), rid)

    def remove(self, req_id):
        """Removes `req_id` and returns its key; KeyError if it is not queued."""
        cdef double key
        cdef int64_t rid
        try:
            rid = req_id
        except (TypeError, OverflowError):
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue") from None
        if self.q.remove(rid, &key) != OK:
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue")
        return key

    def key_of(self, req_id):
        cdef double key
        cdef int64_t rid
        try:
            rid = req_id
        except (TypeError, OverflowError):
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue") from None
        if self.q.key_of(rid, &key) != OK:
            raise KeyError(f"unknown request id {req_id!r}: it is not in this queue")
        return key

    def first(self):
        if self.q.empty():
            return None
        cdef QEntry e = self.q.order().first()
        return (e.key, e.id)

    def last(self):
        if self.q.empty():
            return None
        cdef QEntry e = self.q.order().last()
        return (e.key, e.id)

    cdef list _collect(self, SortedBlocks.Pos pos, Py_ssize_t limit):
        out = []
        cdef const SortedBlocks* order = &self.q.order()
        cdef Py_ssize_t i = 0
        cdef QEntry e
        while i < limit and not order.at_end(pos):
            e = order.at(pos)
            out.append((e.key, e.id))
            order.next(pos)
            i += 1
        return out

    def head(self, n):
        """The first `n` entries (fewer if the queue is shorter)."""
        return self._collect(self.q.order().begin(), n)

    def window(self, key, n):
        """Up to `n` entries starting at the first one whose key is >= `key`."""
        return self._collect(self.q.order().lower_bound(key), n)

    def pop_below(self, key):
        """Removes and returns, in order, every id whose key is < `key`."""
        cdef vector[int64_t] out
        self.q.pop_below(key, &out)
        return list(out)


# ===================================================================== OrlojPolicy
cdef class OrlojPolicy:
    """Distribution-aware batching for one model.

    See orloj_rt/engine/pure/orloj.py for the decision; this is its compiled twin.
    """

    cdef OrlojEngine* e
    cdef Inflation _inflation
    cdef double _theta
    cdef object _apps  # AppTable (orloj_rt/engine/apps.py), shared with the pure twin
    cdef object _busy_fn
    cdef object _default
    cdef object _grid

    name = "orloj"

    def __cinit__(self):
        self.e = NULL

    def __init__(self, max_batch=DEFAULT_MAX_BATCH, alpha=DEFAULT_ALPHA, inflation=None,
                 theta=DEFAULT_THETA, epsilon=DEFAULT_EPSILON, fallback=True, patience=0.0,
                 price_share=1.0, pools=False, pool_dense=DEFAULT_POOL_DENSE,
                 pool_step=DEFAULT_POOL_STEP, max_apps=DEFAULT_MAX_APPS,
                 app_idle_s=DEFAULT_APP_IDLE_S):
        self._inflation = as_inflation(max_batch, alpha, inflation)
        self._theta = check_probability("theta", theta, open_low=True)
        cdef double eps = check_probability("epsilon", epsilon)
        cdef vector[int] sizes = pool_ladder(len(self._inflation.c_), pool_dense, pool_step)
        if self.e != NULL:
            del self.e
        self.e = new OrlojEngine(self._inflation.c_, self._theta, eps, bool(fallback),
                                 bool(pools), sizes)
        self.e.set_patience(check_patience(patience))
        self.e.set_price_share(check_price_share(price_share))
        self._apps = AppTable(max_apps, app_idle_s)
        self._busy_fn = self._busy
        self._default = None
        self._grid = None

    def __dealloc__(self):
        if self.e != NULL:
            del self.e
            self.e = NULL

    # ------------------------------------------------------------- configuration
    @property
    def max_batch(self):
        return self.e.max_batch()

    @property
    def inflation(self):
        return self._inflation

    @property
    def theta(self):
        return self._theta

    @property
    def epsilon(self):
        return self.e.epsilon()

    @property
    def apps(self):
        """The live apps (those this policy keeps state for), in index order."""
        return self._apps.live()

    @property
    def max_apps(self):
        return self._apps.max_apps

    @property
    def app_idle_s(self):
        return self._apps.idle_s

    @property
    def app_slots(self):
        """App indices allocated, live or free: at most the most apps ever live at once."""
        return len(self._apps.names)

    @property
    def active_apps(self):
        """The apps with queued requests: the only ones a decision looks at."""
        return self.e.num_active()

    @property
    def apps_evicted(self):
        """How many apps were forgotten (idle, or `forget_app`)."""
        return self._apps.evicted

    def set_app_limits(self, max_apps, app_idle_s):
        """New limits (orloj_rt/engine/apps.py); (0, 0) hands them to the caller, which
        then forgets apps itself (`forget_app`), as the runtime's scheduler does."""
        self._apps.set_limits(max_apps, app_idle_s)

    def knows(self, app):
        """Whether `app` is live (has state of its own)."""
        return app in self._apps

    def forget_app(self, app):
        """Forgets `app` and all its state, if it is live and has nothing queued; says
        whether it did."""
        a = self._apps.get(app)
        if a is None or self.e.queued(a):
            return False
        self._apps.remove(app)
        self.e.reset_app(a)
        return True

    def _check_grid(self, dist):
        if not isinstance(dist, Distribution):
            raise TypeError(f"expected a Distribution of this engine, got {type(dist).__name__}")
        if dist.samples_added == 0:
            raise ValueError("empty distribution: give a prior with at least one sample")
        grid = (dist.bins, dist.lo, dist.hi)
        if self._grid is None:
            self._grid = grid
        elif grid != self._grid:
            raise ValueError(
                f"every distribution of a policy must share one grid {self._grid}, got {grid}"
            )

    def set_default_distribution(self, dist):
        """The prior that an app gets when it is first seen (e.g. from warm-up)."""
        self._check_grid(dist)
        self._default = dist.copy()

    def set_distribution(self, app, dist):
        """Replaces `app`'s distribution with a copy of `dist`; idle eviction spares it
        from then on (it is pinned)."""
        self._check_grid(dist)
        cdef int a = self._app(app, True, False)
        self.e.set_dist(a, (<Distribution>dist).h[0])
        if self._apps.names[a] == app:  # not filed under the overflow app
            self._apps.pin(app)

    def distribution(self, app):
        """A copy of `app`'s current distribution (the default prior for an unseen app)."""
        a = self._apps.get(app)
        if a is None and self._default is not None:
            return self._default.copy()
        if a is None or not self.e.has_dist(a):
            raise KeyError(f"unknown app {app!r}: no distribution has been set or learned for it")
        return Distribution.wrap_copy(self.e.dist(a))

    cdef int _app(self, app, cbool create, cbool need_dist=True) except -1:
        a = self._apps.get(app)
        cdef int idx
        if a is None:
            if not create:
                raise KeyError(f"unknown app {app!r}")
            if not isinstance(app, str):
                raise TypeError(f"app must be a str, got {type(app).__name__}")
            if need_dist and self._default is None:
                raise ValueError(
                    f"no execution-time distribution for app {app!r}: call "
                    "set_distribution(app, dist) or set_default_distribution(dist) first"
                )
            idx = self._admit(app)
        else:
            idx = a
            self._apps.touch(app)
        if need_dist and not self.e.has_dist(idx):
            raise ValueError(f"no execution-time distribution for app {app!r}")
        return idx

    cdef int _admit(self, app) except -1:
        """A new app: its own state if there is room (after forgetting the idle apps that
        are due), else the overflow app's (the pure twin's _admit)."""
        t = self._apps
        for _, a in t.sweep(self._busy_fn):
            self.e.reset_app(a)
        _, a, added = t.admit(app)
        if not added:
            return a
        cdef int idx = a
        if idx == self.e.num_apps():
            self.e.add_app()
        if self._default is not None:
            self.e.set_dist(idx, (<Distribution>self._default).h[0])
        return idx

    def _busy(self, name, a):
        return self.e.queued(a) > 0

    # ------------------------------------------------------------- the queue
    def __len__(self):
        return self.e.size()

    def queued(self, app=None):
        if app is None:
            return self.e.size()
        a = self._apps.get(app)
        return 0 if a is None else self.e.queued(a)

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0):
        cdef double arr = arrival
        cdef double dl = deadline
        if not isfinite(arr):
            raise ValueError(f"arrival time must be finite, got {arrival!r}")
        if not isfinite(dl):
            raise ValueError(f"deadline must be finite, got {deadline!r}")
        if dl < arr:
            raise ValueError(
                f"deadline {dl!r} is in the past: it is before the arrival {arr!r}"
            )
        cdef int64_t rid = req_id
        if self.e.has_id(rid):
            raise_status(ERR_DUPLICATE_ID, rid)
        self._apps.tick(arr)
        cdef int a = self._app(app, True)
        raise_status(self.e.enqueue(rid, a, dl), rid)

    def remove(self, req_id):
        cdef int64_t rid
        try:
            rid = req_id
        except (TypeError, OverflowError):
            raise KeyError(f"unknown request id {req_id!r}: it is not queued") from None
        raise_status(self.e.remove(rid), req_id)

    def remove_many(self, req_ids, also=()):
        """`remove` for each of `req_ids` (KeyError at the first unknown one); then the
        same in each policy of `also` (policies of this engine holding the same requests,
        as the variants' engines do: the ids are converted once)."""
        cdef int64_t rid
        cdef vector[int64_t] ids
        cdef size_t i
        cdef Status st
        cdef OrlojPolicy other
        if type(req_ids) is list:
            try:
                ids = req_ids  # one conversion, then a C++ loop
            except (TypeError, OverflowError):
                pass
            else:
                st = self.e.remove_many(ids, &i)  # each queue compacted once
                if st != OK:
                    raise_status(st, req_ids[i])
                for o in also:
                    other = <OrlojPolicy?>o
                    st = other.e.remove_many(ids, &i)
                    if st != OK:
                        raise_status(st, req_ids[i])
                return
        for r in req_ids:
            rid = r
            raise_status(self.e.remove(rid), r)
        for o in also:
            (<OrlojPolicy?>o).remove_many(req_ids)

    # ------------------------------------------------------------- learning
    def observe_solo(self, app, solo_time):
        cdef int a = self._app(app, True, False)
        cdef Distribution d
        if not self.e.has_dist(a):
            d = Distribution(*(self._grid or ()))
            if self._grid is None:
                self._grid = (d.bins, d.lo, d.hi)
            d.add(solo_time)
            self.e.set_dist(a, d.h[0])
            return
        cdef double v = solo_time
        if not (isfinite(v) and v >= 0.0):
            check_time(v, "execution time")
        self.e.dist(a).add(v)

    def observe_batch(self, apps, exec_time):
        if len(apps) == 1:
            self.observe_solo(apps[0], float(exec_time) / self.e.c(1))

    def next_wakeup(self, now):
        """When a fallback request held back by patience may run (the pure twin's)."""
        cdef double w = self.e.wake()
        return None if w < 0.0 else w

    # ------------------------------------------------------------- batch latency
    cdef int _groups(self, apps, vector[Group]* groups) except -1:
        if len(apps) == 0:
            raise ValueError("empty batch: a batch needs at least one member")
        cdef vector[int] counts = vector[int](self.e.num_apps(), 0)
        for app in apps:
            counts[self._app(app, False)] += 1
        self.e.groups_of(counts, groups)
        return 0

    def batch_cdf(self, t, apps):
        """P(a batch with members of these apps finishes within t seconds)."""
        cdef vector[Group] groups
        self._groups(apps, &groups)
        cdef double c = self._inflation.c(len(apps))
        return c_batch_cdf(check_nan(t), groups, c)

    def batch_mean(self, apps):
        """E[execution time] of a batch with members of these apps."""
        cdef vector[Group] groups
        self._groups(apps, &groups)
        cdef int b = len(apps)
        cdef double c = self._inflation.c(b)
        cdef vector[double] out
        if groups.size() == 1:
            out.resize(b + 1)
            groups[0].dist.emax_table(b, out.data())
            return c * out[b]
        return c * mixed_expected_max(groups)

    # ------------------------------------------------------------- the decision
    def decide(self, now):
        cdef double t = now
        if not isfinite(t):
            raise ValueError(f"now must be finite, got {now!r}")
        cdef vector[int64_t] batch
        cdef vector[int64_t] dropped
        if t > self._apps.clock:
            self._apps.clock = t
        with nogil:
            self.e.decide(t, &batch, &dropped)
        return _new_tuple(Decision, (batch, dropped, [], None))

    cdef double _now(self, now) except? -1.0:
        cdef double t = now
        if not isfinite(t):
            raise ValueError(f"now must be finite, got {now!r}")
        if t > self._apps.clock:
            self._apps.clock = t
        return t

    def drop_hopeless(self, now):
        """Step 1 of a decision alone: removes and returns the requests that cannot
        finish even alone and now (the pure twin's drop_hopeless)."""
        cdef double t = self._now(now)
        cdef vector[int64_t] dropped
        with nogil:
            self.e.drop_hopeless(t, &dropped)
        return dropped

    def evaluate(self, now):
        """(score, ids) of the batch decide(now) would dispatch after its drops, changing
        no queue; (-1.0, []) if nothing would run (the pure twin's evaluate)."""
        cdef double t = self._now(now)
        cdef vector[int64_t] batch
        cdef double score
        with nogil:
            score = self.e.evaluate(t, &batch)
        return score, batch

    def set_app_weight(self, app, weight):
        """`app`'s weight in the score (the pure twin's set_app_weight)."""
        cdef double w = weight
        if not (w > 0.0 and isfinite(w)):
            raise ValueError(f"an app's weight must be a finite number > 0, got {weight!r}")
        cdef int a = self._app(app, True, False)
        self.e.set_weight(a, w)

    def set_patience(self, patience):
        """The fallback's patience from now on (0: off; the pure twin's set_patience)."""
        self.e.set_patience(check_patience(patience))

    @property
    def patience(self):
        return self.e.patience()

    def set_epsilon(self, epsilon):
        """Step 1's drop threshold from now on (the pure twin's set_epsilon)."""
        self.e.set_epsilon(check_probability("epsilon", epsilon))

    def set_price_share(self, price_share):
        """Step 3b's price share from now on (1: off; the pure twin's set_price_share)."""
        self.e.set_price_share(check_price_share(price_share))

    @property
    def price_share(self):
        return self.e.price_share()

    def set_batch_limit(self, limit):
        """The largest batch a decision forms from now on (None or 0: the maximum batch;
        the pure twin's set_batch_limit)."""
        cdef int b = 0 if limit is None else limit
        if b < 0:
            raise ValueError(f"a batch limit must be >= 0 (0: none), got {limit!r}")
        self.e.set_batch_limit(b)

    @property
    def batch_limit(self):
        return self.e.batch_limit()

    def app_weight(self, app):
        """`app`'s weight (1.0 for an app never weighted or unknown)."""
        a = self._apps.get(app)
        return 1.0 if a is None else self.e.weight(a)
