// taskq — the scheduler: fires named schedules (cron, interval, one-shot) into a client's
// queues, each occurrence exactly once, under per-schedule overlap, concurrency and
// catch-up policies; with manual runs and backfills.
//
// Design. One clock wait, for the earliest due time across all schedules (an ordered set
// keyed by next due: O(log n) per change). The decisions are pure functions
// (detail/schedule_state.hpp). Each occurrence is enqueued with its `scheduled_for` and the
// dedupe key occurrence_key(name, scheduled_for) held in every status
// (unique_scope::any), so a restart, a retried enqueue or a second scheduler on the same
// stores never enqueues an occurrence twice: errc::duplicate_unique_key means "already
// enqueued" and is counted as `deduplicated`, not as an error. Runs are tracked through the
// client's events (started / finished) to apply the overlap policy and max_concurrency.
// Optionally (scheduler_options::leader) only the instance holding a leader lease fires; the
// lease is renewed on the same clock, beside the single wait for the earliest due schedule.
#pragma once

#include <taskq/client.hpp>
#include <taskq/detail/blocking.hpp>
#include <taskq/leader.hpp>
#include <taskq/metrics.hpp>
#include <taskq/schedule.hpp>
#include <taskq/schedule_store.hpp>

#include <map>
#include <memory>
#include <vector>

namespace taskq {

class metrics_registry;

struct scheduler_options {
  /// When set (it must outlive the scheduler), occurrences' lateness is recorded there by
  /// schedule name (taskq_schedule_lateness_seconds, taskq/prometheus.hpp).
  metrics_registry* metrics = nullptr;
  /// Where definitions and progress persist; must outlive the scheduler. Null: the
  /// scheduler keeps its own in-memory store.
  schedule_store* store = nullptr;
  /// When async_run starts, also run the schedules found in the store that this instance has
  /// not ensured (schedules survive a restart without being ensured again).
  bool adopt_stored = true;
  /// When a scheduler takes a schedule on, look up its runs still pending or running in the
  /// task store (by the "taskq.schedule" label) so overlap and concurrency see them.
  bool track_existing_runs = true;
  /// backfill refuses ranges with more occurrences than this (errc::invalid_schedule).
  std::size_t max_backfill = 10'000;

  // --- several instances: leader election -----------------------------------------------
  /// When set (it must outlive the scheduler), this instance fires occurrences and adopts
  /// stored schedules only while it leads `leader_name`; the other instances stand by and take
  /// over when the leader stops or its lease runs out. Null: this instance always fires (the
  /// dedupe key alone keeps several instances from enqueueing an occurrence twice).
  leader_election* leader = nullptr;
  /// The role the instances sharing a schedule store compete for.
  std::string leader_name = "taskq.scheduler";
  /// This instance's identity in the election; empty: a unique one is generated.
  std::string instance_id{};
  /// How long a granted lease lasts. A stand-by takes over at most about
  /// leader_ttl + leader_renew after the leader's last renewal.
  duration leader_ttl = std::chrono::seconds(30);
  /// How often the leader renews (and a stand-by asks). Must be less than leader_ttl.
  duration leader_renew = std::chrono::seconds(10);
};

/// What ensure_schedule did.
enum class ensure_result : std::uint8_t {
  created,    ///< new schedule
  updated,    ///< the definition changed and was updated in place
  unchanged,  ///< the same definition was already there
};

/// The result of a backfill.
struct backfill_result {
  std::vector<std::string> ids{};    ///< runs enqueued now, in occurrence order
  std::size_t already_enqueued = 0;  ///< occurrences whose run existed (dedupe key held)
};

/// A point-in-time view of the scheduler.
struct scheduler_metrics {
  latency_summary lateness{};    ///< occurrence due -> its enqueue completed
  latency_summary queue_wait{};  ///< a schedule's run enqueued -> started (this process's workers)
  schedule_counts totals{};
  std::size_t schedules = 0;
  std::size_t active_runs = 0;  ///< runs pending or running, as tracked
  std::map<std::string, schedule_counts> per_schedule{};
  /// This instance fires occurrences: it runs, and (with options.leader) leads.
  bool leader = false;
  std::uint64_t leadership_changes = 0;  ///< times this instance became leader or stopped leading
};

namespace detail {
struct scheduler_core;
}

/// Fires schedules into a client.
///
/// All members are thread-safe. Async members take any completion token (default
/// `asio::deferred`) and complete on its associated executor (else the client's executor),
/// never inline. Every blocking form comes twice, throwing taskq::error (its detail names
/// the schedule) and setting an error_code; they need the io_context to be run by another
/// thread (errc::blocking_on_io_thread otherwise). None of the operations supports
/// per-operation cancellation except async_run.
///
/// Lifetimes: the client (and options.store) must outlive the scheduler. Destroying the
/// scheduler stops it.
///
/// @code
/// taskq::scheduler sched(client);
/// sched.async_ensure_schedule({.name = "tick", .task = {.type = "tick"}, .cron = "@every 1s"},
///                             [](taskq::error_code, taskq::ensure_result) {});
/// sched.async_run(asio::detached);   // until sched.stop()
/// @endcode
class scheduler {
 public:
  using executor_type = asio::any_io_executor;

  /// Throws taskq::error (errc::invalid_option) when options.leader is set and leader_ttl is
  /// not greater than leader_renew > 0.
  explicit scheduler(client& c, scheduler_options opts = {});
  ~scheduler();

  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  /// The scheduler's strand (on the client's executor).
  executor_type get_executor() const noexcept;

