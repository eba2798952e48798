// process_executor: tasks as child processes (see include/taskq/process_executor.hpp).
//
// Starting a child. Boost.Process v2's launchers fork (or vfork) and then call
// io_context::notify_fork(fork_child) in the child, which rebuilds the reactor and takes its
// descriptor mutex: in a multi-threaded host another thread may hold that mutex at the fork,
// and the child then hangs before exec (the worker waiting on it forever); notify_fork also
// must not run while other threads use the io_context. So the child is started here as glibc's
// posix_spawn does it — clone(CLONE_VM | CLONE_VFORK) on a small stack of its own, all
// signals blocked around it, the child calling only async-signal-safe functions (signal
// dispositions reset, setpgid, prctl(PR_SET_PDEATHSIG), setrlimit, dup2, chdir, execve) —
// and Boost.Process v2's basic_process_handle then owns the child on the host's io_context
// (a pidfd waited on by the reactor, the reaping waitpid). A start failure (execve's errno)
// is written by the child into the shared argument block before it exits.
#include <taskq/detail/input_limits.hpp>
#include <taskq/process_executor.hpp>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/readable_pipe.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/writable_pipe.hpp>
#include <boost/asio/write.hpp>
// error.hpp first: in Boost 1.81 header-only mode, reaching it through exit_code.hpp (as
// process_handle.hpp does) compiles impl/error.ipp before detail::still_active is declared.
#include <boost/process/v2/error.hpp>
#include <boost/process/v2/process_handle.hpp>

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace taskq {

namespace bp = boost::process::v2;

namespace detail {

/// What the executor shares with its runs (which may outlive it while children terminate).
struct process_registry {
  asio::any_io_executor io_ex;
  mutable std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<const process_command>> commands;
  struct child {
    pid_t pid;                              // = its process group
    std::function<void(error_code)> abort;  // ends the run (retryable) and terminates it
  };
  std::unordered_map<std::uint64_t, child> live;  // by run id
  std::vector<asio::any_completion_handler<void()>> waiters;
  std::uint64_t next_run_id = 0;

  void add_child(std::uint64_t run_id, pid_t pid, std::function<void(error_code)> abort) {
    std::lock_guard lock(mutex);
    live.emplace(run_id, child{pid, std::move(abort)});
  }
  void remove_child(std::uint64_t run_id) {
    std::vector<asio::any_completion_handler<void()>> ws;
    {
      std::lock_guard lock(mutex);
      live.erase(run_id);
      if (!live.empty()) return;
      ws = std::move(waiters);
    }
    for (auto& w : ws) post_completion(std::move(w), io_ex);
  }
};

}  // namespace detail

namespace {

// --- starting a child ------------------------------------------------------------------------

enum class start_stage : int { none, setpgid, pdeathsig, rlimit, dup, chdir, exec };

const char* stage_name(start_stage s) {
  switch (s) {
    case start_stage::setpgid:
      return "setpgid";
    case start_stage::pdeathsig:
      return "prctl(PR_SET_PDEATHSIG)";
    case start_stage::rlimit:
      return "setrlimit";
    case start_stage::dup:
      return "dup2";
    case start_stage::chdir:
      return "chdir";
    case start_stage::exec:
      return "execve";
    case start_stage::none:
      break;
  }
  return "start";
}

struct rlimit_setting {
  int resource;
  rlim_t value;
};

// Everything the clone child reads, prepared by the parent (the child allocates nothing).
struct child_args {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;  // null: stay
  int fds[3] = {-1, -1, -1};  // become 0, 1, 2
  pid_t parent = 0;
  bool pdeathsig = true;
  rlimit_setting limits[4] = {};
  int nlimits = 0;
  // Written by the child when it fails (the parent reads them after the child exited).
  volatile int failed_stage = 0;
  volatile int failed_errno = 0;
  volatile int failed_limit = 0;
};

[[noreturn]] void child_fail(child_args* a, start_stage s) {
  a->failed_errno = errno;
  a->failed_stage = static_cast<int>(s);
  _exit(127);
}

int child_main(void* p) {
  auto* a = static_cast<child_args*>(p);
  // Default dispositions (the parent's handlers live in memory shared with this child, and
  // an ignored SIGPIPE would survive exec), then an empty mask.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    struct sigaction cur {};
    if (sigaction(s, nullptr, &cur) == 0 && cur.sa_handler != SIG_DFL) sigaction(s, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (setpgid(0, 0) != 0) child_fail(a, start_stage::setpgid);
  if (a->pdeathsig) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(a, start_stage::pdeathsig);
    if (getppid() != a->parent) _exit(127);  // the parent already died
  }
  for (int i = 0; i < a->nlimits; ++i) {
    // CPU: the hard limit a second above the soft one, so SIGXCPU (not SIGKILL) ends it.
    rlim_t hard = a->limits[i].value + (a->limits[i].resource == RLIMIT_CPU ? 1 : 0);
    struct rlimit rl {
      a->limits[i].value, hard
    };
    if (setrlimit(a->limits[i].resource, &rl) != 0) {
      a->failed_limit = a->limits[i].resource;
      child_fail(a, start_stage::rlimit);
    }
  }
  for (int target = 0; target < 3; ++target) {
    int fd = a->fds[target];
    if (fd == target) {
      if (fcntl(fd, F_SETFD, 0) != 0) child_fail(a, start_stage::dup);
    } else if (dup2(fd, target) != target) {
      child_fail(a, start_stage::dup);
    }
  }
  if (a->cwd && chdir(a->cwd) != 0) child_fail(a, start_stage::chdir);
  execve(a->path, a->argv, a->envp);
  child_fail(a, start_stage::exec);
}

struct pipe_pair {
  int fd[2] = {-1, -1};
  pipe_pair() = default;
  pipe_pair(const pipe_pair&) = delete;
  pipe_pair& operator=(const pipe_pair&) = delete;
  ~pipe_pair() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
  bool open() { return ::pipe2(fd, O_CLOEXEC) == 0; }
  int release(int i) { return std::exchange(fd[i], -1); }
};

/// A started child: its pid and the parent's ends of its stdio pipes.
struct started_child {
  pid_t pid = -1;
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
};

struct start_plan {
  std::string path;
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value"
  std::string cwd;
  process_limits limits;
  bool pdeathsig = true;
};

const char* rlimit_name(int resource) {
  switch (resource) {
    case RLIMIT_AS:
      return "address_space";
    case RLIMIT_CPU:
      return "cpu_seconds";
    case RLIMIT_NOFILE:
      return "open_files";
    case RLIMIT_NPROC:
      return "processes";
    default:
      return "limit";
  }
}

/// Starts `plan`. On failure returns pid -1 with `ec` (the errno) and `what` saying which step.
started_child start_child(const start_plan& plan, error_code& ec, std::string& what) {
  started_child out;
  pipe_pair in, o, e;
  if (!in.open() || !o.open() || !e.open()) {
    ec.assign(errno, boost::system::system_category());
    what = "pipe2";
    return out;
  }
  std::vector<char*> argv;
  argv.reserve(plan.argv.size() + 1);
  for (auto& s : plan.argv) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  envp.reserve(plan.env.size() + 1);
  for (auto& s : plan.env) envp.push_back(const_cast<char*>(s.c_str()));
  envp.push_back(nullptr);

  child_args a;
  a.path = plan.path.c_str();
  a.argv = argv.data();
  a.envp = envp.data();
  a.cwd = plan.cwd.empty() ? nullptr : plan.cwd.c_str();
  a.fds[0] = in.fd[0];
  a.fds[1] = o.fd[1];
  a.fds[2] = e.fd[1];
  a.parent = ::getpid();
  a.pdeathsig = plan.pdeathsig;
  auto add_limit = [&](int res, std::uint64_t v) {
    if (v) a.limits[a.nlimits++] = {res, static_cast<rlim_t>(v)};
  };
  add_limit(RLIMIT_AS, plan.limits.address_space);
  add_limit(RLIMIT_CPU, plan.limits.cpu_seconds);
  add_limit(RLIMIT_NOFILE, plan.limits.open_files);
  add_limit(RLIMIT_NPROC, plan.limits.processes);

  constexpr std::size_t stack_size = 64 * 1024;
  auto stack = std::make_unique<std::max_align_t[]>(stack_size / sizeof(std::max_align_t));
  char* stack_top = reinterpret_cast<char*>(stack.get()) + stack_size;

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::clone(child_main, stack_top, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    ec.assign(clone_errno, boost::system::system_category());
    what = "clone";
    return out;
  }
  if (a.failed_stage != 0) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ec.assign(a.failed_errno, boost::system::system_category());
    auto stage = static_cast<start_stage>(a.failed_stage);
    what = stage == start_stage::rlimit ? fmt::format("setrlimit ({})", rlimit_name(a.failed_limit))
                                        : std::string(stage_name(stage));
    return out;
  }
  out.pid = pid;
  out.stdin_fd = in.release(1);
  out.stdout_fd = o.release(0);
  out.stderr_fd = e.release(0);
  return out;
}

/// Looks `name` up in `path_list` (':'-separated); empty if not found.
std::string find_in_path(const std::string& name, const std::string& path_list) {
  std::size_t start = 0;
  while (start <= path_list.size()) {
    auto end = path_list.find(':', start);
    if (end == std::string::npos) end = path_list.size();
    std::string dir = path_list.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    start = end + 1;
  }
  return {};
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

bool permanent_start_error(int e) {
  return e == ENOENT || e == EACCES || e == ENOEXEC || e == ENOTDIR || e == ELOOP ||
         e == ENAMETOOLONG || e == EISDIR || e == EPERM || e == EINVAL;
}

/// Whether stderr text reports a failed allocation.
bool mentions_allocation_failure(const std::deque<std::string>& lines) {
  static constexpr const char* markers[] = {
      "MemoryError",   "bad_alloc",          "Cannot allocate memory",
      "out of memory", "Out of memory",      "memory exhausted",
      "ENOMEM",        "failed to allocate", "allocation failed"};
  for (auto& l : lines)
    for (auto* m : markers)
      if (l.find(m) != std::string::npos) return true;
  return false;
}

error_code option_error() {
  return make_error_code(errc::invalid_option);
}

/// Validates a command; the message names the field.
error_code validate_command(const process_command& c, std::string& msg) {
  if (c.argv.empty() || c.argv[0].empty()) {
    msg = c.shell ? "process_command field 'argv' must hold the shell command in argv[0]"
                  : "process_command field 'argv' must name a program in argv[0]";
    return option_error();
  }
  if (c.timeout < duration::zero()) {
    msg = "process_command field 'timeout' must not be negative";
    return option_error();
  }
  if (c.kill_grace < duration::zero()) {
    msg = "process_command field 'kill_grace' must not be negative";
    return option_error();
  }
  if (c.output_cap == 0) {
    msg = "process_command field 'output_cap' must be at least 1";
    return option_error();
  }
  if (c.max_message_bytes == 0) {
    msg = "process_command field 'max_message_bytes' must be at least 1";
    return option_error();
  }
  for (auto& [k, v] : c.env) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
      msg = fmt::format("process_command field 'env' has a bad variable name '{}'", k);
      return option_error();
    }
  }
  return {};
}

