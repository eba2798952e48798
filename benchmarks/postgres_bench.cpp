// PostgreSQL backend benchmark, against a server on this machine: enqueue (single, batch),
// end-to-end throughput with 1, 2 and 4 worker processes, and enqueue-to-start latency at a
// steady rate (LISTEN/NOTIFY wake-ups) — with raw libpq INSERTs measured in the same run as the
// baseline, and the ratio.
//
//   scripts/pg_test_cluster.sh start /tmp/taskq-bench [--durable]   (fsync and synchronous_commit
//   on) TASKQ_PG_CONNINFO="$(cat /tmp/taskq-bench/conninfo)" taskq_postgres_bench [--json]
//   [--quick] scripts/pg_test_cluster.sh stop /tmp/taskq-bench
//
// --only enqueue|end_to_end|latency runs one phase (and the raw baselines). --json prints one
// {"name":...,"value":...,"unit":...} object per line. Worker processes are this binary,
// re-executed with --worker.
#include "bench_report.hpp"

#include <taskq/backends/postgres/backend.hpp>
#include <taskq/taskq.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_future.hpp>

#include <libpq-fe.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace asio = boost::asio;
using namespace taskq;
using steady = std::chrono::steady_clock;

namespace {

using taskq_bench::report;
using taskq_bench::seconds_since;

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct pg {
  PGconn* c;
  explicit pg(const std::string& conninfo) : c(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(PQerrorMessage(c));
  }
  ~pg() { PQfinish(c); }
  std::string exec(const std::string& sql, const std::vector<std::string>& params = {}) {
    std::vector<const char*> v;
    for (auto& p : params) v.push_back(p.c_str());
    PGresult* r = PQexecParams(c, sql.c_str(), static_cast<int>(v.size()), nullptr, v.data(),
                               nullptr, nullptr, 0);
    auto st = PQresultStatus(r);
    std::string out = st == PGRES_TUPLES_OK && PQntuples(r) ? PQgetvalue(r, 0, 0) : "";
    std::string err = PQresultErrorMessage(r);
    PQclear(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw std::runtime_error(err);
    return out;
  }
};

// --- worker process -------------------------------------------------------------------------

int run_worker(const std::string& conninfo, const std::string& schema) {
  asio::io_context io(1);
  auto b = postgres::backend::open(io.get_executor(), {.conninfo = conninfo, .schema = schema});
  client c(io.get_executor(), *b);
  local_executor exec(io.get_executor(), {.threads = 1});
  exec.handle("noop", [](task_context&) -> asio::awaitable<json> { co_return json(); });
  // The result is the enqueue-to-start latency: the payload is the enqueue time.
  exec.handle("latency", [](task_context& ctx) -> asio::awaitable<json> {
    co_return json(now_us() - ctx.payload().get<std::int64_t>());
  });
  worker w(c, exec, {.max_in_flight = 512, .reserve_batch = 256});
  asio::signal_set signals(io, SIGTERM);
  signals.async_wait([&](error_code, int) { w.stop(std::chrono::seconds(5)); });
  w.async_run([&](error_code) {
    signals.cancel();
    b->close();
    io.stop();
  });
  io.run();
  return 0;
}

std::vector<pid_t> spawn_workers(int n, const std::string& conninfo, const std::string& schema) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> args{"/proc/self/exe", "--worker", conninfo, schema};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("posix_spawn failed");
    pids.push_back(pid);
  }
  return pids;
}

void stop_workers(const std::vector<pid_t>& pids) {
  for (auto pid : pids) kill(pid, SIGTERM);
  for (auto pid : pids) waitpid(pid, nullptr, 0);
}

// --- phases ---------------------------------------------------------------------------------

struct bench {
  std::string conninfo;
  bool quick = false;
  int schemas = 0;

  std::string fresh(const char* what) {
    auto s = std::string("bench_") + what + "_" + std::to_string(::getpid()) + "_" +
             std::to_string(schemas++);
    asio::io_context io;
    postgres::backend::open(io.get_executor(), {.conninfo = conninfo, .schema = s});
    return s;
  }
  void drop(const std::string& s) {
    pg p(conninfo);
    p.exec("SET client_min_messages = warning");
    p.exec("DROP SCHEMA \"" + s + "\" CASCADE");
  }

