// taskq — the worker: reserves tasks as capacity frees, runs them through an executor,
// keeps their leases alive, enforces timeouts and concurrency limits, records outcomes,
// retries with backoff, and drains on shutdown.
#pragma once

#include <taskq/client.hpp>
#include <taskq/executor.hpp>

#include <map>
#include <memory>

namespace taskq {

/// Concurrency limits; 0 means unlimited (within the worker's max_in_flight). A task held
/// back by a limit does not block other work behind it.
struct concurrency_limits {
  std::map<std::string, std::size_t> per_type{};   ///< task type -> max running at once
  std::map<std::string, std::size_t> per_queue{};  ///< queue name -> max running at once
  /// Max running at once per distinct task_spec::concurrency_key (e.g. per customer).
  std::size_t per_key = 0;
};

struct worker_options {
  std::vector<std::string> queues{"default"};  ///< queues served, in any order
  /// Runs at once, across all types; as many more finished runs may be waiting for their
  /// outcomes to be recorded (their leases held until then).
  std::size_t max_in_flight = 64;
  std::size_t reserve_batch = 64;  ///< tasks reserved per queue round trip
  /// Lease length; renewed every lease/3 while a task runs, so a stalled or dead worker's
  /// tasks return to the queue after about this long.
  duration lease = std::chrono::seconds(30);
  concurrency_limits limits{};
  /// How long stop() lets running tasks finish before cancelling them and returning them to
  /// pending (their interrupted attempt is not counted).
  duration drain_timeout = std::chrono::seconds(30);
  /// Seed for the retry jitter (0: random). Tests set it for repeatable delays.
  std::uint64_t jitter_seed = 0;
};

namespace detail {
struct worker_core;
}

/// Runs tasks from a client's queues through an executor.
///
/// @code
/// taskq::worker w(client, executor, {.queues = {"default", "mail"}, .max_in_flight = 32});
/// w.async_run(asio::detached);   // until stop()
/// ...
/// w.stop();                      // drains, then async_run completes
/// @endcode
class worker {
 public:
  using executor_type = asio::any_io_executor;

  /// `c` and `ex` must outlive the worker. Throws taskq::error(errc::invalid_option) naming
  /// the bad field of `opts`.
  worker(client& c, executor& ex, worker_options opts = {});
  /// Stops (without draining) and waits for nothing: destroy only after async_run completed.
  ~worker();

  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  /// The worker's strand (on the client's executor).
  executor_type get_executor() const noexcept;

  /// Runs until stop() and the drain that follows.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: terminal (same as stop()).
  /// - Errors: none after a stop; errc::shutting_down if started twice.
  /// - Lifetimes: the worker, its client and executor must outlive the operation.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_run(CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token), [this](auto h) mutable { do_run(std::move(h)); });
  }

  /// Stops reserving and drains: running tasks get `drain_timeout` (default: the option) to
  /// finish, then are cancelled and returned to pending. Safe before start and twice; a later
  /// call with a shorter drain brings the deadline forward (stop(0s) after stop(): at once).
  void stop();
  void stop(duration drain_timeout);

  /// Tasks running now.
  std::size_t running() const;

 private:
  void do_run(asio::any_completion_handler<void(error_code)> h);
  std::shared_ptr<detail::worker_core> core_;
};

}  // namespace taskq
