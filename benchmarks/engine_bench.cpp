// Engine benchmark, in-memory backends: end-to-end no-op throughput (batch and single
// enqueue), enqueue-to-start latency at a steady rate, memory per pending task — and the same
// workloads on a bare asio::thread_pool with a mutex-protected map, measured in the same run,
// with the ratio.
//
//   taskq_engine_bench            human-readable table
//   taskq_engine_bench --json     one {"name":...,"value":...,"unit":...} object per line
//   taskq_engine_bench --quick    smaller counts (smoke run)
//   taskq_engine_bench --only PHASE [--tasks N]
//                                 just the matching phases, with N tasks (for profiling;
//                                 benchmarks/instructions_per_task.sh runs it under callgrind)
//
// "features on" is the same end-to-end run with what a real application sets: a 30 s timeout
// on every task, a subscriber to every event, a 256-byte payload and a scheduler attached to
// the client.
#include "bench_report.hpp"

#include <taskq/http_server.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/taskq.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <malloc.h>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using taskq_bench::report;

std::string only;       // --only SUBSTRING: run just the matching phases (for profiling)
std::size_t tasks = 0;  // --tasks N: task count of the phases run (0: the default)

// A phase runs when --only names it or a dotted prefix of it ("batch" runs "batch.noop").
bool wanted(const std::string& phase) {
  return only.empty() || phase == only || phase.rfind(only + ".", 0) == 0;
}

using taskq_bench::seconds_since;

// Heap bytes in use (RSS would miss reuse of memory freed by earlier phases).
std::size_t heap_bytes() {
  return mallinfo2().uordblks;
}

// What an end-to-end run switches on besides the bare path.
struct features {
  bool on = false;  // timeout, subscriber, payload, scheduler (see the top of this file)
};

// One taskq engine: memory backends, client, local executor with a no-op handler, worker.
struct engine {
  asio::io_context io{1};
  taskq::memory::backend b{io.get_executor()};
  taskq::metrics_registry* metrics;  // optional: the metrics scenario
  taskq::client c{io.get_executor(), b, {.metrics = metrics}};
  taskq::local_executor exec{io.get_executor()};
  std::atomic<std::size_t> ran{0};
  std::optional<taskq::worker> w;
  std::optional<taskq::scheduler> sched;
  std::size_t events_seen = 0;

  explicit engine(features f = {}, taskq::metrics_registry* m = nullptr) : metrics(m) {
    if (f.on) {
      c.subscribe([this](const taskq::event&) { ++events_seen; });
      sched.emplace(c, taskq::scheduler_options{});
    }
    exec.handle("noop", [this](taskq::task_context&) {
      ran.fetch_add(1, std::memory_order_relaxed);
      return taskq::json();
    });
    exec.handle("noop_coro", [this](taskq::task_context&) -> asio::awaitable<taskq::json> {
      ran.fetch_add(1, std::memory_order_relaxed);
      co_return taskq::json();
    });
    w.emplace(c, exec, taskq::worker_options{.max_in_flight = 256, .reserve_batch = 256});
    w->async_run(asio::detached);
  }

  // Runs the io_context until `n` tasks have succeeded (recorded, not just executed). Polls
  // every millisecond rather than subscribing, so the measurement adds no per-task work; the
  // client's counters (which read the store's counts) only once every handler has run.
  void run_until_succeeded(std::size_t n) {
    asio::steady_timer poll(io);
    std::function<void()> check = [&] {
      auto again = [&] {
        poll.expires_after(1ms);
        poll.async_wait([&](boost::system::error_code) { check(); });
      };
      if (ran.load(std::memory_order_relaxed) < n) return again();
      c.async_metrics([&, again](taskq::error_code, taskq::metrics_snapshot m) {
        if (m.succeeded >= n) return io.stop();
        again();
      });
    };
    check();
    io.run();
    io.restart();
  }

  void stop() {
    w->stop();
    if (sched) sched->stop();
    io.run_for(2s);
  }
};