  /// Raw libpq INSERTs of rows shaped like a task (id, type, json record) — the baseline.
  double raw_insert(int n, int batch) {
    pg p(conninfo);
    p.exec("SET client_min_messages = warning");
    p.exec("DROP TABLE IF EXISTS bench_raw");
    p.exec("CREATE TABLE bench_raw (id text PRIMARY KEY, type text, record json)");
    auto t0 = steady::now();
    for (int i = 0; i < n; i += batch) {
      json arr = json::array();
      for (int k = i; k < std::min(n, i + batch); ++k)
        arr.push_back({{"id", std::to_string(k)}, {"type", "noop"}, {"r", {{"payload", k}}}});
      if (batch == 1)
        p.exec("INSERT INTO bench_raw VALUES ($1, $2, $3::json)",
               {std::to_string(i), "noop", arr[0]["r"].dump()});
      else
        p.exec(
            "INSERT INTO bench_raw SELECT x->>'id', x->>'type', x->'r' FROM "
            "json_array_elements($1::json) x",
            {arr.dump()});
    }
    double rate = n / seconds_since(t0);
    p.exec("DROP TABLE bench_raw");
    return rate;
  }

  /// client::async_enqueue (batch == 1) or async_enqueue_batch over the backend.
  double enqueue(int n, int batch) {
    auto schema = fresh("enq");
    asio::io_context io(1);
    auto b = postgres::backend::open(io.get_executor(), {.conninfo = conninfo, .schema = schema});
    client c(io.get_executor(), *b);
    auto guard = asio::make_work_guard(io);
    std::thread t([&] { io.run(); });
    auto t0 = steady::now();
    for (int i = 0; i < n; i += batch) {
      std::vector<task_spec> specs;
      for (int k = i; k < std::min(n, i + batch); ++k)
        specs.push_back({.type = "noop", .payload = k});
      if (batch == 1)
        c.async_enqueue(std::move(specs[0]), asio::use_future).get();
      else
        c.async_enqueue_batch(std::move(specs), asio::use_future).get();
    }
    double rate = n / seconds_since(t0);
    b->close();
    guard.reset();
    io.stop();
    t.join();
    b.reset();
    drop(schema);
    return rate;
  }

  /// postgres::enqueue (transactional, one statement per batch) on a plain connection.
  double tx_enqueue(int n, int batch) {
    auto schema = fresh("tx");
    pg p(conninfo);
    auto t0 = steady::now();
    for (int i = 0; i < n; i += batch) {
      std::vector<task_spec> specs;
      for (int k = i; k < std::min(n, i + batch); ++k)
        specs.push_back({.type = "noop", .payload = k});
      postgres::enqueue(p.c, schema, std::move(specs), std::chrono::system_clock::now());
    }
    double rate = n / seconds_since(t0);
    drop(schema);
    return rate;
  }

