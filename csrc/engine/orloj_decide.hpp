// The Orloj decision: drop the hopeless, form one candidate batch per size, dispatch the
// one with the most expected finishes per unit of expected batch time.
//
// The executable specification, with the reasoning, is orloj_rt/engine/pure/orloj.py;
// the arithmetic below follows it step for step so that the two decide identically.
//
// Cost of a decision with A queued apps and maximum batch B: O(dropped + B * A * log n)
// for the thresholds' binary searches, plus O(B^2) work on the candidates' members at
// most (bounds skip most of it). It never walks the queue beyond the candidates.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "batch_model.hpp"
#include "histogram.hpp"
#include "id_map.hpp"
#include "request_queue.hpp"
#include "status.h"

namespace orloj {

class OrlojEngine {
 public:
  OrlojEngine(const std::vector<double>& c, double theta, double epsilon, bool fallback)
      : c_(c), B_(static_cast<int>(c.size())), theta_(theta), epsilon_(epsilon),
        fallback_(fallback), troot_(B_ + 1, 0.0) {
    for (int b = 1; b <= B_; ++b) troot_[b] = std::pow(theta_, 1.0 / b);
  }

  int max_batch() const { return B_; }
  double c(int b) const { return c_[b - 1]; }
  const std::vector<double>& inflation() const { return c_; }
  int num_apps() const { return static_cast<int>(apps_.size()); }
  size_t size() const { return where_.size(); }
  size_t queued(int a) const { return apps_[a]->queue.size(); }
  bool has_dist(int a) const { return apps_[a]->has_dist; }
  Histogram& dist(int a) { return apps_[a]->dist; }

  int add_app() {
    apps_.emplace_back(new App());
    return static_cast<int>(apps_.size()) - 1;
  }

  void set_dist(int a, const Histogram& h) {
    App& app = *apps_[a];
    app.dist = h;
    app.dist.touch();
    app.has_dist = true;
  }

  Status enqueue(int64_t id, int a, double deadline) {
    if (!where_.insert(id, Loc{a, deadline})) return ERR_DUPLICATE_ID;
    apps_[a]->queue.insert(QEntry{deadline, id});
    return OK;
  }

  Status remove(int64_t id) {
    const Loc* loc = where_.find(id);
    if (!loc) return ERR_UNKNOWN_ID;
    apps_[loc->app]->queue.erase(QEntry{loc->deadline, id});
    where_.erase(id);
    return OK;
  }

  // Runs one decision at time `now`; appends the batch (most urgent first) and the drops.
  void decide(double now, std::vector<int64_t>* batch, std::vector<int64_t>* dropped) {
    const double c1 = c_[0];
    present_.clear();
    for (int a = 0; a < num_apps(); ++a) {
      App& app = *apps_[a];
      if (app.queue.empty()) continue;
      refresh(app);
      while (!app.queue.empty()) {
        const QEntry& e = app.queue.first();
        if (app.dist.cdf((e.key - now) / c1) < epsilon_) {
          dropped->push_back(e.id);
          forget(e.id);
          app.queue.pop_first();
        } else {
          break;
        }
      }
      if (!app.queue.empty()) present_.push_back(a);
    }
    if (present_.empty()) return;

    // Pass 1: every size's candidate, its expected time, and bounds on its score from its
    // least and most likely members (P is monotone in the slack).
    form_candidates(now);
    double floor_score = -1.0;  // the best lower bound: no candidate below it can win
    for (const Candidate& cand : cands_)
      if (cand.lower > floor_score) floor_score = cand.lower;

    // Pass 2: exact scores in increasing size, skipping candidates whose upper bound
    // cannot beat what is known. Skipping changes no decision: a skipped candidate's exact
    // score is below the best lower bound, or at most the best score of a smaller size,
    // and ties go to the smaller size (as in the pure twin, which scores every candidate).
    double best_score = -1.0;
    const Candidate* best = nullptr;
    for (const Candidate& cand : cands_) {
      if (cand.upper < floor_score || cand.upper <= best_score) continue;
      double score = exact_score(cand, now);
      if (score > best_score) {
        best_score = score;
        best = &cand;
      }
    }
    best_.clear();
    if (best) {
      best_.assign(flat_.begin() + best->start, flat_.begin() + best->start + best->b);
    } else if (fallback_) {
      most_likely_alone(now);
    }
    for (const Member& m : best_) where_.prefetch(m.id);
    for (const Member& m : best_) {
      apps_[m.app]->queue.erase(QEntry{m.deadline, m.id});
      batch->push_back(m.id);
    }
    for (const Member& m : best_) forget(m.id);
  }

  // P(T <= t) and E[T] for a batch with counts[a] members of app a (apps must have dists).
  void groups_of(const std::vector<int>& counts, std::vector<Group>* groups) {
    groups->clear();
    for (size_t a = 0; a < counts.size(); ++a) {
      if (counts[a]) {
        apps_[a]->dist.ready();
        groups->push_back(Group{&apps_[a]->dist, counts[a]});
      }
    }
  }

