// Internal: the scheduler's decisions as pure functions (no I/O, no clock reads): given a
// schedule, how far it has been handled, how many of its runs are active and `now`, which
// occurrences to enqueue. Unit-tested without an io_context.
#pragma once

#include <taskq/cron.hpp>
#include <taskq/schedule.hpp>

#include <optional>
#include <vector>

namespace taskq::detail {

/// A schedule's timing rule, parsed once (cron expression, interval or one-shot).
class schedule_timing {
 public:
  /// Parses `s`'s timing. Throws taskq::error for an invalid rule (validate() first).
  explicit schedule_timing(const schedule& s);

  /// The first occurrence strictly after `t`; with no `t`, the first occurrence of a
  /// one-shot (its `at`) and nothing for the others. None when the rule has no more.
  std::optional<time_point> next_after(std::optional<time_point> t) const noexcept;

  bool is_one_shot() const noexcept { return at_.has_value(); }
  bool is_interval() const noexcept { return every_.count() > 0; }

 private:
  std::optional<cron_expression> cron_;
  duration every_{};
  time_point anchor_{};
  std::optional<time_point> at_;
};

/// How many of a schedule's runs are waiting (pending) and running.
struct occupancy {
  std::size_t pending = 0;
  std::size_t running = 0;
  std::size_t active() const noexcept { return pending + running; }
};

/// What to do for one schedule at one moment.
struct decision {
  std::vector<time_point> fire{};      ///< occurrences to enqueue, ascending
  std::uint64_t skipped = 0;           ///< occurrences dropped by the catch-up or overlap policy
  std::optional<time_point> cursor{};  ///< every occurrence at or before it is now handled
  bool held_back = false;       ///< stopped at max_concurrency: the rest stays due until a run ends
  bool scan_restarted = false;  ///< more than max_scan missed occurrences: scan restarted 24h back
};

/// Decides which due occurrences of `def` (those after `cursor`, up to `now`) to enqueue.
///
/// 1. Due occurrences D = every occurrence t with cursor < t <= now.
/// 2. Catch-up: `skip` keeps those within misfire_grace of now; `run_once` keeps the latest;
///    `run_all` keeps the latest max_catch_up. The others are skipped.
/// 3. In order, each kept occurrence is held back when max_concurrency runs are active
///    (it and everything after it stay due), skipped by skip_if_running while any run is
///    active, skipped by queue_one while a run is pending, else fired (counting as pending).
/// The new cursor is the latest occurrence of D, or, when held back, just before the first
/// held occurrence. Paused schedules are the caller's concern.
decision decide(const schedule& def, const schedule_timing& timing,
                std::optional<time_point> cursor, occupancy occ, time_point now,
                std::size_t max_scan = 1'000'000);

/// Occurrences t with from <= t < to, at most `max` + 1 of them (so callers can tell "too
/// many").
std::vector<time_point> occurrences_in(const schedule_timing& timing, time_point from,
                                       time_point to, std::size_t max);

}  // namespace taskq::detail
