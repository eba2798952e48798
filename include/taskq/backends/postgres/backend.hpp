// taskq — the PostgreSQL backend: many processes (and hosts) share one queue and one store.
//
// Storage: five tables in a schema of the caller's choosing (default "taskq"), created and
// migrated by open() under a transaction-scoped advisory lock, so several processes starting
// at once are safe; applied versions are kept in SCHEMA.migrations (version 2 added
// schedules and leaders, version 3 tuned the queue table's storage for its churn, version 4
// added a claim's attempt and start to the queue row; an older schema is migrated by the next
// open(). Processes of the previous version keep working on a migrated schema: they ignore
// the new columns, and a claim they make is written to the record as before; while both run,
// a task claimed by this version shows to them as pending until its next write.)
//   tasks          one row per task record (filterable columns + the record as json, in the
//                  stable JSON mapping of task.hpp); every change is a compare-and-set on a
//                  row version, so the status rules of detail/record_ops.hpp hold across
//                  processes exactly as in one.
//   queue          one row per queued task (priority, FIFO sequence, available_at, lease;
//                  the attempt and start time of the claim a fetch made, when that attempt is
//                  beyond the record's: the record is then read as running it).
//   paused_queues  the names of paused queues.
//   schedules      one row per schedule (name, the schedule_record as json in the stable JSON
//                  mapping of schedule_store.hpp, updated_at); a save locks the row and applies
//                  detail::merge_on_save in one transaction, so racing schedulers in several
//                  processes keep the later progress.
//   leaders        leader leases (name, holder, expires_at): one
//                  `INSERT ... ON CONFLICT DO UPDATE ... WHERE` grants or renews a lease when
//                  the role is free, already the candidate's, or run out.
//
// Reserve is `SELECT ... ORDER BY priority DESC, seq LIMIT n FOR UPDATE SKIP LOCKED` turned
// into a lease (leased_until, lease token) in one statement: any number of processes reserve
// concurrently without handing a task out twice; an expired lease makes the task reservable
// again by any process, in its original position. Pushes, inserts, updates, acks and lease
// extensions of a batch are one statement each (JSON array or array parameters), never one
// round trip per task.
//
// The store feeds the queue: inserting a pending record writes its queue entry in the same
// statement, and a record reaching a final status loses it in the same statement
// (queue().fed_by(store())), so a client enqueue is atomic (a process dying mid-enqueue
// leaves nothing half-written) and workers need not ack finished tasks. A periodic check
// (`orphan_check_interval`) queues pending records that still lack an entry after `orphan_grace`
// (left by a retry cut short).
//
// Waiting reserves wake on LISTEN/NOTIFY (a push or a release notifies, in the same statement),
// on the injected clock when the next delay or lease runs out, and on a slow real-time fallback
// poll (`poll_interval`) that covers a lost notification.
//
// I/O: libpq in non-blocking mode, driven by the host's io_context (each connection's socket
// is waited on by Asio); no threads are started. A small pool (`pool_size`) serves the
// operations; one more connection listens for notifications. A broken connection is dropped
// and replaced on demand, new connections are tried with exponential backoff
// (`reconnect_min`..`reconnect_max`); an operation whose connection fails completes with
// errc::backend_unavailable (nothing is half-written: each operation is one statement or a
// version-checked write). While open, the backend keeps work outstanding on the io_context
// (the listener); close() (or the destructor) releases it.
//
// Times (available_at, leases, created/finished, leader leases) are the injected clock's, stored as
// microseconds since the Unix epoch, so every process must use the same time source.
//
// Errors that mean the database cannot be used come as errc::backend_unavailable, with a
// detail (open()'s `detail`, last_error(), on_error) that says which: "server unreachable",
// "authentication failed", "database does not exist", "missing privileges", "connection lost".
#pragma once

#include <taskq/backend.hpp>
#include <taskq/clock.hpp>
#include <taskq/leader.hpp>
#include <taskq/queue.hpp>
#include <taskq/schedule_store.hpp>
#include <taskq/store.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

// libpq's connection handle (libpq-fe.h declares the same typedef), so that this header does
// not need libpq's headers.
typedef struct pg_conn PGconn;