// The task every producer enqueues: bare, or with a timeout and a 256-byte payload.
taskq::task_spec spec_of(const std::string& type, features f) {
  taskq::task_spec spec{.type = type};
  if (f.on) {
    spec.timeout = 30s;
    spec.payload = {{"data", std::string(244, 'x')}};  // 256 bytes encoded
  }
  return spec;
}

// With `with_metrics`: a metrics registry fed by the client, the HTTP server on loopback, and a
// scraper thread fetching /metrics every 250 ms while the run lasts.
double taskq_throughput(std::size_t n, std::size_t batch, const std::string& type, features f = {},
                        bool with_metrics = false) {
  std::optional<taskq::metrics_registry> reg;
  if (with_metrics) reg.emplace();
  engine e(f, reg ? &*reg : nullptr);
  const auto spec = spec_of(type, f);
  std::optional<taskq::http_server> server;
  std::atomic<bool> done{false};
  std::atomic<std::size_t> scrapes{0};
  std::thread scraper;
  if (reg) {
    reg->attach(e.c);
    server.emplace(e.io.get_executor(), taskq::http_server_sources{&e.c, nullptr, &*reg});
    server->start();
    scraper = std::thread([&, port = server->port()] {
      while (!done) {
        asio::io_context cio;
        asio::ip::tcp::socket sock(cio);
        boost::system::error_code ec;
        sock.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
        std::string req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                          "\r\nConnection: close\r\n\r\n";
        if (!ec) asio::write(sock, asio::buffer(req), ec);
        std::string body;
        if (!ec) asio::read(sock, asio::dynamic_buffer(body), ec);
        if (body.find("taskq_tasks_enqueued_total") != std::string::npos) ++scrapes;
        std::this_thread::sleep_for(250ms);
      }
    });
  }
  auto t0 = steady::now();
  std::size_t issued = 0;
  // Keep a bounded number of enqueue calls in flight, like a producer would.
  std::function<void()> produce = [&] {
    while (issued < n) {
      if (batch == 1) {
        e.c.async_enqueue(spec, [](taskq::error_code ec, std::string) {
          if (ec) std::abort();
        });
        ++issued;
      } else {
        std::vector<taskq::task_spec> specs(std::min(batch, n - issued), spec);
        issued += specs.size();
        e.c.async_enqueue_batch(std::move(specs),
                                [](taskq::error_code ec, std::vector<std::string>) {
                                  if (ec) std::abort();
                                });
      }
      if (issued % 4096 < batch) {  // yield to the engine now and then
        asio::post(e.io, produce);
        return;
      }
    }
  };
  asio::post(e.io, produce);
  e.run_until_succeeded(n);
  double secs = seconds_since(t0);
  done = true;
  if (scraper.joinable()) {
    // Serve the scrape in flight while the scraper finishes, then stop the server.
    std::atomic<bool> joined{false};
    std::thread joiner([&] {
      scraper.join();
      joined = true;
    });
    while (!joined) e.io.run_for(10ms);
    joiner.join();
    server->stop();
    if (scrapes == 0) std::fprintf(stderr, "metrics scenario: no scrape completed\n");
  }
  e.stop();
  return double(n) / secs;
}

// Baseline: asio::thread_pool executing no-op jobs; "enqueue" inserts into a mutex-protected
// map and posts; completion updates the map.
double baseline_throughput(std::size_t n, std::size_t batch) {
  asio::thread_pool pool(std::max(1u, std::thread::hardware_concurrency()));
  std::mutex m;
  std::unordered_map<std::uint64_t, int> status;
  std::atomic<std::size_t> done{0};
  auto t0 = steady::now();
  for (std::size_t i = 0; i < n;) {
    std::size_t k = std::min(batch, n - i);
    {
      std::lock_guard lock(m);
      for (std::size_t j = 0; j < k; ++j) status.emplace(i + j, 0);
    }
    for (std::size_t j = 0; j < k; ++j, ++i) {
      asio::post(pool, [&, id = i] {
        {
          std::lock_guard lock(m);
          status[id] = 1;
        }
        done.fetch_add(1, std::memory_order_relaxed);
      });
    }
  }
  while (done.load() < n) std::this_thread::yield();
  double secs = seconds_since(t0);
  pool.join();
  return double(n) / secs;
}