/// The limits of one run: the command's, overridden from the task's metadata if allowed.
/// Sets `msg` (naming the field) on bad metadata.
process_limits limits_for(const process_command& c, const json& metadata, std::string& msg) {
  process_limits l = c.limits;
  if (!c.limits_from_metadata || !metadata.is_object()) return l;
  auto it = metadata.find("limits");
  if (it == metadata.end()) return l;
  if (!it->is_object()) {
    msg = "task metadata field 'limits' must be an object";
    return l;
  }
  struct field {
    const char* name;
    std::uint64_t process_limits::*member;
  };
  static constexpr field fields[] = {{"address_space", &process_limits::address_space},
                                     {"cpu_seconds", &process_limits::cpu_seconds},
                                     {"open_files", &process_limits::open_files},
                                     {"processes", &process_limits::processes}};
  for (auto& item : it->items()) {
    const std::string& key = item.key();
    const auto& value = item.value();
    auto f = std::find_if(std::begin(fields), std::end(fields),
                          [&](const field& x) { return key == x.name; });
    if (f == std::end(fields)) {
      msg = fmt::format("task metadata field 'limits.{}' is not a known limit", key);
      return l;
    }
    if (!value.is_number_unsigned() || value.get<std::uint64_t>() == 0) {
      msg = fmt::format("task metadata field 'limits.{}' must be a positive integer", key);
      return l;
    }
    auto v = value.get<std::uint64_t>();
    auto ceiling = c.max_limits.*(f->member);
    if (ceiling != 0 && v > ceiling) {
      msg = fmt::format("task metadata field 'limits.{}' is {}, above the allowed {}", key, v,
                        ceiling);
      return l;
    }
    l.*(f->member) = v;
  }
  return l;
}

