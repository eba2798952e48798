// taskq — process_executor: runs each task as a child process (POSIX; Linux for the
// parent-death signal), so a crashing, leaking or hanging task cannot take its worker down.
//
// A command is registered per task type. For every run the executor starts the command in a
// process group of its own, with an environment built from an allowlist plus the command's
// variables, resource limits, and the payload on stdin; it reads the child's reports from
// stdout, sends everything else it prints to the run log, and maps how it ended to the run's
// outcome. Boost.Process v2 (basic_process: pidfd wait, reaping) drives the child on the
// host's io_context; nothing blocks an I/O thread except the start itself (a vfork-style
// clone, as posix_spawn does, a few hundred microseconds).
//
// ## The child's protocol
//
// Environment: the variables named in process_command::inherit_env that the worker has,
// then process_command::env, then
//   TASKQ_TASK_ID    the task's id
//   TASKQ_TASK_TYPE  its type
//   TASKQ_ATTEMPT    the attempt number (1 for the first run)
//
// stdin: the task's payload as one line of JSON, then end of file. A child may read it, read
// part of it, close stdin early or never read it: none of these is an error.
//
// stdout: one JSON object per line whose "taskq" member says what it is:
//   {"taskq":"progress","progress":<any JSON>}     a heartbeat: stored as the task's
//                                                  progress; extends the lease
//   {"taskq":"log","message":"text"}               a line in the task's run log
//   {"taskq":"result","result":<any JSON>}         the result (the last one wins)
//   {"taskq":"error","message":"text"}             the text the run fails with, if the
//                                                  child then exits non-zero
// Any other line on stdout ("stdout: " prefix) and every line on stderr ("stderr: " prefix)
// goes to the run log, up to process_command::output_cap bytes per run (protocol log lines
// count too); past the cap lines are counted, not stored, and the run log ends with a line
// giving the cap and how many bytes and lines were cut. examples/taskq_child.sh and
// examples/taskq_child.py are small helpers for shell and Python.
//
// Outcome (errc::handler_failed for every failure):
//   exit 0                              succeeded, with the reported result (null if none)
//   exit retryable_exit_code (75)       retryable failure
//   exit permanent_exit_code (65)       permanent failure (no further attempts)
//   any other exit code                 retryable failure naming the code, with the last
//                                       stderr lines (or the child's reported error)
//   killed by a signal                  retryable failure naming the signal
//   memory limit exceeded               permanent failure saying so (an allocation failure
//                                       reported on stderr under an address-space limit)
//   CPU limit exceeded (SIGXCPU)        permanent failure saying so
//   command cannot be started           permanent failure naming the command and the cause
//                                       (not found in PATH, not executable, bad working
//                                       directory); transient causes (EAGAIN, ENOMEM) retryable
//
// Cancellation, timeout and shutdown (run_promise::cancel, the worker's timeout and drain):
// the run ends at once as with in-process handlers (run_cancelled, run_timed_out,
// shutting_down); the child's process group gets SIGTERM, then SIGKILL after
// process_command::kill_grace, and the child is reaped. When the child exits by itself,
// whatever is left in its process group is killed (SIGKILL): no process of a run outlives it
// unless it left the group (setsid). With parent_death_signal (default) the child gets
// SIGKILL when the thread that started it (an io_context thread) ends, so a worker that
// crashes leaves no child running; processes the child started itself are not covered by
// that signal (a child should exec its last command or not start long-running children).
//
// The executor ignores SIGPIPE in the process (if it is at its default) so that a child which
// closes stdin early does not kill the worker; children get default signal dispositions.
#pragma once

#include <taskq/executor.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace taskq {

/// Resource limits of a child (setrlimit, soft and hard; the CPU hard limit is one second
/// above the soft one so that SIGXCPU ends the child); 0 leaves a limit as inherited.
struct process_limits {
  std::uint64_t address_space = 0;  ///< bytes of virtual memory (RLIMIT_AS)
  std::uint64_t cpu_seconds = 0;    ///< CPU time (RLIMIT_CPU); exceeding it sends SIGXCPU
  std::uint64_t open_files = 0;     ///< file descriptors (RLIMIT_NOFILE)
  std::uint64_t processes = 0;      ///< processes of the child's user (RLIMIT_NPROC)

  friend bool operator==(const process_limits&, const process_limits&) = default;
};