struct latency {
  double p50_us, p99_us;
};

// Enqueue-to-start latency at a steady rate, measured by the engine's own histogram.
latency taskq_latency(std::size_t rate, std::chrono::seconds length) {
  engine e;
  const std::size_t n = rate * static_cast<std::size_t>(length.count());
  const auto period = std::chrono::nanoseconds(1'000'000'000 / rate);
  asio::steady_timer timer(e.io);
  std::size_t issued = 0;
  auto start = steady::now();
  std::function<void()> tick = [&] {
    // Catch up on ticks missed by timer lateness, so the rate holds.
    auto due = static_cast<std::size_t>((steady::now() - start) / period) + 1;
    while (issued < std::min(due, n)) {
      e.c.async_enqueue({.type = "noop"}, [](taskq::error_code, std::string) {});
      ++issued;
    }
    if (issued < n) {
      timer.expires_at(start + period * issued);
      timer.async_wait([&](boost::system::error_code) { tick(); });
    }
  };
  tick();
  e.run_until_succeeded(n);
  std::optional<taskq::metrics_snapshot> snap;
  e.c.async_metrics([&](taskq::error_code, taskq::metrics_snapshot s) { snap = std::move(s); });
  while (!snap) e.io.run_one();
  auto& m = *snap;
  e.stop();
  return {std::chrono::duration<double, std::micro>(m.enqueue_to_start.p50).count(),
          std::chrono::duration<double, std::micro>(m.enqueue_to_start.p99).count()};
}

latency baseline_latency(std::size_t rate, std::chrono::seconds length) {
  asio::thread_pool pool(std::max(1u, std::thread::hardware_concurrency()));
  std::mutex m;
  std::unordered_map<std::uint64_t, int> status;
  const std::size_t n = rate * static_cast<std::size_t>(length.count());
  std::vector<double> waits(n);
  std::atomic<std::size_t> done{0};
  const auto period = std::chrono::nanoseconds(1'000'000'000 / rate);
  auto start = steady::now();
  for (std::size_t i = 0; i < n; ++i) {
    std::this_thread::sleep_until(start + period * i);
    auto enq = steady::now();
    {
      std::lock_guard lock(m);
      status.emplace(i, 0);
    }
    asio::post(pool, [&, i, enq] {
      waits[i] = std::chrono::duration<double, std::micro>(steady::now() - enq).count();
      std::lock_guard lock(m);
      status[i] = 1;
      done.fetch_add(1);
    });
  }
  while (done.load() < n) std::this_thread::yield();
  pool.join();
  std::sort(waits.begin(), waits.end());
  return {waits[n / 2], waits[std::min(n - 1, n * 99 / 100)]};
}

double taskq_bytes_per_pending(std::size_t n) {
  asio::io_context io{1};
  taskq::memory::backend b(io.get_executor());
  taskq::client c(io.get_executor(), b);
  auto before = heap_bytes();
  for (std::size_t i = 0; i < n; i += 1000) {
    std::vector<taskq::task_spec> specs(1000, taskq::task_spec{.type = "noop"});
    c.async_enqueue_batch(std::move(specs), [](taskq::error_code ec, std::vector<std::string>) {
      if (ec) std::abort();
    });
    io.poll();
  }
  io.run();
  return double(heap_bytes() - before) / double(n);
}

double baseline_bytes_per_pending(std::size_t n) {
  std::mutex m;
  std::unordered_map<std::uint64_t, int> status;
  auto before = heap_bytes();
  std::vector<std::function<void()>> queued;
  queued.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::lock_guard lock(m);
    status.emplace(i, 0);
    queued.emplace_back([&status, i] { status[i] = 1; });
  }
  return double(heap_bytes() - before) / double(n);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--json")
      taskq_bench::json_output = true;
    else if (a == "--quick")
      quick = true;
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else if (a == "--tasks" && i + 1 < argc)
      tasks = std::stoul(argv[++i]);
  }
  const std::size_t n_batch = tasks ? tasks : quick ? 100'000 : 1'000'000;
  const std::size_t n_single = tasks ? tasks : quick ? 50'000 : 300'000;
  const auto lat_len = quick ? 1s : 3s;

  // Plain-function handlers run on the executor's thread pool (a thread hop each way);
  // coroutine handlers run on the io_context itself.
  double b = wanted("batch.baseline") ? baseline_throughput(n_batch, 1000) : 1;
  if (only.empty()) report("throughput.batch_enqueue.baseline_thread_pool", b, "tasks/s");
  for (std::string type : {"noop", "noop_coro"}) {
    if (!wanted("batch." + type)) continue;
    double t = taskq_throughput(n_batch, 1000, type);
    std::string kind = type == "noop" ? "pool_handler" : "coroutine_handler";
    report("throughput.batch_enqueue.taskq." + kind, t, "tasks/s");
    if (only.empty()) report("throughput.batch_enqueue.ratio." + kind, t / b, "x");
  }
  // The same run with the features a real application switches on.
  if (wanted("features.noop")) {
    double plain = only.empty() ? taskq_throughput(n_batch, 1000, "noop") : 1;
    double t = taskq_throughput(n_batch, 1000, "noop", {.on = true});
    report("throughput.batch_enqueue.taskq.features_on", t, "tasks/s");
    if (only.empty()) {
      report("throughput.batch_enqueue.taskq.features_off_same_run", plain, "tasks/s");
      report("throughput.batch_enqueue.ratio.features_on_vs_off", t / plain, "x");
    }
  }
  b = wanted("single.baseline") ? baseline_throughput(n_single, 1) : 1;
  if (only.empty()) report("throughput.single_enqueue.baseline_thread_pool", b, "tasks/s");
  for (std::string type : {"noop", "noop_coro"}) {
    if (!wanted("single." + type)) continue;
    double t = taskq_throughput(n_single, 1, type);
    std::string kind = type == "noop" ? "pool_handler" : "coroutine_handler";
    report("throughput.single_enqueue.taskq." + kind, t, "tasks/s");
    if (only.empty()) report("throughput.single_enqueue.ratio." + kind, t / b, "x");
  }

  // Metrics attached (registry fed by the engine + /metrics scraped over HTTP) against the same
  // run without them; the ratio should stay >= 0.9.
  if (wanted("metrics")) {
    const std::size_t n_m = quick ? 100'000 : 500'000;
    double plain = 0, with = 0;
    for (int round = 0; round < 3; ++round) {  // interleaved, best of three each
      plain = std::max(plain, taskq_throughput(n_m, 1000, "noop_coro"));
      with = std::max(with, taskq_throughput(n_m, 1000, "noop_coro", {}, true));
    }
    report("throughput.batch_enqueue.metrics.without", plain, "tasks/s");
    report("throughput.batch_enqueue.metrics.with_registry_and_endpoint", with, "tasks/s");
    report("throughput.batch_enqueue.metrics.ratio", with / plain, "x");
  }

  if (!only.empty()) return 0;
  auto lt = taskq_latency(10'000, lat_len);
  auto lb = baseline_latency(10'000, lat_len);
  report("latency.enqueue_to_start.10k_per_s.p50.taskq", lt.p50_us, "us");
  report("latency.enqueue_to_start.10k_per_s.p99.taskq", lt.p99_us, "us");
  report("latency.enqueue_to_start.10k_per_s.p50.baseline_thread_pool", lb.p50_us, "us");
  report("latency.enqueue_to_start.10k_per_s.p99.baseline_thread_pool", lb.p99_us, "us");
  report("latency.enqueue_to_start.10k_per_s.p50.ratio", lt.p50_us / lb.p50_us, "x");

  const std::size_t n_mem = quick ? 100'000 : 1'000'000;
  double mt = taskq_bytes_per_pending(n_mem);
  double mb = baseline_bytes_per_pending(n_mem);
  report("memory.per_pending_task.taskq", mt, "bytes");
  report("memory.per_pending_task.baseline_map_plus_closure", mb, "bytes");
  report("memory.per_pending_task.ratio", mt / mb, "x");
  return 0;
}
