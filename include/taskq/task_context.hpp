// taskq — what a handler sees of its run: the task, co-operative cancellation, progress
// heartbeats and the run log.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/run_promise.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>

#include <atomic>
#include <memory>

namespace taskq {

/// The link from a running handler back to whoever runs the task (the worker): heartbeats
/// and log lines go through it to the store. Implemented by taskq::worker; a custom
/// executor driven without a worker may pass none.
class run_hooks {
 public:
  virtual ~run_hooks() = default;

  /// Records progress, extends the lease; completes with whether cancellation was
  /// requested. Completion: void(error_code, bool cancel_requested).
  virtual void heartbeat(const task_record& task, std::optional<json> progress,
                         asio::any_completion_handler<void(error_code, bool)> h) = 0;

  /// Appends a run-log line. Completion: void(error_code).
  virtual void log(const task_record& task, std::string message,
                   asio::any_completion_handler<void(error_code)> h) = 0;
};

/// What an executor receives: the run, the task record as claimed, and the hooks.
struct run_request {
  queued_run run{};
  task_record task{};
  std::shared_ptr<run_hooks> hooks{};  ///< may be null
};

/// A handler's view of its run. Passed by reference to handlers; valid until the handler
/// returns (for coroutine handlers: until the coroutine completes). Thread-safe.
class task_context : public std::enable_shared_from_this<task_context> {
 public:
  task_context(run_request&& req, time_point started_at, asio::any_io_executor io_ex);

  const task_record& task() const noexcept { return req_.task; }
  const std::string& id() const noexcept { return req_.task.id; }
  const std::string& type() const noexcept { return req_.task.type; }
  const json& payload() const noexcept { return req_.task.payload; }
  const json& metadata() const noexcept { return req_.task.metadata; }
  int attempt() const noexcept { return req_.run.attempt; }
  const queued_run& run() const noexcept { return req_.run; }
  /// When this attempt started.
  time_point started_at() const noexcept { return started_at_; }
  /// The schedule occurrence this run serves, if a schedule created the task.
  std::optional<time_point> scheduled_for() const noexcept { return req_.run.scheduled_for; }

  /// True once the run was cancelled (by the caller, a timeout or shutdown). Handlers that
  /// loop should check it and return early; their result is then discarded.
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }

  /// Why the run was cancelled (empty while it was not).
  error_code cancel_reason() const;

  /// For coroutine handlers: a slot emitted (terminal) on the handler's executor when the run
  /// is cancelled, so awaited Asio operations bound to it are cancelled too. Coroutine
  /// handlers already run with it as their cancellation slot.
  asio::cancellation_slot cancellation_slot() noexcept { return signal_.slot(); }

  /// Reports progress (stored as the task's progress, extends the lease) and learns whether
  /// the task was cancelled meanwhile — the Go seed's Heartbeat/ErrTaskCancelled. Returns
  /// false when the handler should stop. Blocking: for plain-function handlers.
  bool heartbeat(json progress = nullptr);

  /// Asynchronous heartbeat for coroutine handlers. (A handler's result nested too deep fails
  /// the run, not retried, with errc::result_too_deep.)
  ///
  /// - Completion: `void(error_code, bool keep_going)`.
  /// - Executor: the token's associated executor, else the run's I/O executor; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::progress_too_deep (nested deeper than the client's
  ///   validation_limits::max_json_depth: not recorded); errc::status_conflict when the run
  ///   lost its task; the store's errors.
  /// - Lifetimes: the context must outlive the operation (it does while the handler runs).
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, bool)> CompletionToken = asio::deferred_t>
  auto async_heartbeat(json progress, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, bool)>(
        std::forward<CompletionToken>(token), [this, p = std::move(progress)](auto h) mutable {
          do_heartbeat(std::move(p), std::move(h));
        });
  }

  /// Appends a line to the task's run log. Blocking: for plain-function handlers.
  void log(std::string message);

  /// Asynchronous log append, for coroutine handlers.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the run's I/O executor; never inline.
  /// - Cancellation: none.
  /// - Errors: the store's errors.
  /// - Lifetimes: the context must outlive the operation (it does while the handler runs).
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_log(std::string message, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, m = std::move(message)](auto h) mutable { do_log(std::move(m), std::move(h)); });
  }

  /// Used by executors: marks the context cancelled and emits the cancellation slot (on
  /// the run's I/O executor). The context must be owned by a std::shared_ptr (the emission
  /// is posted and keeps it alive).
  void request_cancel(error_code reason);

 private:
  friend class local_executor;  // drops the hooks of a finished run (see drain_runs)
  void do_heartbeat(json progress, asio::any_completion_handler<void(error_code, bool)> h);
  void do_log(std::string message, asio::any_completion_handler<void(error_code)> h);

  run_request req_;
  time_point started_at_;
  asio::any_io_executor io_ex_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int> reason_{0};
  asio::cancellation_signal signal_;
};

}  // namespace taskq