 private:
  struct App {
    Histogram dist;
    bool has_dist = false;
    SortedBlocks queue;
    uint64_t cache_version = 0;
    std::vector<double> qth;   // qth[b] = F^-1(theta^(1/b))
    std::vector<double> emax;  // emax[b] = E[max of b solo times]
  };

  struct Member {
    double deadline;
    int64_t id;
    int app;
  };

  void forget(int64_t id) { where_.erase(id); }

  void refresh(App& app) {
    if (app.cache_version == app.dist.version() && !app.qth.empty()) return;
    app.dist.ready();
    app.qth.assign(B_ + 1, 0.0);
    for (int b = 1; b <= B_; ++b) app.qth[b] = app.dist.quantile(troot_[b]);
    app.emax.assign(B_ + 1, 0.0);
    app.dist.emax_table(B_, app.emax.data());
    app.cache_version = app.dist.version();
  }

  struct Candidate {
    int b;
    double cb;
    size_t start;      // its members are flat_[start, start + b), most urgent first
    double e_t;        // expected batch time
    double lower, upper;  // bounds on its score
  };

  // For each batch size b, the b most urgent requests over all apps at or after the
  // admission threshold, merged by (deadline, id).
  void form_candidates(double now) {
    const size_t np = present_.size();
    pos_.resize(np);
    seek_.resize(np);
    key_.resize(np);
    flat_.clear();
    cands_.clear();
    for (int b = 1; b <= B_; ++b) {
      const double cb = c_[b - 1];
      double q_max = 0.0;
      if (b > 1) {
        for (int a : present_) {
          double v = apps_[a]->qth[b];
          if (v > q_max) q_max = v;
        }
      }
      for (size_t i = 0; i < np; ++i) {
        App& app = *apps_[present_[i]];
        double qth = b == 1 ? app.qth[1] : q_max;
        double key = now + cb * qth;
        // thresholds usually grow with b: continue from the last position
        pos_[i] = b > 1 && key >= key_[i] ? app.queue.seek(seek_[i], key) : app.queue.lower_bound(key);
        seek_[i] = pos_[i];
        key_[i] = key;
      }
      const size_t start = flat_.size();
      int got = 0;
      while (got < b) {
        int pick = -1;
        for (size_t i = 0; i < np; ++i) {
          const SortedBlocks& q = apps_[present_[i]]->queue;
          if (q.at_end(pos_[i])) continue;
          if (pick < 0 || q.at(pos_[i]) < apps_[present_[pick]]->queue.at(pos_[pick]))
            pick = static_cast<int>(i);
        }
        if (pick < 0) break;
        const SortedBlocks& q = apps_[present_[pick]]->queue;
        const QEntry& e = q.at(pos_[pick]);
        flat_.push_back(Member{e.key, e.id, present_[pick]});
        q.next(pos_[pick]);
        ++got;
      }
      if (got < b) {
        flat_.resize(start);
        continue;
      }
      Candidate cand{b, cb, start, 0.0, 0.0, 0.0};
      count_apps(cand);
      double e_max = in_.size() == 1 ? apps_[in_[0]]->emax[b] : mixed_emax();
      double e_t = cb * e_max;
      if (!(e_t > 0.0)) e_t = 1e-300;
      cand.e_t = e_t;
      double p_first = member_probability(flat_[start], cand, now);
      double p_last = member_probability(flat_[start + b - 1], cand, now);
      // margins cover the rounding of a sum of b terms (b <= 4096)
      cand.lower = b * p_first * (1.0 - 1e-9) / e_t;
      cand.upper = b * p_last * (1.0 + 1e-9) / e_t;
      cands_.push_back(cand);
    }
  }

  void count_apps(const Candidate& cand) {
    counts_.assign(apps_.size(), 0);
    for (size_t i = cand.start; i < cand.start + cand.b; ++i) ++counts_[flat_[i].app];
    in_.clear();
    for (size_t a = 0; a < counts_.size(); ++a)
      if (counts_[a]) in_.push_back(static_cast<int>(a));
  }

  // P(member finishes) in this candidate; count_apps(cand) must be current.
  double member_probability(const Member& m, const Candidate& cand, double now) {
    double x = (m.deadline - now) / cand.cb;
    if (in_.size() == 1) return ipow(apps_[in_[0]]->dist.cdf(x), cand.b);
    double p = 1.0;
    for (int a : in_) p *= ipow(apps_[a]->dist.cdf(x), counts_[a]);
    return p;
  }

  double exact_score(const Candidate& cand, double now) {
    count_apps(cand);
    double e_fin = 0.0;
    for (size_t i = cand.start; i < cand.start + cand.b; ++i)
      e_fin += member_probability(flat_[i], cand, now);
    return e_fin / cand.e_t;
  }

