// taskq — Prometheus metrics: a registry the engine, workers, scheduler and backends feed, and
// its rendering in the Prometheus text exposition format 0.0.4 (no other library involved).
//
// Counters and histograms are fed on the hot path through a narrow hook (client_options::
// metrics, scheduler_options::metrics): the engine resolves a (queue, type) series once per
// event through a small per-thread cache and increments relaxed atomics. Gauges (tasks by
// status, queue depth, paused queues, oldest pending task, schedules, backend figures) are
// collected at scrape time by the collectors attached to the registry.
//
// @code
// taskq::metrics_registry metrics;
// taskq::client client(io.get_executor(), q, s, {.metrics = &metrics});
// metrics.attach(client);                 // gauges from its store and queue
// metrics.attach(scheduler);              // schedules' next due, counters
// metrics.add_collector(taskq::file_backend_collector(*backend));
// metrics.async_scrape([](taskq::error_code, std::string text) { /* serve it */ });
// @endcode
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/metrics.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace taskq {

class client;
class scheduler;
namespace file {
class backend;
}
namespace postgres {
class backend;
}

// --- the data model of one scrape ---------------------------------------------------------

using metric_labels = std::vector<std::pair<std::string, std::string>>;

enum class metric_type : std::uint8_t { counter, gauge, histogram };

/// One series of a family. For histograms, `buckets` holds cumulative counts for the family's
/// `bounds` (the +Inf bucket is `count`), `value` holds the sum.
struct metric_series {
  metric_labels labels{};
  double value = 0;
  std::vector<std::uint64_t> buckets{};
  std::uint64_t count = 0;
};

/// A metric family: one name, one HELP text, one type. A counter's name ends in `_total`; a
/// histogram's series render as `<name>_bucket{le=...}`, `<name>_sum` and `<name>_count`.
struct metric_family {
  std::string name{};
  std::string help{};
  metric_type type = metric_type::gauge;
  std::vector<double> bounds{};  ///< histograms: upper bounds, ascending, without +Inf
  std::vector<metric_series> series{};
};

/// Renders families in the text exposition format 0.0.4 (Content-Type
/// `text/plain; version=0.0.4; charset=utf-8`). Families with the same name are merged (the
/// first one's help and type win); label values and HELP text are escaped (backslash, double
/// quote and newline in values; backslash and newline in HELP); numbers use the shortest form
/// that reads back exactly, and `+Inf`, `-Inf`, `NaN`.
std::string render_prometheus(const std::vector<metric_family>& families);

/// The content type of render_prometheus()'s output.
inline constexpr std::string_view prometheus_content_type =
    "text/plain; version=0.0.4; charset=utf-8";

// --- histograms with fixed bounds ---------------------------------------------------------

/// A Prometheus histogram with fixed upper bounds (seconds). observe() is wait-free (relaxed
/// atomics); reads are approximate under concurrent writes.
class bucket_histogram {
 public:
  explicit bucket_histogram(const std::vector<double>& bounds_seconds);
  void observe(duration d) noexcept;
  /// Cumulative bucket counts, total count and sum in seconds, into `out`.
  void read(metric_series& out) const;

 private:
  std::vector<std::int64_t> bounds_ns_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // per bucket (+Inf last), not cumulative
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::int64_t> sum_ns_{0};
};

// --- the registry -------------------------------------------------------------------------

struct metrics_registry_options {
  /// Bounds (seconds) of taskq_task_wait_seconds (due -> started).
  std::vector<double> wait_buckets{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600};
  /// Bounds (seconds) of taskq_task_duration_seconds (started -> finished).
  std::vector<double> duration_buckets{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600};
  /// Bounds (seconds) of taskq_schedule_lateness_seconds (occurrence due -> enqueued).
  std::vector<double> lateness_buckets{0.001, 0.01, 0.1, 0.5, 1, 5, 10, 60, 300};
  /// At most this many (queue, type) label pairs; further ones are counted under
  /// queue="_other", type="_other" so a runaway set of types cannot exhaust memory.
  std::size_t max_task_series = 1000;
  /// At most this many schedule names in taskq_schedule_lateness_seconds (then "_other").
  std::size_t max_schedule_series = 1000;
};

/// Validates the options: ascending positive finite bounds, nonzero limits. Names the field.
error_code validate(const metrics_registry_options& o, std::string* detail = nullptr);

/// The counters and histograms of one (queue, type) pair. Resolved once by
/// metrics_registry::series(), then fed with relaxed atomics.
struct task_series {
  task_series(std::string q, std::string t, const metrics_registry_options& o);
  std::string queue, type;
  std::array<std::atomic<std::uint64_t>, 8> events{};  ///< by event_kind
  bucket_histogram wait, run;

  void count(event_kind k, std::uint64_t n = 1) noexcept {
    events[static_cast<std::size_t>(k)].fetch_add(n, std::memory_order_relaxed);
  }
};

/// Something that adds families to a scrape. It is called on the registry's scrape path and
/// completes its handler (any thread) with the families it found; errors are its own to
/// report (as a gauge, say) — a scrape never fails because one source did.
using metrics_collector =
    std::function<void(asio::any_completion_handler<void(std::vector<metric_family>)>)>;

/// The metrics of one or more engines. Thread-safe; must outlive everything fed from it
/// (clients, schedulers) and every scrape in flight.
class metrics_registry {
 public:
  /// Throws taskq::error (errc::invalid_option, naming the field) on bad options.
  explicit metrics_registry(metrics_registry_options opts = {});
  ~metrics_registry();
  metrics_registry(const metrics_registry&) = delete;
  metrics_registry& operator=(const metrics_registry&) = delete;

  const metrics_registry_options& options() const noexcept { return opts_; }

  // --- fed by the engine and the scheduler (hot path) ----------------------------------

  /// The series of (queue, type): stable for the registry's life. Cheap on repeated calls
  /// from the same thread (a per-thread cache of recent pairs; a shared lock otherwise).
  task_series& series(std::string_view queue, std::string_view type);
  /// One occurrence of a schedule enqueued `late` after it was due.
  void observe_lateness(std::string_view schedule, duration late);

  // --- gauges and other sources, read at scrape time -----------------------------------

  /// Tasks by status per queue and type, queue depth (ready/delayed/leased), paused queues,
  /// the oldest pending task's age — from the client's store and queue. `c` must outlive the
  /// registry (collectors cannot be removed).
  void attach(client& c);
  /// Schedules: count, paused, next due, last fired, fired/skipped/errors. `s` must outlive
  /// the registry.
  void attach(scheduler& s);
  void add_collector(metrics_collector c);

  /// Collects every family: the counters and histograms fed so far, then every collector's.
  /// Completion: void(error_code, std::vector<metric_family>) on `ex` (never inline). The
  /// error is always success today (a collector that fails leaves its families out).
  void async_collect(asio::any_io_executor ex,
                     asio::any_completion_handler<void(error_code, std::vector<metric_family>)> h);

  /// async_collect, rendered in the Prometheus text format.
  ///
  /// - Completion: `void(error_code, std::string)`.
  /// - Executor: the token's associated executor, else `ex`; never inline.
  /// - Cancellation: none.
  /// - Errors: none today (a collector that fails leaves its families out).
  /// - Lifetimes: the registry must outlive the operation.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, std::string)> CompletionToken = asio::deferred_t>
  auto async_scrape(asio::any_io_executor ex, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::string)>(
        std::forward<CompletionToken>(token), [this, ex](auto h) mutable {
          async_collect(
              ex, [ex, h = std::move(h)](error_code ec, std::vector<metric_family> f) mutable {
                detail::dispatch_completion(std::move(h), ex, ec, render_prometheus(f));
              });
        });
  }

  /// The families fed through series() and observe_lateness() (no collectors; synchronous).
  std::vector<metric_family> collect_fed() const;

 private:
  struct impl;
  metrics_registry_options opts_;
  std::unique_ptr<impl> impl_;
};

/// File backend figures: fsyncs, records per sync, journal and snapshot bytes, compactions.
metrics_collector file_backend_collector(file::backend& b);
/// PostgreSQL backend figures: pool size, connections open, reconnects, statement errors.
/// Defined only when taskq is built with the PostgreSQL backend.
metrics_collector postgres_backend_collector(postgres::backend& b);

}  // namespace taskq