  /// Creates or updates a schedule. The same definition again is a no-op; a changed one is
  /// updated in place: a changed timing rule restarts from now (next due recomputed, missed
  /// occurrences of the new rule are not run), running runs are untouched. A schedule found
  /// in the store resumes from its stored progress (the catch-up policy then applies).
  ///
  /// - Completion: `void(error_code, ensure_result)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: see validate(const schedule&, ...); the schedule store's errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, ensure_result)> CompletionToken =
                asio::deferred_t>
  auto async_ensure_schedule(schedule def, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, ensure_result)>(
        std::forward<CompletionToken>(token),
        [this, d = std::move(def)](auto h) mutable { do_ensure(std::move(d), std::move(h)); });
  }
  ensure_result ensure_schedule(schedule def);
  ensure_result ensure_schedule(schedule def, error_code& ec);

  /// Pauses a schedule: it fires nothing until resumed.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::schedule_not_found; the schedule store's errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_pause(std::string name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token), [this, n = std::move(name)](auto h) mutable {
          do_set_paused(std::move(n), true, std::move(h));
        });
  }
  void pause(const std::string& name);
  void pause(const std::string& name, error_code& ec);

  /// Resumes a paused schedule from now: occurrences that fell while it was paused are not
  /// run.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::schedule_not_found; the schedule store's errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_resume(std::string name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token), [this, n = std::move(name)](auto h) mutable {
          do_set_paused(std::move(n), false, std::move(h));
        });
  }
  void resume(const std::string& name);
  void resume(const std::string& name, error_code& ec);

  /// Removes a schedule from this scheduler and the store. With `cancel_runs`, also cancels
  /// its runs that are pending or running (found by label, whoever enqueued them), like
  /// InfluxDB's ReleaseTask.
  ///
  /// - Completion: `void(error_code, std::size_t cancelled)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::schedule_not_found; the stores' errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, std::size_t)> CompletionToken = asio::deferred_t>
  auto async_remove(std::string name, bool cancel_runs, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::size_t)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name), cancel_runs](auto h) mutable {
          do_remove(std::move(n), cancel_runs, std::move(h));
        });
  }
  std::size_t remove(const std::string& name, bool cancel_runs = false);
  std::size_t remove(const std::string& name, bool cancel_runs, error_code& ec);

  /// Enqueues one run now, outside the timing rule and the overlap policy, with
  /// scheduled_for = now and no dedupe key.
  ///
  /// - Completion: `void(error_code, std::string id)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::schedule_not_found; the client's enqueue errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, std::string)> CompletionToken = asio::deferred_t>
  auto async_run_now(std::string name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::string)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name)](auto h) mutable { do_run_now(std::move(n), std::move(h)); });
  }
  std::string run_now(const std::string& name);
  std::string run_now(const std::string& name, error_code& ec);

  /// Enqueues one run per occurrence t with from <= t < to, each with scheduled_for = t and
  /// the occurrence's dedupe key (an occurrence already enqueued is not enqueued again), in
  /// spite of the overlap policy.
  ///
  /// - Completion: `void(error_code, backfill_result)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::schedule_not_found; errc::invalid_schedule when the range holds
  ///   more than options.max_backfill occurrences; the client's enqueue errors.
  /// - Lifetimes: arguments are moved into the operation; the scheduler must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, backfill_result)> CompletionToken =
                asio::deferred_t>
  auto async_backfill(std::string name, time_point from, time_point to,
                      CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, backfill_result)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name), from, to](auto h) mutable {
          do_backfill(std::move(n), from, to, std::move(h));
        });
  }
  backfill_result backfill(const std::string& name, time_point from, time_point to);
  backfill_result backfill(const std::string& name, time_point from, time_point to, error_code& ec);

  /// Every schedule this instance knows, ordered by name (a snapshot; never blocks on I/O).
  std::vector<schedule_info> list() const;

  /// One schedule, if known.
  std::optional<schedule_info> info(const std::string& name) const;

  /// Fires due schedules until stop().
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the client's executor; never inline.
  /// - Cancellation: terminal (same as stop()).
  /// - Errors: none after stop() (also when stop() came first); errc::shutting_down
  ///   when already running.
  /// - Lifetimes: the scheduler must outlive the operation.
  /// - Thread safety: any thread.
  ///
  /// With options.leader, it first competes for leadership and fires only while it leads:
  /// it renews every leader_renew on the client's clock and stops firing as soon as a renewal
  /// fails or is refused (or its lease runs out before the answer comes). On becoming leader
  /// it reloads every schedule's progress from the store, so the catch-up policy applies to
  /// what the previous leader left undone exactly as after a restart; if that reload fails
  /// (store unreachable, an undecodable record) it does not fire and tries again at the next
  /// renewal. Enqueues it already decided are still retried after leadership is lost (the
  /// dedupe key covers the new leader enqueueing them too). stop() gives the leadership up.
  /// Manual runs (run_now, backfill) work on every instance.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_run(CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token), [this](auto h) mutable { do_run(std::move(h)); });
  }

  /// Stops firing; async_run then completes. Enqueues already started finish. Safe before
  /// start and twice. Gives leadership up (options.leader).
  void stop();

  /// Counters and the lateness histogram.
  scheduler_metrics metrics() const;

 private:
  void do_ensure(schedule def, asio::any_completion_handler<void(error_code, ensure_result)> h);
  void do_set_paused(std::string name, bool paused,
                     asio::any_completion_handler<void(error_code)> h);
  void do_remove(std::string name, bool cancel_runs,
                 asio::any_completion_handler<void(error_code, std::size_t)> h);
  void do_run_now(std::string name, asio::any_completion_handler<void(error_code, std::string)> h);
  void do_backfill(std::string name, time_point from, time_point to,
                   asio::any_completion_handler<void(error_code, backfill_result)> h);
  void do_run(asio::any_completion_handler<void(error_code)> h);

  std::shared_ptr<detail::scheduler_core> core_;
};

}  // namespace taskq
