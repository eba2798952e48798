// taskq — the Backend seam: the engine's hot path as three fused, batch-first operations.
//
// A task's life in the engine is enqueue -> fetch (reserve + claim) -> complete (record the
// outcome + ack or requeue). Over a separate Queue and Store each step is two or three
// operations; a backend that keeps both over one state does each in one lock, one journal
// append or one statement per batch. Queue and Store stay the pluggable interfaces (admin
// queries, pause, stats and custom backends use them); composed_backend does the three fused
// operations over any Queue + Store pair, so a custom Queue with the memory Store keeps
// working, and it is what a client built from a queue and a store uses.
#pragma once

#include <taskq/clock.hpp>
#include <taskq/log.hpp>
#include <taskq/queue.hpp>
#include <taskq/store.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <functional>

namespace taskq {

struct enqueue_params {
  /// New pending records (task_record::status pending); each one's queue entry follows from
  /// its fields. All or nothing.
  std::vector<task_record> records{};
};

struct fetch_params {
  std::vector<std::string> queues{"default"};  ///< serve these queues (in any order)
  std::size_t max = 1;                         ///< claim at most this many
  duration lease_for = std::chrono::seconds(30);
  /// When true and nothing is ready, wait until something is (see queue::async_reserve).
  bool wait = false;
  /// Types and concurrency keys passed over (the caller is at its limit for them).
  std::vector<std::string> skip_types{};
  std::vector<std::string> skip_keys{};
  /// Asked once per reserved task, in queue order, before it is claimed: false leaves it
  /// queued in its place (the caller's concurrency limits fill up within one batch). Called
  /// on any thread, possibly under the backend's lock: it must be cheap, own its state and
  /// not call into the backend. Empty: every reserved task is claimed.
  std::function<bool(const lease&)> admit{};
};

/// A task handed out by a fetch: its lease and its record after the claim (running, with the
/// attempt counted).
struct fetched_task {
  lease held{};
  task_record record{};
};

/// What a fetch did. Everything in `dropped` and `skipped` is out of the queue already.
struct fetch_result {
  std::vector<fetched_task> claimed{};
  /// Running tasks whose previous holder lost its lease with no attempts left: now dropped.
  std::vector<task_record> dropped{};
  /// Reserved tasks that were not claimable (cancelled or deleted meanwhile).
  std::vector<std::string> skipped{};
};

/// The outcome of one run to record, with the lease it ran under.
struct completion {
  lease held{};
  /// A compare-and-set from running at the run's attempt. Its `to` decides what happens to
  /// the queue entry: a final status removes it, pending requeues it (at available_at).
  task_update update{};
  /// For a requeue: keep the task's original place (a give-back) or go behind its priority
  /// peers (a retry).
  bool keep_position = false;
};

struct complete_params {
  std::vector<completion> completions{};
};

/// The Backend interface: what the engine's client and workers call on the hot path.
/// Thread-safe; operations take any completion token and complete on the token's associated
/// executor (else the backend's), never inline.
class backend {
 public:
  virtual ~backend() = default;

  /// The Queue and Store this backend keeps (admin queries, pause, stats, cancel, retry).
  virtual taskq::queue& get_queue() noexcept = 0;
  virtual taskq::store& get_store() noexcept = 0;

  /// Stores new pending records and queues them, all or nothing.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::duplicate_id, errc::duplicate_unique_key; the backend's I/O errors. On
  ///   an error nothing is written.
  /// - Lifetimes: arguments are moved into the operation; the backend must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_enqueue(enqueue_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_enqueue(std::move(p), std::move(h)); });
  }

  /// Reserves up to p.max ready tasks and claims them (moves them to running, attempt + 1).
  ///
  /// - Completion: `void(error_code, fetch_result)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: with p.wait, terminal, partial and total while waiting: completes with
  ///   asio::error::operation_aborted and nothing claimed.
  /// - Errors: errc::invalid_option (p.max 0, p.lease_for not positive); the backend's I/O
  ///   errors (then nothing is claimed and every reservation is given back).
  /// - Lifetimes: arguments are moved into the operation; the backend must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, fetch_result)> CompletionToken = asio::deferred_t>
  auto async_fetch(fetch_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, fetch_result)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_fetch(std::move(p), std::move(h)); });
  }

  /// Records the outcomes of runs and acks (final status) or requeues (pending) their
  /// leases. Each completion stands on its own: one failing does not stop the others.
  ///
  /// - Completion: `void(error_code, std::vector<update_result>)`, one result per completion,
  ///   in order; the record after the update when its task_update asked for it.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the error_code is for the batch (an I/O error: nothing recorded); per
  ///   completion errc::status_conflict (the task moved on: another holder re-claimed it, or
  ///   it was deleted; its queue entry is left to its holder), errc::not_found.
  /// - Lifetimes: arguments are moved into the operation; the backend must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<update_result>)>
                CompletionToken = asio::deferred_t>
  auto async_complete(complete_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<update_result>)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_complete(std::move(p), std::move(h)); });
  }

 protected:
  template <class Sig>
  using handler = asio::any_completion_handler<Sig>;

  virtual void do_enqueue(enqueue_params p, handler<void(error_code)> h) = 0;
  virtual void do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) = 0;
  virtual void do_complete(complete_params p,
                           handler<void(error_code, std::vector<update_result>)> h) = 0;
};

struct composed_backend_options {
  /// Time source of the claims (started_at); must outlive the backend. Default: the real clock.
  clock* time = nullptr;
  /// Where failures of follow-ups nobody waits for go (acks, give-backs, requeues).
  logger log{};
};

/// The three fused operations over a separate Queue and Store, each as the sequence of their
/// own operations: enqueue inserts then pushes (and removes the records again if the push
/// fails), unless the queue is fed by the store (queue::fed_by); fetch reserves, gives back
/// what `admit` refuses, claims the rest, acks what was dropped or skipped, and renews the
/// leases when the claim's write took a third of the lease or more; complete
/// updates the records, then acks or requeues the leases. Follow-up acks and give-backs
/// nobody waits for log their failures through the options' logger.
class composed_backend final : public backend {
 public:
  /// `q` and `s` must outlive the backend; `ex` is the fallback completion executor.
  composed_backend(asio::any_io_executor ex, taskq::queue& q, taskq::store& s,
                   composed_backend_options opts = {});
  ~composed_backend() override;

  composed_backend(const composed_backend&) = delete;
  composed_backend& operator=(const composed_backend&) = delete;

  taskq::queue& get_queue() noexcept override;
  taskq::store& get_store() noexcept override;

 protected:
  void do_enqueue(enqueue_params p, handler<void(error_code)> h) override;
  void do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) override;
  void do_complete(complete_params p,
                   handler<void(error_code, std::vector<update_result>)> h) override;

 private:
  struct state;
  std::shared_ptr<state> state_;  // shared with operations in flight
};

namespace detail {
/// A fetch's result from the leases it claimed for (`kept`, moved from) and the store's answer
/// (moved from): each claimed record with its lease. The leases of dropped and skipped tasks go
/// to `finished` (their queue entries are to be acked).
fetch_result pair_claimed(std::vector<lease>& kept, claim_result&& r, std::vector<lease>& finished);
}  // namespace detail

}  // namespace taskq
