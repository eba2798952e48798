// taskq — the client: what the host application calls to enqueue, inspect, cancel, retry,
// wait for and delete tasks, and to observe what happens to them.
#pragma once

#include <taskq/backend.hpp>
#include <taskq/clock.hpp>
#include <taskq/detail/blocking.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/log.hpp>
#include <taskq/metrics.hpp>
#include <taskq/queue.hpp>
#include <taskq/store.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <functional>
#include <memory>

namespace taskq {

namespace detail {
struct client_core;
}
class metrics_registry;

struct client_options {
  validation_limits limits{};
  /// Time source; must outlive the client. Defaults to the real clock.
  clock* time = nullptr;
  /// When set (it must outlive the client), the client and its workers count events and
  /// record wait and run times there by queue and type (taskq/prometheus.hpp).
  metrics_registry* metrics = nullptr;
  /// The host's log (taskq/log.hpp), for failures of operations no caller waits for (a
  /// worker's acks, releases and lease extensions, a scheduler's write-behind saves). Used by
  /// this client and every worker and scheduler on it. Default: logs nothing.
  logger log{};
};

/// The host's handle on a queue + store pair. All members are thread-safe.
///
/// Every operation comes as `async_x(..., token)` taking any completion token whose
/// signature fits (default `asio::deferred`, so `co_await client.async_x(...)` works in a
/// coroutine), completing on the token's associated executor (else get_executor()), never
/// inline; and as blocking `x(...)` (throws taskq::error) and `x(..., error_code&)` forms. A
/// blocking form needs the io_context to be run by another thread; on a thread running it,
/// it fails with errc::blocking_on_io_thread rather than deadlock.
///
/// @code
/// taskq::memory::queue q(io.get_executor());
/// taskq::memory::store s(io.get_executor());
/// taskq::client client(io.get_executor(), q, s);
/// auto id = co_await client.async_enqueue({.type = "report", .payload = {{"month", 11}}});
/// @endcode
class client {
 public:
  using executor_type = asio::any_io_executor;

  /// `q` and `s` must outlive the client (and every worker using it). The client drives them
  /// through a composed_backend (taskq/backend.hpp).
  client(asio::any_io_executor ex, taskq::queue& q, taskq::store& s, client_options opts = {});
  /// Over a backend that fuses its queue and store (memory::backend, or a custom one); `b`
  /// must outlive the client (and every worker using it).
  client(asio::any_io_executor ex, taskq::backend& b, client_options opts = {});
  ~client();

  client(const client&) = delete;
  client& operator=(const client&) = delete;

  executor_type get_executor() const noexcept;
  clock& time() const noexcept;
  /// The logger from the options (workers and schedulers on this client log through it).
  const logger& log() const noexcept;
  taskq::queue& get_queue() const noexcept;
  taskq::store& get_store() const noexcept;
  /// What the client and its workers enqueue, fetch and complete through.
  taskq::backend& get_backend() const noexcept;

  // --- enqueue --------------------------------------------------------------------------

  /// Validates and enqueues one task. On an error nothing is written.
  ///
  /// - Completion: `void(error_code, std::string id)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: a validation error naming the field; errc::duplicate_id, errc::duplicate_unique_key.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, std::string)> CompletionToken = asio::deferred_t>
  auto async_enqueue(task_spec spec, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::string)>(
        std::forward<CompletionToken>(token),
        [this, s = std::move(spec)](auto h) mutable { do_enqueue(std::move(s), std::move(h)); });
  }
  std::string enqueue(task_spec spec);
  std::string enqueue(task_spec spec, error_code& ec);

