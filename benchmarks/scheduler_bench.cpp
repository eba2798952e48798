// Scheduler benchmark:
//   - memory and setup time for 100,000 cron schedules (scheduler + in-memory schedule store);
//   - next-due computation rate over those schedules;
//   - lateness (due -> enqueued) of 1,000 schedules firing in the same second on the REAL
//     clock, against a baseline measured in the same run: 1,000 individual asio::steady_timers
//     expiring at one instant (due -> handler runs), and the ratio of the p99s.
//
//   taskq_scheduler_bench          human-readable lines
//   taskq_scheduler_bench --json   one {"name":...,"value":...,"unit":...} object per line
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/detail/schedule_state.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool json_out = false;

void report(const std::string& name, double value, const char* unit) {
  if (json_out) {
    std::printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  } else {
    std::printf("%-58s %12.4g %s\n", name.c_str(), value, unit);
  }
  std::fflush(stdout);
}

std::size_t heap_in_use() {
  auto m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

double us(taskq::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// A varied mix of cron expressions (UTC and two DST zones).
taskq::schedule cron_schedule(std::size_t i) {
  static const char* zones[] = {"UTC", "Europe/Berlin", "America/New_York"};
  std::string expr;
  switch (i % 4) {
    case 0:
      expr = std::to_string(i % 60) + " " + std::to_string(i % 24) + " * * *";
      break;
    case 1:
      expr = "*/" + std::to_string(1 + i % 30) + " * * * *";
      break;
    case 2:
      expr = std::to_string(i % 60) + " 9-17 * * MON-FRI";
      break;
    default:
      expr = "0 0 " + std::to_string(1 + i % 28) + " * *";
      break;
  }
  return {.name = "cron-" + std::to_string(i),
          .task = {.type = "bench"},
          .cron = expr,
          .time_zone = zones[i % 3]};
}

template <class Pred>
void run_until(asio::io_context& io, Pred pred) {
  while (!pred()) {
    io.restart();
    if (io.run_one() == 0) break;
  }
}

void setup_and_next_due() {
  constexpr std::size_t n = 100'000;
  asio::io_context io;
  taskq::manual_clock clk;
  taskq::memory::queue q(io.get_executor(), clk);
  taskq::memory::store s(io.get_executor());
  taskq::client c(io.get_executor(), q, s, {.time = &clk});
  std::vector<taskq::schedule> defs;
  defs.reserve(n);
  for (std::size_t i = 0; i < n; ++i) defs.push_back(cron_schedule(i));

  malloc_trim(0);
  const auto heap0 = heap_in_use();
  taskq::memory::schedule_store store(io.get_executor());
  taskq::scheduler sched(c, {.store = &store, .track_existing_runs = false});
  const auto t0 = steady::now();
  std::size_t done = 0, failed = 0;
  for (auto& d : defs) {
    sched.async_ensure_schedule(d, [&](taskq::error_code ec, taskq::ensure_result) {
      ++done;
      if (ec) ++failed;
    });
  }
  run_until(io, [&] { return done == n; });
  sched.async_run([](taskq::error_code) {});
  io.restart();
  io.poll();
  const auto t1 = steady::now();
  const auto heap1 = heap_in_use();
  report("setup: ensure_schedule 100,000 cron schedules",
         std::chrono::duration<double>(t1 - t0).count(), "s");
  report("setup: failures", static_cast<double>(failed), "count");
  report("memory: scheduler + memory store, per schedule", static_cast<double>(heap1 - heap0) / n,
         "bytes");
  report("memory: scheduler + memory store, 100,000 schedules",
         static_cast<double>(heap1 - heap0) / (1024.0 * 1024.0), "MiB");
  report("clock waits armed for 100,000 schedules", static_cast<double>(clk.pending_waits()),
         "count");
  sched.stop();
  io.restart();
  io.poll();

  // Next-due rate: the timing rule of every schedule, each asked for its next occurrence.
  std::vector<taskq::detail::schedule_timing> timings;
  timings.reserve(n);
  for (auto& d : defs) timings.emplace_back(d);
  auto t = clk.now();
  std::size_t calls = 0;
  std::int64_t sink = 0;
  const auto b0 = steady::now();
  while (steady::now() - b0 < 1s) {
    for (auto& tm : timings) {
      if (auto next = tm.next_after(t)) sink += next->time_since_epoch().count() & 1;
      ++calls;
    }
    t += 37min;
  }
  const auto b1 = steady::now();
  report("next-due computations (mixed cron, 3 zones)",
         calls / std::chrono::duration<double>(b1 - b0).count(), "per s");
  if (sink == 42) std::printf(" ");
}

struct lateness {
  double p50, p99, max;
};

// 1,000 one-shot schedules due at the same instant, on the real clock.
lateness scheduler_round(int round) {
  constexpr std::size_t n = 1000;
  asio::io_context io;
  taskq::memory::queue q(io.get_executor());
  taskq::memory::store s(io.get_executor());
  taskq::client c(io.get_executor(), q, s);
  taskq::scheduler sched(c, {.track_existing_runs = false});
  const auto due = std::chrono::ceil<std::chrono::seconds>(std::chrono::system_clock::now()) + 1s;
  std::size_t ensured = 0;
  for (std::size_t i = 0; i < n; ++i) {
    sched.async_ensure_schedule({.name = "r" + std::to_string(round) + "-" + std::to_string(i),
                                 .task = {.type = "bench"},
                                 .at = due},
                                [&](taskq::error_code, taskq::ensure_result) { ++ensured; });
  }
  run_until(io, [&] { return ensured == n; });
  bool stopped = false;
  sched.async_run([&](taskq::error_code) { stopped = true; });
  // Run (without polling anything between handlers) until well after the due time.
  io.restart();
  io.run_until(
      steady::now() +
      std::chrono::duration_cast<steady::duration>(due - std::chrono::system_clock::now()) + 300ms);
  auto m = sched.metrics();
  if (m.totals.fired != n)
    std::fprintf(stderr, "round %d: only %llu fired\n", round,
                 static_cast<unsigned long long>(m.totals.fired));
  sched.stop();
  run_until(io, [&] { return stopped; });
  return {us(m.lateness.p50), us(m.lateness.p99), us(m.lateness.max)};
}

// The baseline: 1,000 steady_timers expiring at one instant; lateness = handler time - due.
lateness baseline_round() {
  constexpr std::size_t n = 1000;
  asio::io_context io;
  const auto due = steady::now() + 300ms;
  std::vector<std::unique_ptr<asio::steady_timer>> timers;
  std::vector<double> late;
  late.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    timers.push_back(std::make_unique<asio::steady_timer>(io, due));
    timers.back()->async_wait([&](boost::system::error_code) {
      late.push_back(std::chrono::duration<double, std::micro>(steady::now() - due).count());
    });
  }
  io.run();
  std::sort(late.begin(), late.end());
  return {late[n / 2], late[n * 99 / 100], late.back()};
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--json") json_out = true;

  setup_and_next_due();

  constexpr int rounds = 5;
  std::vector<double> sp50, sp99, smax, bp50, bp99, bmax;
  for (int r = 0; r < rounds; ++r) {
    auto s = scheduler_round(r);
    auto b = baseline_round();
    sp50.push_back(s.p50), sp99.push_back(s.p99), smax.push_back(s.max);
    bp50.push_back(b.p50), bp99.push_back(b.p99), bmax.push_back(b.max);
  }
  report("lateness p50, 1,000 schedules due at once (median of 5)", median(sp50), "us");
  report("lateness p99, 1,000 schedules due at once (median of 5)", median(sp99), "us");
  report("lateness max, 1,000 schedules due at once (median of 5)", median(smax), "us");
  report("baseline p50, 1,000 steady_timers (median of 5)", median(bp50), "us");
  report("baseline p99, 1,000 steady_timers (median of 5)", median(bp99), "us");
  report("baseline max, 1,000 steady_timers (median of 5)", median(bmax), "us");
  report("lateness p99 ratio scheduler / steady_timers", median(sp99) / median(bp99), "x");
  return 0;
}
