// Batch latency: P(T_B <= t) = prod_i F_app(i)(t / c(b)), and E[T_B].
//
// The executable specification is orloj_rt/engine/pure/batch_model.py.
#pragma once

#include <algorithm>
#include <vector>

#include "histogram.hpp"

namespace orloj {

// Gauss-Legendre rules, filled once from orloj_rt.engine.quadrature so that both engines
// integrate with the very same nodes. gauss_nodes[m] holds m nodes on [-1, 1].
struct GaussTables {
  int max_points = 0;
  std::vector<std::vector<double>> nodes, weights;  // indexed by m (0 unused)
};

inline GaussTables& gauss_tables() {
  static GaussTables tables;
  return tables;
}

inline int points_for_degree(int degree) {
  int m = (degree + 2) / 2;
  int cap = gauss_tables().max_points;
  return m < cap ? m : cap;
}

struct Group {
  Histogram* dist;
  int count;
};

// P(T <= t) of a batch whose members form these groups; c is c(b). Groups are ready().
inline double batch_cdf(double t, const std::vector<Group>& groups, double c) {
  double x = t / c;
  double p = 1.0;
  for (const Group& g : groups) p *= ipow(g.dist->cdf(x), g.count);
  return p;
}

// E[max] over members from several distributions: Gauss-Legendre between consecutive
// breakpoints (every in-bin support end), where the product of powers is a polynomial.
inline double mixed_expected_max(const std::vector<Group>& groups) {
  int b = 0;
  std::vector<double> points;
  points.push_back(0.0);
  double x_end = 0.0;
  for (const Group& g : groups) {
    b += g.count;
    Histogram* d = g.dist;
    for (int k = d->first_nonempty(); k <= d->last_nonempty(); ++k) {
      if (d->weight(k) > 0.0) {
        points.push_back(d->bin_lo(k));
        points.push_back(d->bin_hi(k));
      }
    }
    if (d->support_max() > x_end) x_end = d->support_max();
  }
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  int m = points_for_degree(b);
  const std::vector<double>& nodes = gauss_tables().nodes[m];
  const std::vector<double>& weights = gauss_tables().weights[m];
  double total = 0.0;
  for (size_t i = 0; i + 1 < points.size(); ++i) {
    double a = points[i], z = points[i + 1];
    if (z > x_end) break;
    double half = 0.5 * (z - a);
    double mid = 0.5 * (z + a);
    double acc = 0.0;
    for (int r = 0; r < m; ++r) {
      double x = mid + half * nodes[r];
      double g = 1.0;
      for (const Group& grp : groups) g *= ipow(grp.dist->cdf(x), grp.count);
      acc += weights[r] * (1.0 - g);
    }
    total += half * acc;
  }
  return total;
}

}  // namespace orloj