// --- one run -------------------------------------------------------------------------------

using strand_type = asio::strand<asio::any_io_executor>;

class child_run : public std::enable_shared_from_this<child_run> {
 public:
  child_run(run_request req, run_completion comp, std::shared_ptr<const process_command> cmd,
            std::shared_ptr<detail::process_registry> reg, clock& clk, time_point started,
            started_child child, const strand_type& strand)
      : strand_(strand),
        req_(std::move(req)),
        comp_(std::move(comp)),
        cmd_(std::move(cmd)),
        reg_(std::move(reg)),
        clock_(clk),
        started_at_(started),
        pid_(child.pid),
        handle_(asio::any_io_executor(strand_), child.pid),
        in_(strand_, child.stdin_fd),
        out_(strand_, child.stdout_fd),
        err_(strand_, child.stderr_fd),
        kill_timer_(strand_),
        drain_timer_(strand_),
        timeout_timer_(strand_) {}

  void start(process_limits limits) {
    limits_ = limits;
    auto self = shared_from_this();
    reg_->add_child(req_.run.run_id, pid_, [weak = weak_from_this()](error_code reason) {
      auto s = weak.lock();
      if (!s) return;
      asio::post(s->strand_, [s, reason] {
        run_result r = s->base_result();
        r.error = reason;
        r.message = fmt::format("{}: the child was terminated", reason.message());
        r.retryable = true;
        s->comp_.complete(std::move(r));
        s->terminate(reason);
      });
    });
    comp_.on_cancel([weak = weak_from_this()](error_code reason) {
      if (auto s = weak.lock()) asio::post(s->strand_, [s, reason] { s->terminate(reason); });
    });
    asio::dispatch(strand_, [self] {
      self->payload_ = self->req_.task.payload.dump();
      self->payload_ += '\n';
      asio::async_write(self->in_, asio::buffer(self->payload_), [self](error_code, std::size_t) {
        // EPIPE (the child closed stdin or exited) is fine: it read what it wanted.
        error_code ignored;
        self->in_.close(ignored);
      });
      self->read(self->out_, self->out_buf_, self->out_line_, true);
      self->read(self->err_, self->err_buf_, self->err_line_, false);
      self->handle_.async_wait([self](error_code ec, int status) { self->on_exit(ec, status); });
      if (self->cmd_->timeout > duration::zero()) {
        self->timeout_timer_.expires_after(self->cmd_->timeout);
        self->timeout_timer_.async_wait([self](error_code ec) {
          if (ec || self->exited_) return;
          run_result r = self->base_result();
          r.error = errc::run_timed_out;
          r.message = fmt::format(
              "run timed out: the command's limit is {} ms",
              std::chrono::duration_cast<std::chrono::milliseconds>(self->cmd_->timeout).count());
          r.retryable = true;
          self->comp_.complete(std::move(r));
          self->terminate(errc::run_timed_out);
        });
      }
    });
  }

