// Request ids ordered by (key, id), with O(log n) search and removal by id.
//
// The executable specification is orloj_rt/engine/pure/request_queue.py. Ties on the key
// break by the smaller id, as in the pure twin.
//
// Why not std::set: a decision makes one binary search per candidate batch size (up to
// 32 per app) and then reads a few consecutive entries. In a red-black tree each of those
// steps is a pointer chase to a node anywhere in memory; at 100,000 queued requests that
// cost 14.7 us per decision (bench/sched_overhead.py, 1 app, before this change). Sorted
// blocks of at most 2 * kBlockLoad entries, indexed by each block's last entry, keep a
// search to two binary searches over contiguous arrays and a walk to sequential reads.
// Insertion moves at most 2 * kBlockLoad entries (16 bytes each).
//
//   maxes_:   [ last of block 0 | last of block 1 | ... ]      binary search #1
//   blocks_:  [ sorted entries ] [ sorted entries ] ...        binary search #2
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "id_map.hpp"
#include "status.h"

namespace orloj {

struct QEntry {
  double key;
  int64_t id;
  bool operator<(const QEntry& o) const { return key < o.key || (key == o.key && id < o.id); }
  bool operator==(const QEntry& o) const { return key == o.key && id == o.id; }
};

class SortedBlocks {
 public:
  static constexpr size_t kBlockLoad = 128;
  static constexpr int64_t kMinId = std::numeric_limits<int64_t>::min();

  struct Pos {
    size_t block;
    size_t off;
  };

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  void insert(const QEntry& e) {
    if (blocks_.empty()) {
      blocks_.emplace_back(1, e);
      maxes_.push_back(e);
      ++size_;
      return;
    }
    size_t bi = std::lower_bound(maxes_.begin(), maxes_.end(), e) - maxes_.begin();
    if (bi == blocks_.size()) bi = blocks_.size() - 1;  // a new maximum: the last block
    std::vector<QEntry>& blk = blocks_[bi];
    blk.insert(std::upper_bound(blk.begin(), blk.end(), e), e);
    maxes_[bi] = blk.back();
    ++size_;
    if (blk.size() > 2 * kBlockLoad) split(bi);
  }

  // Removes e if present; returns whether it was.
  bool erase(const QEntry& e) {
    size_t bi = std::lower_bound(maxes_.begin(), maxes_.end(), e) - maxes_.begin();
    if (bi == blocks_.size()) return false;
    std::vector<QEntry>& blk = blocks_[bi];
    auto it = std::lower_bound(blk.begin(), blk.end(), e);
    if (it == blk.end() || !(*it == e)) return false;
    blk.erase(it);
    --size_;
    fix_block(bi);
    return true;
  }

  // Removes es[0..n), sorted ascending and each present: every block they touch is
  // compacted once (one pass over it) instead of once per entry.
  void erase_sorted(const QEntry* es, size_t n) {
    size_t i = 0;
    while (i < n) {
      const size_t i0 = i;
      const size_t bi =
          std::lower_bound(maxes_.begin(), maxes_.end(), es[i]) - maxes_.begin();
      std::vector<QEntry>& blk = blocks_[bi];
      auto w = std::lower_bound(blk.begin(), blk.end(), es[i]);
      auto r = w;
      // entries of es in this block: at or below its maximum
      while (r != blk.end()) {
        if (i < n && *r == es[i]) {
          ++i;
        } else {
          *w++ = *r;
        }
        ++r;
        if (i < n && maxes_[bi] < es[i]) {  // the rest lie in later blocks
          w = std::copy(r, blk.end(), w);
          break;
        }
      }
      size_ -= static_cast<size_t>(blk.end() - w);
      blk.erase(w, blk.end());
      fix_block(bi);
      if (i == i0) ++i;  // not present after all: skipped (callers pass queued entries)
    }
  }

  const QEntry& first() const { return blocks_.front().front(); }
  const QEntry& last() const { return blocks_.back().back(); }

  void pop_first() {
    std::vector<QEntry>& blk = blocks_.front();
    blk.erase(blk.begin());
    --size_;
    fix_block(0);
  }

  // Positions: valid until the next change.
  Pos begin() const { return Pos{0, 0}; }
  bool at_end(const Pos& p) const { return p.block >= blocks_.size(); }
  const QEntry& at(const Pos& p) const { return blocks_[p.block][p.off]; }
  // The entries from p to the end of p's block (a contiguous run), and how many.
  const QEntry* run(const Pos& p, size_t* n) const {
    const std::vector<QEntry>& blk = blocks_[p.block];
    *n = blk.size() - p.off;
    return blk.data() + p.off;
  }
  // p moved on by n entries, within its block (n <= what run() gave).
  void skip(Pos& p, size_t n) const {
    p.off += n;
    if (p.off == blocks_[p.block].size()) {
      ++p.block;
      p.off = 0;
    }
  }
  void next(Pos& p) const {
    if (++p.off == blocks_[p.block].size()) {
      ++p.block;
      p.off = 0;
    }
  }