/// How the runs of one task type are started. Aggregate with defaults.
///
/// @code
/// ex.add("resize", {.argv = {"./resize.py", "--fast"},
///                   .env = {{"RESIZE_QUALITY", "90"}},
///                   .limits = {.address_space = 512u << 20, .cpu_seconds = 60}});
/// @endcode
struct process_command {
  /// The program and its arguments (not a shell string). argv[0] without a '/' is looked up
  /// in the child's PATH; with a '/' it is a path (relative to working_directory if set).
  std::vector<std::string> argv{};
  /// Run argv[0] as a shell command (/bin/sh -c argv[0]); further elements become $1, $2...
  bool shell = false;
  /// The child's working directory; empty: the worker's.
  std::filesystem::path working_directory{};
  /// Variables the child inherits from the worker, when the worker has them.
  std::vector<std::string> inherit_env{"PATH", "HOME",   "USER", "LOGNAME",
                                       "LANG", "LC_ALL", "TZ",   "TMPDIR"};
  /// Variables set for the child (override inherited ones). TASKQ_* are set last.
  std::map<std::string, std::string> env{};
  process_limits limits{};
  /// When true, a task's metadata member "limits" (an object with the fields of
  /// process_limits, e.g. {"limits": {"address_space": 268435456}}) overrides `limits` for
  /// that task, up to `max_limits` (0 there: no ceiling). A bad or too-high value fails the
  /// run permanently with a message naming the field.
  bool limits_from_metadata = false;
  process_limits max_limits{};
  int retryable_exit_code = 75;  ///< EX_TEMPFAIL
  int permanent_exit_code = 65;  ///< EX_DATAERR
  /// A limit on every run of this command (real time), on top of the task's own timeout;
  /// zero: none. Reaching it ends the run with errc::run_timed_out (retryable, like the
  /// worker's timeout) and terminates the child as a cancel does.
  duration timeout{};
  /// Between SIGTERM and SIGKILL when a run is cancelled or times out.
  duration kill_grace = std::chrono::seconds(5);
  /// Bytes of output (stdout lines outside the protocol, stderr, protocol log lines) stored
  /// in the run log per run.
  std::size_t output_cap = 64 * 1024;
  /// Lines of stderr quoted in the failure message of a non-zero exit.
  std::size_t stderr_tail_lines = 10;
  /// Longest stdout line accepted as a protocol message (a result may be large); a longer
  /// line is output.
  std::size_t max_message_bytes = 16u << 20;
  /// PR_SET_PDEATHSIG(SIGKILL) in the child (see the header comment).
  bool parent_death_signal = true;
};

struct process_executor_options {
  /// Time source for run statistics. Must outlive the executor.
  clock* time = nullptr;
};

namespace detail {
struct process_registry;
}

/// Runs tasks as child processes, one command per task type (see the header comment for the
/// protocol and the outcome mapping). Thread-safe. POSIX only.
///
/// @code
/// taskq::process_executor ex(io.get_executor());
/// ex.add("resize", {.argv = {"./resize.sh"}, .limits = {.address_space = 1u << 30}});
/// taskq::worker w(client, ex, {.queues = {"images"}});
/// @endcode
class process_executor final : public executor {
 public:
  explicit process_executor(asio::any_io_executor io_ex, process_executor_options opts = {});
  /// Kills (SIGKILL) the process group of every child still alive. Children are reaped by
  /// their pending waits; destroy the executor after children() reached zero (see
  /// async_wait_children) or after the io_context stopped, so none is left a zombie.
  ~process_executor() override;

  /// Registers (or replaces) the command for `type`. Throws taskq::error(errc::invalid_option)
  /// naming the bad field (empty argv, a shell command with no string, a negative
  /// kill_grace, a zero output_cap).
  void add(std::string type, process_command cmd);
  /// As add(), reporting a bad field in `ec` with its message in `detail` (and nothing is
  /// registered).
  void add(std::string type, process_command cmd, error_code& ec, std::string* detail = nullptr);

  /// Whether a command is registered for `type`.
  bool has_command(const std::string& type) const;

  /// Ends every run whose child is alive with a retryable failure (error `reason`) and
  /// terminates the children as a cancel does (SIGTERM to each group, SIGKILL after the grace
  /// period). For a host that must stop at once while a worker is still draining (`taskq
  /// worker` on a second signal): the worker counts the attempt and schedules a retry.
  void cancel_all(error_code reason = errc::shutting_down);

  /// Child processes not yet reaped, including those of runs already ended by a cancel or a
  /// timeout that are still being terminated.
  std::size_t children() const;

  /// Waits until children() is zero.
  ///
  /// - Completion: `void()`.
  /// - Executor: the token's associated executor, else get_executor(); never inline.
  /// - Cancellation: none.
  /// - Errors: none.
  /// - Lifetimes: the executor must outlive the operation.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void()> CompletionToken = asio::deferred_t>
  auto async_wait_children(CompletionToken&& token = {}) {
    return detail::initiate_erased<void()>(
        std::forward<CompletionToken>(token),
        [this](auto h) mutable { do_wait_children(std::move(h)); });
  }

 protected:
  run_promise do_execute(run_request&& req) override;

 private:
  void do_wait_children(asio::any_completion_handler<void()> h);

  clock& clock_;
  std::shared_ptr<detail::process_registry> registry_;
};

}  // namespace taskq
