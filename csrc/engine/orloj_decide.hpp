// The Orloj decision: drop the hopeless, form one candidate batch per size, dispatch the
// one with the most expected finishes per unit of expected batch time.
//
// The executable specification, with the reasoning, is orloj_rt/engine/pure/orloj.py;
// the arithmetic below follows it step for step so that the two decide identically.
//
// Cost of a decision with A queued apps and maximum batch B: O(dropped + B * A * log n)
// for the thresholds' binary searches, plus O(B^2) work on the candidates' members at
// most (bounds skip most of it). It never walks the queue beyond the candidates, and it
// never looks at an app with nothing queued: the apps with queued requests are kept in
// `active_`, and a mixed batch's E[max] reads only its members' apps' tables. App indices
// are given (and reused) by the Python layer, which frees an app with `reset_app`.
#pragma once

#include <algorithm>
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
  // pool_sizes: the batch sizes at which pools form candidates when several apps are
  // queued (the pure twin's pool_ladder(); the largest batch is added per decision);
  // empty: every size
  OrlojEngine(const std::vector<double>& c, double theta, double epsilon, bool fallback,
              bool pools = false, const std::vector<int>& pool_sizes = {})
      : c_(c), B_(static_cast<int>(c.size())), theta_(theta), epsilon_(epsilon),
        fallback_(fallback), pools_on_(pools), troot_(B_ + 1, 0.0),
        on_ladder_(B_ + 1, pool_sizes.empty() ? 1 : 0) {
    for (int b = 1; b <= B_; ++b) troot_[b] = std::pow(theta_, 1.0 / b);
    for (int b : pool_sizes)
      if (b >= 1 && b <= B_) on_ladder_[b] = 1;
  }

  int max_batch() const { return B_; }
  double c(int b) const { return c_[b - 1]; }
  const std::vector<double>& inflation() const { return c_; }
  int num_apps() const { return static_cast<int>(apps_.size()); }
  int num_active() const { return static_cast<int>(active_.size()); }
  size_t size() const { return where_.size(); }
  bool has_id(int64_t id) const { return where_.find(id) != nullptr; }
  size_t queued(int a) const { return apps_[a]->queue.size(); }
  bool has_dist(int a) const { return apps_[a]->has_dist; }
  Histogram& dist(int a) { return apps_[a]->dist; }

  int add_app() {
    apps_.emplace_back(new App());
    counts_.resize(apps_.size(), 0);
    return static_cast<int>(apps_.size()) - 1;
  }

  // Frees app a's state (its distribution, caches and tables); the index may be reused.
  // Its queue must be empty (the caller checks).
  void reset_app(int a) {
    deactivate(a);
    apps_[a].reset(new App());
  }

  void set_dist(int a, const Histogram& h) {
    App& app = *apps_[a];
    app.dist = h;
    app.dist.touch();
    app.has_dist = true;
  }

  // The largest batch a decision forms (0: the maximum batch): the pure twin's
  // set_batch_limit.
  void set_batch_limit(int b) { blim_ = b; }
  int batch_limit() const { return blim_; }

  // App a's weight in the score: each of its requests counts `w` finishes (default 1).
  void set_weight(int a, double w) { apps_[a]->weight = w; }
  double weight(int a) const { return apps_[a]->weight; }

  Status enqueue(int64_t id, int a, double deadline) {
    if (!where_.insert(id, Loc{a, deadline})) return ERR_DUPLICATE_ID;
    apps_[a]->queue.insert(QEntry{deadline, id});
    activate(a);
    return OK;
  }

  Status remove(int64_t id) {
    const Loc* loc = where_.find(id);
    if (!loc) return ERR_UNKNOWN_ID;
    const int a = loc->app;
    apps_[a]->queue.erase(QEntry{loc->deadline, id});
    where_.erase(id);
    if (apps_[a]->queue.empty()) deactivate(a);
    return OK;
  }

  // Runs one decision at time `now`; appends the batch (most urgent first) and the drops.
  void decide(double now, std::vector<int64_t>* batch, std::vector<int64_t>* dropped) {
    drop_pass(now, dropped);
    if (present_.empty()) return;
    select(now);
    if (!best_.empty() && !fell_back_) note_good(now);
    for (const Member& m : best_) where_.prefetch(m.id);
    for (const Member& m : best_) batch->push_back(m.id);
    take(best_);
  }

  // Removes the queued requests in `ids` in order, up to the first that is not queued;
  // *failed = its index (ids.size() if none). Each app's queue is compacted once.
  Status remove_many(const std::vector<int64_t>& ids, size_t* failed) {
    for (int64_t id : ids) where_.prefetch(id);  // the slots' cache misses overlap
    gone_.clear();
    size_t i = 0;
    for (; i < ids.size(); ++i) {
      const Loc* loc = where_.find(ids[i]);
      if (!loc) break;
      // slot: its place in ids, for the check of repeated ids below
      gone_.push_back(Member{loc->deadline, ids[i], loc->app, static_cast<int>(i)});
    }
    // an id twice: the second is not queued once the first is removed, so it fails there.
    // take() orders by (app, deadline, id), where equal ids are neighbours.
    sort_by_queue(gone_);
    size_t first_dup = i;  // the smallest place of a second occurrence
    for (size_t k = 0; k + 1 < gone_.size();) {
      size_t e = k + 1;
      if (gone_[e].id != gone_[k].id) {
        k = e;
        continue;
      }
      int lo1 = gone_[k].slot, lo2 = std::numeric_limits<int>::max();  // two smallest
      for (; e < gone_.size() && gone_[e].id == gone_[k].id; ++e) {
        const int sl = gone_[e].slot;
        if (sl < lo1) {
          lo2 = lo1;
          lo1 = sl;
        } else if (sl < lo2) {
          lo2 = sl;
        }
      }
      if (static_cast<size_t>(lo2) < first_dup) first_dup = static_cast<size_t>(lo2);
      k = e;
    }
    if (first_dup < i) {  // rare: keep the ids before the first repeat, sorted again
      i = first_dup;
      gone_.erase(std::remove_if(gone_.begin(), gone_.end(),
                                 [i](const Member& m) { return static_cast<size_t>(m.slot) >= i; }),
                  gone_.end());
    }
    *failed = i;
    take_sorted(gone_);
    return i == ids.size() ? OK : ERR_UNKNOWN_ID;
  }

  // Step 1 alone: removes and appends the requests that cannot finish even alone.
  void drop_hopeless(double now, std::vector<int64_t>* dropped) { drop_pass(now, dropped); }

  // The batch decide(now) would dispatch after its drops, and its score, changing no
  // queue (the pure twin's evaluate): the hopeless stay queued; an app whose every
  // request is hopeless is left out. Score -1 and no batch if nothing would run.
  double evaluate(double now, std::vector<int64_t>* batch) {
    const double c1 = c_[0];
    order_apps_.assign(active_.begin(), active_.end());
    std::sort(order_apps_.begin(), order_apps_.end());
    present_.clear();
    for (int a : order_apps_) {
      App& app = *apps_[a];
      refresh(app);
      if (app.dist.cdf((app.queue.last().key - now) / c1) >= epsilon_) present_.push_back(a);
    }
    if (present_.empty()) return -1.0;
    double score = select(now);
    for (const Member& m : best_) batch->push_back(m.id);
    return score;
  }

  // Step 1: drops the hopeless; present_ = the apps with requests left, in app order.
  void drop_pass(double now, std::vector<int64_t>* dropped) {
    const double c1 = c_[0];
    // the apps with queued requests, in app order (the pure twin's order)
    order_apps_.assign(active_.begin(), active_.end());
    std::sort(order_apps_.begin(), order_apps_.end());
    present_.clear();
    for (int a : order_apps_) {
      App& app = *apps_[a];
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
      else deactivate(a);
    }
  }

  // Steps 2-3 over present_: best_ = the members to run, and its score (-1: none). With
  // apps of several weights, each weight level's apps (at or above it) form candidates
  // too, after the whole set's, lowest level first (the pure twin's _select).
  double select(double now) {
    fell_back_ = false;
    wake_ = -1.0;
    first_bin_ = -1;
    last_bin_ = -1;
    floor_ = -1.0;
    flat_.clear();
    cands_.clear();
    levels_.clear();
    for (int a : present_) levels_.push_back(apps_[a]->weight);
    std::sort(levels_.begin(), levels_.end());
    levels_.erase(std::unique(levels_.begin(), levels_.end()), levels_.end());
    if (levels_.size() <= 1) {
      // one weight: candidates stay in the pools' buffers (no copy), and their members'
      // weights need no scan
      by_ref_ = true;
      uniform_w_ = levels_.empty() ? 1.0 : levels_[0];
      form_candidates(now);
    } else {
      // each level refills the pools: candidates are copied into flat_
      by_ref_ = false;
      all_present_ = present_;
      for (size_t l = 0; l < levels_.size(); ++l) {
        present_.clear();
        for (int a : all_present_)
          if (apps_[a]->weight >= levels_[l]) present_.push_back(a);
        form_candidates(now);
      }
      present_ = all_present_;
    }

    // Pass 1: every size's candidate, its expected time, and bounds on its score from its
    // least and most likely members (P is monotone in the slack).
    double floor_score = -1.0;  // the best lower bound: no candidate below it can win
    for (const Candidate& cand : cands_)
      if (cand.lower > floor_score) floor_score = cand.lower;
    // (candidates whose upper bound was below the best lower bound so far when they were
    // formed were not kept: none of them can win, nor raise the best lower bound)

    // Pass 2: exact scores, skipping candidates whose upper bound cannot beat what is
    // known. Candidates are scored by decreasing upper bound (the first is usually the
    // best), so the pass stops at the first whose bound is below the best score or the
    // best lower bound: every later one's is too. Skipping changes no decision: a skipped
    // candidate's exact score is below the best lower bound, or below the best score, or
    // equal to it with a later place in the order; among equal scores the earliest
    // candidate wins, as in the pure twin, which scores every candidate. Once a
    // candidate's expected time is known (mixed batches: computed first), its bound
    // tightens to b w_max P_last / E[T], checked before its members are.
    double best_score = -1.0;
    const Candidate* best = nullptr;
    size_t best_i = 0;
    by_upper_.clear();  // only those that reach the best lower bound can win
    for (size_t i = 0; i < cands_.size(); ++i)
      if (!(cands_[i].upper < floor_score)) by_upper_.push_back(static_cast<uint32_t>(i));
    std::sort(by_upper_.begin(), by_upper_.end(), [this](uint32_t x, uint32_t y) {
      const double ux = cands_[x].upper, uy = cands_[y].upper;
      return ux > uy || (ux == uy && x < y);
    });
    for (size_t r = 0; r < by_upper_.size(); ++r) {
      const size_t i = by_upper_[r];
      Candidate& cand = cands_[i];
      if (best && (cand.upper < floor_score || cand.upper < best_score)) break;
      if (best && cand.upper == best_score && i > best_i) continue;
      double score = 0.0;
      if (!exact_score(cand, now, best ? best_score : -1.0, best_i, i, &score)) continue;
      if (!best || score > best_score || (score == best_score && i < best_i)) {
        best_score = score;
        best = &cand;
        best_i = i;
      }
    }
    if (best && price_share_ < 1.0) best = priced(now, best, best_i, &best_score);
    best_.clear();
    if (best) {
      const Member* m = members(*best);
      best_.assign(m, m + best->b);
    } else if (fallback_) {
      best_score = most_likely_alone(now);
      fell_back_ = true;
      if (!best_.empty()) {
        wake_ = held_until(best_[0].app, now);
        if (wake_ >= 0.0) {
          best_.clear();
          best_score = -1.0;
        }
      }
    }
    return best_score;
  }

  // The fallback's patience (the pure twin's): 0 runs it always.
  void set_patience(double p) { patience_ = p; }
  double patience() const { return patience_; }
  // Step 1's epsilon from now on (the pure twin's set_epsilon).
  void set_epsilon(double e) { epsilon_ = e; }
  double epsilon() const { return epsilon_; }
  // Step 3b's price share, in (0, 1] (the pure twin's): 1 lets the best score win.
  void set_price_share(double k) { price_share_ = k; }
  double price_share() const { return price_share_; }
  // When a fallback request held back by patience may run; -1: none held back.
  double wake() const { return active_.empty() ? -1.0 : wake_; }

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
  // One app's CDF powers on the fixed points pts_ (the grid's edges from 0 to hi and the
  // midpoints between them), for E[max] of mixed batches: built when a mixed candidate
  // with this app is first formed after its distribution changed. `stamp` is unique to
  // each build, so that a remembered E[max] never outlives one of its tables.
  // Rows n are built up to the largest count of the app in a mix so far (`rows`), not to
  // the maximum batch: with a maximum batch of 256 a full table is 400 KB.
  struct MixTable {
    uint64_t version = 0;     // the distribution's version it was built from
    uint64_t stamp = 0;       // 0: never built
    std::vector<double> f;    // f[j] = F(pts_[j])
    std::vector<double> pow;  // pow[n * npts + j] = F(pts_[j])^n, n = 0..rows
    std::vector<double> pre;  // pre[n * K + m]: Simpson of 1 - F^n over pieces 0..m-1
    int rows = 0;
    int zero_until = -1;      // the last j with F(pts_[j]) == 0, or -1
    int one_from = 0;         // F == 1 at every point from this j on (npts: never)
    double top = 0.0;         // the support's end
    // mix_terms' one-app terms, by the mix's support end: terms[slot][n] for n members
    // (NaN: not computed yet). A mix's end is one of its apps' ends, so few slots recur.
    std::vector<double> term_top;
    std::vector<std::vector<double>> terms;
  };

  struct App {
    Histogram dist;
    bool has_dist = false;
    double weight = 1.0;  // each request counts this many finishes in the score
    SortedBlocks queue;
    uint64_t cache_version = 0;
    std::vector<double> qth;   // qth[b] = F^-1(theta^(1/b))
    std::vector<double> emax;  // emax[b] = E[max of b solo times]
    MixTable mix;
    int active_pos = -1;       // its place in active_, or -1 when nothing is queued
  };

  void activate(int a) {
    App& app = *apps_[a];
    if (app.active_pos >= 0) return;
    app.active_pos = static_cast<int>(active_.size());
    active_.push_back(a);
  }

  void deactivate(int a) {
    App& app = *apps_[a];
    const int p = app.active_pos;
    if (p < 0) return;
    const int moved = active_.back();
    active_[p] = moved;
    apps_[moved]->active_pos = p;
    active_.pop_back();
    app.active_pos = -1;
  }

  struct Member {
    double deadline;
    int64_t id;
    int app;
    int slot;  // in a pool's buffer: its app's place in the pool's apps
  };

  struct PoolBuf {
    std::vector<Member> buf;  // merged admitted requests; buf[head..) are current
    size_t head = 0;
    std::vector<size_t> apps;  // its apps (indices into present_), fastest first
    std::vector<SortedBlocks::Pos> cur;  // per app: its first request not yet in buf
    double key = 0.0;  // the bar it was last admitted at
    bool valid = false;
    // fill() could not find b requests at or above dead_key (with these apps): nor can
    // it at any larger b while the pool keeps its apps and its bar does not fall
    bool dead = false;
    double dead_key = 0.0;
    // emit_pool's window: counts per app (by place in apps) of buf[wlo, whi), valid
    // while wseg == seg (seg moves on when the pool's apps change)
    uint64_t seg = 0, wseg = 0;
    size_t wlo = 0, whi = 0;
    std::vector<int> cnt;
    std::vector<size_t> by_app;  // places in apps, in app order
  };

  void forget(int64_t id) { where_.erase(id); }

  // Removes these queued requests (each once): by app, each queue compacted once.
  void take(std::vector<Member>& ms) {
    if (ms.size() == 1) {
      const Member& m = ms[0];
      App& app = *apps_[m.app];
      app.queue.erase(QEntry{m.deadline, m.id});
      if (app.queue.empty()) deactivate(m.app);
      forget(m.id);
      return;
    }
    take_.assign(ms.begin(), ms.end());
    sort_by_queue(take_);
    take_sorted(take_);
  }

  static void sort_by_queue(std::vector<Member>& ms) {
    std::sort(ms.begin(), ms.end(), [](const Member& x, const Member& y) {
      return x.app != y.app ? x.app < y.app
                            : QEntry{x.deadline, x.id} < QEntry{y.deadline, y.id};
    });
  }

  // take() for requests sorted by (app, deadline, id).
  void take_sorted(const std::vector<Member>& ms) {
    keys_.resize(ms.size());
    size_t s = 0;
    while (s < ms.size()) {
      const int a = ms[s].app;
      size_t e = s;
      while (e < ms.size() && ms[e].app == a) {
        keys_[e] = QEntry{ms[e].deadline, ms[e].id};
        ++e;
      }
      App& app = *apps_[a];
      app.queue.erase_sorted(keys_.data() + s, e - s);
      if (app.queue.empty()) deactivate(a);
      s = e;
    }
    for (const Member& m : ms) forget(m.id);
  }

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
    int pool;          // its members are pools_[pool].buf[start, start + b), or with
    size_t start;      // pool -1 flat_[start, start + b); most urgent first
    double e_t;        // expected batch time (for a mix of apps: once it is scored)
    double lower, upper;  // bounds on its score
    double p_hi;       // its last member's probability times the largest weight
    bool mixed;        // members of several apps: e_t waits for exact_score()
    bool scored;       // e_fin is set (exact_score(), or step 3b)
    double e_fin;      // its expected weighted finishes, once scored
    double e_lo;       // a mix's lower bound on e_t (until it is scored)
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
    for (PoolBuf& pb : pools_) {
      pb.valid = false;
      pb.dead = false;
      pb.buf.clear();
      pb.head = 0;
    }
    const int top_b = blim_ > 0 && blim_ < B_ ? blim_ : B_;
    for (int b = 1; b <= top_b; ++b) {
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
          const Member m{e.key, e.id, present_[pick], 0};
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
        // No per-app search here: the pool's buffer and cursors follow the bar from one b
        // to the next, and a fresh pool (admit's else branch) seeks each app from its
        // position at b = 1, whose bar is below this one (or searches anew if not).
        const double key = now + cb * q_max;
        PoolBuf& pb = pools_[np - 1];
        if (dead(pb, np - 1, key)) continue;
        admit(pb, np - 1, key);
        if (fill_or_die(pb, b)) emit_pool(np - 1, b, cb, now);
        continue;
      }
      // pools form candidates on the ladder's sizes and the largest (the pure twin's
      // _select); the pools' buffers and cursors carry over the sizes skipped
      if (np > 1 && b != top_b && !on_ladder_[b]) continue;
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
      // this b's latest candidate formed (kept or not): its first deadline, its last entry
      bool formed = false;
      double prev_first = 0.0;
      QEntry prev_last{0.0, 0};
      for (size_t j = 0; j < np; ++j) {
        const size_t newest = order_[j];
        const double key = now + cb * apps_[present_[newest]]->qth[b];
        if (dead(pools_[j], j, key)) continue;  // no search: the pair (pos_, key_) stays
        position(newest, key, b);
        const SortedBlocks& nq = apps_[present_[newest]]->queue;
        if (nq.at_end(pos_[newest])) continue;
        // Pool j would repeat this b's last candidate when the higher bar keeps all of
        // its members and the newest app's first admitted request comes after them. An
        // equal score never wins (ties go to the earlier candidate), so skipping it
        // changes no decision; the pure twin scores it, to the same effect.
        if (formed && prev_first >= key && prev_last < nq.at(pos_[newest])) continue;
        PoolBuf& pb = pools_[j];
        admit(pb, j, key);
        if (fill_or_die(pb, b)) {
          const Member* m = pb.buf.data() + pb.head;
          formed = true;
          prev_first = m[0].deadline;
          prev_last = QEntry{m[b - 1].deadline, m[b - 1].id};
          emit_pool(j, b, cb, now);
        }
      }
    }
  }

  // Whether pool j, with the apps order_[0..j] and bar `key` at this b, is known to have
  // fewer than b requests at or above its bar: it had fewer than a smaller b at a bar no
  // higher, with the same apps (the requests at or above a higher bar are a subset).
  // The pure twin forms its requests and finds too few, to the same effect.
  bool dead(const PoolBuf& pb, size_t j, double key) const {
    if (!pb.dead || key < pb.dead_key || pb.apps.size() != j + 1) return false;
    for (size_t k = 0; k <= j; ++k)
      if (pb.apps[k] != order_[k]) return false;
    return true;
  }

  bool fill_or_die(PoolBuf& pb, int b) {
    if (fill(pb, b)) return true;
    pb.dead = true;
    pb.dead_key = pb.key;
    return false;
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
    pb.dead = false;  // fill_or_die() says again, for these apps and this bar
    bool same = pb.valid && key >= pb.key && pb.apps.size() == j + 1;
    for (size_t k = 0; same && k <= j; ++k) same = pb.apps[k] == order_[k];
    if (same) {
      // the buffer is in deadline order: its first entry at or above the new bar
      if (pb.head < pb.buf.size() && pb.buf[pb.head].deadline < key)
        pb.head = static_cast<size_t>(
            std::lower_bound(pb.buf.begin() + pb.head + 1, pb.buf.end(), key,
                             [](const Member& m, double k) { return m.deadline < k; }) -
            pb.buf.begin());
      if (pb.head == pb.buf.size()) {
        if (!by_ref_) {  // by_ref_: the buffer holds candidates; it grows on
          pb.buf.clear();
          pb.head = 0;
        }
        for (size_t k = 0; k <= j; ++k)
          pb.cur[k] = apps_[present_[pb.apps[k]]]->queue.seek(pb.cur[k], key);
      } else if (!by_ref_ && pb.head > 64 && 2 * pb.head > pb.buf.size()) {
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
      if (by_ref_) {
        pb.head = pb.buf.size();  // a new segment; earlier candidates keep theirs
      } else {
        pb.buf.clear();
        pb.head = 0;
      }
      pb.valid = true;
      ++pb.seg;
      pb.by_app.resize(j + 1);
      for (size_t k = 0; k <= j; ++k) pb.by_app[k] = k;
      std::sort(pb.by_app.begin(), pb.by_app.end(),
                [&pb](size_t x, size_t y) { return pb.apps[x] < pb.apps[y]; });
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
    if (na == 1) {  // one app: its queue's runs in order, no merge
      const SortedBlocks& q = apps_[present_[pb.apps[0]]]->queue;
      const int a = present_[pb.apps[0]];
      while (pb.buf.size() - pb.head < want) {
        if (q.at_end(pb.cur[0])) return false;
        size_t n = 0;
        const QEntry* e = q.run(pb.cur[0], &n);
        const size_t need = want - (pb.buf.size() - pb.head);
        if (n > need) n = need;
        for (size_t i = 0; i < n; ++i) pb.buf.push_back(Member{e[i].key, e[i].id, a, 0});
        q.skip(pb.cur[0], n);
      }
      return true;
    }
    // each app's current run of its queue (the rest of a block) as raw pointers: a step
    // of the merge reads the next entry of the run it took from, and touches the queue's
    // blocks only when a run ends
    hkeys_.resize(na);
    queues_.resize(na);
    runs_.resize(na);
    for (size_t k = 0; k < na; ++k) {
      queues_[k] = &apps_[present_[pb.apps[k]]]->queue;
      load_run(k, pb.cur[k]);
    }
    double* hk = hkeys_.data();
    Run* runs = runs_.data();
    const int* apps = nullptr;
    app_of_.resize(na);
    for (size_t k = 0; k < na; ++k) app_of_[k] = present_[pb.apps[k]];
    apps = app_of_.data();
    bool full = true;
    while (pb.buf.size() - pb.head < want) {
      // the smallest deadline by a branch-free scan of the keys; equal deadlines (rare)
      // go to the smaller id, as QEntry's order
      // (the ids are compared only when another app ties the pick: counted branch-free)
      size_t pick = 0;
      double best = hk[0];
      for (size_t k = 1; k < na; ++k) {
        const bool lt = hk[k] < best;
        best = lt ? hk[k] : best;
        pick = lt ? k : pick;
      }
      if (best == kEnd.key) {  // deadlines are finite: every app is spent
        full = false;
        break;
      }
      int equal = 0;
      for (size_t k = 0; k < na; ++k) equal += hk[k] == best;
      if (equal > 1)
        for (size_t k = pick + 1; k < na; ++k)
          if (hk[k] == best && runs[k].p->id < runs[pick].p->id) pick = k;
      Run& r = runs[pick];
      pb.buf.push_back(Member{best, r.p->id, apps[pick], static_cast<int>(pick)});
      if (++r.p == r.e) {  // the run ends: the queue's next block
        queues_[pick]->skip(pb.cur[pick], static_cast<size_t>(r.p - r.start));
        load_run(pick, pb.cur[pick]);
      } else {
        hk[pick] = r.p->key;
      }
    }
    for (size_t k = 0; k < na; ++k)  // the cursors follow what was taken
      if (runs[k].p && runs[k].p != runs[k].start)
        queues_[k]->skip(pb.cur[k], static_cast<size_t>(runs[k].p - runs[k].start));
    return full;
  }

  struct Run {
    const QEntry* start;  // where the cursor stands
    const QEntry* p;      // the next entry
    const QEntry* e;      // the run's end
  };

  // runs_[k] = the run at `pos` of queue k (none at the end), hkeys_[k] its next key
  void load_run(size_t k, const SortedBlocks::Pos& pos) {
    const SortedBlocks& q = *queues_[k];
    if (q.at_end(pos)) {
      runs_[k] = Run{nullptr, nullptr, nullptr};
      hkeys_[k] = kEnd.key;
      return;
    }
    size_t n = 0;
    const QEntry* e = q.run(pos, &n);
    runs_[k] = Run{e, e, e + n};
    hkeys_[k] = e->key;
  }

  // The members of a candidate (valid once the candidates are formed, and during
  // formation for the latest one).
  const Member* members(const Candidate& cand) const {
    return cand.pool < 0 ? flat_.data() + cand.start : pools_[cand.pool].buf.data() + cand.start;
  }

  // Pool j's first b requests as a candidate: kept in the pool's buffer (which only grows
  // during a decision) when by_ref_, counted incrementally from the pool's last window.
  bool emit_pool(size_t j, int b, double cb, double now) {
    PoolBuf& pb = pools_[j];
    if (!by_ref_) return emit_candidate(pb.buf.data() + pb.head, b, cb, now);
    const size_t lo = pb.head, hi = pb.head + static_cast<size_t>(b);
    const size_t na = pb.apps.size();
    if (pb.wseg != pb.seg || lo >= pb.whi) {
      pb.cnt.assign(na, 0);
      for (size_t i = lo; i < hi; ++i) ++pb.cnt[pb.buf[i].slot];
    } else {
      for (size_t i = pb.wlo; i < lo; ++i) --pb.cnt[pb.buf[i].slot];
      for (size_t i = pb.whi; i < hi; ++i) ++pb.cnt[pb.buf[i].slot];
    }
    pb.wseg = pb.seg;
    pb.wlo = lo;
    pb.whi = hi;
    for (int a : in_) counts_[a] = 0;
    in_.clear();
    for (size_t k : pb.by_app) {
      if (pb.cnt[k]) {
        const int a = present_[pb.apps[k]];
        counts_[a] = pb.cnt[k];
        in_.push_back(a);
      }
    }
    note_support();
    Candidate cand{b, cb, static_cast<int>(j), lo, 0.0, 0.0, 0.0, 0.0, false};
    return bound_candidate(cand, pb.buf.data() + lo, now);
  }

  // Copies the b members (most urgent first) into flat_ as a candidate.
  bool emit_candidate(const Member* src, int b, double cb, double now) {
    const size_t start = flat_.size();
    flat_.insert(flat_.end(), src, src + b);
    Candidate cand{b, cb, -1, start, 0.0, 0.0, 0.0, 0.0, false};
    count_apps(cand);
    if (bound_candidate(cand, flat_.data() + start, now)) return true;
    flat_.resize(start);  // not kept
    return false;
  }

  // Bounds on the candidate's score (count_apps current), and the candidate kept.
  // Keeps the candidate (count_apps current) with bounds on its score; false (not kept)
  // when its upper bound is below the best lower bound so far (floor_) times the price
  // share: it cannot win (with a share k, a winner scores above k r*, and r* >= floor_).
  bool bound_candidate(Candidate& cand, const Member* m, double now) {
    const int b = cand.b;
    const double cb = cand.cb;
    // weights: the sum of w P lies between b w_min P_first and b w_max P_last
    double w_min = uniform_w_, w_max = uniform_w_;
    if (!by_ref_) {
      w_min = w_max = apps_[m[0].app]->weight;
      for (int i = 1; i < b; ++i) {
        const double w = apps_[m[i].app]->weight;
        if (w < w_min) w_min = w;
        if (w > w_max) w_max = w;
      }
    }
    // each end's bin is found by a walk from the last candidate's same end (no log)
    int bin = last_bin_;
    const double p_last = w_max * member_probability(m[b - 1], cand, now, &bin, true);
    last_bin_ = bin;
    cand.p_hi = p_last;
    // margins cover the rounding of a sum of b terms (b <= 4096)
    double e_lo = 0.0, e_hi = 0.0;
    if (in_.size() == 1) {
      double e_t = cb * apps_[in_[0]]->emax[b];
      if (!(e_t > 0.0)) e_t = 1e-300;
      cand.e_t = e_t;
      cand.upper = b * p_last * (1.0 + 1e-9) / e_t;
    } else {
      // E[max] of a mix lies between its largest one-app term and the sum of its one-app
      // terms, each integrated by the same rule on the mix's points (see mix_terms):
      // bounds on the score without the integral, which only the candidates that
      // survive pruning pay for.
      double lo = 0.0, hi = 0.0;
      mix_terms(&lo, &hi);
      cand.mixed = true;
      e_lo = cb * lo * (1.0 - 1e-9);
      cand.e_lo = e_lo;
      e_hi = cb * hi * (1.0 + 1e-9);
      cand.upper = e_lo > 0.0 ? b * p_last * (1.0 + 1e-9) / e_lo
                              : std::numeric_limits<double>::infinity();
    }
    if (cand.upper < price_share_ * floor_) return false;
    if (cand.upper < floor_) {  // kept for step 3b only: its lower bound cannot raise floor_
      cand.lower = 0.0;
      cands_.push_back(cand);
      return true;
    }
    bin = first_bin_;
    const double p_first = w_min * member_probability(m[0], cand, now, &bin, true);
    first_bin_ = bin;
    if (in_.size() == 1) {
      cand.lower = b * p_first * (1.0 - 1e-9) / cand.e_t;
    } else {
      cand.lower = e_hi > 0.0 ? b * p_first * (1.0 - 1e-9) / e_hi : 0.0;
    }
    if (cand.lower > floor_) floor_ = cand.lower;
    cands_.push_back(cand);
    return true;
  }

  // counts_[a] for the candidate's apps, and in_ = those apps in app order. Only the
  // entries of the previous candidate's apps are cleared: O(b), whatever the app count.
  void count_apps(const Candidate& cand) {
    for (int a : in_) counts_[a] = 0;
    in_.clear();
    const Member* m = members(cand);
    for (int i = 0; i < cand.b; ++i)
      if (counts_[m[i].app]++ == 0) in_.push_back(m[i].app);
    std::sort(in_.begin(), in_.end());
    note_support();
  }

  // sup_ = the end of the support of in_'s apps: a member's point at or beyond it has
  // every CDF at exactly 1 (its total weight over itself), so it finishes for certain.
  void note_support() {
    sup_ = 0.0;
    for (int a : in_) sup_ = std::max(sup_, apps_[a]->dist.support_max());
  }

  // P(member finishes) in this candidate; count_apps(cand) must be current.
  // `bin`: -1, or the grid bin of an earlier (no later) member's point, which the bin of
  // this one's is found from without a log; set to this one's.
  // `near`: *bin is any bin near this one's (not necessarily below it).
  double member_probability(const Member& m, const Candidate& cand, double now,
                            int* bin = nullptr, bool near = false) {
    double x = (m.deadline - now) / cand.cb;
    if (x >= sup_) return 1.0;  // *bin stays an earlier member's: still a valid start
    const Histogram& d0 = apps_[in_[0]]->dist;  // every app's grid is the policy's one grid
    const int k = bin && *bin >= 0 ? (near ? d0.bin_near(x, *bin) : d0.bin_after(x, *bin))
                                   : d0.bin_of(x);
    if (bin) *bin = k;
    if (in_.size() == 1) return ipow(d0.cdf_in(x, k), cand.b);
    double p = 1.0;
    for (int a : in_) p *= ipow(apps_[a]->dist.cdf_in(x, k), counts_[a]);
    return p;
  }

  // The candidate's exact score into *score; false (and no score) when its tightened
  // bound shows that it cannot beat `best_score` (held by candidate `best_i`; -1: none),
  // the candidate being candidate `i`.
  bool exact_score(Candidate& cand, double now, double best_score, size_t best_i, size_t i,
                   double* score) {
    count_apps(cand);
    mix_time(cand);
    if (best_score >= 0.0) {
      const double upper = cand.b * cand.p_hi * (1.0 + 1e-9) / cand.e_t;
      if (upper < best_score || (upper == best_score && i > best_i)) return false;
    }
    cand.e_fin = expected_finishes(cand, now);
    cand.scored = true;
    *score = cand.e_fin / cand.e_t;
    return true;
  }

  // A mix's expected time, the first time it is needed (count_apps current).
  void mix_time(Candidate& cand) {
    if (!cand.mixed) return;
    double e_t = cand.cb * mixed_emax();
    if (!(e_t > 0.0)) e_t = 1e-300;
    cand.e_t = e_t;
    cand.mixed = false;
  }

  // The candidate's expected weighted finishes (count_apps current).
  double expected_finishes(const Candidate& cand, double now) {
    double e_fin = 0.0;
    const Member* m = members(cand);
    int bin = -1;  // members are in deadline order: each one's bin follows the last's
    for (int k = 0; k < cand.b; ++k)
      e_fin += apps_[m[k].app]->weight * member_probability(m[k], cand, now, &bin);
    return e_fin;
  }

  // Step 3b (the pure twin's): among the candidates, the one with the most expected
  // finishes net of r = price_share_ x r* per unit of expected time, r* the best score
  // (held by `best`, candidate best_i); ties go to the earliest candidate. A candidate's
  // net is at most b p_hi - r E[T] (a mix's E[T] at its lower bound until it is scored),
  // and one scoring below r cannot win (the best's net is (1 - price_share_) r* E[T] > 0):
  // the candidates are looked at by decreasing bound, and the pass stops at the first
  // below the best net so far.
  const Candidate* priced(double now, const Candidate* best, size_t best_i,
                          double* best_score) {
    const double r = price_share_ * *best_score;
    double best_net = best->e_fin - r * best->e_t;
    by_net_.clear();
    for (size_t i = 0; i < cands_.size(); ++i) {
      const Candidate& c = cands_[i];
      if (c.upper < r) continue;
      const double net_hi = c.b * c.p_hi * (1.0 + 1e-9) - r * (c.mixed ? c.e_lo : c.e_t);
      if (net_hi < best_net) continue;
      by_net_.push_back({net_hi, static_cast<uint32_t>(i)});
    }
    std::sort(by_net_.begin(), by_net_.end(), [](const std::pair<double, uint32_t>& x,
                                                 const std::pair<double, uint32_t>& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    for (const auto& [net_hi, i] : by_net_) {
      Candidate& c = cands_[i];
      if (net_hi < best_net) break;
      if (net_hi == best_net && i > best_i) continue;
      if (!c.scored) {  // its finishes first: a mix's time only if they can win
        count_apps(c);
        c.e_fin = expected_finishes(c, now);
        c.scored = true;
        if (c.mixed) {
          const double hi = c.e_fin - r * c.e_lo;
          if (hi < best_net || (hi == best_net && i > best_i)) continue;
          mix_time(c);
        }
      }
      const double net = c.e_fin - r * c.e_t;
      if (net > best_net || (net == best_net && i < best_i)) {
        best_net = net;
        best = &c;
        best_i = i;
      }
    }
    *best_score = best->e_fin / best->e_t;
    return best;
  }

  // A decision at `now` found a candidate at theta: the average gap (the pure twin's
  // _note_good, the same operations in the same order).
  void note_good(double now) {
    if (has_good_) {
      const double gap = now - last_good_;
      if (std::isinf(good_gap_)) good_gap_ = gap;
      else good_gap_ = good_gap_ + kPatienceEwma * (gap - good_gap_);
    }
    has_good_ = true;
    last_good_ = now;
  }

  // With patience, until when a fallback request of app a waits (it would hold the
  // worker longer than patience x the expected wait for a decision at theta), or -1 if
  // it runs now (the pure twin's _held_until).
  double held_until(int a, double now) const {
    if (!(patience_ > 0.0) || !has_good_) return -1.0;
    const double e_t = c_[0] * apps_[a]->emax[1];
    const double until = last_good_ + e_t / patience_;
    if (e_t > patience_ * good_gap_ && now < until) return until;
    return -1.0;
  }

  // best_ = the request with the best chance alone; returns its score as a batch of one
  double most_likely_alone(double now) {
    const double c1 = c_[0];
    double best_p = -1.0;
    for (int a : present_) {
      App& app = *apps_[a];
      const QEntry& e = app.queue.last();
      double p = app.dist.cdf((e.key - now) / c1);
      if (p > best_p) {
        best_p = p;
        best_.assign(1, Member{e.key, e.id, a, 0});
      }
    }
    if (best_.empty()) return -1.0;
    const App& app = *apps_[best_[0].app];
    double e_t = c1 * app.emax[1];
    if (!(e_t > 0.0)) e_t = 1e-300;
    return app.weight * best_p / e_t;
  }

  // ------------------------------------------------------------- mixed batches
  // E[max] of a batch that mixes apps (the pure twin's _mixed_emax_sum): Simpson's rule
  // for the integral of 1 - prod_a F_a^n_a on the grid's edges below the mix's support
  // end X (the largest of its apps'), X itself, and the midpoints between them. Every
  // piece but the last is a whole bin, whose points each app tabulates once (MixTable);
  // the last, [edge, X], is computed for the mix. Only the mix's own apps are read.
  MixTable& mix_table(int a) {
    App& app = *apps_[a];
    MixTable& t = app.mix;
    if (t.stamp && t.version == app.dist.version()) return t;
    app.dist.ready();
    if (pts_.empty()) {
      const std::vector<double>& e = app.dist.edges();  // 0, lo, ..., hi, inf
      const size_t k = e.size() - 1;
      edges_.assign(e.begin(), e.begin() + k);
      for (size_t i = 0; i + 1 < k; ++i) {
        pts_.push_back(e[i]);
        pts_.push_back(0.5 * (e[i] + e[i + 1]));
      }
      pts_.push_back(e[k - 1]);
    }
    const size_t npts = pts_.size();
    const size_t kk = edges_.size();
    t.f.resize(npts);
    for (size_t j = 0; j < npts; ++j) t.f[j] = app.dist.cdf(pts_[j]);
    t.pow.assign(npts, 1.0);
    t.pre.assign(kk, 0.0);
    t.rows = 0;
    int zu = -1;
    for (size_t j = 0; j < npts; ++j)
      if (t.f[j] <= 0.0) zu = static_cast<int>(j);
    int of = static_cast<int>(npts);
    for (int j = static_cast<int>(npts) - 1; j >= 0; --j) {
      if (t.f[j] >= 1.0) of = j;
      else break;
    }
    t.zero_until = zu;
    t.one_from = of;
    t.term_top.clear();
    t.terms.clear();
    t.top = app.dist.support_max();
    t.version = app.dist.version();
    t.stamp = ++stamps_;
    return t;
  }

  // Rows 0..n of a table: F^n by repeated products (the pure twin's rows), and pre[n][m],
  // the same rule for n members of this app alone over the first m bins: bounds on a
  // mix's E[max] before its integral is computed (mix_terms). Moves t.pow and t.pre.
  void ensure_rows(MixTable& t, int n) {
    if (n <= t.rows) return;
    const size_t npts = pts_.size();
    const size_t kk = edges_.size();
    t.pow.resize(static_cast<size_t>(n + 1) * npts);
    t.pre.resize(static_cast<size_t>(n + 1) * kk);
    for (int r = t.rows + 1; r <= n; ++r) {
      double* row = &t.pow[r * npts];
      const double* prev = &t.pow[(r - 1) * npts];
      for (size_t j = 0; j < npts; ++j) row[j] = prev[j] * t.f[j];
      double acc = 0.0;
      t.pre[r * kk] = 0.0;
      for (size_t m = 0; m + 1 < kk; ++m) {
        const size_t j = 2 * m;
        const double h = pts_[j + 2] - pts_[j];
        acc += h / 6.0 * ((1.0 - row[j]) + 4.0 * (1.0 - row[j + 1]) + (1.0 - row[j + 2]));
        t.pre[r * kk + m + 1] = acc;
      }
    }
    t.rows = n;
  }

  static double rep_pow(double x, int n) {  // x^n by n products, as the tables' rows
    double p = 1.0;
    for (int i = 0; i < n; ++i) p *= x;
    return p;
  }

  // The mix in in_/counts_: its tables (mix_tabs_, with the rows it needs), its support
  // end and how many of the grid's edges lie below it.
  double mix_top(size_t* nk) {
    mix_tabs_.clear();
    double top = 0.0;
    for (int a : in_) {
      MixTable& t = mix_table(a);
      ensure_rows(t, counts_[a]);
      mix_tabs_.push_back(&t);
      if (t.top > top) top = t.top;
    }
    *nk = static_cast<size_t>(std::lower_bound(edges_.begin(), edges_.end(), top) -
                              edges_.begin());
    return top;
  }

  // For each app of the mix alone, its E[max] by the mix's rule (before c(b)): the mix's
  // lies between their largest (lo) and their sum (hi), point by point and so in all.
  void mix_terms(double* lo, double* hi) {
    size_t nk = 0;
    const double top = mix_top(&nk);
    *lo = 0.0;
    *hi = 0.0;
    if (nk == 0) return;
    const size_t npts = pts_.size();
    const size_t kk = edges_.size();
    const size_t last = nk - 1;
    const size_t j = 2 * last;
    const double x0 = pts_[j];
    const double mid = 0.5 * (x0 + top);
    const double h = top - x0;
    for (size_t k = 0; k < in_.size(); ++k) {
      const int a = in_[k];
      const int n = counts_[a];
      MixTable& t = *mix_tabs_[k];
      // the term depends on (n, top) only: computed once per table, end and count
      size_t slot = 0;
      while (slot < t.term_top.size() && t.term_top[slot] != top) ++slot;
      if (slot == t.term_top.size()) {
        t.term_top.push_back(top);
        t.terms.emplace_back(static_cast<size_t>(B_) + 1,
                             std::numeric_limits<double>::quiet_NaN());
      }
      std::vector<double>& memo = t.terms[slot];
      if (static_cast<size_t>(n) >= memo.size())
        memo.resize(static_cast<size_t>(n) + 1, std::numeric_limits<double>::quiet_NaN());
      double v = memo[n];
      if (std::isnan(v)) {
        const Histogram& d = apps_[a]->dist;
        const double r0 = t.pow[n * npts + j];
        v = t.pre[n * kk + last] +
            h / 6.0 * ((1.0 - r0) + 4.0 * (1.0 - rep_pow(d.cdf(mid), n)) +
                       (1.0 - rep_pow(d.cdf(top), n)));
        memo[n] = v;
      }
      if (v > *lo) *lo = v;
      *hi += v;
    }
  }

  // E[max] of the mix in in_/counts_ (before c(b)).
  double mixed_emax() {
    size_t nk = 0;
    const double top = mix_top(&nk);
    // The same mixes recur from one decision to the next: remember each one's E[max]
    // until one of its tables is rebuilt. The key hashes the (app, count, stamp) triples;
    // an entry keeps its triples, so that a hash collision only costs a recomputation.
    uint64_t hash = 1469598103934665603ull;  // FNV-1a over the triples
    mix_.clear();
    for (size_t k = 0; k < in_.size(); ++k) {
      const int a = in_[k];
      const uint64_t stamp = mix_tabs_[k]->stamp;
      mix_.push_back(MixKey{a, counts_[a], stamp});
      hash = (hash ^ static_cast<uint64_t>(a)) * 1099511628211ull;
      hash = (hash ^ static_cast<uint64_t>(counts_[a])) * 1099511628211ull;
      hash = (hash ^ stamp) * 1099511628211ull;
    }
    auto it = memo_.find(hash);
    if (it != memo_.end() && it->second.mix == mix_) return it->second.value;
    double total = mixed_emax_sum(top, nk);
    if (it == memo_.end()) {
      if (memo_.size() >= kMemoCap) memo_.clear();  // bounded: a fresh start is cheap
      memo_.emplace(hash, MemoEntry{mix_, total});
    }
    return total;
  }

  double mixed_emax_sum(double top, size_t nk) {
    if (nk == 0) return 0.0;
    const size_t npts = pts_.size();
    const size_t na = in_.size();
    int zero_until = -1, one_from = 0;
    rows_.resize(na);
    for (size_t k = 0; k < na; ++k) {
      const MixTable& t = *mix_tabs_[k];
      if (t.zero_until > zero_until) zero_until = t.zero_until;
      if (t.one_from > one_from) one_from = t.one_from;
      rows_[k] = &t.pow[static_cast<size_t>(counts_[in_[k]]) * npts];
    }
    const int last = static_cast<int>(nk) - 1;
    double total = 0.0;
    for (int m = 0; m < last; ++m) {
      const int j = 2 * m;
      const double h = pts_[j + 2] - pts_[j];
      if (j + 2 <= zero_until) {
        total += h;
      } else if (j >= one_from) {
        return total;
      } else {
        double g0 = 1.0, gm = 1.0, g2 = 1.0;
        for (size_t k = 0; k < na; ++k) {
          const double* row = rows_[k];
          g0 *= row[j];
          gm *= row[j + 1];
          g2 *= row[j + 2];
        }
        total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2));
      }
    }
    const int j = 2 * last;
    if (j >= one_from) return total;
    const double x0 = pts_[j];
    const double mid = 0.5 * (x0 + top);
    const double h = top - x0;
    double g0 = 1.0, gm = 1.0, g2 = 1.0;
    for (size_t k = 0; k < na; ++k) {
      const Histogram& d = apps_[in_[k]]->dist;
      const int n = counts_[in_[k]];
      g0 *= rows_[k][j];
      gm *= rep_pow(d.cdf(mid), n);
      g2 *= rep_pow(d.cdf(top), n);
    }
    total += h / 6.0 * ((1.0 - g0) + 4.0 * (1.0 - gm) + (1.0 - g2));
    return total;
  }

  std::vector<double> c_;
  int B_;
  double theta_, epsilon_;
  bool fallback_;
  static constexpr double kPatienceEwma = 0.1;  // the pure twin's PATIENCE_EWMA
  double patience_ = 0.0;
  double price_share_ = 1.0;  // step 3b's price share (1: off)
  std::vector<std::pair<double, uint32_t>> by_net_;  // priced(): (bound on net, candidate)
  double sup_ = 0.0;  // note_support(): the end of the support of in_'s apps
  bool fell_back_ = false;  // the last select() ran the fallback
  bool has_good_ = false;   // a decision has found a candidate at theta
  double last_good_ = 0.0, good_gap_ = std::numeric_limits<double>::infinity();
  double wake_ = -1.0;  // held_until() of the last fallback held back (-1: none)
  bool pools_on_;  // false (default): one pool of every app at the slowest's bar
  std::vector<double> troot_;
  std::vector<char> on_ladder_;  // [b]: pools form candidates of size b (several apps)
  std::vector<std::unique_ptr<App>> apps_;  // by index; a freed index holds a fresh App
  std::vector<int> active_;  // the apps with queued requests, in no order
  struct Loc {
    int app = 0;
    double deadline = 0.0;
  };
  IdMap<Loc> where_;

  // scratch space reused by every decision
  std::vector<int> present_, order_apps_, all_present_;
  std::vector<double> levels_;  // select(): the present apps' distinct weights
  int blim_ = 0;  // set_batch_limit: the largest batch a decision forms, 0 for B_
  std::vector<SortedBlocks::Pos> pos_, seek_;
  std::vector<double> key_;
  std::vector<size_t> order_;
  std::vector<PoolBuf> pools_;  // pools_[j]: the pool of the j + 1 fastest apps
  std::vector<double> hkeys_;  // fill(): each pool app's next deadline, or kEnd's
  std::vector<const SortedBlocks*> queues_;
  std::vector<Run> runs_;      // fill(): each pool app's current run
  std::vector<int> app_of_;    // fill(): each pool app's engine index
  // past every real request: deadlines are finite, so (inf, max id) sorts last
  static constexpr QEntry kEnd{std::numeric_limits<double>::infinity(),
                               std::numeric_limits<int64_t>::max()};
  std::vector<Member> flat_, best_;
  std::vector<Member> gone_, take_;  // remove_many() and take()
  std::vector<QEntry> keys_;         // take()
  bool by_ref_ = false;      // select(): candidates kept in the pools' buffers
  double uniform_w_ = 1.0;   // select(): the present apps' one weight (when by_ref_)
  std::vector<Candidate> cands_;
  // bound_candidate(): the last candidate's first and last members' bins, and the best
  // lower bound so far
  int first_bin_ = -1, last_bin_ = -1;
  double floor_ = -1.0;
  std::vector<uint32_t> by_upper_;  // select(): candidates by decreasing upper bound
  std::vector<int> counts_, in_;

  // mixed-batch tables
  std::vector<double> pts_;    // the grid's edges 0..hi and their midpoints (mix_table)
  std::vector<double> edges_;  // the grid's edges 0..hi
  uint64_t stamps_ = 0;
  std::vector<MixTable*> mix_tabs_;  // the tables of in_'s apps (mix_top)
  std::vector<const double*> rows_;
  struct MixKey {
    int app;
    int count;
    uint64_t stamp;
    bool operator==(const MixKey& o) const {
      return app == o.app && count == o.count && stamp == o.stamp;
    }
  };
  struct MemoEntry {
    std::vector<MixKey> mix;  // (app, count, stamp) in app order
    double value;
  };
  static constexpr size_t kMemoCap = 4096;
  std::unordered_map<uint64_t, MemoEntry> memo_;  // mix hash -> E[max], see mixed_emax()
  std::vector<MixKey> mix_;
};

}  // namespace orloj
