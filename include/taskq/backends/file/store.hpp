// taskq — the durable file backend: one directory, one journal, a Queue and a Store.
//
// Every state change of a task record (insert, claim, update, heartbeat, log line, cancel
// request, delete, queue pause, schedule save or removal) is one journal record (a compact binary
// delta, see docs/file-format.md). An operation completes only after its record is durable as the
// durability mode promises, and the in-memory state changes only after the append
// succeeded: a failed append (disk full, I/O error) leaves the state as it was and the
// caller gets the error.
//
// Operations on one task are applied in order (a write waits while another write of the
// same task is in flight); writes of different tasks share fsyncs (group commit).
//
// The Queue is an in-memory index rebuilt from the records on open: pending tasks go back to
// their place (priority, then enqueue order: a sequence number is persisted per task), and
// tasks found `running` — their process died — are ready at once, as if their lease had
// expired, so the next claim retries them with the attempt counted or drops them when no
// attempts remain (detail::apply_claim). Leases themselves are not persisted. Paused queues
// stay paused across restarts.
//
// Compaction runs on a background thread when the journal outgrows the live data: it
// rotates the journal, writes a snapshot of the live records and removes the old segments,
// so disk use stays within about twice the live data, with a brief peak near three times
// while a compaction writes its snapshot (docs/file-format.md). Finished tasks older than the
// retention are pruned by the same thread.
//
// One process at a time: open() takes DIR/LOCK (errc::store_locked names the holder).
// open_read_only() takes no lock and writes nothing: for inspecting a store an application
// holds open (a record being written at that moment is seen as a torn tail and ignored).
#pragma once

#include <taskq/backends/file/control.hpp>
#include <taskq/backends/file/journal.hpp>
#include <taskq/clock.hpp>
#include <taskq/queue.hpp>
#include <taskq/schedule_store.hpp>
#include <taskq/store.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace taskq::file {

/// Options fixed when a backend is opened. Aggregate; designated initializers welcome.
struct backend_options {
  /// When an operation is durable (see file::durability). Default: after fdatasync.
  durability mode = durability::sync;
  /// For durability::batch: the longest time written data stays unsynced.
  std::chrono::milliseconds batch_interval{50};
  /// Finished tasks (succeeded, failed, cancelled, dropped) are deleted this long after they
  /// finished. Zero keeps them until deleted explicitly.
  duration retention = std::chrono::hours(24 * 7);
  /// How often the background thread checks retention and compaction (real time).
  std::chrono::milliseconds maintenance_interval{1000};
  /// Compact when the journal since the last snapshot exceeds both this many bytes and
  /// `compact_ratio` times the size of the live data. Zero disables automatic compaction.
  std::uint64_t compact_min_bytes = 16u * 1024 * 1024;
  double compact_ratio = 1.0;
  /// Time source for retention; must outlive the backend. Defaults to the real clock.
  clock* time = nullptr;
  /// Called with recovery warnings (a torn tail that was cut off). Optional.
  std::function<void(const std::string&)> on_warning{};
  /// The control channel through which other processes (the taskq CLI) write to the store
  /// while this backend holds it (backends/file/control.hpp). Not served when read-only.
  control_options control{};
  /// Tests only: passed to the journal writer (see journal_fault_injector).
  journal_fault_injector fault_injector{};
};

/// What open() found.
struct backend_recovery {
  std::uint64_t snapshot_records = 0;  ///< records loaded from the snapshot
  std::uint64_t journal_records = 0;   ///< journal records replayed after it
  std::size_t tasks = 0;               ///< task records live after recovery
  std::size_t requeued_running = 0;    ///< running tasks put back in the queue
  std::string warning{};               ///< a torn tail that was cut off (file, offset), or empty
};

/// Sizes and counters, for tests, benchmarks and the CLI.
struct backend_info {
  std::uint64_t journal_bytes = 0;   ///< bytes of the journal segments on disk
  std::uint64_t snapshot_bytes = 0;  ///< bytes of the snapshot on disk
  std::uint64_t live_bytes = 0;      ///< encoded size of the live records
  std::uint64_t compactions = 0;     ///< compactions since open
  journal_stats journal{};           ///< the writer's counters (zero when read-only)
};

/// A Queue and a Store over one directory. Thread-safe. Not movable: the queue() and store()
/// references stay valid until the backend is destroyed.
///
/// @code
/// asio::io_context io;
/// auto b = taskq::file::backend::open(io.get_executor(), "/var/lib/app/tasks");
/// taskq::client client(io.get_executor(), b->queue(), b->store());
/// @endcode
class backend {
 public:
  /// Opens (creating if missing, mode 0700) and locks `dir`, removes a snapshot.bin.tmp left
  /// by a crash, loads the snapshot and replays the journal (cutting off a torn tail,
  /// reported in recovery().warning; a missing segment is corrupt_journal), then starts the
  /// journal's committer thread and the maintenance thread. `ex` completes operations whose
  /// token has no executor. Errors: store_locked, corrupt_journal /
  /// unsupported_format_version / invalid_record (detail names file and offset), io_error,
  /// invalid_option. Returns null on error.
  static std::unique_ptr<backend> open(asio::any_io_executor ex, const std::filesystem::path& dir,
                                       backend_options opts, error_code& ec,
                                       std::string* detail = nullptr);
  /// Throwing form (taskq::error with the detail).
  static std::unique_ptr<backend> open(asio::any_io_executor ex, const std::filesystem::path& dir,
                                       backend_options opts = {});

