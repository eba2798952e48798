// taskq — events and metrics: what the host wires into its logs, metrics and notifications.
#pragma once

#include <taskq/store.hpp>

#include <array>
#include <atomic>
#include <cstdint>

namespace taskq {

/// What happened to a task.
enum class event_kind : std::uint8_t {
  enqueued,
  started,
  progress,
  succeeded,
  failed,
  retry_scheduled,
  cancelled,
  dropped,
};

/// "enqueued", "started", ...
std::string_view to_string(event_kind k) noexcept;

/// One event, delivered to every subscriber.
struct event {
  event_kind kind = event_kind::enqueued;
  std::string task_id{};
  std::string type{};
  std::string queue{};
  int attempt = 0;
  time_point at{};
  std::string message{};                      ///< error text (failed, retry_scheduled, dropped)
  json progress{};                            ///< progress events
  std::optional<time_point> retry_at{};       ///< retry_scheduled: when the next attempt may start
  std::optional<time_point> scheduled_for{};  ///< the schedule occurrence the task serves, if any
};

/// Percentiles of a histogram at one moment.
struct latency_summary {
  std::uint64_t count = 0;
  duration p50{}, p90{}, p99{}, max{};
};

/// A lock-free latency histogram with log-linear buckets (about 3% relative precision,
/// 1 ns to ~584 years). record() is wait-free; reads are approximate under concurrent writes.
class histogram {
 public:
  void record(duration d) noexcept;
  std::uint64_t count() const noexcept;
  /// The value at quantile q in [0, 1] (upper edge of its bucket); zero when empty.
  duration quantile(double q) const noexcept;
  duration max() const noexcept;
  /// Count, p50, p90, p99 and max at once.
  latency_summary summary() const noexcept;

 private:
  static constexpr int sub_bits = 5;  // 32 sub-buckets per power of two
  static constexpr std::size_t buckets = 64 << sub_bits;
  static std::size_t bucket_of(std::uint64_t ns) noexcept;
  static std::uint64_t upper_edge(std::size_t b) noexcept;

  std::array<std::atomic<std::uint64_t>, buckets> counts_{};
  std::atomic<std::uint64_t> total_{0};
  std::atomic<std::uint64_t> max_{0};
};

/// A point-in-time view of the engine.
struct metrics_snapshot {
  task_counts counts{};  ///< by status, type and queue, from the store
  std::uint64_t enqueued = 0, started = 0, succeeded = 0, failed = 0, retried = 0, cancelled = 0,
                dropped = 0;           ///< since this client was created
  latency_summary enqueue_to_start{};  ///< due -> started (queue wait)
  latency_summary run_duration{};      ///< started -> finished
};

}  // namespace taskq
