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
#include <unordered_map>
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
  OrlojEngine(const std::vector<double>& c, double theta, double epsilon, bool fallback,
              bool pools = false)
      : c_(c), B_(static_cast<int>(c.size())), theta_(theta), epsilon_(epsilon),
        fallback_(fallback), pools_on_(pools), troot_(B_ + 1, 0.0) {
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

    // Pass 2: exact scores, skipping candidates whose upper bound cannot beat what is
    // known. The candidate with the highest upper bound is scored first, since it is
    // usually the best: few others survive its score. Skipping changes no decision: a
    // skipped candidate's exact score is below the best lower bound, or below the best
    // score, or equal to it with a later place in the order; among equal scores the
    // earliest candidate wins, as in the pure twin, which scores every candidate.
    double best_score = -1.0;
    const Candidate* best = nullptr;
    size_t best_i = 0;
    size_t top = cands_.size();
    for (size_t i = 0; i < cands_.size(); ++i)
      if (top == cands_.size() || cands_[i].upper > cands_[top].upper) top = i;
    if (top < cands_.size()) {
      best_score = exact_score(cands_[top], now);
      best = &cands_[top];
      best_i = top;
    }
    for (size_t i = 0; i < cands_.size(); ++i) {
      if (i == top) continue;
      Candidate& cand = cands_[i];
      if (cand.upper < floor_score || cand.upper < best_score) continue;
      if (cand.upper == best_score && i > best_i) continue;
      double score = exact_score(cand, now);
      if (score > best_score || (score == best_score && i < best_i)) {
        best_score = score;
        best = &cand;
        best_i = i;
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

  struct PoolBuf {
    std::vector<Member> buf;  // merged admitted requests; buf[head..) are current
    size_t head = 0;
    std::vector<size_t> apps;  // its apps (indices into present_), fastest first
    std::vector<SortedBlocks::Pos> cur;  // per app: its first request not yet in buf
    double key = 0.0;  // the bar it was last admitted at
    bool valid = false;
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
    double e_t;        // expected batch time (for a mix of apps: once it is scored)
    double lower, upper;  // bounds on its score
    bool mixed;        // members of several apps: e_t waits for exact_score()
  };

  // For each batch size b, the candidates of the pure twin's _candidates(), in its order:
  // a batch of one over every app at its own threshold; with one app, its threshold; with
  // several, one pool per prefix of the apps ordered by q_a = qth[b], all at the threshold
  // of the pool's newest (slowest) app, skipped when that app has nothing admitted.
  void form_candidates(double now) {
    const size_t np = present_.size();
    pos_.resize(np);
    seek_.resize(np);
    key_.resize(np);
    order_.resize(np);
    if (pools_.size() < np) pools_.resize(np);
    for (PoolBuf& pb : pools_) pb.valid = false;
    flat_.clear();
    cands_.clear();
    for (int b = 1; b <= B_; ++b) {
      const double cb = c_[b - 1];
      if (b == 1) {
        // each app at its own exact threshold; the most urgent admitted request of all
        int pick = -1;
        for (size_t i = 0; i < np; ++i) {
          position(i, now + cb * apps_[present_[i]]->qth[1], b);
          const SortedBlocks& q = apps_[present_[i]]->queue;
          if (q.at_end(pos_[i])) continue;
          if (pick < 0 || q.at(pos_[i]) < apps_[present_[pick]]->queue.at(pos_[pick]))
            pick = static_cast<int>(i);
        }
        if (pick >= 0) {
          const QEntry& e = apps_[present_[pick]]->queue.at(pos_[pick]);
          const Member m{e.key, e.id, present_[pick]};
          emit_candidate(&m, 1, cb, now);
        }
        continue;
      }
      if (!pools_on_) {
        // the original rule: one pool of every app, all at the most demanding app's bar
        double q_max = 0.0;
        for (size_t i = 0; i < np; ++i) {
          const double v = apps_[present_[i]]->qth[b];
          if (v > q_max) q_max = v;
          order_[i] = i;
        }
        const double key = now + cb * q_max;
        for (size_t i = 0; i < np; ++i) position(i, key, b);
        PoolBuf& pb = pools_[np - 1];
        admit(pb, np - 1, key);
        if (fill(pb, b)) emit_candidate(pb.buf.data() + pb.head, b, cb, now);
        continue;
      }
      // apps by (qth[b], app index): present_ is in app order, so a stable insertion sort
      for (size_t i = 0; i < np; ++i) {
        size_t k = i;
        const double v = apps_[present_[i]]->qth[b];
        while (k > 0 && apps_[present_[order_[k - 1]]]->qth[b] > v) {
          order_[k] = order_[k - 1];
          --k;
        }
        order_[k] = i;
      }
      size_t last_cands = static_cast<size_t>(-1);  // this b's latest candidate
      for (size_t j = 0; j < np; ++j) {
        const size_t newest = order_[j];
        const double key = now + cb * apps_[present_[newest]]->qth[b];
        position(newest, key, b);
        const SortedBlocks& nq = apps_[present_[newest]]->queue;
        if (nq.at_end(pos_[newest])) continue;
        if (last_cands != static_cast<size_t>(-1)) {
          // Pool j would repeat this b's last candidate when the higher bar keeps all of
          // its members and the newest app's first admitted request comes after them. An
          // equal score never wins (ties go to the earlier candidate), so skipping it
          // changes no decision; the pure twin scores it, to the same effect.
          const Candidate& prev = cands_[last_cands];
          const Member& first = flat_[prev.start];
          const Member& last = flat_[prev.start + b - 1];
          if (first.deadline >= key && QEntry{last.deadline, last.id} < nq.at(pos_[newest]))
            continue;
        }
        PoolBuf& pb = pools_[j];
        admit(pb, j, key);
        if (fill(pb, b) && emit_candidate(pb.buf.data() + pb.head, b, cb, now))
          last_cands = cands_.size() - 1;
      }
    }
  }

  // pos_[i] = the first entry of present app i at or after key; thresholds usually grow
  // with b, so it gallops on from this app's position at the last b when it can.
  void position(size_t i, double key, int b) {
    const SortedBlocks& q = apps_[present_[i]]->queue;
    pos_[i] = b > 1 && key >= key_[i] ? q.seek(seek_[i], key) : q.lower_bound(key);
    seek_[i] = pos_[i];
    key_[i] = key;
  }

  // Pool j's requests at or after `key`, merged by (deadline, id) into pb.buf[head..) on
  // demand. From one b to the next the pool usually keeps its apps and its bar only
  // rises: the buffer then sheds what fell below the bar and keeps the rest, so that a
  // decision merges each pool once instead of once per batch size.
  void admit(PoolBuf& pb, size_t j, double key) {
    bool same = pb.valid && key >= pb.key && pb.apps.size() == j + 1;
    for (size_t k = 0; same && k <= j; ++k) same = pb.apps[k] == order_[k];
    if (same) {
      while (pb.head < pb.buf.size() && pb.buf[pb.head].deadline < key) ++pb.head;
      if (pb.head == pb.buf.size()) {
        pb.buf.clear();
        pb.head = 0;
        for (size_t k = 0; k <= j; ++k)
          pb.cur[k] = apps_[present_[pb.apps[k]]]->queue.seek(pb.cur[k], key);
      } else if (pb.head > 64 && 2 * pb.head > pb.buf.size()) {
        pb.buf.erase(pb.buf.begin(), pb.buf.begin() + pb.head);
        pb.head = 0;
      }
    } else {
      pb.apps.assign(order_.begin(), order_.begin() + j + 1);
      pb.cur.resize(j + 1);
      for (size_t k = 0; k <= j; ++k) {
        const size_t i = pb.apps[k];
        const SortedBlocks& q = apps_[present_[i]]->queue;
        // pos_[i] stands at this app's own bar (<= key) or at an older pool's key
        pb.cur[k] = key >= key_[i] ? q.seek(pos_[i], key) : q.lower_bound(key);
      }
      pb.buf.clear();
      pb.head = 0;
      pb.valid = true;
    }
    pb.key = key;
  }

  // Extends pool pb's buffer to b requests if it can; says whether it has them.
  bool fill(PoolBuf& pb, int b) {
    const size_t want = static_cast<size_t>(b);
    if (pb.buf.size() - pb.head >= want) return true;
    // each app's next request, cached: the merge compares these and touches a queue only
    // to step the one it took from
    const size_t na = pb.apps.size();
    heads_.resize(na);
    queues_.resize(na);
    for (size_t k = 0; k < na; ++k) {
      queues_[k] = &apps_[present_[pb.apps[k]]]->queue;
      heads_[k] = queues_[k]->at_end(pb.cur[k]) ? kEnd : queues_[k]->at(pb.cur[k]);
    }
    while (pb.buf.size() - pb.head < want) {
      size_t pick = 0;
      for (size_t k = 1; k < na; ++k)
        if (heads_[k] < heads_[pick]) pick = k;
      if (heads_[pick].id == kEnd.id && heads_[pick].key == kEnd.key) return false;
      pb.buf.push_back(Member{heads_[pick].key, heads_[pick].id, present_[pb.apps[pick]]});
      const SortedBlocks& q = *queues_[pick];
      q.next(pb.cur[pick]);
      heads_[pick] = q.at_end(pb.cur[pick]) ? kEnd : q.at(pb.cur[pick]);
    }
    return true;
  }

  // Copies the b members (most urgent first) into flat_ as a candidate, with bounds on
  // its score.
  bool emit_candidate(const Member* members, int b, double cb, double now) {
    const size_t start = flat_.size();
    flat_.insert(flat_.end(), members, members + b);
    Candidate cand{b, cb, start, 0.0, 0.0, 0.0, false};
    count_apps(cand);
    double p_first = member_probability(flat_[start], cand, now);
    double p_last = member_probability(flat_[start + b - 1], cand, now);
    // margins cover the rounding of a sum of b terms (b <= 4096)
    if (in_.size() == 1) {
      double e_t = cb * apps_[in_[0]]->emax[b];
      if (!(e_t > 0.0)) e_t = 1e-300;
      cand.e_t = e_t;
      cand.lower = b * p_first * (1.0 - 1e-9) / e_t;
      cand.upper = b * p_last * (1.0 + 1e-9) / e_t;
    } else {
      // E[max] of a mix lies between its largest one-app term and the sum of its one-app
      // terms, each integrated by the same rule (see build_mixed): bounds on the score
      // without the integral, which only the candidates that survive pruning pay for.
      ensure_mixed();
      double lo = 0.0, hi = 0.0;
      for (int a : in_) {
        const double v = ssum_[a][counts_[a]];
        if (v > lo) lo = v;
        hi += v;
      }
      cand.mixed = true;
      const double e_lo = cb * lo * (1.0 - 1e-9);
      const double e_hi = cb * hi * (1.0 + 1e-9);
      cand.lower = e_hi > 0.0 ? b * p_first * (1.0 - 1e-9) / e_hi : 0.0;
      cand.upper = e_lo > 0.0 ? b * p_last * (1.0 + 1e-9) / e_lo
                              : std::numeric_limits<double>::infinity();
    }
    cands_.push_back(cand);
    return true;
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
    const int k = apps_[in_[0]]->dist.bin_of(x);  // every app's, on the policy's one grid
    double p = 1.0;
    for (int a : in_) p *= ipow(apps_[a]->dist.cdf_in(x, k), counts_[a]);
    return p;
  }

  double exact_score(Candidate& cand, double now) {
    count_apps(cand);
    if (cand.mixed) {
      double e_t = cand.cb * mixed_emax();
      if (!(e_t > 0.0)) e_t = 1e-300;
      cand.e_t = e_t;
      cand.mixed = false;
    }
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
  void ensure_mixed() {
    bool stale = mixed_versions_.size() != apps_.size();
    for (size_t a = 0; !stale && a < apps_.size(); ++a)
      stale = mixed_versions_[a] != version_or_none(a);
    if (stale) build_mixed();
  }

  // E[max] of the mix in in_/counts_ (the pure twin's _mixed_emax).
  double mixed_emax() {
    ensure_mixed();
    // The same mixes recur from one decision to the next: remember each one's E[max]
    // until a distribution changes. The key hashes the (app, count) pairs; an entry keeps
    // its pairs, so that a hash collision only costs a recomputation.
    uint64_t hash = 1469598103934665603ull;  // FNV-1a over the pairs
    mix_.clear();
    for (int a : in_) {
      mix_.emplace_back(a, counts_[a]);
      hash = (hash ^ static_cast<uint64_t>(a)) * 1099511628211ull;
      hash = (hash ^ static_cast<uint64_t>(counts_[a])) * 1099511628211ull;
    }
    auto it = memo_.find(hash);
    if (it != memo_.end() && it->second.mix == mix_) return it->second.value;
    double total = mixed_emax_sum();
    if (it == memo_.end()) {
      if (memo_.size() >= kMemoCap) memo_.clear();  // bounded: a fresh start is cheap
      memo_.emplace(hash, MemoEntry{mix_, total});
    }
    return total;
  }

  double mixed_emax_sum() {
    mix_apps_.clear();
    mix_counts_.clear();
    for (int a : in_) {
      mix_apps_.push_back(a);
      mix_counts_.push_back(counts_[a]);
    }
    return simpson_sum(mix_apps_.data(), mix_counts_.data(), mix_apps_.size());
  }

  // Simpson's rule for the integral of 1 - prod_k F_apps[k]^cnts[k] on the shared points.
  double simpson_sum(const int* apps, const int* cnts, size_t k) const {
    const int npts = static_cast<int>(pts_.size());
    int zero_until = -1, one_from = 0;
    for (size_t m = 0; m < k; ++m) {
      const int a = apps[m];
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
        for (size_t m = 0; m < k; ++m) {
          const double* row = &pow_[apps[m]][static_cast<size_t>(cnts[m]) * npts];
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
    // ssum_[a][n]: the same rule for n members of app a alone. On every point the mix's
    // 1 - prod F^n lies between the largest and the sum of its apps' 1 - F_a^n_a, so
    // these bound a mix's E[max] before its integral is computed.
    ssum_.assign(apps_.size(), std::vector<double>());
    for (size_t a = 0; a < apps_.size(); ++a) {
      if (pow_[a].empty()) continue;
      ssum_[a].assign(B_ + 1, 0.0);
      const int app = static_cast<int>(a);
      for (int n = 1; n <= B_; ++n) ssum_[a][n] = simpson_sum(&app, &n, 1);
    }
    memo_.clear();
  }

  std::vector<double> c_;
  int B_;
  double theta_, epsilon_;
  bool fallback_;
  bool pools_on_;  // false (default): one pool of every app at the slowest's bar
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
  std::vector<size_t> order_;
  std::vector<PoolBuf> pools_;  // pools_[j]: the pool of the j + 1 fastest apps
  std::vector<QEntry> heads_;  // fill(): each pool app's next request, or kEnd
  std::vector<const SortedBlocks*> queues_;
  // past every real request: deadlines are finite, so (inf, max id) sorts last
  static constexpr QEntry kEnd{std::numeric_limits<double>::infinity(),
                               std::numeric_limits<int64_t>::max()};
  std::vector<Member> flat_, best_;
  std::vector<Candidate> cands_;
  std::vector<int> counts_, in_;

  // mixed-batch tables
  std::vector<uint64_t> mixed_versions_;
  std::vector<double> pts_;
  std::vector<std::vector<double>> pow_;
  std::vector<int> zero_until_, one_from_;
  struct MemoEntry {
    std::vector<std::pair<int, int>> mix;  // (app, count) in app order
    double value;
  };
  static constexpr size_t kMemoCap = 4096;
  std::unordered_map<uint64_t, MemoEntry> memo_;  // mix hash -> E[max], see mixed_emax()
  std::vector<std::pair<int, int>> mix_;
  std::vector<int> mix_apps_, mix_counts_;
  std::vector<std::vector<double>> ssum_;  // ssum_[a][n], see build_mixed()
};

}  // namespace orloj
