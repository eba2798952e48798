// taskq — the Store seam: task records and queries.
//
// Every status change is a compare-and-set: the caller names the status (and attempt) it
// expects, and the store refuses with errc::status_conflict when the record has moved on,
// or errc::illegal_transition when the change is never allowed. Nothing is half-written:
// an operation that fails changes nothing.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/task.hpp>

#include <array>
#include <map>
#include <string>
#include <vector>

namespace taskq {

/// Which tasks a query or a bulk delete applies to. Empty fields match everything; all set
/// fields must match.
struct task_filter {
  std::vector<std::string> ids{};
  std::vector<task_status> statuses{};
  std::vector<std::string> types{};
  std::vector<std::string> queues{};
  label_map labels{};  ///< every listed label must be present with that value
  std::optional<time_point> created_after{};   ///< inclusive
  std::optional<time_point> created_before{};  ///< exclusive
  std::size_t limit = 100;                     ///< page size (list only)
  std::string after_id{};                      ///< paging cursor: ids greater than this
};

/// One page of a list, in id order (ids are time-ordered, so creation order).
struct task_page {
  std::vector<task_record> records{};
  std::string next_cursor{};  ///< pass as after_id for the next page; empty at the end
};

/// A compare-and-set update of one record.
struct task_update {
  std::string id{};
  task_status expected = task_status::running;  ///< current status must be this
  std::optional<int> expected_attempt{};        ///< and, if set, the attempt must be this
  task_status to = task_status::running;        ///< new status (may equal expected)
  time_point now{};
  std::optional<json> result{};
  std::optional<json> progress{};
  std::optional<std::string> error{};  ///< sets last_error
  std::optional<time_point> available_at{};
  std::optional<int> attempt{};       ///< overrides the attempt counter (retry, give-back)
  std::optional<log_entry> log{};     ///< appended to the run log
  bool clear_cancel_request = false;  ///< drop cancel_requested (on an explicit retry)
  /// Whether the completion carries the record after the update (else an empty record):
  /// saves a copy on hot paths that do not need it.
  bool return_record = true;
};

/// The outcome of one update of a batch.
struct update_result {
  error_code error{};
  /// The record after the update: with return_record (none costs nothing to pass around).
  std::optional<task_record> record{};
};

struct claim_params {
  std::vector<std::string> ids{};  ///< ids the caller holds leases for
  time_point now{};
};

/// What a claim did with each id.
struct claim_result {
  /// Moved to running with attempt + 1 (pending ones, and running ones whose previous
  /// holder lost its lease while attempts remain).
  std::vector<task_record> claimed{};
  /// Running ones whose previous holder lost its lease with no attempts left: now dropped.
  std::vector<task_record> dropped{};
  /// Ids that are not claimable (cancelled or deleted meanwhile): the lease should be acked.
  std::vector<std::string> skipped{};
};

struct heartbeat_params {
  std::string id{};
  int attempt = 0;                 ///< the attempt the caller runs; stale attempts are refused
  std::optional<json> progress{};  ///< replaces the stored progress when set
  time_point now{};
};

/// Counts of tasks by status, overall and per type and queue.
struct task_counts {
  using by_status = std::array<std::size_t, task_status_count>;
  by_status total{};
  std::map<std::string, by_status> by_type{};
  std::map<std::string, by_status> by_queue{};

  /// Adds (delta +1) or removes (-1) a record in its status, type and queue rows. For
  /// backends that keep counts up to date as records change.
  void add(const task_record& r, int delta);
  /// Moves a record that was in status `from` to its current status (one lookup per row).
  void move(const task_record& r, task_status from);
  /// Removes the type and queue rows whose counts are all zero (what callers are shown; a
  /// backend keeps the rows while it counts, so a status change does not re-create them).
  void drop_empty_rows();
};

/// The Store interface. Thread-safe; operations take any completion token and complete on
/// the token's associated executor, never inline.
class store {
 public:
  virtual ~store() = default;

  /// Inserts new records, all or nothing.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::duplicate_id; errc::duplicate_unique_key (another task holds the key;
  ///   see task_spec::unique_for); the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_insert(std::vector<task_record> records, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, r = std::move(records)](auto h) mutable { do_insert(std::move(r), std::move(h)); });
  }

