// Execution-time distributions: a histogram with in-bin moments on a fixed log grid.
//
// The executable specification is orloj_rt/engine/pure/distribution.py; every arithmetic
// step below is written in the same order, so the two agree bit for bit (built with
// -ffp-contract=off). See that file's docstring for the model.
//
//   bin 0          [0, lo)             underflow
//   bins 1..K-2    log-spaced [lo, hi)
//   bin K-1        [hi, inf)           overflow
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace orloj {

constexpr double kRescaleAt = 1e100;    // renormalise the growing sample weight here
constexpr double kPointMassRel = 1e-12;  // narrower in-bin spreads are point masses

// Versions are unique across every histogram of the process, so that a policy's cache of
// one app can never mistake a replaced distribution (a copy) for the one it cached.
inline uint64_t next_version() {
  static uint64_t counter = 0;  // the engine is single-threaded (one scheduler loop)
  return ++counter;
}

inline double ipow(double x, int n) {
  double result = 1.0;
  double base = x;
  while (n) {
    if (n & 1) result *= base;
    n >>= 1;
    if (n) base *= base;
  }
  return result;
}

class Histogram {
 public:
  Histogram() : Histogram(64, 1e-5, 60.0, 2000) {}

  Histogram(int bins, double lo, double hi, int window)
      : bins_(bins), lo_(lo), hi_(hi), window_(window),
        keep_(window ? 1.0 - 1.0 / window : 1.0),
        inv_dlog_(static_cast<double>(bins - 2) / std::log(hi / lo)),
        edges_(bins + 1), w_(bins), s_(bins), q_(bins),
        mn_(bins, std::numeric_limits<double>::infinity()),
        mx_(bins, -std::numeric_limits<double>::infinity()),
        cumw_(bins + 1), blo_(bins), bhi_(bins), binv_(bins) {
    double dlog = std::log(hi / lo) / (bins - 2);
    edges_[0] = 0.0;
    for (int i = 1; i < bins - 1; ++i) edges_[i] = lo * std::exp(static_cast<double>(i - 1) * dlog);
    edges_[1] = lo;
    edges_[bins - 1] = hi;
    edges_[bins] = std::numeric_limits<double>::infinity();
  }

  int bins() const { return bins_; }
  double lo() const { return lo_; }
  double hi() const { return hi_; }
  int window() const { return window_; }
  uint64_t version() const { return version_; }
  int64_t samples_added() const { return n_; }
  bool empty() const { return n_ == 0; }
  const std::vector<double>& edges() const { return edges_; }
  bool same_grid(const Histogram& o) const {
    return bins_ == o.bins_ && lo_ == o.lo_ && hi_ == o.hi_;
  }

  int bin_of(double x) const {
    if (x < lo_) return 0;
    if (x >= hi_) return bins_ - 1;
    int k = 1 + static_cast<int>(std::floor(std::log(x / lo_) * inv_dlog_));
    if (k < 1) k = 1;
    else if (k > bins_ - 2) k = bins_ - 2;
    while (x < edges_[k]) --k;
    while (x >= edges_[k + 1]) ++k;
    return k;
  }

  // bin_of(x) given k = bin_of(y) for some y <= x: a walk up from k, without the log, for
  // points in increasing order (a batch's members by deadline); far walks search anew.
  int bin_after(double x, int k) const {
    if (x < edges_[k]) return bin_of(x);  // not in order after all
    for (int step = 0; step < 4; ++step) {
      if (x < edges_[k + 1]) return k;
      ++k;
    }
    return bin_of(x);
  }

  // bin_of(x) given a bin k near it, in either direction: a walk of a few steps from k,
  // without the log (the bin is the one whose edges hold x, however it is found).
  int bin_near(double x, int k) const {
    for (int step = 0; step < 4; ++step) {
      if (x < edges_[k]) {
        if (k == 0) break;
        --k;
      } else if (x < edges_[k + 1]) {
        return k;
      } else {
        ++k;
      }
    }
    return bin_of(x);
  }

  // x must be finite and >= 0 (the Cython layer checks).
  void add(double x) {
    put(x, g_);
    g_last_ = g_;
    if (keep_ < 1.0) {
      g_ = g_ / keep_;
      if (g_ > kRescaleAt) rescale();
    }
    ++n_;
    touch();
  }

  // Every sample weighs what the next add() would; the decay clock does not advance.
  void add_many(const double* xs, int64_t n) {
    if (n <= 0) return;
    for (int64_t i = 0; i < n; ++i) put(xs[i], g_);
    g_last_ = g_;
    n_ += n;
    touch();
  }

  double count() const {
    if (!n_) return 0.0;
    double acc = 0.0;
    for (int k = 0; k < bins_; ++k) acc += w_[k];
    return acc / g_last_;
  }

  // The model (valid after ready(); callers check empty() first).
  void ready() {
    if (!clean_) rebuild();
  }

  double cdf(double x) const { return cdf_in(x, bin_of(x)); }

  // cdf(x) given k = bin_of(x): histograms on one grid share k, so a product of several
  // apps' CDFs at one point needs one bin search (and one log), not one per app.
  double cdf_in(double x, int k) const {
    double w = w_[k];
    if (w > 0.0) {
      double frac;
      if (x >= bhi_[k]) {
        frac = 1.0;
      } else if (x <= blo_[k]) {
        frac = 0.0;
      } else {
        frac = (x - blo_[k]) * binv_[k];
        if (frac > 1.0) frac = 1.0;
      }
      return (cumw_[k] + w * frac) / cumw_[bins_];
    }
    return cumw_[k] / cumw_[bins_];
  }

  // P(X <= w + t | X > w); the same steps as Distribution.conditional_cdf in the twin.
  double conditional_cdf(double w, double t) const {
    double fw = cdf(w);
    double tail = 1.0 - fw;
    if (!(tail > 0.0)) return 0.0;
    if (!(t > 0.0)) return 0.0;
    double p = (cdf(w + t) - fw) / tail;
    if (p < 0.0) {
      p = 0.0;
    } else if (p > 1.0) {
      p = 1.0;
    }
    return p;
  }

  double quantile(double p) const {
    double target = p * cumw_[bins_];
    if (target <= 0.0) return blo_[first_];
    int j = static_cast<int>(
        std::lower_bound(cumw_.begin() + 1, cumw_.begin() + bins_ + 1, target) - cumw_.begin());
    if (j > bins_) j = bins_;
    int k = j - 1;
    while (w_[k] <= 0.0) ++k;
    double frac = (target - cumw_[k]) / w_[k];
    if (frac < 0.0) frac = 0.0;
    else if (frac > 1.0) frac = 1.0;
    return blo_[k] + frac * (bhi_[k] - blo_[k]);
  }

  double mean() const {
    double acc = 0.0;
    for (int k = first_; k <= last_; ++k) {
      double w = w_[k];
      if (w > 0.0) acc += w * (0.5 * (blo_[k] + bhi_[k]));
    }
    return acc / cumw_[bins_];
  }

  double support_min() const { return blo_[first_]; }
  double support_max() const { return bhi_[last_]; }

  // out[n] = E[max of n solo times] for n = 0..nmax (out has nmax + 1 entries).
  // On a linear piece from F0 to F1 of width h, the integral of F^n is h * S_n / (n + 1)
  // with S_n = F1^n + F0 * S_(n-1): no cancellation when F1 is close to F0.
  void emax_table(int nmax, double* out) const {
    std::vector<double> integ(nmax + 1, 0.0);
    double total = cumw_[bins_];
    double prev_end = 0.0, x_end = 0.0;
    for (int k = first_; k <= last_; ++k) {
      double w = w_[k];
      if (w <= 0.0) continue;
      double f0 = cumw_[k] / total;
      double f1 = cumw_[k + 1] / total;
      double a = blo_[k], b = bhi_[k];
      double gap = a - prev_end;
      double width = b - a;
      double p0 = 1.0, p1 = 1.0, s = 1.0;
      for (int n = 1; n <= nmax; ++n) {
        p0 = p0 * f0;
        p1 = p1 * f1;
        s = p1 + f0 * s;
        integ[n] += gap * p0 + width * (s / static_cast<double>(n + 1));
      }
      prev_end = b;
      x_end = b;
    }
    out[0] = 0.0;
    for (int n = 1; n <= nmax; ++n) out[n] = x_end - integ[n];
  }

  // In-bin supports, for the breakpoints of mixed batches.
  int first_nonempty() const { return first_; }
  int last_nonempty() const { return last_; }
  double weight(int k) const { return w_[k]; }
  double bin_lo(int k) const { return blo_[k]; }
  double bin_hi(int k) const { return bhi_[k]; }

  // Called after every change, and on a copy (a copy is a new distribution).
  void touch() {
    version_ = next_version();
    clean_ = false;
  }

  // Raw state, for copying across processes (to_state / from_state).
  std::vector<double>& raw_w() { return w_; }
  std::vector<double>& raw_s() { return s_; }
  std::vector<double>& raw_q() { return q_; }
  std::vector<double>& raw_mn() { return mn_; }
  std::vector<double>& raw_mx() { return mx_; }
  double g() const { return g_; }
  double g_last() const { return g_last_; }
  void set_raw(double g, double g_last, int64_t n) {
    g_ = g;
    g_last_ = g_last;
    n_ = n;
    touch();
  }

 private:
  void put(double x, double g) {
    int k = bin_of(x);
    w_[k] += g;
    s_[k] += g * x;
    q_[k] += g * x * x;
    if (x < mn_[k]) mn_[k] = x;
    if (x > mx_[k]) mx_[k] = x;
  }

  void rescale() {
    double f = 1.0 / g_;
    for (int k = 0; k < bins_; ++k) {
      w_[k] *= f;
      s_[k] *= f;
      q_[k] *= f;
    }
    g_last_ *= f;
    g_ = 1.0;
  }

  void rebuild() {
    int first = -1, last = -1;
    double acc = 0.0;
    for (int k = 0; k < bins_; ++k) {
      double w = w_[k];
      cumw_[k] = acc;
      acc = acc + w;
      blo_[k] = 0.0;
      bhi_[k] = 0.0;
      binv_[k] = 0.0;
      if (w > 0.0) {
        if (first < 0) first = k;
        last = k;
        double m = s_[k] / w;
        double var = q_[k] / w - m * m;
        if (var < 0.0) var = 0.0;
        double h = std::sqrt(3.0 * var);
        double a = m - h, b = m + h;
        if (a < mn_[k]) a = mn_[k];
        if (b > mx_[k]) b = mx_[k];
        if (!(b - a > kPointMassRel * b)) {
          if (m < mn_[k]) m = mn_[k];
          if (m > mx_[k]) m = mx_[k];
          a = m;
          b = m;
          binv_[k] = 0.0;
        } else {
          binv_[k] = 1.0 / (b - a);
        }
        blo_[k] = a;
        bhi_[k] = b;
      }
    }
    cumw_[bins_] = acc;
    first_ = first;
    last_ = last;
    clean_ = true;
  }

  int bins_;
  double lo_, hi_;
  int window_;
  double keep_;
  double inv_dlog_;
  std::vector<double> edges_;
  std::vector<double> w_, s_, q_;
  std::vector<double> mn_, mx_;  // in-bin extremes; never decay, they only bound the spread
  double g_ = 1.0, g_last_ = 1.0;
  int64_t n_ = 0;
  uint64_t version_ = 0;
  bool clean_ = false;
  std::vector<double> cumw_, blo_, bhi_, binv_;
  int first_ = -1, last_ = -1;
};

}  // namespace orloj
