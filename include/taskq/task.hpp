// taskq — the task model: what a caller enqueues (task_spec), what a store keeps
// (task_record), the statuses and their legal transitions, and the retry policy.
//
// Tasks are identified by a time-ordered id (UUIDv7 text) that callers keep as their
// token, and routed by a stable string `type` — never by a C++ type name — so stored tasks
// survive renames and several subsystems can share one engine without colliding.
#pragma once

#include <taskq/error.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace taskq {

using json = nlohmann::json;
using time_point = std::chrono::system_clock::time_point;
using duration = std::chrono::system_clock::duration;

/// The life cycle of a task.
///
///   pending ──► running ──► succeeded
///      │           │  ├───► failed      (attempts exhausted, or a non-retryable error)
///      │           │  ├───► cancelled   (cancel requested while running)
///      │           │  ├───► dropped     (its worker died while it ran and it is not retried)
///      │           └──────► pending     (retry scheduled, or returned at shutdown)
///      └────► cancelled
///   failed / cancelled / dropped ──► pending   (an explicit retry)
enum class task_status : std::uint8_t { pending, running, succeeded, failed, cancelled, dropped };

inline constexpr std::size_t task_status_count = 6;

/// "pending", "running", ...
std::string_view to_string(task_status s) noexcept;

/// Parses a status name; sets errc::invalid_status on anything else.
std::optional<task_status> parse_status(std::string_view text, error_code& ec);

/// True for succeeded, failed, cancelled and dropped: no further change without a retry.
constexpr bool is_terminal(task_status s) noexcept {
  return s != task_status::pending && s != task_status::running;
}

/// Whether `from -> to` is ever legal (the arrows in the diagram above).
bool is_legal_transition(task_status from, task_status to) noexcept;

/// Exponential backoff with jitter for retryable failures.
///
/// The delay before attempt n+1 (after attempt n failed) is
/// min(max_delay, initial_delay * multiplier^(n-1)), then spread by ±jitter of itself.
struct retry_policy {
  duration initial_delay = std::chrono::seconds(1);
  duration max_delay = std::chrono::hours(1);
  double multiplier = 2.0;
  double jitter = 0.2;  ///< fraction in [0, 1]

  /// The delay after `attempt` (1-based) failed. `random01` is a uniform draw in [0, 1)
  /// supplied by the caller, so the decision stays a pure function.
  duration delay_after(int attempt, double random01) const noexcept;

  friend bool operator==(const retry_policy&, const retry_policy&) = default;
};

/// Key/value references used for lookups and bulk deletes (ordered, so serialisation is stable).
using label_map = std::map<std::string, std::string>;

/// How long a task's unique_key keeps other tasks with the same key out.
enum class unique_scope : std::uint8_t {
  active,  ///< while the task is pending or running (a finished task frees the key)
  any,     ///< while the task exists in any status, until it is deleted or pruned
};

/// What a caller enqueues. Aggregate with defaults: use designated initializers.
///
/// @code
/// client.enqueue({.type = "email.send", .payload = {{"to", "a@example.com"}},
///                 .max_attempts = 5, .timeout = 30s});
/// @endcode
struct task_spec {
  std::string type{};                  ///< required; selects the handler
  std::string queue = "default";       ///< named queue; workers choose which queues they serve
  json payload{};                      ///< the handler's input
  json metadata{};                     ///< free-form data for the subsystem that owns the type
  int priority = 0;                    ///< higher runs first; FIFO within a priority
  duration delay{};                    ///< run no earlier than enqueue time + delay
  std::optional<time_point> run_at{};  ///< absolute earliest run time (overrides delay)
  int max_attempts = 25;               ///< total attempts including the first (River/Sidekiq: 25)
  retry_policy retry{};                ///< backoff between attempts
  duration timeout{};                  ///< per-attempt limit; zero means none
  label_map labels{};                  ///< references for lookups and bulk deletes
  std::string concurrency_key{};       ///< groups tasks for per-key concurrency limits
  std::string unique_key{};  ///< while a task holds this key (see unique_for), another is refused
  unique_scope unique_for = unique_scope::active;
  std::string id{};  ///< optional caller-chosen id; generated (UUIDv7) when empty
  std::optional<time_point> scheduled_for{};  ///< the occurrence a schedule fired this task for
};