namespace taskq::postgres {

struct backend_options {
  /// A libpq connection string ("host=... port=... dbname=... user=...") or URI.
  std::string conninfo{};
  /// The schema holding taskq's tables (created when missing). At most 48 characters.
  std::string schema = "taskq";
  /// Connections serving operations (the listener is one more). At least 1.
  std::size_t pool_size = 4;
  /// Real-time fallback poll of waiting reserves, in case a notification was lost.
  std::chrono::milliseconds poll_interval{2000};
  /// Backoff between attempts to open a connection after a failure (doubling up to max).
  std::chrono::milliseconds reconnect_min{100};
  std::chrono::milliseconds reconnect_max{5000};
  /// Limit on one asynchronous connection attempt (the pool's and the listener's reconnects),
  /// so a server that never answers fails the attempt (errc::backend_unavailable, then the
  /// backoff) instead of holding it forever. open() connects with libpq's blocking call:
  /// there, libpq's own `connect_timeout` conninfo parameter applies.
  std::chrono::milliseconds connect_timeout{10000};
  /// Safety net for tasks a dead process left half-enqueued: every `orphan_check_interval`
  /// (real time; zero turns it off), pending records that have no queue entry and were last
  /// updated more than `orphan_grace` ago (the injected clock's time) get their entry back, at
  /// their priority and available_at. One statement; every open backend may run it. Such
  /// records come from a process that died between a record update and its push (a retry by
  /// request) or from taskq versions whose enqueue was two statements; this version's enqueue
  /// writes both in one (see queue::fed_by).
  std::chrono::milliseconds orphan_check_interval{30000};
  std::chrono::milliseconds orphan_grace{60000};
  /// Time source for leases, delays and record times; must outlive the backend.
  clock* time = nullptr;
  /// Told every backend error detail (connection failures, failed statements).
  std::function<void(const std::string&)> on_error{};
};

/// What backend::stats() reports. Counters are monotonic since open.
struct backend_stats {
  std::size_t pool_size = 0;         ///< options.pool_size
  std::size_t open_connections = 0;  ///< pooled connections open or being opened (not the listener)
  std::size_t idle_connections = 0;
  std::uint64_t connects = 0;          ///< pool connections established (the first ones included)
  std::uint64_t connect_failures = 0;  ///< pool connection attempts that failed
  std::uint64_t errors = 0;            ///< errors noted (failed statements, lost connections)
};

/// A Queue and a Store over one PostgreSQL database, and the engine's fused operations over
/// both (taskq::backend: `client c(ex, *pg)`). Thread-safe.
///
/// Its fetch leases and claims a batch in one statement: the claim of a pending task is
/// recorded in its queue row (the attempt and its start), not by rewriting the task's record,
/// so a task costs the server one write fewer. Reads (get, list, counts, and the writes that
/// load a record first) show such a task as the claim left it: running that attempt. The record
/// itself catches up at the task's next write (its outcome, a heartbeat, a cancel request).
/// A fetch with `admit` (the caller's concurrency limits) goes through the Queue and Store
/// operations, and a waiting fetch that finds nothing ready waits through them (notifications,
/// the clock, the poll), as clients built from queue() and store() do; both ways work side by
/// side, in one process or across processes. Enqueue and complete are the composition's (one
/// statement each per batch already: the store feeds the queue).
class backend final : public taskq::backend {
 public:
  /// Connects (blocking, on the calling thread), creates or migrates the schema, and starts
  /// listening for notifications on `ex`. On failure returns null and sets `ec`
  /// (errc::backend_unavailable, errc::invalid_option, errc::unsupported_format_version when
  /// the schema was migrated by a newer taskq) and `detail`.
  static std::unique_ptr<backend> open(asio::any_io_executor ex, backend_options opts,
                                       error_code& ec, std::string* detail = nullptr);
  /// Throwing form: throws taskq::error with the detail.
  static std::unique_ptr<backend> open(asio::any_io_executor ex, backend_options opts);

  ~backend() override;
  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;

  /// The queue, fed by store() (queue().fed_by(store()) is true): inserting a pending record
  /// also queues it and finishing a record removes its entry, each in one statement.
  taskq::queue& queue() noexcept;
  taskq::store& store() noexcept;
  taskq::queue& get_queue() noexcept override { return queue(); }
  taskq::store& get_store() noexcept override { return store(); }

  /// Schedule storage for scheduler_options::store: definitions and progress survive restarts
  /// and are shared by every process on this schema. A stored row that cannot be decoded
  /// fails load/load_all with errc::invalid_record; last_error() (and on_error) then name the
  /// schedule and the field. A save replaces such a row.
  taskq::schedule_store& schedules() noexcept;

  /// Leader leases for scheduler_options::leader, shared by every process on this schema;
  /// lease times are the injected clock's (`time`), so all processes need one time source.
  ///
  /// @code
  /// taskq::scheduler sched(client, {.store = &pg->schedules(), .leader = &pg->leaders()});
  /// @endcode
  taskq::leader_election& leaders() noexcept;

  /// The detail of the most recent error (empty if none).
  std::string last_error() const;

  /// The pool's size and counters (for metrics).
  backend_stats stats() const;

  /// The schema name in use.
  const std::string& schema() const noexcept;

  /// Stops listening and closes idle connections; operations in flight finish (or fail with
  /// errc::store_closed), new ones fail with errc::store_closed. Idempotent.
  void close() noexcept;

  struct state;

 protected:
  void do_enqueue(enqueue_params p, handler<void(error_code)> h) override;
  void do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) override;
  void do_complete(complete_params p,
                   handler<void(error_code, std::vector<update_result>)> h) override;

 private:
  explicit backend(std::shared_ptr<state> s) noexcept;
  std::shared_ptr<state> state_;
};

/// The schema version this library creates (the highest migration it knows).
int schema_version() noexcept;

/// Transactional enqueue: inserts the tasks (record and queue entry) on the host's own
/// connection `conn`, so that they exist if and only if the host's transaction commits
/// (workers are notified at commit). Blocking; `conn` must not have a query in progress. When
/// `conn` is inside a transaction block the statement runs under a savepoint, so a failure
/// (errc::duplicate_id, errc::duplicate_unique_key) leaves the host's transaction usable;
/// outside a transaction block the statement commits on its own. The schema must exist
/// (opened once by backend::open). Returns the task ids in order; on failure returns none
/// and sets `ec` (validation errors as taskq::validate reports them) and `detail`.
std::vector<std::string> enqueue(PGconn* conn, const std::string& schema,
                                 std::vector<task_spec> specs, time_point now, error_code& ec,
                                 std::string* detail = nullptr);

/// Throwing form of enqueue().
std::vector<std::string> enqueue(PGconn* conn, const std::string& schema,
                                 std::vector<task_spec> specs, time_point now);

}  // namespace taskq::postgres
