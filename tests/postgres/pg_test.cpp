// PostgreSQL backend specifics: configuration errors that say which, migrations under
// concurrent openers, transactional enqueue, and recovery from connections the server ends.
#include "engine_fixture.hpp"
#include "postgres/pg_env.hpp"

#include <taskq/backends/postgres/backend.hpp>

#include <thread>

using namespace taskq;
using namespace taskq::test;

namespace {

struct pg_fixture {
  asio::io_context io;
  manual_clock clk;
  std::string schema = fresh_schema("pgt");
  std::unique_ptr<postgres::backend> b =
      postgres::backend::open(io.get_executor(), {.conninfo = pg_conninfo(),
                                                  .schema = schema,
                                                  .poll_interval = std::chrono::milliseconds(200),
                                                  .reconnect_min = std::chrono::milliseconds(20),
                                                  .reconnect_max = std::chrono::milliseconds(200),
                                                  .time = &clk});
  ~pg_fixture() {
    b.reset();
    drop_schema(schema);
  }

  template <class... Ts, class Start>
  std::tuple<error_code, Ts...> call(Start start) {
    return taskq::test::call<Ts...>(io, std::move(start));
  }
};

struct host_conn {
  PGconn* c = PQconnectdb(pg_conninfo().c_str());
  host_conn() { REQUIRE(PQstatus(c) == CONNECTION_OK); }
  ~host_conn() { PQfinish(c); }
  void exec(const char* sql) {
    PGresult* r = PQexec(c, sql);
    auto st = PQresultStatus(r);
    PQclear(r);
    REQUIRE((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK));
  }
};

}  // namespace

TEST_CASE("postgres: bad configuration says which", "[postgres]") {
  asio::io_context io;
  auto base = pg_conninfo();
  auto try_open = [&](std::string conninfo, std::string schema = "taskq_cfg") {
    error_code ec;
    std::string detail;
    auto b = postgres::backend::open(io.get_executor(), {.conninfo = conninfo, .schema = schema},
                                     ec, &detail);
    CHECK(b == nullptr);
    return std::make_pair(ec, detail);
  };
  {
    auto [ec, detail] = try_open("host=127.0.0.1 port=1 dbname=taskq user=taskq");
    CHECK(ec == errc::backend_unavailable);
    CHECK_THAT(detail, Catch::Contains("server unreachable"));
  }
  // A role with a password, and no right to create schemas.
  pg_exec(
      "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'taskq_limited') THEN "
      "CREATE ROLE taskq_limited LOGIN PASSWORD 'right'; END IF; END $$");
  {
    auto [ec, detail] = try_open(base + " user=taskq_limited password=wrong");
    CHECK(ec == errc::backend_unavailable);
    CHECK_THAT(detail, Catch::Contains("authentication failed"));
  }
  {
    auto [ec, detail] = try_open(base + " user=taskq_limited password=right");
    CHECK(ec == errc::backend_unavailable);
    CHECK_THAT(detail, Catch::Contains("missing privileges"));
  }
  {
    auto [ec, detail] = try_open(base + " dbname=no_such_db");
    CHECK(ec == errc::backend_unavailable);
    CHECK_THAT(detail, Catch::Contains("database does not exist"));
  }
  {
    auto [ec, detail] = try_open(base, "");
    CHECK(ec == errc::invalid_option);
    CHECK_THAT(detail, Catch::Contains("schema"));
  }
}

TEST_CASE("postgres: several processes migrating at once create the schema once", "[postgres]") {
  auto schema = fresh_schema("mig");
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      asio::io_context io;
      error_code ec;
      std::string detail;
      auto b = postgres::backend::open(io.get_executor(),
                                       {.conninfo = pg_conninfo(), .schema = schema}, ec, &detail);
      if (b) ++ok;
      INFO(detail);
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 6);
  CHECK(pg_exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM \"" + schema +
                "\".migrations") == std::to_string(postgres::schema_version()));
  // A schema migrated by a newer taskq is refused.
  pg_exec("INSERT INTO \"" + schema + "\".migrations (version) VALUES (999)");
  asio::io_context io;
  error_code ec;
  std::string detail;
  auto b = postgres::backend::open(io.get_executor(), {.conninfo = pg_conninfo(), .schema = schema},
                                   ec, &detail);
  CHECK(b == nullptr);
  CHECK(ec == errc::unsupported_format_version);
  drop_schema(schema);
}