 private:
  void read(asio::readable_pipe& pipe, std::array<char, 16384>& buf, std::string& line,
            bool is_stdout) {
    pipe.async_read_some(asio::buffer(buf), [self = shared_from_this(), &pipe, &buf, &line,
                                             is_stdout](error_code ec, std::size_t n) {
      if (n) self->consume(std::string_view(buf.data(), n), line, is_stdout);
      if (ec) {
        if (!line.empty()) self->on_line(std::exchange(line, {}), is_stdout);
        (is_stdout ? self->out_eof_ : self->err_eof_) = true;
        error_code ignored;
        pipe.close(ignored);
        self->maybe_finish();
        return;
      }
      self->read(pipe, buf, line, is_stdout);
    });
  }

  void consume(std::string_view data, std::string& line, bool is_stdout) {
    while (!data.empty()) {
      auto nl = data.find('\n');
      if (nl == std::string_view::npos) {
        line.append(data);
        std::size_t max = is_stdout ? cmd_->max_message_bytes : cmd_->output_cap + 1;
        if (line.size() > max) on_line(std::exchange(line, {}), is_stdout, true);
        return;
      }
      line.append(data.substr(0, nl));
      on_line(std::exchange(line, {}), is_stdout);
      data.remove_prefix(nl + 1);
    }
  }