  /// Looks a record up.
  ///
  /// - Completion: `void(error_code, task_record)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_get(std::string id, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id)](auto h) mutable { do_get(std::move(id), std::move(h)); });
  }

  /// Moves leased tasks to running (see claim_result).
  ///
  /// - Completion: `void(error_code, claim_result)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, claim_result)> CompletionToken = asio::deferred_t>
  auto async_claim(claim_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, claim_result)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_claim(std::move(p), std::move(h)); });
  }

  /// Compare-and-set update.
  ///
  /// - Completion: `void(error_code, task_record after)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found, errc::status_conflict, errc::illegal_transition; the backend's I/O
  /// errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_update(task_update u, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token),
        [this, u = std::move(u)](auto h) mutable { do_update(std::move(u), std::move(h)); });
  }

  /// Applies several compare-and-set updates, each on its own (one failing does not stop
  /// the others).
  ///
  /// - Completion: `void(error_code, std::vector<update_result>)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the error_code is for the batch as a whole (an I/O error); per-update
  ///   errors (as async_update) are in the results.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<update_result>)>
                CompletionToken = asio::deferred_t>
  auto async_update_batch(std::vector<task_update> updates, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<update_result>)>(
        std::forward<CompletionToken>(token), [this, u = std::move(updates)](auto h) mutable {
          do_update_batch(std::move(u), std::move(h));
        });
  }

  /// Records a heartbeat of a running attempt.
  ///
  /// - Completion: `void(error_code, bool cancel_requested)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::status_conflict if the task is no longer running that attempt;
  ///   errc::not_found; the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, bool)> CompletionToken = asio::deferred_t>
  auto async_heartbeat(heartbeat_params p, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, bool)>(
        std::forward<CompletionToken>(token),
        [this, p = std::move(p)](auto h) mutable { do_heartbeat(std::move(p), std::move(h)); });
  }

  /// Appends a line to a task's run log.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_append_log(std::string id, log_entry e, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, id = std::move(id), e = std::move(e)](auto h) mutable {
          do_append_log(std::move(id), std::move(e), std::move(h));
        });
  }

  /// Requests cancellation: a pending task becomes cancelled at once; a running one gets
  /// cancel_requested set (its handler is told).
  ///
  /// - Completion: `void(error_code, task_record after)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::not_found; errc::illegal_transition for a task already finished;
  ///   the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, task_record)> CompletionToken = asio::deferred_t>
  auto async_request_cancel(std::string id, time_point now, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_record)>(
        std::forward<CompletionToken>(token), [this, id = std::move(id), now](auto h) mutable {
          do_request_cancel(std::move(id), now, std::move(h));
        });
  }

  /// Lists records matching a filter, one page at a time.
  ///
  /// - Completion: `void(error_code, task_page)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, task_page)> CompletionToken = asio::deferred_t>
  auto async_list(task_filter f, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_page)>(
        std::forward<CompletionToken>(token),
        [this, f = std::move(f)](auto h) mutable { do_list(std::move(f), std::move(h)); });
  }

  /// Deletes matching records that are not running (running ones are left in place).
  ///
  /// - Completion: `void(error_code, std::vector<std::string> deleted_ids)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<std::string>)> CompletionToken =
                asio::deferred_t>
  auto async_remove(task_filter f, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<std::string>)>(
        std::forward<CompletionToken>(token),
        [this, f = std::move(f)](auto h) mutable { do_remove(std::move(f), std::move(h)); });
  }

  /// Deletes finished records (succeeded, failed, cancelled, dropped) whose finished_at is
  /// before `finished_before`.
  ///
  /// - Completion: `void(error_code, std::size_t deleted)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, std::size_t)> CompletionToken = asio::deferred_t>
  auto async_prune(time_point finished_before, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::size_t)>(
        std::forward<CompletionToken>(token),
        [this, finished_before](auto h) mutable { do_prune(finished_before, std::move(h)); });
  }

  /// Counts by status, type and queue.
  ///
  /// - Completion: `void(error_code, task_counts)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <
      asio::completion_token_for<void(error_code, task_counts)> CompletionToken = asio::deferred_t>
  auto async_counts(CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, task_counts)>(
        std::forward<CompletionToken>(token), [this](auto h) mutable { do_counts(std::move(h)); });
  }

  /// Whether records survive a restart of the process.
  virtual bool durable() const noexcept = 0;

 protected:
  template <class Sig>
  using handler = asio::any_completion_handler<Sig>;

  virtual void do_insert(std::vector<task_record> r, handler<void(error_code)> h) = 0;
  virtual void do_get(std::string id, handler<void(error_code, task_record)> h) = 0;
  virtual void do_claim(claim_params p, handler<void(error_code, claim_result)> h) = 0;
  virtual void do_update(task_update u, handler<void(error_code, task_record)> h) = 0;
  /// Backends should override this to apply a batch at once (one lock, one journal write);
  /// the default applies do_update to each in turn.
  virtual void do_update_batch(std::vector<task_update> u,
                               handler<void(error_code, std::vector<update_result>)> h);
  virtual void do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) = 0;
  virtual void do_append_log(std::string id, log_entry e, handler<void(error_code)> h) = 0;
  virtual void do_request_cancel(std::string id, time_point now,
                                 handler<void(error_code, task_record)> h) = 0;
  virtual void do_list(task_filter f, handler<void(error_code, task_page)> h) = 0;
  virtual void do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) = 0;
  virtual void do_prune(time_point finished_before, handler<void(error_code, std::size_t)> h) = 0;
  virtual void do_counts(handler<void(error_code, task_counts)> h) = 0;
};

/// Whether a record matches a filter (ignores limit and after_id). For backends that filter
/// in memory.
bool matches(const task_record& r, const task_filter& f) noexcept;

}  // namespace taskq
