// taskq — executors: what runs a task's handler and hands back a run_promise.
//
// taskq::executor is the seam (InfluxDB's Executor): a custom executor is one small class
// overriding do_execute(). taskq::local_executor is the standard one: handlers registered
// per task type, plain functions on a thread pool it owns, coroutines on the host's executor.
#pragma once

#include <taskq/clock.hpp>
#include <taskq/run_promise.hpp>
#include <taskq/task_context.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <type_traits>
#include <unordered_map>
#include <variant>

namespace taskq {

/// Thrown by a handler for a failure that retrying cannot fix: the task fails at once.
/// Any other exception is a retryable failure (retried while attempts remain).
class permanent_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The Executor seam. execute() and the idle waits are thread-safe.
///
/// A custom executor overrides do_execute(): create a run_completion, start the work, and
/// complete it when the work ends (see tests/unit/engine_test.cpp, "custom executor").
class executor {
 public:
  using executor_type = asio::any_io_executor;

  explicit executor(asio::any_io_executor io_ex) : io_ex_(std::move(io_ex)) {}
  virtual ~executor() = default;

  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  /// The I/O executor used for completions whose token has none.
  executor_type get_executor() const noexcept { return io_ex_; }

  /// Begins a run and returns its promise at once; never blocks for the run itself.
  /// Problems running it (no handler for the type) come back as the promise's result.
  run_promise execute(run_request req);

  /// Number of runs whose promise has not completed.
  std::size_t outstanding() const;

  /// Blocks until every promise created through execute() has completed.
  void wait_idle();

  /// Waits asynchronously until no promise is outstanding.
  ///
  /// - Completion: `void()`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: none.
  /// - Lifetimes: the executor must outlive the operation.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void()> CompletionToken = asio::deferred_t>
  auto async_wait_idle(CompletionToken&& token = {}) {
    return detail::initiate_erased<void()>(std::forward<CompletionToken>(token),
                                           [this](auto h) mutable { do_wait_idle(std::move(h)); });
  }

 protected:
  /// Starts the run described by `req` and returns its promise. `req` is the caller's (an
  /// rvalue reference, so a run request is moved once, into whatever keeps it).
  virtual run_promise do_execute(run_request&& req) = 0;

 private:
  friend struct detail::run_state;
  void do_wait_idle(asio::any_completion_handler<void()> h);
  void finished_one();

  asio::any_io_executor io_ex_;
  mutable std::mutex mutex_;
  std::condition_variable idle_cv_;
  std::atomic<std::size_t> outstanding_{0};
  std::vector<asio::any_completion_handler<void()>> idle_waiters_;
};

struct local_executor_options {
  /// Threads for plain-function handlers; 0 means one per hardware core but one, which is left
  /// to the thread running the io_context (the engine's own work), so the two do not
  /// oversubscribe the cores; at least one. Handlers that mostly wait want more.
  std::size_t threads = 0;
  /// Time source for run statistics. Must outlive the executor.
  clock* time = nullptr;
};

/// Runs handlers registered per task type.
///
/// A handler is one of:
///   json(task_context&)                     plain function, on the executor's thread pool
///   void(task_context&)                     the same, with a null result
///   asio::awaitable<json>(task_context&)    coroutine, on the host's I/O executor
///   asio::awaitable<void>(task_context&)
/// A handler that throws fails the run (retryable, unless it threw taskq::permanent_error).
///
/// @code
/// taskq::local_executor ex(io.get_executor());
/// ex.handle("resize", [](taskq::task_context& ctx) {
///   ctx.heartbeat({{"done", 0.5}});
///   return taskq::json{{"ok", true}};
/// });
/// @endcode
class local_executor final : public executor {
 public:
  using sync_handler = std::function<json(task_context&)>;
  using coro_handler = std::function<asio::awaitable<json>(task_context&)>;

  explicit local_executor(asio::any_io_executor io_ex, local_executor_options opts = {});
  /// Waits for running plain-function handlers to return, then joins the pool.
  ~local_executor() override;

  /// Registers (or replaces) the handler for `type`. One handler object serves every run of its
  /// type, from several pool threads at once: it must be safe to call concurrently. A run
  /// that started keeps the handler it started with when `type` is registered again.
  template <class F>
  void handle(std::string type, F fn) {
    using R = std::invoke_result_t<F&, task_context&>;
    if constexpr (std::is_same_v<R, asio::awaitable<void>>) {
      add(std::move(type),
          coro_handler([fn = std::move(fn)](task_context& c) mutable -> asio::awaitable<json> {
            co_await fn(c);
            co_return json();
          }));
    } else if constexpr (std::is_same_v<R, asio::awaitable<json>>) {
      add(std::move(type), coro_handler(std::move(fn)));
    } else if constexpr (std::is_void_v<R>) {
      add(std::move(type), sync_handler([fn = std::move(fn)](task_context& c) mutable {
            fn(c);
            return json();
          }));
    } else {
      static_assert(std::is_convertible_v<R, json>,
                    "a handler returns json, void, awaitable<json> or awaitable<void>");
      add(std::move(type),
          sync_handler([fn = std::move(fn)](task_context& c) mutable { return json(fn(c)); }));
    }
  }

  /// Whether a handler is registered for `type`.
  bool has_handler(const std::string& type) const;

  /// The pool's thread count.
  std::size_t threads() const noexcept { return threads_; }

 protected:
  run_promise do_execute(run_request&& req) override;

 private:
  using handler_ptr = std::shared_ptr<const std::variant<sync_handler, coro_handler>>;
  void add(std::string type, std::variant<sync_handler, coro_handler> h);
  void drain_runs();

  // A plain-function run waiting for a pool thread.
  struct queued_call {
    handler_ptr fn;
    std::shared_ptr<task_context> ctx;
    run_completion completion;
  };

  clock& clock_;
  std::size_t threads_;
  // Plain-function runs go through one queue that pool threads drain in turn: one post per
  // idle thread, not an allocated operation and a wake-up per run.
  std::mutex calls_mutex_;
  std::deque<queued_call> calls_;  // guarded by calls_mutex_
  std::size_t draining_ = 0;       // pool threads draining calls_; guarded by calls_mutex_
  asio::thread_pool pool_;
  mutable std::shared_mutex handlers_mutex_;
  // Shared, so a run takes a reference count rather than a copy of the handler.
  std::unordered_map<std::string, handler_ptr> handlers_;
  std::atomic<std::uint64_t> next_run_id_{0};
};

}  // namespace taskq