  /// Validates and enqueues several tasks, all or nothing. An empty batch succeeds.
  ///
  /// - Completion: `void(error_code, std::vector<std::string> ids)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: as async_enqueue, for the first spec that fails; the thrown form's
  ///   message also names its index ("task_spec at batch index 2: ...").
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <asio::completion_token_for<void(error_code, std::vector<std::string>)> CompletionToken =
                asio::deferred_t>
  auto async_enqueue_batch(std::vector<task_spec> specs, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<std::string>)>(
        std::forward<CompletionToken>(token), [this, s = std::move(specs)](auto h) mutable {
          do_enqueue_batch(std::move(s), std::move(h), nullptr);
        });
  }
  std::vector<std::string> enqueue_batch(std::vector<task_spec> specs);
  std::vector<std::string> enqueue_batch(std::vector<task_spec> specs, error_code& ec);

  // --- queries --------------------------------------------------------------------------

  /// The task's record.
  ///
  /// - Completion: `void(error_code, task_record)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_get(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_get(std::move(id), std::move(h)); });
  }
  task_record get(const std::string& id);
  task_record get(const std::string& id, error_code& ec);

  /// One page of tasks matching a filter (admin views).
  ///
  /// - Completion: `void(error_code, task_page)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, task_page)> CompletionToken = asio::deferred_t>
  auto async_list(task_filter f, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_page)>(
        std::forward<CompletionToken>(token),
        [this, f = std::move(f)](auto h) mutable { do_list(std::move(f), std::move(h)); });
  }
  task_page list(task_filter f);
  task_page list(task_filter f, error_code& ec);

  /// Waits until the task is finished (succeeded, failed, cancelled or dropped) and returns
  /// its final record.
  ///
  /// - Completion: `void(error_code, task_record)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: terminal, partial and total: the wait ends with
  ///   asio::error::operation_aborted; the task is unaffected (async_cancel cancels it).
  /// - Errors: errc::not_found; the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_wait(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_wait(std::move(id), std::move(h)); });
  }
  task_record wait(const std::string& id);
  task_record wait(const std::string& id, error_code& ec);

  // --- control --------------------------------------------------------------------------

  /// Cancels a task: a pending one is cancelled at once; a running one is flagged and its
  /// handler told (co-operative).
  ///
  /// - Completion: `void(error_code, task_record after)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; errc::illegal_transition if it already finished.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_cancel(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_cancel(std::move(id), std::move(h)); });
  }
  task_record cancel(const std::string& id);
  task_record cancel(const std::string& id, error_code& ec);

  /// Runs a failed, cancelled or dropped task again with a fresh set of attempts.
  ///
  /// - Completion: `void(error_code, task_record after)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; errc::illegal_transition for a task in another status.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_retry(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_retry(std::move(id), std::move(h)); });
  }
  task_record retry(const std::string& id);
  task_record retry(const std::string& id, error_code& ec);

  /// Deletes tasks matching a filter that are not running (bulk delete by label, say).
  ///
  /// - Completion: `void(error_code, std::vector<std::string> deleted_ids)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <asio::completion_token_for<void(error_code, std::vector<std::string>)> CompletionToken =
                asio::deferred_t>
  auto async_remove(task_filter f, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<std::string>)>(
        std::forward<CompletionToken>(token),
        [this, f = std::move(f)](auto h) mutable { do_remove(std::move(f), std::move(h)); });
  }
  std::vector<std::string> remove(task_filter f);
  std::vector<std::string> remove(task_filter f, error_code& ec);

  /// Deletes finished tasks that finished more than `older_than` ago. The cut-off saturates at
  /// the start of time: an `older_than` longer than the clock can count back prunes nothing.
  ///
  /// - Completion: `void(error_code, std::size_t deleted)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <
      asio::completion_token_for<void(error_code, std::size_t)> CompletionToken = asio::deferred_t>
  auto async_prune(duration older_than, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::size_t)>(
        std::forward<CompletionToken>(token),
        [this, older_than](auto h) mutable { do_prune(older_than, std::move(h)); });
  }
  std::size_t prune(duration older_than);
  std::size_t prune(duration older_than, error_code& ec);

  /// Pauses or resumes a named queue for every worker (blocking forms: pause_queue and
  /// resume_queue; the thrown error's detail names the queue).
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: the queue's errors (a paused queue keeps accepting pushes).
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_set_paused(std::string queue_name, bool paused, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, q = std::move(queue_name), paused](auto h) mutable {
          do_set_paused(std::move(q), paused, std::move(h));
        });
  }
  void pause_queue(const std::string& queue_name);
  void pause_queue(const std::string& queue_name, error_code& ec);
  void resume_queue(const std::string& queue_name);
  void resume_queue(const std::string& queue_name, error_code& ec);

  // --- observing ------------------------------------------------------------------------

  using subscriber = std::function<void(const event&)>;

  /// Calls `fn` for every event, synchronously on the thread that recorded it (a worker's
  /// executor or the caller of enqueue/cancel). Keep it short and thread-safe. Returns an id
  /// for unsubscribe().
  std::uint64_t subscribe(subscriber fn);
  void unsubscribe(std::uint64_t id);

  /// Counts from the store plus the client's own counters and latency histograms.
  ///
  /// - Completion: `void(error_code, metrics_snapshot)`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: the store's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the client must outlive it.
  /// - Thread safety: any thread, concurrently with other members.
  template <asio::completion_token_for<void(error_code, metrics_snapshot)> CompletionToken =
                asio::deferred_t>
  auto async_metrics(CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, metrics_snapshot)>(
        std::forward<CompletionToken>(token), [this](auto h) mutable { do_metrics(std::move(h)); });
  }
  metrics_snapshot metrics();
  metrics_snapshot metrics(error_code& ec);

  /// For workers and schedulers: the engine state they share with this client.
  const std::shared_ptr<detail::client_core>& core() const noexcept { return core_; }

 private:
  void do_enqueue(task_spec s, asio::any_completion_handler<void(error_code, std::string)> h);
  /// `bad_index`, when set, is told the index of the spec that failed validation (before
  /// this returns: validation runs in the initiating call).
  void do_enqueue_batch(std::vector<task_spec> s,
                        asio::any_completion_handler<void(error_code, std::vector<std::string>)> h,
                        std::size_t* bad_index);
  void do_get(std::string id, asio::any_completion_handler<void(error_code, task_record)> h);
  void do_list(task_filter f, asio::any_completion_handler<void(error_code, task_page)> h);
  void do_prune(duration older_than, asio::any_completion_handler<void(error_code, std::size_t)> h);
  void do_set_paused(std::string queue_name, bool paused,
                     asio::any_completion_handler<void(error_code)> h);
  void do_wait(std::string id, asio::any_completion_handler<void(error_code, task_record)> h);
  void do_cancel(std::string id, asio::any_completion_handler<void(error_code, task_record)> h);
  void do_retry(std::string id, asio::any_completion_handler<void(error_code, task_record)> h);
  void do_remove(task_filter f,
                 asio::any_completion_handler<void(error_code, std::vector<std::string>)> h);
  void do_metrics(asio::any_completion_handler<void(error_code, metrics_snapshot)> h);

  std::shared_ptr<detail::client_core> core_;
};

namespace detail {
/// For the scheduler: like client::subscribe, but told only of events about tasks that carry
/// a scheduled_for, so that tracking its runs costs nothing for other tasks.
std::uint64_t track_scheduled(client& c, client::subscriber fn);
void untrack_scheduled(client& c, std::uint64_t id);
}  // namespace detail

}  // namespace taskq
