// taskq — the durable, append-only journal under the file backend.
//
// The journal stores opaque byte strings ("records"); it knows nothing about tasks. The file
// Queue/Store builds on it: it appends encoded changes, replays them on open, and compacts
// by rotating to a new segment, writing a snapshot and removing the old segments.
//
// ON-DISK FORMAT (version 1; also described in docs/file-format.md)
// ------------------------------------------------------------------
// All integers are little-endian. CRC32C is the Castagnoli CRC (poly 0x1EDC6F41, reflected,
// init and final xor 0xFFFFFFFF), i.e. boost::crc_optimal<32, 0x1EDC6F41, ~0, ~0, true, true>.
//
// A file (journal segment or snapshot) starts with a 32-byte header:
//
//   offset  size  field
//        0     8  magic    "TASKQJNL"
//        8     4  version  format version, 1
//       12     4  kind     1 = journal segment, 2 = snapshot
//       16     8  id       segment number (journal-<id>.log), or the snapshot's id
//       24     4  flags    0 (readers of version 1 reject anything else)
//       28     4  crc      CRC32C of bytes 0..27
//
// followed by zero or more records, each framed as:
//
//        0     4  length   body length in bytes, at most max_record_size (64 MiB)
//        4     4  crc      CRC32C of (id as u64, record offset as u64, length as u32, body)
//        8  length body    the opaque record bytes
//
// The record CRC covers the body and the framing, and is bound to the file id and to the
// byte offset at which the record starts. That way a zero-filled region never validates,
// and neither do stale bytes from an older file nor a journal frame that happens to be
// embedded in another record's body: a valid frame exists only where the writer put it.
//
// Reading a file: records are validated in order. The first record that fails its checks
// (truncated frame, length above the limit, body past the end of file, CRC mismatch) ends
// the valid prefix. If no valid record can be found anywhere after it, the remainder is a
// torn tail — what a crash in the middle of a write leaves — and it is reported (and, by
// the writer's recovery, truncated). If a valid record does exist after it, the file is
// corrupt in the middle: errc::corrupt_journal, whose detail names the file and the byte
// offset of the bad record. Nothing is ever skipped silently.
//
// What a crash can leave: every record is checksummed on its own, so a crash in the middle
// of an append of several records keeps a prefix of them (those whose bytes reached the
// disk) and drops the rest; a record is never half-applied. An append whose completion
// reported success in `sync` mode is on stable storage. Records whose completion reported an
// error are not in the journal (the writer truncates them away) unless truncation itself
// failed, in which case the writer refuses all further appends.
#pragma once

#include <taskq/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace taskq::file {

// --- format --------------------------------------------------------------------------------

/// The format version this build writes and the only one it reads.
inline constexpr std::uint32_t journal_format_version = 1;
/// Size of the file header in bytes.
inline constexpr std::size_t journal_header_size = 32;
/// Size of a record's framing (length + crc) in bytes.
inline constexpr std::size_t record_frame_size = 8;
/// The largest record body accepted. A garbage length above it is treated as corruption, so
/// a damaged file can never make a reader allocate or hash gigabytes.
inline constexpr std::uint32_t max_record_size = 64u * 1024 * 1024;

/// What a file holds; stored in its header so a snapshot is never replayed as a segment.
enum class file_kind : std::uint32_t { journal_segment = 1, snapshot = 2 };

/// CRC32C (Castagnoli) of `data`. Uses the SSE4.2 crc32 instruction when the CPU has it
/// (checked at run time), table-driven slicing-by-8 otherwise; both give the same value.
std::uint32_t crc32c(std::string_view data) noexcept;

namespace detail {
/// Tests only: crc32c() forced onto the portable (table) path.
std::uint32_t crc32c_portable(std::string_view data) noexcept;
}  // namespace detail

/// Returns the 32-byte header of a file of `kind` with `id`. Building block for tests, tools
/// and the fuzzer's seed corpus; the writer uses the same function.
std::string encode_file_header(file_kind kind, std::uint64_t id);

/// Appends the framed record `body` to `out`, for a file whose header id is `id`, where the
/// record starts at byte `offset` of the file. Requires body.size() <= max_record_size.
void encode_record(std::string& out, std::uint64_t id, std::uint64_t offset, std::string_view body);

// --- reading -------------------------------------------------------------------------------

/// One record as seen by a reader. `body` is valid only during the visitor call.
struct journal_record {
  std::uint64_t segment = 0;  ///< the id in the file header (segment number or snapshot id)
  std::uint64_t offset = 0;   ///< byte offset of the record's frame in its file
  std::string_view body;      ///< the record bytes
};