  void on_line(std::string text, bool is_stdout, bool overlong = false) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (!is_stdout) {
      stderr_tail_.push_back(text);
      if (stderr_tail_.size() > cmd_->stderr_tail_lines) stderr_tail_.pop_front();
      output("stderr: " + text);
      return;
    }
    if (!overlong && !text.empty() && text.front() == '{') {
      // Depth first: a deep line is not a protocol message (it goes to the run log as text).
      taskq::detail::json_text_error bad;
      auto j = taskq::detail::parse_json_text(text, json_depth_ceiling, bad);
      if (bad == taskq::detail::json_text_error::none && j.is_object() && j.contains("taskq") &&
          j["taskq"].is_string()) {
        const auto& kind = j["taskq"].get_ref<const std::string&>();
        if (kind == "progress") {
          heartbeat(j.value("progress", json()));
          return;
        }
        if (kind == "log") {
          auto m = j.find("message");
          output(m == j.end() ? std::string() : m->is_string() ? m->get<std::string>() : m->dump());
          return;
        }
        if (kind == "result") {
          result_ = j.value("result", json());
          return;
        }
        if (kind == "error") {
          auto m = j.find("message");
          reported_error_ = m == j.end()     ? std::string()
                            : m->is_string() ? m->get<std::string>()
                                             : m->dump();
          return;
        }
      }
    }
    output("stdout: " + text);
  }

  // Appends to the run log within the cap.
  void output(std::string text) {
    if (logged_bytes_ + text.size() > cmd_->output_cap) {
      cut_bytes_ += text.size();
      ++cut_lines_;
      return;
    }
    logged_bytes_ += text.size();
    log(std::move(text));
  }

  // Log lines go out one append at a time, in order; lines that queue up meanwhile are
  // joined into one entry (a store write per line would be slow).
  void log(std::string text) {
    if (!req_.hooks) return;
    log_queue_.push_back(std::move(text));
    flush_log();
  }

  void flush_log() {
    if (log_in_flight_ || log_queue_.empty()) return;
    std::string msg = std::move(log_queue_.front());
    for (std::size_t i = 1; i < log_queue_.size(); ++i) {
      msg += '\n';
      msg += log_queue_[i];
    }
    log_queue_.clear();
    log_in_flight_ = true;
    req_.hooks->log(req_.task, std::move(msg),
                    asio::bind_executor(strand_, [self = shared_from_this()](error_code) {
                      self->log_in_flight_ = false;
                      self->flush_log();
                      self->maybe_finish();
                    }));
  }

  // Heartbeats: one in flight, the latest progress waits.
  void heartbeat(json progress) {
    if (!req_.hooks) return;
    pending_progress_ = std::move(progress);
    send_heartbeat();
  }

  void send_heartbeat() {
    if (hb_in_flight_ || !pending_progress_) return;
    hb_in_flight_ = true;
    auto p = std::move(*pending_progress_);
    pending_progress_.reset();
    req_.hooks->heartbeat(
        req_.task, std::move(p),
        asio::bind_executor(strand_, [self = shared_from_this()](error_code ec, bool cancel) {
          self->hb_in_flight_ = false;
          if (!ec && cancel) {
            run_result r = self->base_result();
            r.error = errc::run_cancelled;
            r.message = r.error.message();
            self->comp_.complete(std::move(r));
            self->terminate(errc::run_cancelled);
          }
          self->send_heartbeat();
          self->maybe_finish();
        }));
  }

  // Cancel, timeout, shutdown: SIGTERM to the group, SIGKILL after the grace period.
  void terminate(error_code) {
    if (exited_ || terminating_) return;
    terminating_ = true;
    ::kill(-pid_, SIGTERM);
    kill_timer_.expires_after(cmd_->kill_grace);
    kill_timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec && !self->exited_) ::kill(-self->pid_, SIGKILL);
    });
  }

  void on_exit(error_code ec, int status) {
    exited_ = true;
    wait_error_ = ec;
    status_ = status;
    // Whatever is left of the child's process group goes with it. The group id stays
    // reserved while any member lives, so this cannot reach an unrelated process group.
    ::kill(-pid_, SIGKILL);
    kill_timer_.cancel();
    timeout_timer_.cancel();
    reg_->remove_child(req_.run.run_id);
    // A process that left the group may still hold the pipes: stop reading after a while.
    drain_timer_.expires_after(std::chrono::seconds(2));
    drain_timer_.async_wait([self = shared_from_this()](error_code e) {
      if (e) return;
      error_code ignored;
      self->out_.close(ignored);
      self->err_.close(ignored);
    });
    maybe_finish();
  }

  run_result base_result() const {
    run_result r;
    r.stats.started_at = started_at_;
    r.stats.finished_at = clock_.now();
    r.stats.run_time = r.stats.finished_at - r.stats.started_at;
    auto due = std::max(req_.run.due_at, req_.run.requested_at);
    r.stats.queue_wait = std::max(duration::zero(), r.stats.started_at - due);
    return r;
  }

  void maybe_finish() {
    if (finished_ || !exited_ || !out_eof_ || !err_eof_) return;
    if (cut_bytes_ && !cap_noted_) {
      cap_noted_ = true;
      log(
          fmt::format("[taskq] output cap of {} bytes per run reached: {} bytes in {} lines not "
                      "logged",
                      cmd_->output_cap, cut_bytes_, cut_lines_));
    }
    if (log_in_flight_ || !log_queue_.empty() || hb_in_flight_) return;
    finished_ = true;
    drain_timer_.cancel();
    comp_.complete(outcome());
  }

  std::string stderr_text() const {
    if (!reported_error_.empty()) return reported_error_;
    std::string s;
    for (auto& l : stderr_tail_) {
      if (!s.empty()) s += '\n';
      s += l;
    }
    return s;
  }

  std::string with_detail(std::string head) const {
    auto d = stderr_text();
    if (d.empty()) return head;
    return head + (reported_error_.empty() ? "; last stderr lines:\n" : ": ") + d;
  }

  run_result outcome() const {
    run_result r = base_result();
    const auto& type = req_.task.type;
    if (wait_error_) {
      r.error = errc::handler_failed;
      r.retryable = true;
      r.message = fmt::format("waiting for the child of task type '{}' failed: {}", type,
                              wait_error_.message());
      return r;
    }
    if (WIFEXITED(status_)) {
      int code = WEXITSTATUS(status_);
      if (code == 0) {
        r.result = result_.value_or(json());
        return r;
      }
      r.error = errc::handler_failed;
      if (limits_.address_space && mentions_allocation_failure(stderr_tail_)) {
        r.retryable = false;
        r.message = with_detail(fmt::format(
            "memory limit exceeded: the child failed to allocate under its address-space limit "
            "of {} bytes (exit code {})",
            limits_.address_space, code));
        return r;
      }
      if (code == cmd_->permanent_exit_code) {
        r.retryable = false;
        r.message = with_detail(fmt::format("child exited with code {} (permanent failure)", code));
      } else if (code == cmd_->retryable_exit_code) {
        r.retryable = true;
        r.message = with_detail(fmt::format("child exited with code {} (retryable failure)", code));
      } else {
        r.retryable = true;
        r.message = with_detail(fmt::format("child exited with code {}", code));
      }
      return r;
    }
    int sig = WIFSIGNALED(status_) ? WTERMSIG(status_) : 0;
    r.error = errc::handler_failed;
    if (sig == SIGXCPU && limits_.cpu_seconds) {
      r.retryable = false;
      r.message =
          fmt::format("CPU time limit exceeded: the child used its {} CPU seconds (SIGXCPU)",
                      limits_.cpu_seconds);
      return r;
    }
    if (limits_.address_space && mentions_allocation_failure(stderr_tail_)) {
      r.retryable = false;
      r.message =
          with_detail(fmt::format("memory limit exceeded: the child failed to allocate under its "
                                  "address-space limit of {} bytes and was killed by {}",
                                  limits_.address_space, signal_name(sig)));
      return r;
    }
    r.retryable = true;
    r.message = fmt::format("child was killed by signal {} ({})", signal_name(sig), sig);
    if (limits_.address_space && (sig == SIGSEGV || sig == SIGABRT || sig == SIGBUS))
      r.message += fmt::format(
          "; it ran with an address-space limit of {} bytes, which it may have exceeded",
          limits_.address_space);
    r.message = with_detail(std::move(r.message));
    return r;
  }

  strand_type strand_;
  run_request req_;
  run_completion comp_;
  std::shared_ptr<const process_command> cmd_;
  std::shared_ptr<detail::process_registry> reg_;
  clock& clock_;
  time_point started_at_;
  pid_t pid_;
  process_limits limits_{};
  bp::basic_process_handle<asio::any_io_executor> handle_;
  asio::writable_pipe in_;
  asio::readable_pipe out_, err_;
  asio::steady_timer kill_timer_, drain_timer_, timeout_timer_;
  std::string payload_;
  std::array<char, 16384> out_buf_{}, err_buf_{};
  std::string out_line_, err_line_;
  std::size_t logged_bytes_ = 0, cut_bytes_ = 0, cut_lines_ = 0;
  std::deque<std::string> stderr_tail_;
  std::optional<json> result_;
  std::string reported_error_;
  std::vector<std::string> log_queue_;
  bool log_in_flight_ = false, cap_noted_ = false;
  std::optional<json> pending_progress_;
  bool hb_in_flight_ = false;
  bool exited_ = false, out_eof_ = false, err_eof_ = false, terminating_ = false, finished_ = false;
  error_code wait_error_;
  int status_ = 0;
};