  // The first position at or after `from` whose key is >= key, given that every entry
  // before `from` is below key. Successive thresholds of one decision increase, and their
  // positions are usually a few entries apart: galloping from the last one is cheaper
  // than a new search from the top.
  Pos seek(Pos from, double key) const {
    QEntry probe{key, kMinId};
    if (from.block >= blocks_.size()) return from;
    if (maxes_[from.block] < probe) {
      size_t bi = std::lower_bound(maxes_.begin() + from.block + 1, maxes_.end(), probe) -
                  maxes_.begin();
      if (bi == blocks_.size()) return Pos{bi, 0};
      const std::vector<QEntry>& blk = blocks_[bi];
      return Pos{bi, static_cast<size_t>(std::lower_bound(blk.begin(), blk.end(), probe) -
                                         blk.begin())};
    }
    const std::vector<QEntry>& blk = blocks_[from.block];
    const size_t n = blk.size();
    size_t lo = from.off, hi = from.off, step = 1;
    while (hi < n && blk[hi] < probe) {
      lo = hi + 1;
      hi = lo + step;
      step <<= 1;
    }
    if (hi > n) hi = n;
    return Pos{from.block, static_cast<size_t>(std::lower_bound(blk.begin() + lo, blk.begin() + hi, probe) - blk.begin())};
  }

  // The position of the first entry whose key is >= key.
  Pos lower_bound(double key) const {
    QEntry probe{key, kMinId};
    size_t bi = std::lower_bound(maxes_.begin(), maxes_.end(), probe) - maxes_.begin();
    if (bi == blocks_.size()) return Pos{bi, 0};
    const std::vector<QEntry>& blk = blocks_[bi];
    return Pos{bi, static_cast<size_t>(std::lower_bound(blk.begin(), blk.end(), probe) - blk.begin())};
  }

 private:
  void split(size_t bi) {
    std::vector<QEntry>& blk = blocks_[bi];
    std::vector<QEntry> upper(blk.begin() + kBlockLoad, blk.end());
    blk.resize(kBlockLoad);
    maxes_[bi] = blk.back();
    blocks_.insert(blocks_.begin() + bi + 1, std::move(upper));
    maxes_.insert(maxes_.begin() + bi + 1, blocks_[bi + 1].back());
  }

  void fix_block(size_t bi) {
    if (blocks_[bi].empty()) {
      blocks_.erase(blocks_.begin() + bi);
      maxes_.erase(maxes_.begin() + bi);
    } else {
      maxes_[bi] = blocks_[bi].back();
    }
  }

  std::vector<std::vector<QEntry>> blocks_;
  std::vector<QEntry> maxes_;
  size_t size_ = 0;
};

// The queue exposed to Python: sorted blocks plus an id -> key index for removal by id.
class RequestQueue {
 public:
  size_t size() const { return order_.size(); }
  bool empty() const { return order_.empty(); }
  bool contains(int64_t id) const { return key_of_.contains(id); }

  Status push(int64_t id, double key) {
    if (!key_of_.insert(id, key)) return ERR_DUPLICATE_ID;
    order_.insert(QEntry{key, id});
    return OK;
  }

  Status remove(int64_t id, double* key_out) {
    const double* key = key_of_.find(id);
    if (!key) return ERR_UNKNOWN_ID;
    double k = *key;
    if (key_out) *key_out = k;
    order_.erase(QEntry{k, id});
    key_of_.erase(id);
    return OK;
  }

  Status key_of(int64_t id, double* key_out) const {
    const double* key = key_of_.find(id);
    if (!key) return ERR_UNKNOWN_ID;
    *key_out = *key;
    return OK;
  }

  const SortedBlocks& order() const { return order_; }

  // Removes every entry whose key is < key, appending their ids in order.
  void pop_below(double key, std::vector<int64_t>* out) {
    while (!order_.empty() && order_.first().key < key) {
      int64_t id = order_.first().id;
      out->push_back(id);
      key_of_.erase(id);
      order_.pop_first();
    }
  }

 private:
  SortedBlocks order_;
  IdMap<double> key_of_;
};

}  // namespace orloj