  void most_likely_alone(double now) {
    const double c1 = c_[0];
    double best_p = -1.0;
    for (int a : present_) {
      App& app = *apps_[a];
      const QEntry& e = app.queue.last();
      double p = app.dist.cdf((e.key - now) / c1);
      if (p > best_p) {
        best_p = p;
        best_.assign(1, Member{e.key, e.id, a});
      }
    }
  }

  // ------------------------------------------------------------- mixed batches
  // CDF powers on shared points (bin edges below the largest support end, that end, and
  // midpoints); Simpson's rule on each piece integrates 1 - prod_a F_a^n_a.
  double mixed_emax() {
    bool stale = mixed_versions_.size() != apps_.size();
    for (size_t a = 0; !stale && a < apps_.size(); ++a)
      stale = mixed_versions_[a] != version_or_none(a);
    if (stale) build_mixed();
    const int npts = static_cast<int>(pts_.size());
    int zero_until = -1, one_from = 0;
    for (int a : in_) {
      if (zero_until_[a] > zero_until) zero_until = zero_until_[a];
      if (one_from_[a] > one_from) one_from = one_from_[a];
    }
    double total = 0.0;
    for (int j = 0; j + 2 < npts; j += 2) {
      double h = pts_[j + 2] - pts_[j];
      if (j + 2 <= zero_until) {
        total += h;
      } else if (j >= one_from) {
        break;
      } else {
        double g0 = 1.0, gm = 1.0, g2 = 1.0;
        for (int a : in_) {
          const double* row = &pow_[a][static_cast<size_t>(counts_[a]) * npts];
          g0 *= row[j];
          gm *= row[j + 1];
          g2 *= row[j + 2];
        }
        total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2));
      }
    }
    return total;
  }

  uint64_t version_or_none(size_t a) const {
    const App& app = *apps_[a];
    return app.has_dist ? app.dist.version() : std::numeric_limits<uint64_t>::max();
  }

  void build_mixed() {
    double x_end = 0.0;
    const std::vector<double>* edges = nullptr;
    for (auto& app : apps_) {
      if (app->has_dist && !app->dist.empty()) {
        app->dist.ready();
        edges = &app->dist.edges();
        if (app->dist.support_max() > x_end) x_end = app->dist.support_max();
      }
    }
    std::vector<double> nodes;
    if (edges)
      for (double e : *edges)
        if (e < x_end) nodes.push_back(e);
    nodes.push_back(x_end);
    pts_.clear();
    for (size_t i = 0; i + 1 < nodes.size(); ++i) {
      pts_.push_back(nodes[i]);
      pts_.push_back(0.5 * (nodes[i] + nodes[i + 1]));
    }
    pts_.push_back(nodes.back());
    const size_t npts = pts_.size();
    pow_.assign(apps_.size(), std::vector<double>());
    zero_until_.assign(apps_.size(), -1);
    one_from_.assign(apps_.size(), 0);
    mixed_versions_.assign(apps_.size(), 0);
    std::vector<double> f(npts);
    for (size_t a = 0; a < apps_.size(); ++a) {
      mixed_versions_[a] = version_or_none(a);
      App& app = *apps_[a];
      if (!app.has_dist || app.dist.empty()) continue;
      for (size_t j = 0; j < npts; ++j) f[j] = app.dist.cdf(pts_[j]);
      std::vector<double>& rows = pow_[a];
      rows.assign(static_cast<size_t>(B_ + 1) * npts, 1.0);
      for (int n = 1; n <= B_; ++n)
        for (size_t j = 0; j < npts; ++j) rows[n * npts + j] = rows[(n - 1) * npts + j] * f[j];
      int zu = -1;
      for (size_t j = 0; j < npts; ++j)
        if (f[j] <= 0.0) zu = static_cast<int>(j);
      int of = static_cast<int>(npts) - 1;
      for (int j = static_cast<int>(npts) - 1; j >= 0; --j) {
        if (f[j] >= 1.0) of = j;
        else break;
      }
      zero_until_[a] = zu;
      one_from_[a] = of;
    }
  }

  std::vector<double> c_;
  int B_;
  double theta_, epsilon_;
  bool fallback_;
  std::vector<double> troot_;
  std::vector<std::unique_ptr<App>> apps_;
  struct Loc {
    int app = 0;
    double deadline = 0.0;
  };
  IdMap<Loc> where_;

  // scratch space reused by every decision
  std::vector<int> present_;
  std::vector<SortedBlocks::Pos> pos_, seek_;
  std::vector<double> key_;
  std::vector<Member> flat_, best_;
  std::vector<Candidate> cands_;
  std::vector<int> counts_, in_;

  // mixed-batch tables
  std::vector<uint64_t> mixed_versions_;
  std::vector<double> pts_;
  std::vector<std::vector<double>> pow_;
  std::vector<int> zero_until_, one_from_;
};

}  // namespace orloj
