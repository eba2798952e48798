// taskq — schedule definitions: what a scheduler fires (a task template), when (a cron
// expression, a fixed interval or a one-shot time) and under which policies (overlap,
// concurrency, catch-up after downtime).
#pragma once

#include <taskq/task.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace taskq {

/// What to do with an occurrence while earlier runs of the same schedule are not finished.
enum class overlap_policy : std::uint8_t {
  allow,            ///< enqueue regardless (bounded only by max_concurrency)
  skip_if_running,  ///< skip the occurrence while any earlier run is pending or running
  queue_one,        ///< enqueue unless one run is already waiting (pending) behind the rest
};

/// What to do with occurrences that were missed (scheduler down, paused clock, held back by
/// max_concurrency longer than misfire_grace).
enum class catch_up_policy : std::uint8_t {
  skip,      ///< drop every missed occurrence; only an occurrence within misfire_grace fires
  run_once,  ///< one run, for the latest missed occurrence, stands in for all of them
  run_all,   ///< one run per missed occurrence, at most max_catch_up (the latest ones)
};

/// "allow", "skip_if_running", "queue_one" / "skip", "run_once", "run_all".
std::string_view to_string(overlap_policy p) noexcept;
std::string_view to_string(catch_up_policy p) noexcept;

/// A named schedule. Aggregate with defaults: use designated initializers. Exactly one
/// timing rule must be set: `cron`, `every` or `at`.
///
/// @code
/// sched.ensure_schedule({.name = "nightly-report",
///                        .task = {.type = "report.build", .payload = {{"kind", "daily"}}},
///                        .cron = "30 2 * * *", .time_zone = "Europe/Berlin",
///                        .overlap = taskq::overlap_policy::skip_if_running});
/// @endcode
///
/// Occurrence times. A cron schedule fires at cron_expression::next_after times in
/// `time_zone` (DST rules documented in cron.hpp). An interval schedule (`every`, or the
/// cron macro `@every <d>`) fires at `anchor + k * every` for whole k, so every scheduler
/// instance computes the same occurrence times (the default anchor is the Unix epoch: an
/// `@every 1m` schedule fires on whole minutes). A one-shot fires once, at `at`.
struct schedule {
  std::string name{};  ///< required; unique per schedule store; also part of the dedupe key
  /// The task each occurrence enqueues. `id` and `scheduled_for` must be empty (the scheduler
  /// sets them), as must `unique_key` (it is the occurrence's dedupe key). The scheduler
  /// adds the label "taskq.schedule" = name.
  task_spec task{};

  // --- timing: exactly one of cron / every / at ------------------------------------------
  std::string cron{};              ///< 5- or 6-field cron expression or macro (see cron.hpp)
  std::string time_zone = "UTC";   ///< IANA zone for `cron`
  duration every{};                ///< fixed interval (> 0)
  time_point anchor{};             ///< interval occurrences are anchor + k * every
  std::optional<time_point> at{};  ///< one-shot time

  // --- policies ---------------------------------------------------------------------------
  overlap_policy overlap = overlap_policy::allow;
  /// Max runs of this schedule pending or running at once; 0 = unlimited. An occurrence over
  /// the limit is held back (not skipped) until a run finishes; it then goes through the
  /// catch-up policy like any missed occurrence.
  std::size_t max_concurrency = 0;
  catch_up_policy catch_up = catch_up_policy::run_once;
  std::size_t max_catch_up = 100;  ///< run_all: at most this many runs per catch-up (>= 1)
  /// An occurrence fired later than this after its time counts as missed.
  duration misfire_grace = std::chrono::minutes(1);
  bool paused = false;  ///< a paused schedule never fires

  friend bool operator==(const schedule& a, const schedule& b);
};

/// True when `a` and `b` fire at the same times (same timing rule; policies and template
/// may differ).
bool same_timing(const schedule& a, const schedule& b) noexcept;

/// Checks a definition (parses its cron expression and zone). Returns errc::invalid_schedule
/// (or the task template's own validation error), errc::invalid_cron or
/// errc::invalid_time_zone; `detail` then names the field, e.g. "schedule 'x' field 'every':
/// must be positive".
error_code validate(const schedule& s, std::string& detail);

/// Per-schedule counters (since this scheduler instance started).
struct schedule_counts {
  std::uint64_t fired = 0;         ///< occurrences enqueued by this instance
  std::uint64_t deduplicated = 0;  ///< occurrences some other instance (or run) already enqueued
  std::uint64_t skipped = 0;       ///< occurrences dropped by the overlap or catch-up policy
  std::uint64_t manual = 0;        ///< run_now and backfill runs enqueued
  std::uint64_t errors = 0;        ///< enqueues that failed (transient failures are retried)
};

/// One line of scheduler::list().
struct schedule_info {
  schedule definition{};
  std::optional<time_point> next_due{};          ///< none: paused, finished, or held back
  std::optional<time_point> last_fired{};        ///< scheduled_for of the latest enqueued run
  std::string last_run_id{};                     ///< the latest run's task id (this instance)
  std::optional<task_status> last_run_status{};  ///< as last seen (events / store)
  std::string last_error{};                      ///< the latest enqueue error, if any
  std::size_t active_runs = 0;                   ///< runs pending or running, as tracked
  bool held_back = false;                        ///< waiting for a slot (max_concurrency)
  schedule_counts counts{};
};

/// The dedupe key of an occurrence: "schedule:<name>:<scheduled-for as ISO 8601 UTC>".
std::string occurrence_key(std::string_view schedule_name, time_point scheduled_for);

}  // namespace taskq