  /// Until the queue is empty: a task leaves it in the statement that records its final
  /// status. Every 20 ms: a poll costs the server about 1 ms (counting finished records every
  /// 5 ms, as this did before, took a third of the server's time during the drain).
  static void wait_drained(pg& p, const std::string& schema) {
    const std::string empty = "SELECT NOT EXISTS (SELECT 1 FROM \"" + schema + "\".queue)";
    while (p.exec(empty) != "t") std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  /// n tasks enqueued up front, then `procs` worker processes drain them.
  double end_to_end(int n, int procs) {
    auto schema = fresh("e2e");
    pg p(conninfo);
    for (int i = 0; i < n; i += 5000) {
      std::vector<task_spec> specs;
      for (int k = i; k < std::min(n, i + 5000); ++k) specs.push_back({.type = "noop"});
      postgres::enqueue(p.c, schema, std::move(specs), std::chrono::system_clock::now());
    }
    auto t0 = steady::now();
    auto pids = spawn_workers(procs, conninfo, schema);
    wait_drained(p, schema);
    double rate = n / seconds_since(t0);
    stop_workers(pids);
    drop(schema);
    return rate;
  }

  /// One worker process; tasks enqueued one at a time at `per_second`; the enqueue-to-start
  /// latency of each (its handler's result). Returns {p50, p99} in milliseconds.
  std::pair<double, double> latency(int n, int per_second) {
    auto schema = fresh("lat");
    pg p(conninfo);
    auto pids = spawn_workers(1, conninfo, schema);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let it connect and LISTEN
    auto t0 = steady::now();
    for (int i = 0; i < n; ++i) {
      std::this_thread::sleep_until(t0 + std::chrono::microseconds(1000000LL * i / per_second));
      std::vector<task_spec> specs;
      specs.push_back({.type = "latency", .payload = now_us()});
      postgres::enqueue(p.c, schema, std::move(specs), std::chrono::system_clock::now());
    }
    wait_drained(p, schema);
    stop_workers(pids);
    PGresult* r = PQexec(
        p.c,
        ("SELECT (record->>'result')::bigint FROM \"" + schema + "\".tasks ORDER BY 1").c_str());
    std::vector<double> ms;
    for (int i = 0; i < PQntuples(r); ++i) ms.push_back(std::stod(PQgetvalue(r, i, 0)) / 1000.0);
    PQclear(r);
    drop(schema);
    auto at = [&](double q) {
      return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * ms.size()))];
    };
    return {at(0.5), at(0.99)};
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") return run_worker(argv[2], argv[3]);
  bench b;
  std::string only;  // --only enqueue|end_to_end|latency (the raw baselines always run)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") taskq_bench::json_output = true;
    if (a == "--quick") b.quick = true;
    if (a == "--only" && i + 1 < argc) only = argv[++i];
  }
  auto wanted = [&](const char* phase) { return only.empty() || only == phase; };
  const char* conninfo = std::getenv("TASKQ_PG_CONNINFO");
  if (!conninfo || !*conninfo) {
    std::fprintf(
        stderr,
        "set TASKQ_PG_CONNINFO (scripts/pg_test_cluster.sh start DIR writes DIR/conninfo)\n");
    return 2;
  }
  b.conninfo = conninfo;
  const int single = b.quick ? 500 : 3000;
  const int batched = b.quick ? 5000 : 50000;
  const int e2e = b.quick ? 5000 : 30000;

  double raw1 = b.raw_insert(single, 1);
  report("pg.baseline.raw_insert_single", raw1, "rows/s");
  double raw_batch = b.raw_insert(batched, 1000);
  report("pg.baseline.raw_insert_batch1000", raw_batch, "rows/s");

  if (wanted("enqueue")) {
    double enq1 = b.enqueue(single, 1);
    report("pg.enqueue.single", enq1, "tasks/s");
    report("pg.enqueue.single.ratio_vs_raw", enq1 / raw1, "x");
    double enqb = b.enqueue(batched, 1000);
    report("pg.enqueue.batch1000", enqb, "tasks/s");
    report("pg.enqueue.batch1000.ratio_vs_raw", enqb / raw_batch, "x");
    double tx = b.tx_enqueue(batched, 1000);
    report("pg.enqueue.transactional_batch1000", tx, "tasks/s");
    report("pg.enqueue.transactional_batch1000.ratio_vs_raw", tx / raw_batch, "x");
  }
  if (wanted("end_to_end"))

    for (int procs : {1, 2, 4}) {
      double r = b.end_to_end(e2e, procs);
      report("pg.end_to_end.procs" + std::to_string(procs), r, "tasks/s");
      report("pg.end_to_end.procs" + std::to_string(procs) + ".ratio_vs_raw_batch", r / raw_batch,
             "x");
    }
  if (wanted("latency")) {
    auto [p50, p99] = b.latency(b.quick ? 100 : 500, 100);
    report("pg.enqueue_to_start.p50", p50, "ms");
    report("pg.enqueue_to_start.p99", p99, "ms");
  }
  return 0;
}
