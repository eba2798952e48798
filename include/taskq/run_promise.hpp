// taskq — run_promise: the future of one run, returned by executor::execute().
//
// From InfluxDB's RunPromise: run() describes the run; wait() blocks; every waiter sees the
// identical result; cancel() interrupts the run and every waiter at once gets a "run
// cancelled" outcome. Here async_wait() also takes any Asio completion token.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/task.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <functional>
#include <memory>

namespace taskq {

/// A run that has been assigned an id but has not necessarily started (InfluxDB's QueuedRun).
struct queued_run {
  std::string task_id{};
  std::uint64_t run_id = 0;  ///< unique within the executor that ran it
  int attempt = 1;
  time_point requested_at{};                  ///< when the run was asked for (enqueue time)
  time_point due_at{};                        ///< when it became due (its available_at)
  std::optional<time_point> scheduled_for{};  ///< the schedule occurrence it serves, if any
};

/// Figures about one run.
struct run_statistics {
  duration queue_wait{};  ///< due (or enqueued, if later) -> started
  duration run_time{};    ///< started -> finished
  time_point started_at{};
  time_point finished_at{};
};

/// The outcome of a run.
struct run_result {
  error_code
      error{};  ///< empty on success; errc::run_cancelled, run_timed_out, handler_failed, ...
  std::string message{};   ///< the error's text (a handler exception's what())
  bool retryable = false;  ///< the failure is transient: the task may be tried again
  json result{};           ///< the handler's result on success
  run_statistics stats{};

  bool ok() const noexcept { return !error; }
};

class run_promise;
class executor;
class task_context;

namespace detail {
struct run_state;

/// Told when a run completes, on the completing thread, without an allocation or a handler
/// per run: how the worker collects finished runs (it hands them to its strand in batches).
/// Internal: executors and users never see it.
class run_sink {
 public:
  /// `cookie` is the value given to attach_run_sink. Must not block or throw.
  virtual void run_done(std::uintptr_t cookie) noexcept = 0;

 protected:
  ~run_sink() = default;
};

/// Calls `sink->run_done(cookie)` once when the run completes (at once if it already has),
/// unless the sink is gone by then.
void attach_run_sink(const run_promise& p, std::weak_ptr<run_sink> sink, std::uintptr_t cookie);
}  // namespace detail

/// The consumer side of a run: a shared handle (copies refer to the same run). Thread-safe.
class run_promise {
 public:
  /// An empty promise (valid() is false).
  run_promise() = default;

  bool valid() const noexcept { return state_ != nullptr; }

  /// The run this promise is for.
  const queued_run& run() const;

  /// Blocks until the run completes and returns its result. Every call, from any thread,
  /// returns an identical result. Do not call it on a thread the run itself needs (for a
  /// coroutine handler: a thread running its io_context).
  run_result wait() const;

  /// Waits asynchronously for the run's result (any number of waiters, each sees it).
  ///
  /// - Completion: `void(error_code, run_result)`.
  /// - Executor: the token's associated executor, else the executor's I/O executor; never
  ///   inline.
  /// - Cancellation: terminal, partial and total: ends only this wait
  ///   (asio::error::operation_aborted); the run goes on. cancel() cancels the run.
  /// - Errors: the run's error (result.error), e.g. errc::run_cancelled, errc::run_timed_out.
  /// - Lifetimes: the wait holds the run's shared state; the promise may be destroyed meanwhile.
  /// - Thread safety: any thread, concurrently with other waits and cancel().
  ///
  /// @code
  /// auto r = co_await promise.async_wait();  // throws on the run's error
  /// auto [ec, r2] = co_await promise.async_wait(asio::as_tuple(asio::use_awaitable));
  /// @endcode
  template <
      asio::completion_token_for<void(error_code, run_result)> CompletionToken = asio::deferred_t>
  auto async_wait(CompletionToken&& token = {}) const {
    return detail::initiate_erased<void(error_code, run_result)>(
        std::forward<CompletionToken>(token),
        [s = state_](auto h) mutable { do_async_wait(s, std::move(h)); });
  }

  /// Interrupts the run: every waiter completes at once with `reason` (run_cancelled by
  /// default) and the handler is told to stop (co-operatively). A no-op once completed.
  void cancel(error_code reason = errc::run_cancelled) const;

  /// True once a result is known.
  bool done() const noexcept;

  /// The result if known, without blocking.
  std::optional<run_result> result() const;

 private:
  friend class run_completion;
  friend class executor;
  friend void detail::attach_run_sink(const run_promise&, std::weak_ptr<detail::run_sink>,
                                      std::uintptr_t);
  explicit run_promise(std::shared_ptr<detail::run_state> s) : state_(std::move(s)) {}
  static void do_async_wait(std::shared_ptr<detail::run_state> s,
                            asio::any_completion_handler<void(error_code, run_result)> h);

  std::shared_ptr<detail::run_state> state_;
};

/// The producer side of a run, for executor implementations: like std::promise to
/// run_promise's std::future. Thread-safe.
class run_completion {
 public:
  /// @param io_ex  the I/O executor through which waiters are completed when their token
  ///               has no executor of its own.
  run_completion(queued_run run, asio::any_io_executor io_ex);

  run_promise get_promise() const { return run_promise(state_); }

  /// Sets the result if none is set yet; returns false if the run was already completed or
  /// cancelled (the later result is dropped).
  bool complete(run_result r) const;

  /// Registers what cancellation does to the running work (set a flag, emit a signal).
  /// Called once with the reason, on the cancelling thread; at once if already cancelled.
  void on_cancel(std::function<void(error_code)> fn) const;
  /// The same for the common case, without a callback allocated: cancellation calls
  /// `ctx->request_cancel(reason)`. The completion keeps `ctx` alive until the run completes.
  void on_cancel(std::shared_ptr<task_context> ctx) const;

  /// Registers a callback run once, on the completing thread, when a result is set
  /// (by complete() or cancel()). Executors use it for their own bookkeeping.
  void on_done(std::function<void(const run_result&)> fn) const;

  bool done() const noexcept;

 private:
  friend class local_executor;  // keeps a run's state in one allocation with its context
  explicit run_completion(std::shared_ptr<detail::run_state> s) : state_(std::move(s)) {}

  std::shared_ptr<detail::run_state> state_;
};

}  // namespace taskq
