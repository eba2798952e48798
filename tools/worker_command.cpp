// taskq worker: a long-running worker process whose tasks run as child processes
// (process_executor), on a file store or on PostgreSQL. Its argument parsing is its own.
#include "target.hpp"

#include <taskq/backends/file/store.hpp>
#include <taskq/client.hpp>
#include <taskq/duration.hpp>
#include <taskq/process_executor.hpp>
#include <taskq/worker.hpp>
#if TASKQ_TOOL_POSTGRES
#include <taskq/backends/postgres/backend.hpp>
#endif

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <csignal>
#include <iostream>
#include <mutex>
#include <optional>

namespace taskq::tool {

namespace {

constexpr std::string_view worker_usage =
    "usage: taskq worker STORE --type T [--type T2]... [--queue Q]... [--concurrency N]\n"
    "                    [--timeout D] [--memory BYTES] [--cpu SECONDS] [--grace D]\n"
    "                    [--drain-timeout D] [--shell] [--json] --exec CMD [ARGS...]\n"
    "  STORE is a file store directory (created if missing; the worker holds its lock) or a\n"
    "  PostgreSQL connection string (postgresql://... or key=value ...).\n"
    "  Everything after --exec is the child's argv (with --shell: one shell command).\n"
    "  SIGTERM/SIGINT drain (running tasks get --drain-timeout, default 30s); a second signal\n"
    "  stops at once: running children are terminated and their tasks return to pending (the\n"
    "  interrupted attempt counts).\n";

struct worker_args {
  std::string store;
  std::vector<std::string> types;
  std::vector<std::string> queues;
  std::size_t concurrency = 4;
  duration timeout{};
  std::uint64_t memory = 0;
  std::uint64_t cpu = 0;
  duration grace = std::chrono::seconds(5);
  duration drain = std::chrono::seconds(30);
  bool shell = false;
  bool json = false;
  std::vector<std::string> exec;
};

std::uint64_t to_count(const std::string& opt, const std::string& v, std::uint64_t min) {
  std::size_t n = 0;
  unsigned long long x = 0;
  try {
    x = std::stoull(v, &n);
  } catch (const std::exception&) {
    n = 0;
  }
  if (n == 0 || n != v.size() || v[0] == '-' || x < min)
    throw usage_error(fmt::format("--{} must be an integer of at least {}, got '{}'", opt, min, v));
  return x;
}

duration to_duration(const std::string& opt, const std::string& v) {
  error_code ec;
  auto d = parse_duration(v, ec);
  if (ec) throw usage_error(fmt::format("--{}: {} ('{}')", opt, ec.message(), v));
  return d;
}

worker_args parse_worker_args(const args& a) {
  worker_args w;
  std::size_t i = 0;
  auto value = [&](const std::string& opt) -> const std::string& {
    if (i + 1 >= a.size()) throw usage_error("option --" + opt + " needs a value");
    return a[++i];
  };
  for (; i < a.size(); ++i) {
    const auto& s = a[i];
    if (s == "--exec") {
      w.exec.assign(a.begin() + static_cast<std::ptrdiff_t>(i) + 1, a.end());
      break;
    }
    if (s.rfind("--", 0) != 0) {
      if (!w.store.empty()) throw usage_error("unexpected argument '" + s + "'");
      w.store = s;
      continue;
    }
    auto opt = s.substr(2);
    if (opt == "type") {
      w.types.push_back(value(opt));
    } else if (opt == "queue") {
      w.queues.push_back(value(opt));
    } else if (opt == "concurrency") {
      w.concurrency = to_count(opt, value(opt), 1);
    } else if (opt == "timeout") {
      w.timeout = to_duration(opt, value(opt));
    } else if (opt == "memory") {
      w.memory = to_count(opt, value(opt), 1);
    } else if (opt == "cpu") {
      w.cpu = to_count(opt, value(opt), 1);
    } else if (opt == "grace") {
      w.grace = to_duration(opt, value(opt));
    } else if (opt == "drain-timeout") {
      w.drain = to_duration(opt, value(opt));
    } else if (opt == "shell") {
      w.shell = true;
    } else if (opt == "json") {
      w.json = true;
    } else {
      throw usage_error("unknown option " + s);
    }
  }
  if (w.store.empty()) throw usage_error("worker needs a STORE (directory or conninfo)");
  if (w.types.empty()) throw usage_error("worker needs --type");
  if (w.exec.empty()) throw usage_error("worker needs --exec CMD [ARGS...] (last)");
  if (w.shell && w.exec.size() != 1)
    throw usage_error("--shell takes one command string after --exec");
  if (w.queues.empty()) w.queues.push_back("default");
  return w;
}

/// Prints one line per task start and finish.
class event_printer {
 public:
  event_printer(std::ostream& err, bool json) : err_(err), json_(json) {}

