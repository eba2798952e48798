// Short child processes per second through process_executor (a no-op child, /bin/true by
// default) beside posix_spawn + waitpid of the same program, in the same run, at the same
// number of children in flight; rounds alternate and the medians are reported with their
// ratio (target >= 0.7).
//
//   taskq_process_bench [--json] [--runs N] [--rounds R] [--inflight K] [--program PATH]
#include "bench_report.hpp"

#include <taskq/process_executor.hpp>

#include <boost/asio/io_context.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

namespace {

namespace asio = boost::asio;
using taskq_bench::report;
using taskq_bench::seconds_since;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// posix_spawn + waitpid, keeping `inflight` children running.
double spawn_rate(const std::string& program, int runs, int inflight) {
  char* argv[] = {const_cast<char*>(program.c_str()), nullptr};
  auto t0 = std::chrono::steady_clock::now();
  int started = 0, finished = 0, live = 0;
  while (finished < runs) {
    while (started < runs && live < inflight) {
      pid_t pid;
      if (posix_spawn(&pid, program.c_str(), nullptr, nullptr, argv, environ) != 0) {
        std::perror("posix_spawn");
        std::exit(1);
      }
      ++started;
      ++live;
    }
    int status = 0;
    if (::waitpid(-1, &status, 0) > 0) {
      ++finished;
      --live;
    }
  }
  return runs / seconds_since(t0);
}

/// The same through process_executor on a one-thread io_context.
double executor_rate(const std::string& program, int runs, int inflight) {
  asio::io_context io;
  taskq::process_executor ex(io.get_executor());
  ex.add("noop", {.argv = {program}, .inherit_env = {"PATH"}});
  auto t0 = std::chrono::steady_clock::now();
  int started = 0, finished = 0;
  std::vector<taskq::run_promise> live;
  auto start_more = [&] {
    while (started < runs && static_cast<int>(live.size()) < inflight) {
      taskq::run_request req;
      req.task.id = std::to_string(started);
      req.task.type = "noop";
      req.run.task_id = req.task.id;
      live.push_back(ex.execute(std::move(req)));
      ++started;
    }
  };
  start_more();
  while (finished < runs) {
    io.run_one();
    for (auto it = live.begin(); it != live.end();) {
      if (it->done()) {
        if (!it->result()->ok()) {
          std::fprintf(stderr, "run failed: %s\n", it->result()->message.c_str());
          std::exit(1);
        }
        ++finished;
        it = live.erase(it);
      } else {
        ++it;
      }
    }
    start_more();
  }
  double rate = runs / seconds_since(t0);
  while (ex.children() != 0) io.run_one();
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 2000, rounds = 5;
  std::vector<int> inflights{1, 8};
  std::string program = "/bin/true";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--json")
      taskq_bench::json_output = true;
    else if (a == "--runs")
      runs = std::stoi(next());
    else if (a == "--rounds")
      rounds = std::stoi(next());
    else if (a == "--inflight")
      inflights = {std::stoi(next())};
    else if (a == "--program")
      program = next();
    else {
      std::fprintf(stderr,
                   "usage: taskq_process_bench [--json] [--runs N] [--rounds R] [--inflight K] "
                   "[--program PATH]\n");
      return 2;
    }
  }
  for (int k : inflights) {
    std::vector<double> ex_rates, sp_rates, ratios;
    executor_rate(program, std::min(runs, 200), k);  // warm-up
    for (int r = 0; r < rounds; ++r) {
      double s = spawn_rate(program, runs, k);
      double e = executor_rate(program, runs, k);
      sp_rates.push_back(s);
      ex_rates.push_back(e);
      ratios.push_back(e / s);
    }
    report(fmt::format("process_executor {} (in flight {}), median of {}", program, k, rounds),
           median(ex_rates), "runs/s");
    report(fmt::format("posix_spawn+waitpid {} (in flight {}), median of {}", program, k, rounds),
           median(sp_rates), "runs/s");
    report(fmt::format("ratio executor/posix_spawn (in flight {}), median of {}", k, rounds),
           median(ratios), "x");
  }
}