/// One line of a task's run log.
struct log_entry {
  time_point at{};
  std::string message{};
  friend bool operator==(const log_entry&, const log_entry&) = default;
};

/// A task as a store keeps it: the spec's fields plus its state.
struct task_record {
  // --- from the spec ---
  std::string id{};
  std::string type{};
  std::string queue{};
  json payload{};
  json metadata{};
  int priority = 0;
  time_point available_at{};  ///< when it may run next (delay, retry backoff)
  int max_attempts = 1;
  retry_policy retry{};
  duration timeout{};
  label_map labels{};
  std::string concurrency_key{};
  std::string unique_key{};
  unique_scope unique_for = unique_scope::active;
  std::optional<time_point> scheduled_for{};
  // --- state ---
  task_status status = task_status::pending;
  int attempt = 0;  ///< attempts started so far (1 while the first attempt runs)
  json progress{};  ///< the latest heartbeat's progress
  json result{};    ///< the handler's result once succeeded
  std::string last_error{};
  std::vector<log_entry> log{};
  time_point created_at{};
  time_point updated_at{};
  std::optional<time_point> started_at{};  ///< start of the latest attempt
  std::optional<time_point> finished_at{};
  std::optional<time_point> heartbeat_at{};
  bool cancel_requested = false;

  friend bool operator==(const task_record&, const task_record&) = default;
};

/// The highest JSON nesting depth taskq handles at all (validation_limits::max_json_depth is
/// capped at it). The store decoders refuse a stored document nested deeper as invalid_record,
/// so any document accepted under any configuration can be read back.
inline constexpr std::size_t json_depth_ceiling = 512;

/// The longest duration taskq accepts from input: task delays, timeouts, retry delays and
/// schedule intervals (36,500 days, about 100 years). The clock counts 64-bit nanoseconds and
/// ends in 2262, so a longer duration added to the current time would wrap into the past.
inline constexpr duration max_duration = std::chrono::hours(24) * 36500;

/// The latest time taskq accepts from input (task_spec::run_at, a schedule's `at` and
/// `anchor`): the Unix epoch plus twice max_duration (the year 2169). Earlier bound: the epoch.
inline constexpr time_point max_time_point = time_point(2 * max_duration);

/// Limits applied when validating input.
struct validation_limits {
  std::size_t max_payload_bytes = 1 << 20;  ///< serialized JSON size of payload + metadata
  /// The deepest nesting of arrays and objects accepted in a JSON field (payload, metadata, a
  /// heartbeat's progress, a handler's result): 0 for a scalar, 1 for `[1]`. Values above
  /// json_depth_ceiling act as the ceiling. Checked without recursion, before anything
  /// serializes or copies the value.
  std::size_t max_json_depth = 64;
};

/// Checks a spec; the error's message names the offending field. Nothing is changed.
/// JSON depth is checked before the size: payload_too_deep,
/// metadata_too_deep, payload_too_large; durations: negative_delay, delay_too_long,
/// negative_timeout, timeout_too_long, invalid_retry_policy (also for a delay above
/// max_duration); run_at_out_of_range for a run_at before the epoch or after max_time_point.
error_code validate(const task_spec& spec, const validation_limits& limits = {});

/// Builds the record a spec describes, as of `now`. The spec must be valid.
task_record make_record(task_spec&& spec, time_point now);

/// A new time-ordered id: UUIDv7 text (36 characters). Ids made in one process sort in
/// creation order.
std::string make_task_id(time_point now);

// --- JSON mapping (stable field names; `"v": 1` is the format version) -------------------

/// Encodes a record as JSON with stable field names. Times are microseconds since the Unix
/// epoch, durations microseconds.
json to_json(const task_record& r);

/// Decodes a record. On failure sets errc::invalid_record and `detail` names the field.
std::optional<task_record> record_from_json(const json& j, error_code& ec, std::string& detail);

/// Throwing form of record_from_json.
task_record record_from_json(const json& j);

/// ISO 8601 UTC text of a time point with microseconds ("2026-01-02T03:04:05.123456Z").
std::string format_time(time_point t);

}  // namespace taskq