/// The child's environment: the allowlist, the command's variables, TASKQ_*.
std::vector<std::string> child_environment(const process_command& c, const run_request& req,
                                           std::string& path_list) {
  std::map<std::string, std::string> env;
  for (auto& name : c.inherit_env)
    if (const char* v = ::getenv(name.c_str())) env[name] = v;
  for (auto& [k, v] : c.env) env[k] = v;
  env["TASKQ_TASK_ID"] = req.task.id;
  env["TASKQ_TASK_TYPE"] = req.task.type;
  env["TASKQ_ATTEMPT"] = std::to_string(req.run.attempt);
  auto p = env.find("PATH");
  path_list = p != env.end() ? p->second : "/usr/local/bin:/usr/bin:/bin";
  std::vector<std::string> out;
  out.reserve(env.size());
  for (auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

}  // namespace

// --- process_executor ----------------------------------------------------------------------

process_executor::process_executor(asio::any_io_executor io_ex, process_executor_options opts)
    : executor(io_ex),
      clock_(opts.time ? *opts.time : default_clock()),
      registry_(std::make_shared<detail::process_registry>()) {
  registry_->io_ex = std::move(io_ex);
  // A child that closes stdin early must not kill the worker with SIGPIPE.
  struct sigaction cur {};
  if (::sigaction(SIGPIPE, nullptr, &cur) == 0 && cur.sa_handler == SIG_DFL &&
      !(cur.sa_flags & SA_SIGINFO))
    ::signal(SIGPIPE, SIG_IGN);
}

process_executor::~process_executor() {
  std::lock_guard lock(registry_->mutex);
  for (auto& [run, c] : registry_->live) ::kill(-c.pid, SIGKILL);
}

void process_executor::cancel_all(error_code reason) {
  std::vector<std::function<void(error_code)>> runs;
  {
    std::lock_guard lock(registry_->mutex);
    for (auto& [run, c] : registry_->live) runs.push_back(c.abort);
  }
  for (auto& abort : runs) abort(reason);
}

void process_executor::add(std::string type, process_command cmd, error_code& ec,
                           std::string* detail) {
  std::string msg;
  ec = validate_command(cmd, msg);
  if (ec) {
    if (detail) *detail = msg;
    return;
  }
  std::lock_guard lock(registry_->mutex);
  registry_->commands[std::move(type)] = std::make_shared<const process_command>(std::move(cmd));
}

void process_executor::add(std::string type, process_command cmd) {
  std::string msg;
  if (auto ec = validate_command(cmd, msg)) throw error(ec, msg);
  std::lock_guard lock(registry_->mutex);
  registry_->commands[std::move(type)] = std::make_shared<const process_command>(std::move(cmd));
}

bool process_executor::has_command(const std::string& type) const {
  std::lock_guard lock(registry_->mutex);
  return registry_->commands.count(type) != 0;
}

std::size_t process_executor::children() const {
  std::lock_guard lock(registry_->mutex);
  return registry_->live.size();
}

void process_executor::do_wait_children(asio::any_completion_handler<void()> h) {
  {
    std::lock_guard lock(registry_->mutex);
    if (!registry_->live.empty()) {
      registry_->waiters.push_back(std::move(h));
      return;
    }
  }
  detail::post_completion(std::move(h), get_executor());
}

run_promise process_executor::do_execute(run_request&& req) {
  std::shared_ptr<const process_command> cmd;
  {
    std::lock_guard lock(registry_->mutex);
    req.run.run_id = ++registry_->next_run_id;
    auto it = registry_->commands.find(req.task.type);
    if (it != registry_->commands.end()) cmd = it->second;
  }
  run_completion comp(req.run, get_executor());
  auto promise = comp.get_promise();
  auto started = clock_.now();
  auto fail = [&](std::string message, bool retryable) {
    run_result r;
    r.error = errc::handler_failed;
    r.message = std::move(message);
    r.retryable = retryable;
    r.stats.started_at = r.stats.finished_at = started;
    comp.complete(std::move(r));
    return promise;
  };
  if (!cmd) {
    run_result r;
    r.error = errc::handler_not_found;
    r.message = fmt::format("no command is registered for task type '{}'", req.task.type);
    comp.complete(std::move(r));
    return promise;
  }
  if (comp.done()) return promise;

  std::string limits_msg;
  auto limits = limits_for(*cmd, req.task.metadata, limits_msg);
  if (!limits_msg.empty()) return fail(limits_msg, false);

  start_plan plan;
  std::string path_list;
  plan.env = child_environment(*cmd, req, path_list);
  if (cmd->shell) {
    plan.path = "/bin/sh";
    plan.argv = {"/bin/sh", "-c", cmd->argv[0], "taskq-" + req.task.type};
    plan.argv.insert(plan.argv.end(), cmd->argv.begin() + 1, cmd->argv.end());
  } else {
    plan.argv = cmd->argv;
    const auto& program = cmd->argv[0];
    if (program.find('/') != std::string::npos) {
      plan.path = program;
    } else {
      plan.path = find_in_path(program, path_list);
      if (plan.path.empty())
        return fail(fmt::format("cannot start the command of task type '{}': '{}' was not found "
                                "in PATH ({})",
                                req.task.type, program, path_list),
                    false);
    }
  }
  plan.cwd = cmd->working_directory.string();
  plan.limits = limits;
  plan.pdeathsig = cmd->parent_death_signal;

  error_code ec;
  std::string what;
  auto child = start_child(plan, ec, what);
  if (child.pid < 0) {
    std::string where =
        what == "chdir" ? fmt::format(" (working directory '{}')", plan.cwd) : std::string();
    return fail(fmt::format("cannot start the command of task type '{}' ('{}'): {} failed{}: {}",
                            req.task.type, plan.path, what, where, ec.message()),
                !permanent_start_error(ec.value()));
  }
  auto strand = asio::make_strand(get_executor());
  auto run = std::make_shared<child_run>(std::move(req), comp, std::move(cmd), registry_, clock_,
                                         started, child, strand);
  run->start(limits);
  return promise;
}

}  // namespace taskq
