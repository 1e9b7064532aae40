// A flat hash map from request id (int64) to a small value, for removal by id.
//
// Why not std::unordered_map: every decision forgets the ids it dispatches or drops, and
// in a node-based map each erase chases a bucket pointer and then the node before it. At
// 100,000 queued requests that was about 14% of a decision (perf, bench/sched_overhead.py).
// Here the slots live in one array (linear probing, at most half full) and an erase
// shifts the following entries back instead of leaving tombstones.
#pragma once

#include <cstdint>
#include <vector>

namespace orloj {

template <typename V>
class IdMap {
 public:
  IdMap() { rehash(16); }

  size_t size() const { return size_; }

  // Inserts (id, v); false if the id is already present.
  bool insert(int64_t id, const V& v) {
    if (2 * (size_ + 1) > slots_.size()) rehash(2 * slots_.size());
    size_t i = home(id);
    while (slots_[i].used) {
      if (slots_[i].id == id) return false;
      i = (i + 1) & mask_;
    }
    slots_[i] = Slot{id, v, true};
    ++size_;
    return true;
  }

  // Starts loading id's slot into cache. Forgetting a batch's ids one by one would wait
  // for one cache miss after another; prefetching them all first overlaps the misses.
  void prefetch(int64_t id) const { __builtin_prefetch(&slots_[home(id)]); }

  const V* find(int64_t id) const {
    size_t i = home(id);
    while (slots_[i].used) {
      if (slots_[i].id == id) return &slots_[i].value;
      i = (i + 1) & mask_;
    }
    return nullptr;
  }

  bool contains(int64_t id) const { return find(id) != nullptr; }

  // Removes id; false if absent. Backward-shift deletion keeps every probe chain intact.
  bool erase(int64_t id) {
    size_t i = home(id);
    while (slots_[i].used) {
      if (slots_[i].id == id) break;
      i = (i + 1) & mask_;
    }
    if (!slots_[i].used) return false;
    size_t hole = i;
    size_t j = (i + 1) & mask_;
    while (slots_[j].used) {
      size_t h = home(slots_[j].id);
      // move j into the hole if its home is not in the cyclic range (hole, j]
      bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (!stays) {
        slots_[hole] = slots_[j];
        hole = j;
      }
      j = (j + 1) & mask_;
    }
    slots_[hole].used = false;
    --size_;
    return true;
  }

 private:
  struct Slot {
    int64_t id = 0;
    V value{};
    bool used = false;
  };

  size_t home(int64_t id) const {
    // Fibonacci hashing: ids that arrive in sequence still spread over the table
    return static_cast<size_t>((static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ull) >> shift_);
  }

  void rehash(size_t capacity) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    int bits = 0;
    while ((size_t{1} << bits) < capacity) ++bits;
    shift_ = 64 - bits;
    size_ = 0;
    for (const Slot& s : old)
      if (s.used) insert(s.id, s.value);
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
  size_t size_ = 0;
};

}  // namespace orloj
