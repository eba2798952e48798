// taskq — the schedule store seam: where schedule definitions and their progress persist.
//
// What persists: each schedule's definition (all fields of taskq::schedule) and its
// schedule_state (how far its occurrences were handled, the latest fired occurrence and run
// id). What does not: the set of a schedule's active runs (rebuilt from the task store by
// the "taskq.schedule" label when a scheduler adopts the schedule) and the counters and
// lateness histogram (per scheduler instance).
//
// Durable backends (file, PostgreSQL) implement the four operations below; the in-memory one
// is taskq::memory::schedule_store. Several schedulers may share one store: the occurrence
// dedupe key keeps them from enqueueing an occurrence twice, and save() keeps the later
// cursor when two of them race.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/schedule.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <optional>
#include <vector>

namespace taskq {

/// A schedule's persisted progress.
struct schedule_state {
  /// Every occurrence at or before this time was handled (enqueued or skipped). Empty for a
  /// one-shot that has not fired yet.
  std::optional<time_point> cursor{};
  std::optional<time_point> last_fired{};  ///< scheduled_for of the latest enqueued run
  std::string last_run_id{};               ///< its task id

  friend bool operator==(const schedule_state&, const schedule_state&) = default;
};

/// What a schedule store keeps per schedule.
struct schedule_record {
  schedule definition{};
  schedule_state state{};
};

/// Encodes a schedule record as JSON with stable field names (`"v": 1`; times are microseconds
/// since the Unix epoch, durations microseconds), as durable schedule stores keep it.
json to_json(const schedule_record& r);

/// Decodes a schedule record. On failure sets errc::invalid_record (or
/// errc::unsupported_format_version) and `detail` names the field. The definition is not
/// validated (see validate(const schedule&, ...)).
std::optional<schedule_record> schedule_record_from_json(const json& j, error_code& ec,
                                                         std::string& detail);

namespace detail {
/// The rule every schedule store applies on save: `incoming` replaces `stored`, but keeps the
/// stored cursor when it is later and the timing rule is unchanged (a second scheduler got
/// further; a new timing rule restarts its cursor), and keeps the later last_fired/last_run_id.
void merge_on_save(const schedule_record& stored, schedule_record& incoming);
}  // namespace detail

/// The Schedule Store interface. Thread-safe; completions on the token's associated executor,
/// never inline.
class schedule_store {
 public:
  virtual ~schedule_store() = default;

  /// One schedule by name (empty when there is none).
  ///
  /// - Completion: `void(error_code, std::optional<schedule_record>)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::invalid_record (undecodable); the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::optional<schedule_record>)>
                CompletionToken = asio::deferred_t>
  auto async_load(std::string name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::optional<schedule_record>)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name)](auto h) mutable { do_load(std::move(n), std::move(h)); });
  }

  /// Every schedule, ordered by name.
  ///
  /// - Completion: `void(error_code, std::vector<schedule_record>)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: errc::invalid_record (undecodable); the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, std::vector<schedule_record>)>
                CompletionToken = asio::deferred_t>
  auto async_load_all(CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, std::vector<schedule_record>)>(
        std::forward<CompletionToken>(token),
        [this](auto h) mutable { do_load_all(std::move(h)); });
  }

  /// Inserts or replaces a schedule. A stored cursor later than `r.state.cursor` is kept (a
  /// second scheduler got further).
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_save(schedule_record r, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, r = std::move(r)](auto h) mutable { do_save(std::move(r), std::move(h)); });
  }

  /// Deletes a schedule.
  ///
  /// - Completion: `void(error_code, bool removed)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the store must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, bool)> CompletionToken = asio::deferred_t>
  auto async_remove(std::string name, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, bool)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name)](auto h) mutable { do_remove(std::move(n), std::move(h)); });
  }

 protected:
  template <class Sig>
  using handler = asio::any_completion_handler<Sig>;

  virtual void do_load(std::string name,
                       handler<void(error_code, std::optional<schedule_record>)> h) = 0;
  virtual void do_load_all(handler<void(error_code, std::vector<schedule_record>)> h) = 0;
  virtual void do_save(schedule_record r, handler<void(error_code)> h) = 0;
  virtual void do_remove(std::string name, handler<void(error_code, bool)> h) = 0;
};

namespace memory {

/// Schedules in memory (lost with the process). Thread-safe.
class schedule_store final : public taskq::schedule_store {
 public:
  explicit schedule_store(asio::any_io_executor ex);
  ~schedule_store() override;

  /// Number of schedules stored.
  std::size_t size() const;

 protected:
  void do_load(std::string name,
               handler<void(error_code, std::optional<schedule_record>)> h) override;
  void do_load_all(handler<void(error_code, std::vector<schedule_record>)> h) override;
  void do_save(schedule_record r, handler<void(error_code)> h) override;
  void do_remove(std::string name, handler<void(error_code, bool)> h) override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace memory

}  // namespace taskq
