// taskq — the Queue seam: ordering and leasing of ready work.
//
// Semantics (from Fn's MessageQueue): higher priority first, FIFO within a priority; a task
// is invisible until its available_at; reserve hands out leases; a lease that is neither
// acknowledged nor extended before it expires returns the task to its ORIGINAL position; an
// error never loses a task.
//
// A Queue holds ids plus the few fields it orders and filters by. Task records live in a
// taskq::store; durable backends implement both over the same storage and rebuild the queue
// from the store on open.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/task.hpp>

#include <string>
#include <vector>

namespace taskq {

class store;

/// What the queue needs to know about a task.
struct queue_entry {
  std::string id{};
  std::string queue = "default";
  std::string type{};
  std::string concurrency_key{};
  int priority = 0;
  time_point available_at{};
};

/// The queue entry of a record: its id and the fields the queue orders and filters by.
queue_entry entry_of(const task_record& r);

/// A reservation of one task, valid until `expires_at` unless extended.
struct lease {
  std::string id{};
  std::string queue{};
  std::string type{};
  std::string concurrency_key{};
  int priority = 0;
  time_point expires_at{};
  std::uint64_t token = 0;  ///< identifies this reservation; stale tokens are refused
};

struct push_params {
  std::vector<queue_entry> entries{};
};

struct reserve_params {
  std::vector<std::string> queues{"default"};  ///< serve these queues (in any order)
  std::size_t max = 1;                         ///< hand out at most this many
  duration lease_for = std::chrono::seconds(30);
  /// When true and nothing is ready, wait until something is (a push, a delay elapsing, a
  /// lease expiring, a resume). When false, complete at once, possibly with no leases.
  bool wait = false;
  /// Tasks of these types / concurrency keys are passed over (not blocking what is behind
  /// them): the caller is at its limit for them.
  std::vector<std::string> skip_types{};
  std::vector<std::string> skip_keys{};
};

struct release_params {
  std::string id{};
  std::uint64_t token = 0;
  /// Keep the task's original place (lease given back early, shutdown) or requeue it behind
  /// its priority peers (a retry).
  bool keep_position = true;
  std::optional<time_point> available_at{};  ///< new earliest run time; unchanged when empty
};

struct queue_stats {
  std::size_t ready = 0;    ///< visible now
  std::size_t delayed = 0;  ///< waiting for their available_at
  std::size_t leased = 0;
};

/// The Queue interface. All operations are thread-safe and take any completion token;
/// completion happens on the token's associated executor, never inline.
class queue {
 public:
  virtual ~queue() = default;

  /// Adds entries (all or nothing).
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::duplicate_id if an id is already queued; the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_push(push_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_push(std::move(p), std::move(h)); });
  }

  /// Reserves up to p.max ready tasks.
  ///
  /// - Completion: `void(error_code, std::vector<lease>)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: with p.wait, terminal, partial and total: completes with
  ///   asio::error::operation_aborted and no leases; nothing is reserved.
  /// - Errors: errc::invalid_option (p.max 0, p.lease_for not positive); the backend's
  ///   I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<lease>)> CompletionToken =
                asio::deferred_t>
  auto async_reserve(reserve_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<lease>)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_reserve(std::move(p), std::move(h)); });
  }

  /// Removes leased tasks for good. A lease whose token is stale (expired and handed to
  /// someone else) is not removed.
  ///
  /// - Completion: `void(error_code, std::size_t removed)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, std::size_t)> CompletionToken = asio::deferred_t>
  auto async_ack(std::vector<lease> leases, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::size_t)>(
        std::forward<CompletionToken>(token),
        [this, l = std::move(leases)](auto h) mutable { do_ack(std::move(l), std::move(h)); });
  }

  /// Extends leases to now + lease_for. A lease that ran out is still extended while nobody
  /// has reserved its task since (its token still holds): a holder that was slow to renew
  /// takes the task back from its original position.
  ///
  /// - Completion: `void(error_code, std::vector<bool> kept)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: none per lease (kept[i] is false if leases[i] was no longer held); the
  ///   backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<bool>)> CompletionToken =
                asio::deferred_t>
  auto async_extend(std::vector<lease> leases, duration lease_for, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<bool>)>(
        std::forward<CompletionToken>(token),
        [this, l = std::move(leases), lease_for](auto h) mutable {
          do_extend(std::move(l), lease_for, std::move(h));
        });
  }

  /// Gives a leased task back.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_leased if the lease is no longer held; the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_release(release_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_release(std::move(p), std::move(h)); });
  }

  /// Removes a task that is not leased (a cancelled or deleted pending task).
  ///
  /// - Completion: `void(error_code, bool removed)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, bool)> CompletionToken = asio::deferred_t>
  auto async_remove(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, bool)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_remove(std::move(id), std::move(h)); });
  }

  /// Pauses or resumes a named queue: a paused queue hands out nothing, keeps accepting
  /// pushes, and keeps its order.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_set_paused(std::string queue_name, bool paused, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, q = std::move(queue_name), paused](auto h) mutable {
          do_set_paused(std::move(q), paused, std::move(h));
        });
  }

  /// Counts for one named queue (empty name: all queues).
  ///
  /// - Completion: `void(error_code, queue_stats)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the queue must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, queue_stats)> CompletionToken = asio::deferred_t>
  auto async_stats(std::string queue_name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, queue_stats)>(
        std::forward<CompletionToken>(token), [this, q = std::move(queue_name)](auto h) mutable {
          do_stats(std::move(q), std::move(h));
        });
  }

  /// Whether the named queue is paused (synchronous: pause state is small and local).
  virtual bool is_paused(const std::string& queue_name) const = 0;

  /// Whether `s` keeps this queue in step with its records, in the same atomic write as the
  /// record: inserting a pending record adds its queue entry, and a record reaching a final
  /// status (succeeded, failed, cancelled, dropped) loses it. The client then skips its own
  /// push, so a process dying mid-enqueue cannot leave a record that no worker will ever run
  /// (a push of such an id fails with errc::duplicate_id), and workers skip the ack of a
  /// finished task (one round trip less). False by default: records and entries are written
  /// separately.
  virtual bool fed_by(const taskq::store& s) const noexcept {
    (void)s;
    return false;
  }

 protected:
  template <class Sig>
  using handler = asio::any_completion_handler<Sig>;

  virtual void do_push(push_params p, handler<void(error_code)> h) = 0;
  virtual void do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) = 0;
  virtual void do_ack(std::vector<lease> l, handler<void(error_code, std::size_t)> h) = 0;
  virtual void do_extend(std::vector<lease> l, duration lease_for,
                         handler<void(error_code, std::vector<bool>)> h) = 0;
  virtual void do_release(release_params p, handler<void(error_code)> h) = 0;
  virtual void do_remove(std::string id, handler<void(error_code, bool)> h) = 0;
  virtual void do_set_paused(std::string queue_name, bool paused, handler<void(error_code)> h) = 0;
  virtual void do_stats(std::string queue_name, handler<void(error_code, queue_stats)> h) = 0;
};

}  // namespace taskq