TEST_CASE("postgres: transactional enqueue exists iff the host's transaction commits",
          "[postgres]") {
  pg_fixture f;
  host_conn host;
  std::vector<std::string> committed, rolled_back;
  {
    host.exec("BEGIN");
    std::vector<task_spec> specs;
    specs.push_back({.type = "t", .payload = 1});
    specs.push_back({.type = "t", .payload = 2});
    committed = postgres::enqueue(host.c, f.schema, std::move(specs), f.clk.now());
    REQUIRE(committed.size() == 2);
    // Not visible to the backend before the commit.
    auto [ec, leases] =
        f.call<std::vector<lease>>([&](auto cb) { f.b->queue().async_reserve({.max = 5}, cb); });
    CHECK(leases.empty());
    host.exec("COMMIT");
  }
  {
    host.exec("BEGIN");
    std::vector<task_spec> specs;
    specs.push_back({.type = "t", .payload = 3});
    rolled_back = postgres::enqueue(host.c, f.schema, std::move(specs), f.clk.now());
    REQUIRE(rolled_back.size() == 1);
    host.exec("ROLLBACK");
  }
  {
    // A failure inside the host's transaction leaves the transaction usable (savepoint).
    host.exec("BEGIN");
    error_code ec;
    std::string detail;
    std::vector<task_spec> dup;
    dup.push_back({.type = "t", .id = committed[0]});
    auto none = postgres::enqueue(host.c, f.schema, std::move(dup), f.clk.now(), ec, &detail);
    CHECK(none.empty());
    CHECK(ec == errc::duplicate_id);
    host.exec("SELECT 1");
    host.exec("COMMIT");
  }
  auto [e1, a] = f.call<task_record>([&](auto cb) { f.b->store().async_get(committed[0], cb); });
  CHECK_FALSE(e1);
  CHECK(a.payload == 1);
  auto [e2, gone] =
      f.call<task_record>([&](auto cb) { f.b->store().async_get(rolled_back[0], cb); });
  CHECK(e2 == errc::not_found);
  auto [e3, leases] =
      f.call<std::vector<lease>>([&](auto cb) { f.b->queue().async_reserve({.max = 5}, cb); });
  REQUIRE(leases.size() == 2);
  CHECK(leases[0].id == committed[0]);
  CHECK(leases[1].id == committed[1]);
}

TEST_CASE("postgres: a waiting reserve wakes on a transactional enqueue's commit (NOTIFY)",
          "[postgres]") {
  pg_fixture f;
  std::optional<std::vector<lease>> got;
  f.b->queue().async_reserve({.wait = true},
                             [&](error_code, std::vector<lease> l) { got = std::move(l); });
  drain(f.io);
  host_conn host;
  host.exec("BEGIN");
  std::vector<task_spec> specs;
  specs.push_back({.type = "t"});
  auto ids = postgres::enqueue(host.c, f.schema, std::move(specs), f.clk.now());
  host.exec("COMMIT");
  REQUIRE(run_until(
      f.io, [&] { return got.has_value(); }, 10s));
  REQUIRE(got->size() == 1);
  CHECK((*got)[0].id == ids[0]);
}

TEST_CASE("postgres: connections ended by the server (pg_terminate_backend) are replaced",
          "[postgres]") {
  pg_fixture f;
  auto push = [&](std::string id) {
    auto [ec] = f.call<>([&](auto cb) {
      f.b->queue().async_push({{{id, "default", "t", "", 0, f.clk.now()}}}, cb);
    });
    return ec;
  };
  REQUIRE_FALSE(push("a"));
  // This backend's sessions: the pool's and the listener's (whose last statement named the
  // schema).
  const std::string mine =
      "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' "
      "AND query LIKE '%\"" +
      f.schema + "\"%'";
  REQUIRE(run_until(f.io, [&] { return std::stoi(pg_exec("SELECT count(*) " + mine)) >= 2; }));
  // End them from the server side, and wait until they are gone.
  auto pids = pg_exec("SELECT string_agg(pid::text, ',') " + mine);
  auto killed = pg_exec(
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid IN (" + pids + ")");
  CHECK(std::stoi(killed) >= 2);
  REQUIRE(run_until(f.io, [&] {
    return pg_exec("SELECT count(*) FROM pg_stat_activity WHERE pid IN (" + pids + ")") == "0";
  }));
  // The next operations succeed on new connections (an idle connection found dead is
  // replaced before use); nothing pushed is lost.
  REQUIRE_FALSE(push("b"));
  auto [ec, leases] =
      f.call<std::vector<lease>>([&](auto cb) { f.b->queue().async_reserve({.max = 5}, cb); });
  CHECK_FALSE(ec);
  CHECK(leases.size() == 2);
  // The listener reconnects: a waiting reserve is woken by a push from another process.
  std::optional<std::vector<lease>> got;
  f.b->queue().async_reserve({.wait = true},
                             [&](error_code, std::vector<lease> l) { got = std::move(l); });
  host_conn host;
  std::vector<task_spec> specs;
  specs.push_back({.type = "t"});
  postgres::enqueue(host.c, f.schema, std::move(specs), f.clk.now());
  REQUIRE(run_until(
      f.io, [&] { return got.has_value(); }, 10s));
  CHECK(got->size() == 1);
  CHECK(f.b->last_error().find("connection lost") != std::string::npos);
}