/// Called once per valid record, in file order. If it throws, the scan stops and the
/// exception propagates. If the scan then reports an error, the caller must discard what it
/// built from the records it was shown: the records before corruption are visited before
/// the corruption is found (the reader streams; it does not read a file twice).
using record_visitor = std::function<void(const journal_record&)>;

/// The outcome of scanning one file.
struct scan_result {
  /// Set if the file cannot be used: errc::corrupt_journal, errc::unsupported_format_version
  /// or errc::io_error. `detail` then names the file and, for corruption, the byte offset.
  error_code error;
  std::string detail;
  /// True once the 32-byte header was read and verified. False for an empty file or one cut
  /// short inside its header (a torn tail at offset 0).
  bool header_valid = false;
  std::uint64_t id = 0;         ///< the header's id, if header_valid
  std::uint64_t records = 0;    ///< valid records read (and visited)
  std::uint64_t valid_end = 0;  ///< end offset of the valid prefix (header + records)
  std::uint64_t file_size = 0;  ///< bytes in the file
  bool torn_tail = false;       ///< bytes after valid_end form a torn tail (not an error)
  std::string warning;          ///< describes the torn tail (file, offset, bytes); or empty
};

/// Scans an in-memory image of a file (sans-io: no system calls). `name` is used only in
/// error details and warnings. Never throws except from `visit`; any input, however damaged,
/// yields either records or a clear error, in time linear in the input for files written
/// by the writer (damaged tails are searched for later valid records; adversarial input can
/// make that search quadratic in the size of the damaged region).
scan_result scan_journal(std::string_view bytes, file_kind expected, std::string_view name,
                         const record_visitor& visit);

/// Reads the file at `path` into memory and scans it. Open/read failures yield io_error.
scan_result scan_journal_file(const std::filesystem::path& path, file_kind expected,
                              const record_visitor& visit);

/// The name of segment `n` in a journal directory: "journal-<n>.log" (decimal, no padding).
std::string segment_file_name(std::uint64_t n);

/// Lists the segment numbers present in `dir`, ascending. Other files are ignored.
std::vector<std::uint64_t> list_segments(const std::filesystem::path& dir, error_code& ec,
                                         std::string* detail = nullptr);

/// The outcome of reading every segment of a journal directory.
struct journal_read_result {
  error_code error;                ///< as scan_result::error, for the first failing segment
  std::string detail;              ///< names the file and offset
  std::uint64_t records = 0;       ///< records visited across all segments
  std::uint32_t segments = 0;      ///< segments read
  std::uint64_t last_segment = 0;  ///< number of the last segment read, or 0 if none
  std::uint64_t valid_end = 0;     ///< end of the valid prefix of the last segment
  bool torn_tail = false;          ///< the last segment has a torn tail (not repaired here)
  std::string warning;             ///< describes the torn tail, or empty
};

/// Reads the segments of `dir` numbered `first_segment` or above, in order, without
/// modifying anything (the writer's open() is what repairs a torn tail). Segments below
/// `first_segment` are ignored: they are leftovers of a compaction whose snapshot covers
/// them. A torn tail is accepted only in the last segment (earlier segments were synced
/// before the writer rotated away from them); a gap in the numbering is corruption, and so
/// is a first segment other than `first_segment` (the one a snapshot's id names, or 1 without
/// a snapshot): its records would be lost. No segment at all is a new journal only when
/// `first_segment` is 1 (no snapshot). A `first_segment` of 0 expects nothing of the first
/// segment (tools reading whatever is there).
journal_read_result read_journal(const std::filesystem::path& dir, std::uint64_t first_segment,
                                 const record_visitor& visit);

// --- writing -------------------------------------------------------------------------------

/// When an append is considered done.
enum class durability {
  /// An append completes only after its bytes were written and fdatasync()ed. Concurrent
  /// appends share one fdatasync (group commit): while a write+sync is in flight, new
  /// appends accumulate and the next write+sync covers all of them. Nothing acknowledged is
  /// lost by a crash or power failure.
  sync,
  /// An append completes once written to the OS; fdatasync runs at most every
  /// `batch_interval` (and at rotation and close). Loss window: a power failure or kernel
  /// crash may lose appends acknowledged in the last `batch_interval` plus the duration of
  /// one write+sync; a crash of the process alone loses nothing acknowledged.
  batch,
  /// Never fdatasync except at rotation and close; the OS flushes when it likes (typically
  /// within ~30 s on Linux). A process crash loses nothing acknowledged; a power failure may
  /// lose anything not yet flushed by the OS.
  none,
};

