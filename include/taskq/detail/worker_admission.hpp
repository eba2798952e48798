// Internal: the worker's admission and refill decisions — which reserved tasks may start
// under the concurrency limits, and when and with which filters to ask the queue for more.
// State and decisions only, no I/O: unit-tested without an io_context, like decide_outcome.
#pragma once

#include <taskq/queue.hpp>
#include <taskq/worker.hpp>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

namespace taskq::detail {

/// What a reservation asks the queue for.
struct reserve_filters {
  std::vector<std::string> queues;      ///< served queues below their limit
  std::vector<std::string> skip_types;  ///< types at their limit
  std::vector<std::string> skip_keys;   ///< concurrency keys at their limit
  bool operator==(const reserve_filters&) const = default;
};

class worker_admission {
 public:
  explicit worker_admission(const worker_options& opts)
      : limits_(opts.limits),
        queues_(opts.queues),
        max_in_flight_(opts.max_in_flight),
        reserve_batch_(opts.reserve_batch) {}

  /// Whether a reserved task may start now: its type, queue and key are below their limits.
  bool admits(const lease& l) const {
    return !at_limit(by_type_, l.type, type_limit(l.type)) &&
           !at_limit(by_queue_, l.queue, queue_limit(l.queue)) &&
           (l.concurrency_key.empty() || !at_limit(by_key_, l.concurrency_key, limits_.per_key));
  }

  /// Counts a task in (+1, when it is admitted) or out (-1, when its slot goes). Counted only
  /// where a limit applies: an unlimited type or queue is never at its limit.
  void count(const lease& l, int delta) {
    if (type_limit(l.type)) add(by_type_, l.type, delta);
    if (queue_limit(l.queue)) add(by_queue_, l.queue, delta);
    if (limits_.per_key && !l.concurrency_key.empty()) add(by_key_, l.concurrency_key, delta);
  }

  /// The filters a reservation made now would carry.
  reserve_filters filters() const {
    reserve_filters f;
    for (const auto& q : queues_)
      if (!at_limit(by_queue_, q, queue_limit(q))) f.queues.push_back(q);
    for (const auto& [t, n] : by_type_)
      if (at_limit(by_type_, t, type_limit(t))) f.skip_types.push_back(t);
    if (limits_.per_key)
      for (const auto& [k, n] : by_key_)
        if (n >= limits_.per_key) f.skip_keys.push_back(k);
    return f;
  }

  /// How many tasks to reserve with `held` tasks running and `recording` more whose outcomes
  /// are on their way to the backend, under filters `f` (0: do not reserve). Refills in
  /// batches: while work runs, it waits until a quarter of a batch is free, so a busy worker
  /// makes one reserve round trip per many tasks instead of one per task. A task being
  /// recorded no longer runs, so the next batch's fetch overlaps the outcomes' round trip
  /// rather than waiting for it; but once max_in_flight outcomes wait on the backend (a slow
  /// one), nothing more is reserved until some are recorded.
  std::size_t refill(std::size_t held, std::size_t recording, const reserve_filters& f) const {
    if (held >= max_in_flight_ || recording >= max_in_flight_ || f.queues.empty()) return 0;
    const auto free_slots = max_in_flight_ - held;
    const auto refill_at = std::max<std::size_t>(1, std::min(reserve_batch_, max_in_flight_) / 4);
    if (held != 0 && free_slots < refill_at) return 0;
    return std::min(free_slots, reserve_batch_);
  }

  /// Whether any limit applies (else every task within max_in_flight is admitted).
  bool limited() const noexcept {
    return !limits_.per_type.empty() || !limits_.per_queue.empty() || limits_.per_key != 0;
  }

  /// Whether `held` slots leave room to admit another task at all.
  bool has_room(std::size_t held) const { return held < max_in_flight_; }

 private:
  using counts = std::unordered_map<std::string, std::size_t>;

  static bool at_limit(const counts& c, const std::string& key, std::size_t limit) {
    if (limit == 0) return false;
    auto it = c.find(key);
    return it != c.end() && it->second >= limit;
  }
  static void add(counts& c, const std::string& key, int delta) {
    auto& n = c[key];
    n = static_cast<std::size_t>(static_cast<long long>(n) + delta);
    if (n == 0) c.erase(key);
  }
  std::size_t type_limit(const std::string& t) const {
    auto it = limits_.per_type.find(t);
    return it == limits_.per_type.end() ? 0 : it->second;
  }
  std::size_t queue_limit(const std::string& q) const {
    auto it = limits_.per_queue.find(q);
    return it == limits_.per_queue.end() ? 0 : it->second;
  }

  concurrency_limits limits_;
  std::vector<std::string> queues_;
  std::size_t max_in_flight_;
  std::size_t reserve_batch_;
  counts by_type_, by_queue_, by_key_;
};

}  // namespace taskq::detail
