// File backend benchmark: durable enqueue+process throughput (sync and none modes, with the
// in-memory backend as the baseline in the same run), recovery time of a store holding
// 1,000,000 pending tasks, journal bytes per task, disk use after compaction, and disk use
// under churn (peak directory size against the live data, the baseline; see churn_run).
//
//   taskq_file_bench [--json] [--dir DIR] [--tasks N] [--producers P] [--batch B]
//                    [--recovery-tasks N] [--churn-backlog N] [--churn-seconds S]
//                    [--only throughput|recovery|churn|generate] [--recover STORE_DIR]
//
// --only generate writes the recovery scenario's journal store to DIR/recovery and keeps it;
// --recover STORE_DIR only times opening an existing store (recovery after a restart, in a
// fresh process, whose heap is not shaped by the store that wrote it as in --only recovery).
//
// Enqueue+process: P producer threads each enqueue batches of B tasks (client.enqueue_batch:
// one store insert, one journal append per batch) while one worker runs them (a trivial
// handler); the clock stops when every task has succeeded. --json prints one
// {"name","value","unit"} object per line.
#include <taskq/backends/file/store.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <thread>

using namespace taskq;
namespace fs = std::filesystem;
using clk = std::chrono::steady_clock;

namespace {

bool as_json = false;

void emit(const std::string& name, double value, const std::string& unit) {
  if (as_json)
    std::cout << json{{"name", name}, {"value", value}, {"unit", unit}}.dump() << std::endl;
  else
    std::cout << fmt::format("{:<44} {:>14.1f} {}", name, value, unit) << std::endl;
}

struct run_figures {
  double tasks_per_s = 0;
  double syncs_per_s = 0;
  double records_per_sync = 0;
};

/// Enqueue+process `n` tasks through `q`/`s` on `io` (run by 2 threads).
double enqueue_and_process(asio::io_context& io, taskq::queue& q, taskq::store& s, std::size_t n,
                           int producers, std::size_t batch) {
  client c(io.get_executor(), q, s);
  local_executor exec(io.get_executor(), {.threads = 1});
  exec.handle("noop", [](task_context&) {});
  worker w(c, exec, {.max_in_flight = 4096, .reserve_batch = 1024});
  auto ran = w.async_run(asio::use_future);
  auto start = clk::now();
  std::vector<std::thread> ps;
  for (int p = 0; p < producers; ++p) {
    ps.emplace_back([&, p] {
      std::size_t mine = n / static_cast<std::size_t>(producers) +
                         (static_cast<std::size_t>(p) < n % static_cast<std::size_t>(producers));
      while (mine > 0) {
        auto k = std::min(mine, batch);
        std::vector<task_spec> specs(k, task_spec{.type = "noop", .max_attempts = 3});
        c.enqueue_batch(std::move(specs));
        mine -= k;
      }
    });
  }
  for (auto& t : ps) t.join();
  for (;;) {
    auto counts = s.async_counts(asio::use_future).get();
    if (counts.total[static_cast<std::size_t>(task_status::succeeded)] >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  double secs = std::chrono::duration<double>(clk::now() - start).count();
  w.stop();
  ran.get();  // the worker may be destroyed only after async_run completed
  return secs;
}

struct io_threads {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::vector<std::thread> ts;
  io_threads() {
    for (int i = 0; i < 2; ++i) ts.emplace_back([this] { io.run(); });
  }
  ~io_threads() {
    work.reset();
    io.stop();
    for (auto& t : ts) t.join();
  }
};

run_figures file_run(const fs::path& dir, file::durability mode, std::size_t n, int producers,
                     std::size_t batch) {
  fs::remove_all(dir);
  io_threads it;
  auto b =
      file::backend::open(it.io.get_executor(), dir, {.mode = mode, .retention = duration::zero()});
  auto secs = enqueue_and_process(it.io, b->queue(), b->store(), n, producers, batch);
  auto info = b->info();
  b->close();
  run_figures f;
  f.tasks_per_s = double(n) / secs;
  f.syncs_per_s = double(info.journal.syncs) / secs;
  f.records_per_sync =
      info.journal.syncs ? double(info.journal.records) / double(info.journal.syncs) : 0;
  return f;
}

struct churn_figures {
  double tasks_per_s = 0;
  double live_mb = 0;      // mean of the samples
  double peak_dir_mb = 0;  // largest directory size seen
  double peak_ratio = 0;   // largest (directory size / live data) over the samples
  double mean_ratio = 0;   // mean of (directory size / live data) over the samples
  std::uint64_t compactions = 0;
};

std::uint64_t directory_bytes(const fs::path& dir) {
  std::uint64_t n = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code fe;  // a file may vanish under us (compaction): skip it
    auto size = it->file_size(fe);
    if (!fe) n += size;
  }
  return n;
}

/// Churn: one worker processes tasks while a producer keeps `backlog` tasks ready; finished
/// tasks are pruned after `retention`, and compaction runs on its own with the default
/// thresholds. Samples the directory size (every file in it, temporaries included) and the
/// store's live data estimate every 5 ms for `seconds`, after a warm-up that lasts until the
/// first compaction (before it, the live estimate is a fixed guess, not a measurement).
churn_figures churn_run(const fs::path& dir, std::size_t backlog, double seconds,
                        duration retention) {
  fs::remove_all(dir);
  io_threads it;
  auto b = file::backend::open(it.io.get_executor(), dir,
                               {.mode = file::durability::none, .retention = retention});
  client c(it.io.get_executor(), b->queue(), b->store());
  local_executor exec(it.io.get_executor(), {.threads = 1});
  std::atomic<std::uint64_t> processed{0};
  exec.handle("noop", [&](task_context&) { processed.fetch_add(1, std::memory_order_relaxed); });
  worker w(c, exec, {.max_in_flight = 4096, .reserve_batch = 1024});
  auto ran = w.async_run(asio::use_future);
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    while (!stop) {
      auto st = b->queue().async_stats("default", asio::use_future).get();
      if (st.ready + st.delayed >= backlog) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      std::vector<task_spec> specs(std::min<std::size_t>(backlog - st.ready - st.delayed, 1000),
                                   task_spec{.type = "noop", .max_attempts = 3});
      c.enqueue_batch(std::move(specs));
    }
  });
  churn_figures f;
  for (auto t0 = clk::now();
       b->info().compactions == 0 && clk::now() - t0 < std::chrono::minutes(1);)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto before = processed.load();
  auto start = clk::now();
  double live_sum = 0, ratio_sum = 0;
  std::size_t samples = 0;
  while (std::chrono::duration<double>(clk::now() - start).count() < seconds) {
    auto live = double(b->info().live_bytes);
    auto disk = double(directory_bytes(dir));
    live_sum += live;
    ++samples;
    f.peak_dir_mb = std::max(f.peak_dir_mb, disk / 1e6);
    if (live > 0) {
      f.peak_ratio = std::max(f.peak_ratio, disk / live);
      ratio_sum += disk / live;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  f.tasks_per_s = double(processed.load() - before) / seconds;
  f.live_mb = samples ? live_sum / double(samples) / 1e6 : 0;
  f.mean_ratio = samples ? ratio_sum / double(samples) : 0;
  f.compactions = b->info().compactions;
  stop = true;
  producer.join();
  w.stop();
  ran.get();  // the worker may be destroyed only after async_run completed
  b->close();
  return f;
}

double memory_run(std::size_t n, int producers, std::size_t batch) {
  io_threads it;
  memory::queue q(it.io.get_executor());
  memory::store s(it.io.get_executor());
  return double(n) / enqueue_and_process(it.io, q, s, n, producers, batch);
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = fs::current_path() / "taskq-file-bench";
  std::size_t tasks = 200000, recovery_tasks = 1000000, batch = 500;
  int producers = 4;
  std::size_t churn_backlog = 100000;
  double churn_seconds = 10;
  std::string only;  // empty: every scenario
  fs::path recover_dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--json")
      as_json = true;
    else if (a == "--dir")
      dir = next();
    else if (a == "--tasks")
      tasks = std::stoull(next());
    else if (a == "--producers")
      producers = std::stoi(next());
    else if (a == "--batch")
      batch = std::stoull(next());
    else if (a == "--recovery-tasks")
      recovery_tasks = std::stoull(next());
    else if (a == "--churn-backlog")
      churn_backlog = std::stoull(next());
    else if (a == "--churn-seconds")
      churn_seconds = std::stod(next());
    else if (a == "--recover")
      recover_dir = next();
    else if (a == "--only")
      only = next();
    else {
      std::cerr << "usage: taskq_file_bench [--json] [--dir DIR] [--tasks N] [--producers P] "
                   "[--batch B] [--recovery-tasks N] [--churn-backlog N] [--churn-seconds S] "
                   "[--only throughput|recovery|churn|generate] [--recover STORE_DIR]\n";
      return 2;
    }
  }
  if (!recover_dir.empty()) {  // time opening an existing store, in this fresh process
    io_threads it;
    auto t0 = clk::now();
    auto c0 = std::clock();
    auto b = file::backend::open(it.io.get_executor(), recover_dir,
                                 {.retention = duration::zero(), .compact_min_bytes = 0});
    double secs = std::chrono::duration<double>(clk::now() - t0).count();
    emit(
        fmt::format("recovery of an existing store ({} tasks, fresh process)", b->recovery().tasks),
        secs * 1000, "ms");
    emit("recovery of an existing store, CPU time",
         double(std::clock() - c0) * 1000 / CLOCKS_PER_SEC, "ms");
    return 0;
  }
  fs::create_directories(dir);

  auto wanted = [&](const char* name) { return only.empty() || only == name; };

  // --- throughput ---
  if (wanted("throughput")) {
    auto mem = memory_run(tasks, producers, batch);
    emit("memory: enqueue+process", mem, "tasks/s");
    auto sync = file_run(dir / "sync", file::durability::sync, tasks, producers, batch);
    emit("file sync: enqueue+process", sync.tasks_per_s, "tasks/s");
    emit("file sync: fsyncs", sync.syncs_per_s, "fsyncs/s");
    emit("file sync: records per fsync", sync.records_per_sync, "records");
    emit("file sync: ratio to memory", sync.tasks_per_s / mem, "x");
    auto none = file_run(dir / "none", file::durability::none, tasks, producers, batch);
    emit("file none: enqueue+process", none.tasks_per_s, "tasks/s");
    emit("file none: ratio to memory", none.tasks_per_s / mem, "x");
  }

  // --- recovery of a store holding 1,000,000 pending tasks ---
  auto generate = [&](const fs::path& rdir) {
    fs::remove_all(rdir);
    io_threads it;
    auto b = file::backend::open(
        it.io.get_executor(), rdir,
        {.mode = file::durability::none, .retention = duration::zero(), .compact_min_bytes = 0});
    auto now = std::chrono::system_clock::now();
    for (std::size_t done = 0; done < recovery_tasks;) {
      auto k = std::min<std::size_t>(recovery_tasks - done, 10000);
      std::vector<task_record> rs;
      rs.reserve(k);
      for (std::size_t i = 0; i < k; ++i)
        rs.push_back(make_record({.type = "noop", .payload = json{{"n", done + i}}}, now));
      b->store().async_insert(std::move(rs), asio::use_future).get();
      done += k;
    }
    b->close();
  };
  if (only == "generate") {  // a journal store for --recover in a fresh process; kept
    generate(dir / "recovery");
    std::cout << (dir / "recovery").string() << std::endl;
    return 0;
  }
  if (wanted("recovery")) {
    auto rdir = dir / "recovery";
    generate(rdir);
    std::uint64_t journal_bytes = 0;
    for (auto& e : fs::directory_iterator(rdir))
      if (e.path().extension() == ".log") journal_bytes += e.file_size();
    emit("journal bytes per task (insert record)", double(journal_bytes) / double(recovery_tasks),
         "bytes");
    auto recover = [&](io_threads& it, const char* name) {
      auto t0 = clk::now();
      auto c0 = std::clock();
      auto b = file::backend::open(it.io.get_executor(), rdir,
                                   {.retention = duration::zero(), .compact_min_bytes = 0});
      double secs = std::chrono::duration<double>(clk::now() - t0).count();
      emit(fmt::format("recovery of {} pending tasks ({})", recovery_tasks, name), secs * 1000,
           "ms");
      emit(fmt::format("recovery of {} pending tasks ({}), CPU time", recovery_tasks, name),
           double(std::clock() - c0) * 1000 / CLOCKS_PER_SEC, "ms");
      return b;
    };
    {
      io_threads it;  // outlives the backend (its completions run there)
      auto b = recover(it, "journal");
      auto before = b->info();
      // A producer enqueues one task at a time (sync mode) before and during the compaction:
      // how long a compaction holds writes up, against the same producer's latency without one.
      std::atomic<int> phase{0};  // 0: baseline, 1: compacting, 2: stop
      std::vector<double> quiet_us, compacting_us;
      std::thread producer([&] {
        for (std::size_t i = 0; phase != 2; ++i) {
          auto r = make_record({.type = "t", .id = fmt::format("stall-{:09}", i)},
                               std::chrono::system_clock::now());
          auto t = clk::now();
          b->store().async_insert({std::move(r)}, asio::use_future).get();
          double us = std::chrono::duration<double, std::micro>(clk::now() - t).count();
          (phase == 0 ? quiet_us : compacting_us).push_back(us);
        }
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      phase = 1;
      error_code ec;
      std::string d;
      auto t0 = clk::now();
      b->compact(ec, &d);
      auto compact_ms = std::chrono::duration<double>(clk::now() - t0).count() * 1000;
      phase = 2;
      producer.join();
      if (ec) std::cerr << "compaction failed: " << d << "\n";
      emit(fmt::format("compaction ({} live tasks)", recovery_tasks), compact_ms, "ms");
      auto max_of = [](const std::vector<double>& v) {
        return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
      };
      auto median = [](std::vector<double> v) {
        if (v.empty()) return 0.0;
        std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
        return v[v.size() / 2];
      };
      emit("enqueue latency without compaction, p50 (baseline)", median(quiet_us), "us");
      emit("enqueue latency without compaction, max (baseline)", max_of(quiet_us), "us");
      emit("enqueue latency during compaction, p50", median(compacting_us), "us");
      emit("enqueue latency during compaction, max (write stall)", max_of(compacting_us), "us");
      emit("write stall / baseline max", max_of(compacting_us) / std::max(1.0, max_of(quiet_us)),
           "x");
      emit("enqueues completed during compaction", double(compacting_us.size()), "enqueues");
      auto after = b->info();
      emit("disk before compaction", double(before.journal_bytes + before.snapshot_bytes) / 1e6,
           "MB");
      emit("disk after compaction", double(after.journal_bytes + after.snapshot_bytes) / 1e6, "MB");
      b->close();
    }
    {
      io_threads it;
      recover(it, "snapshot")->close();
    }
  }

  // --- disk use under churn (enqueue, process, prune, compact, continuously) ---
  if (wanted("churn")) {
    auto retention = std::chrono::seconds(1);
    auto f = churn_run(dir / "churn", churn_backlog, churn_seconds, retention);
    emit(fmt::format("churn: enqueue+process ({} ready, retention 1 s)", churn_backlog),
         f.tasks_per_s, "tasks/s");
    emit("churn: live data (mean, baseline)", f.live_mb, "MB");
    emit("churn: peak directory size", f.peak_dir_mb, "MB");
    emit("churn: peak directory / live data", f.peak_ratio, "x");
    emit("churn: mean directory / live data", f.mean_ratio, "x");
    emit("churn: compactions", double(f.compactions), "compactions");
  }
  fs::remove_all(dir);
  return 0;
}