/// The system calls the fault injector is consulted about.
enum class journal_op { write, fsync };

/// A failure the fault injector asks for. errno_value 0 means "no fault: do the call".
struct journal_fault {
  int errno_value = 0;
  /// For journal_op::write: bytes actually written to the file before failing (a short
  /// write followed by the error), clamped to the buffer size.
  std::size_t bytes_written = 0;
};

/// FOR TESTS ONLY. Consulted by the committer thread before each write() and fdatasync() of
/// the journal segment (not for headers, rotation or close), with the file's path. Must be
/// thread-safe with respect to the test's own state. Leave empty in production.
using journal_fault_injector =
    std::function<journal_fault(journal_op op, const std::filesystem::path& file)>;

/// Options fixed when a journal is opened. Aggregate; designated initializers welcome.
struct journal_options {
  durability mode = durability::sync;
  /// For durability::batch: the longest time written data stays unsynced. Must be > 0.
  std::chrono::milliseconds batch_interval{50};
  journal_fault_injector fault_injector;  ///< tests only, see journal_fault_injector
};

/// What open() found and repaired.
struct journal_recovery {
  std::uint64_t records = 0;         ///< records replayed through the visitor
  std::uint32_t segments = 0;        ///< segments read
  std::uint64_t segment = 0;         ///< the segment appends go to
  bool truncated_torn_tail = false;  ///< a torn tail was cut off the last segment
  std::uint64_t truncated_bytes = 0;
  std::string warning;  ///< names file, offset and size of the torn tail; or empty
};

/// Counters, for tests and benchmarks. Monotonic; read with stats().
struct journal_stats {
  std::uint64_t appends = 0;             ///< append calls completed successfully
  std::uint64_t records = 0;             ///< records written successfully
  std::uint64_t bytes = 0;               ///< bytes written successfully (framing included)
  std::uint64_t writes = 0;              ///< write batches issued (one per group commit)
  std::uint64_t syncs = 0;               ///< fdatasync calls issued
  std::uint64_t failed_appends = 0;      ///< append calls completed with an error
  std::uint64_t queued_appends = 0;      ///< appends waiting for the committer right now
  std::uint64_t committing_appends = 0;  ///< appends in the write+sync in progress right now
};

namespace detail {
class journal_writer_impl;
}

/// Appends records to the journal of one directory, from any number of threads.
///
/// Owns one committer thread (started by open(), joined by close() or the destructor) that
/// performs every write and fdatasync; appending threads only queue their records. The
/// writer does not lock the directory: hold a directory_lock for as long as it is open.
///
/// Thread safety: append, async_append, rotate, stats and last_error may be called
/// concurrently. open, close, move and destruction may not overlap any other call.
class journal_writer {
 public:
  using executor_type = boost::asio::any_io_executor;
  /// The completion signature of async_append: the error, and the sequence number of the
  /// call's last record (see async_append).
  using append_signature = void(error_code, std::uint64_t);

  /// A closed writer; only close(), stats() and move assignment are useful on it.
  journal_writer() noexcept;
  journal_writer(journal_writer&&) noexcept;
  journal_writer& operator=(journal_writer&&) noexcept;
  /// Calls close().
  ~journal_writer();

  /// Opens the journal in `dir` (created with mode 0700 if missing): replays every segment
  /// numbered `first_segment` or above through `visit`, truncates a torn tail off the last
  /// segment (reported in `recovery.warning`, not as an error), removes temporary files a
  /// crash left behind, creates segment max(1, first_segment) if there is none, and starts
  /// the committer thread. `ex` is the executor that completes async_append handlers which
  /// have no associated executor of their own.
  ///
  /// Errors: corrupt_journal / unsupported_format_version (detail names the file, offset or
  /// versions), io_error (detail names the call and file), invalid_option.
  static journal_writer open(executor_type ex, const std::filesystem::path& dir,
                             journal_options options, std::uint64_t first_segment,
                             const record_visitor& visit, journal_recovery& recovery,
                             error_code& ec, std::string* detail = nullptr);
  /// Throwing form: throws taskq::error with the detail.
  static journal_writer open(executor_type ex, const std::filesystem::path& dir,
                             journal_options options, std::uint64_t first_segment,
                             const record_visitor& visit, journal_recovery& recovery);