  void operator()(const event& e) {
    if (e.kind == event_kind::enqueued || e.kind == event_kind::progress) return;
    std::string line;
    if (json_) {
      taskq::json j{
          {"event", to_string(e.kind)}, {"id", e.task_id},      {"type", e.type},
          {"queue", e.queue},           {"attempt", e.attempt}, {"at", format_time(e.at)}};
      if (!e.message.empty()) j["message"] = e.message;
      if (e.retry_at) j["retry_at"] = format_time(*e.retry_at);
      line = j.dump();
    } else {
      line = fmt::format("taskq worker: {} {} {} type={} queue={} attempt={}", format_time(e.at),
                         to_string(e.kind), e.task_id, e.type, e.queue, e.attempt);
      if (e.retry_at) line += " retry_at=" + format_time(*e.retry_at);
      if (!e.message.empty()) line += ": " + e.message;
    }
    std::lock_guard lock(mutex_);
    err_ << line << std::endl;
  }

 private:
  std::ostream& err_;
  bool json_;
  std::mutex mutex_;
};

}  // namespace

int worker_command(const args& a, std::ostream& out, std::ostream& err) {
  for (auto& s : a) {
    if (s == "--exec") break;
    if (s == "--help" || s == "-h") {
      out << worker_usage;
      return 0;
    }
  }
  worker_args w;
  try {
    w = parse_worker_args(a);
  } catch (const usage_error& e) {
    err << "taskq worker: " << e.what() << "\n" << worker_usage;
    return 2;
  }

  asio::io_context io;
  owned_store st;
  if (int rc = open_owned(io.get_executor(), w.store, "worker", false, st, err)) return rc;
  error_code ec;
  std::string detail;

  client c(io.get_executor(), *st.queue, *st.store);
  process_executor ex(io.get_executor());
  process_command cmd{.argv = w.exec,
                      .shell = w.shell,
                      .limits = {.address_space = w.memory, .cpu_seconds = w.cpu},
                      .timeout = w.timeout,
                      .kill_grace = w.grace};
  for (auto& t : w.types) {
    ex.add(t, cmd, ec, &detail);
    if (ec) {
      err << "taskq worker: " << detail << "\n";
      return 2;
    }
  }
  event_printer printer(err, w.json);
  c.subscribe([&printer](const event& e) { printer(e); });

  std::unique_ptr<worker> wk;
  try {
    wk = std::make_unique<worker>(
        c, ex,
        worker_options{
            .queues = w.queues, .max_in_flight = w.concurrency, .drain_timeout = w.drain});
  } catch (const error& e) {
    err << "taskq worker: " << e.what() << "\n";
    return 2;
  }

  asio::signal_set signals(io, SIGTERM, SIGINT);
  int signals_seen = 0;
  std::function<void()> arm = [&] {
    signals.async_wait([&](error_code e, int sig) {
      if (e) return;
      ++signals_seen;
      if (signals_seen == 1) {
        err << "taskq worker: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
            << ": draining (a second signal stops at once)" << std::endl;
        wk->stop();
      } else {
        // Ends the drain now: running children are stopped and their tasks return to pending
        // (the interrupted attempt does not count).
        err << "taskq worker: stopping at once; running tasks are cancelled and return to "
               "pending"
            << std::endl;
        wk->stop(std::chrono::seconds(0));
      }
      arm();
    });
  };
  arm();

  int rc = 0;
  bool done = false;
  err << fmt::format("taskq worker: serving type {} on queue {} ({} at once)",
                     fmt::join(w.types, ","), fmt::join(w.queues, ","), w.concurrency)
      << std::endl;
  wk->async_run([&](error_code e) {
    if (e) {
      err << "taskq worker: " << e.message() << "\n";
      rc = 1;
    }
    // Children of runs cancelled by the drain may still be in their grace period.
    ex.async_wait_children([&] {
      done = true;
      signals.cancel();
    });
  });
  while (!done) io.run_one();
  wk.reset();
  return rc;
}

}  // namespace taskq::tool