  /// Opens `dir` without the lock and without writing anything: reads see the state as of
  /// the open; every write fails with errc::store_closed. A torn tail is tolerated (the
  /// writer may be in the middle of an append). The view is one consistent cut of the store:
  /// everything acknowledged before the call began, never a subset, even while the owner
  /// compacts (a load that a concurrent compaction spoiled is retried; see
  /// docs/file-format.md, "Readers"). Errors: io_error when `dir` is missing or is not a
  /// store (no snapshot and no journal segment; detail says so), backend_unavailable when
  /// the owner compacted the store during each of 100 attempts, corrupt_journal and the
  /// others as open().
  static std::unique_ptr<backend> open_read_only(asio::any_io_executor ex,
                                                 const std::filesystem::path& dir, error_code& ec,
                                                 std::string* detail = nullptr);

  ~backend();
  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;

  taskq::queue& queue() noexcept;
  taskq::store& store() noexcept;
  /// Schedule definitions and progress, journaled with the tasks (give it to
  /// scheduler_options::store): after a restart or a crash a scheduler adopts them and
  /// resumes each schedule from its last durable cursor under its catch-up policy.
  taskq::schedule_store& schedules() noexcept;

  const backend_recovery& recovery() const noexcept;
  backend_info info() const;
  bool read_only() const noexcept;

  /// Compacts now (blocking; not on a thread that must run the io_context for in-flight
  /// operations to complete — it waits for them; from within the io_context it fails with
  /// errc::blocking_on_io_thread). Errors as the journal's.
  void compact(error_code& ec, std::string* detail = nullptr);
  /// Starts pruning finished tasks older than the retention, now (asynchronous; the
  /// maintenance thread also does it on its own).
  void prune_expired();

  /// Stops the maintenance thread, completes queued writes, closes the journal and releases
  /// the lock. Later writes fail with errc::store_closed. Idempotent; called by the destructor.
  void close() noexcept;

  /// Requests arriving through the control channel go through `c`, the application's client
  /// over queue() and store() (so its waiters, events and metrics see a task cancelled by
  /// `taskq cancel`), and schedule operations (pause, resume, remove, run now) through `s`, the
  /// scheduler it runs over schedules(), so that it sees them at once. Null (the default):
  /// a short-lived client, and a short-lived scheduler that changes the stored schedule only
  /// (which a running scheduler would not notice, and could overwrite). Detach
  /// (attach(nullptr, nullptr)) before destroying them; a request already being executed
  /// keeps using them until it completes (one store round trip), so let the io_context run
  /// after detaching, or destroy them after the backend is closed and its io_context drained.
  void attach(taskq::client* c, taskq::scheduler* s = nullptr) noexcept;

  struct state;

 private:
  explicit backend(std::shared_ptr<state> s) noexcept;
  std::shared_ptr<state> state_;
  std::shared_ptr<detail::control_server> control_;  // null: no control channel
};

/// Checks every record of the store in `dir` (snapshot and journal segments) without the
/// lock: framing, CRCs, the segment numbering (a missing segment is corrupt_journal) and the
/// decoding of every body, loading as open_read_only does (a directory that is not a store
/// is io_error; a compaction meanwhile is retried). Returns the number of records checked;
/// on failure sets `ec` (corrupt_journal, invalid_record, io_error, ...) and `detail` names the
/// file and byte offset. A torn tail in the last segment is not an error; `warning` reports it.
std::uint64_t verify_store(const std::filesystem::path& dir, error_code& ec, std::string& detail,
                           std::string& warning);

namespace detail {
/// Tests and fuzzing only: applies record bodies to an empty store state exactly as recovery
/// does, then rebuilds the queue index. Returns invalid_record (detail names the body index
/// and the reason) for a body that does not decode or apply. `consistent` is false when the
/// bookkeeping kept during replay (counts, unique-key holders) disagrees with a recount.
/// Replay also builds every record it kept in its stored form at the end, and `consistent` is
/// false as well when one does not build or differs from what its stored form said.
error_code replay_bodies(const std::vector<std::string_view>& bodies, std::string& detail,
                         bool& consistent);

/// What check_json_text found.
enum class json_text_check { ok, malformed, too_deep };
/// Tests only: the check recovery applies to a stored JSON text it keeps unparsed. Accepts no
/// more than nlohmann::json::parse does (RFC 8259, UTF-8 as its lexer checks it, finite
/// numbers, no byte order mark), nested at most min(max_depth, json_depth_ceiling) levels.
/// Never allocates or recurses.
json_text_check check_json_text(std::string_view text, std::size_t max_depth) noexcept;
}  // namespace detail

/// The snapshot's file name inside a store directory.
inline constexpr const char* snapshot_file_name = "snapshot.bin";

}  // namespace taskq::file