  bool is_open() const noexcept;
  executor_type get_executor() const noexcept;

  /// Appends `records` (each at most max_record_size bytes; an empty vector is a no-op that
  /// still waits for the records queued before it) and completes when they are durable as
  /// the durability mode promises.
  ///
  /// Handler: void(error_code ec, std::uint64_t sequence). `sequence` is the 1-based
  /// sequence number of the call's last record: the records present when the journal was
  /// opened count first, then every successfully appended record in commit order (failed
  /// appends do not consume numbers; compaction does not renumber). Useful to tell which of
  /// two appends committed later.
  ///
  /// Completion: on the handler's associated executor, or get_executor() if it has none;
  /// never inline from within async_append. Outstanding work is tracked on that executor
  /// until completion. Not cancellable: once queued, records are written.
  ///
  /// Errors: disk_full (ENOSPC), io_error (other write/fdatasync failures; last_error()
  /// has the detail naming the call and file), store_closed (after close()), invalid_record
  /// (a record above max_record_size; nothing of that call is written).
  ///
  /// Example:
  ///   auto seq = w.async_append({"a", "b"}, boost::asio::use_future).get();
  template <class Token>
  auto async_append(std::vector<std::string> records, Token&& token) {
    return boost::asio::async_initiate<Token, append_signature>(
        [this](auto handler, std::vector<std::string> recs) {
          start_append(std::move(recs),
                       boost::asio::any_completion_handler<append_signature>(std::move(handler)));
        },
        token, std::move(records));
  }

  /// Blocking form of async_append: returns the sequence number, or 0 with `ec` set (and
  /// `*detail` set, if given). Must not be called from the committer thread (i.e. from a
  /// fault injector).
  std::uint64_t append(std::vector<std::string> records, error_code& ec,
                       std::string* detail = nullptr);
  /// Throwing form: throws taskq::error with the detail.
  std::uint64_t append(std::vector<std::string> records);

  /// Starts a new segment: records queued before this call go to the current segment, which
  /// is then fdatasync()ed whatever the durability mode; later records go to the new one
  /// (created as a temporary file, synced, renamed, directory synced). Blocks until done and
  /// returns the new segment number. For compaction: rotate, write a snapshot with id = the
  /// returned number that covers every record before it, then remove_segments_before(it).
  std::uint64_t rotate(error_code& ec, std::string* detail = nullptr);
  std::uint64_t rotate();

  /// Deletes the segments numbered below `segment` (never the current one) and syncs the
  /// directory. Only call once a snapshot covering them is durable.
  void remove_segments_before(std::uint64_t segment, error_code& ec, std::string* detail = nullptr);

  /// The segment appends currently go to.
  std::uint64_t current_segment() const;

  /// The last write/fsync error and its detail ("write(/dir/journal-1.log): No space left
  /// on device"), or an empty code if none happened.
  std::pair<error_code, std::string> last_error() const;

  journal_stats stats() const;

  /// Stops accepting appends (later ones complete with store_closed), writes and syncs
  /// everything queued (whatever the durability mode), joins the committer thread and closes
  /// the file. Idempotent. The executor's handlers for already queued appends are still
  /// invoked (they were posted before close returns).
  void close() noexcept;

 private:
  explicit journal_writer(std::unique_ptr<detail::journal_writer_impl> impl) noexcept;
  void start_append(std::vector<std::string> records,
                    boost::asio::any_completion_handler<append_signature> handler);

  std::unique_ptr<detail::journal_writer_impl> impl_;
};

// --- snapshots -----------------------------------------------------------------------------

/// Writes `records` to `path` atomically as a snapshot with `id` (same header and framing as
/// a segment, kind = snapshot): writes "<path>.tmp" (mode 0600), fsyncs it, renames it over
/// `path` and fsyncs the directory. After a crash, `path` holds either the previous snapshot
/// or the new one, never a mix. Errors: io_error / disk_full with a detail naming the call
/// and file; invalid_record if a record exceeds max_record_size.
void write_snapshot(const std::filesystem::path& path, std::uint64_t id,
                    std::span<const std::string> records, error_code& ec,
                    std::string* detail = nullptr);

/// Reads a snapshot written by write_snapshot. A snapshot is written atomically, so unlike a
/// segment a torn tail is corruption (errc::corrupt_journal). A missing file is io_error
/// (detail "open(<path>): No such file or directory"): check existence first if optional.
scan_result read_snapshot(const std::filesystem::path& path, const record_visitor& visit);

}  // namespace taskq::file
