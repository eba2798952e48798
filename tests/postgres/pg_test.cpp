// PostgreSQL backend specifics: configuration errors that say which, migrations under
// concurrent openers, transactional enqueue, recovery from connections the server ends, the
// schedule store, leader leases, and schedulers failing over between backends.
#include "engine_fixture.hpp"
#include "postgres/pg_env.hpp"

#include <taskq/backends/postgres/backend.hpp>

#include <taskq/client.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/detached.hpp>

#include <signal.h>
#include <algorithm>
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
  /// Runs `sql` on this connection (inside its transaction, if one is open); the first
  /// column of the first row, or "" when there is none.
  std::string exec(const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    std::string out = st == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    REQUIRE((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK));
    return out;
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
  // Every version applied once.
  std::string all_versions;
  for (int v = 1; v <= postgres::schema_version(); ++v) {
    if (v > 1) all_versions += ',';
    all_versions += std::to_string(v);
  }
  CHECK(pg_exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM \"" + schema +
                "\".migrations") == all_versions);
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

TEST_CASE("postgres: the store queues what it inserts, in the same statement", "[postgres]") {
  pg_fixture f;
  auto& q = f.b->queue();
  auto& s = f.b->store();
  CHECK(q.fed_by(s));
  {
    // Another backend's store on other tables does not feed this queue; one on the same
    // tables (same conninfo and schema) does.
    pg_fixture other;
    CHECK_FALSE(q.fed_by(other.b->store()));
    auto same = postgres::backend::open(other.io.get_executor(),
                                        {.conninfo = pg_conninfo(), .schema = f.schema});
    CHECK(q.fed_by(same->store()));
  }
  auto rec = [&](std::string id, task_spec spec = {.type = "t"}) {
    spec.id = std::move(id);
    return make_record(std::move(spec), f.clk.now());
  };
  auto insert = [&](std::vector<task_record> rs) {
    auto [ec] = f.call<>([&](auto cb) { s.async_insert(std::move(rs), cb); });
    return ec;
  };
  auto finished = rec("done");
  finished.status = task_status::cancelled;
  finished.finished_at = f.clk.now();
  REQUIRE_FALSE(insert({rec("a", {.type = "t", .priority = 1}), finished,
                        rec("b", {.type = "t", .unique_key = "k"})}));
  // All or nothing, queue entries included: the failed inserts queue nothing.
  CHECK(insert({rec("c"), rec("a")}) == errc::duplicate_id);
  CHECK(insert({rec("d"), rec("e", {.type = "t", .unique_key = "k"})}) ==
        errc::duplicate_unique_key);
  // A push of an inserted id is a duplicate: its entry is there already.
  std::vector<queue_entry> again;
  again.push_back({"a", "default", "t", "", 1, f.clk.now()});
  auto [pec] = f.call<>([&](auto cb) { q.async_push({std::move(again)}, cb); });
  CHECK(pec == errc::duplicate_id);
  auto [ec, leases] =
      f.call<std::vector<lease>>([&](auto cb) { q.async_reserve({.max = 10}, cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(leases.size() == 2);  // the pending ones only
  CHECK(leases[0].id == "a");
  CHECK(leases[0].priority == 1);
  CHECK(leases[1].id == "b");
  // Finishing a record takes its entry out in the same statement (no ack needed); a record
  // that is not finished keeps it.
  auto [cle, claimed] = f.call<claim_result>([&](auto cb) {
    s.async_claim({{"a", "b"}, f.clk.now()}, cb);
  });
  REQUIRE(claimed.claimed.size() == 2);
  auto [ue, after] = f.call<task_record>([&](auto cb) {
    s.async_update({.id = "a",
                    .expected = task_status::running,
                    .to = task_status::succeeded,
                    .now = f.clk.now()},
                   cb);
  });
  REQUIRE_FALSE(ue);
  auto entries = [&] {
    return pg_exec("SELECT string_agg(id, ',' ORDER BY id) FROM \"" + f.schema + "\".queue");
  };
  CHECK(entries() == "b");
}

TEST_CASE("postgres: a client enqueue writes record and queue entry together, or neither",
          "[postgres]") {
  pg_fixture f;
  client c{f.io.get_executor(), f.b->queue(), f.b->store(), {.time = &f.clk}};
  auto [e1, id] =
      f.call<std::string>([&](auto cb) { c.async_enqueue({.type = "t", .unique_key = "u"}, cb); });
  REQUIRE_FALSE(e1);
  auto [e2, none] =
      f.call<std::string>([&](auto cb) { c.async_enqueue({.type = "t", .unique_key = "u"}, cb); });
  CHECK(e2 == errc::duplicate_unique_key);
  auto rows = [&](const std::string& table) {
    return pg_exec("SELECT count(*) FROM \"" + f.schema + "\"." + table);
  };
  CHECK(rows("tasks") == "1");
  CHECK(rows("queue") == "1");
  auto [e3, leases] =
      f.call<std::vector<lease>>([&](auto cb) { f.b->queue().async_reserve({.max = 5}, cb); });
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].id == id);
}

TEST_CASE("postgres: a pending record left without its queue entry is queued again after a grace",
          "[postgres]") {
  asio::io_context io;
  manual_clock clk;
  auto schema = fresh_schema("orph");
  auto b = postgres::backend::open(io.get_executor(),
                                   {.conninfo = pg_conninfo(),
                                    .schema = schema,
                                    .orphan_check_interval = std::chrono::milliseconds(50),
                                    .orphan_grace = std::chrono::minutes(1),
                                    .time = &clk});
  auto& q = b->queue();
  auto& s = b->store();
  // What a process killed between two statements leaves behind (a taskq whose enqueue was an
  // insert then a push, or a retry between its record update and its push): a pending
  // record, no queue entry.
  auto orphan = make_record({.type = "t", .priority = 3, .concurrency_key = "ck"}, clk.now());
  auto queued = make_record({.type = "t"}, clk.now());
  auto [ie] = call<>(io, [&](auto cb) { s.async_insert({orphan, queued}, cb); });
  REQUIRE_FALSE(ie);
  pg_exec("DELETE FROM \"" + schema + "\".queue WHERE id = '" + orphan.id + "'");

  std::optional<std::vector<lease>> got;
  auto reserve = [&] {
    got.reset();
    q.async_reserve({.max = 5, .lease_for = 1h, .wait = true},
                    [&](error_code, std::vector<lease> l) { got = std::move(l); });
  };
  reserve();
  REQUIRE(run_until(io, [&] { return got.has_value(); }));
  REQUIRE(got->size() == 1);
  CHECK((*got)[0].id == queued.id);
  // Within the grace the record is left alone (its push may still be on its way).
  reserve();
  run_until(
      io, [] { return false; }, 1s);
  CHECK_FALSE(got.has_value());
  // After it, a maintenance round gives the entry back, at the record's priority, and the
  // waiting reserve wakes for it.
  clk.advance(std::chrono::minutes(2));
  REQUIRE(run_until(
      io, [&] { return got.has_value(); }, 10s));
  REQUIRE(got->size() == 1);
  CHECK((*got)[0].id == orphan.id);
  CHECK((*got)[0].priority == 3);
  CHECK((*got)[0].concurrency_key == "ck");
  auto [ce, claimed] = call<claim_result>(io, [&](auto cb) {
    s.async_claim({{orphan.id}, clk.now()}, cb);
  });
  REQUIRE_FALSE(ce);
  REQUIRE(claimed.claimed.size() == 1);
  CHECK(claimed.claimed[0].status == task_status::running);
  // Running, then acked: not pending, so its entry stays gone.
  auto [ae, n] = call<std::size_t>(io, [&](auto cb) { q.async_ack(*got, cb); });
  CHECK(n == 1u);
  clk.advance(std::chrono::minutes(2));
  run_until(
      io, [] { return false; }, 1s);
  CHECK(pg_exec("SELECT count(*) FROM \"" + schema + "\".queue") == "1");  // `queued`, leased
  b.reset();
  drop_schema(schema);
}

TEST_CASE("postgres: records written by another process are never judged on this one's stale copy",
          "[postgres]") {
  pg_fixture f;
  asio::io_context io2;
  auto other = postgres::backend::open(
      io2.get_executor(), {.conninfo = pg_conninfo(), .schema = f.schema, .time = &f.clk});
  auto& s1 = f.b->store();
  auto& s2 = other->store();
  auto a = make_record({.type = "t", .max_attempts = 3}, f.clk.now());
  auto [ie] = f.call<>([&](auto cb) { s1.async_insert({a}, cb); });
  REQUIRE_FALSE(ie);
  // This process claims it (and keeps what it wrote); the other rescues it as lost.
  auto [c1e, c1] = f.call<claim_result>([&](auto cb) {
    s1.async_claim({{a.id}, f.clk.now()}, cb);
  });
  REQUIRE(c1.claimed.size() == 1);
  auto [c2e, c2] = call<claim_result>(io2, [&](auto cb) {
    s2.async_claim({{a.id}, f.clk.now()}, cb);
  });
  REQUIRE(c2.claimed.size() == 1);
  CHECK(c2.claimed[0].attempt == 2);
  // Attempt 1's outcome is refused although this process last saw attempt 1 running.
  auto [u1e, u1] = f.call<task_record>([&](auto cb) {
    s1.async_update({.id = a.id,
                     .expected = task_status::running,
                     .expected_attempt = 1,
                     .to = task_status::succeeded,
                     .now = f.clk.now()},
                    cb);
  });
  CHECK(u1e == errc::status_conflict);
  // The other finishes it; an update that only the stored record allows goes through here.
  auto [u2e, u2] = call<task_record>(io2, [&](auto cb) {
    s2.async_update({.id = a.id,
                     .expected = task_status::running,
                     .expected_attempt = 2,
                     .to = task_status::failed,
                     .now = f.clk.now()},
                    cb);
  });
  REQUIRE_FALSE(u2e);
  auto [u3e, u3] = f.call<task_record>([&](auto cb) {
    s1.async_update({.id = a.id,
                     .expected = task_status::failed,
                     .to = task_status::pending,
                     .now = f.clk.now(),
                     .attempt = 0},
                    cb);
  });
  CHECK_FALSE(u3e);
  CHECK(u3.status == task_status::pending);
  // Claimed here, finished by the other: a retry here is judged on the stored (failed) record,
  // not on the running one this process wrote last.
  auto b = make_record({.type = "t"}, f.clk.now());
  auto [ie2] = f.call<>([&](auto cb) { s1.async_insert({b}, cb); });
  REQUIRE_FALSE(ie2);
  auto [c3e, c3] = f.call<claim_result>([&](auto cb) {
    s1.async_claim({{b.id}, f.clk.now()}, cb);
  });
  REQUIRE(c3.claimed.size() == 1);
  auto [u4e, u4] = call<task_record>(io2, [&](auto cb) {
    s2.async_update({.id = b.id,
                     .expected = task_status::running,
                     .expected_attempt = 1,
                     .to = task_status::failed,
                     .now = f.clk.now()},
                    cb);
  });
  REQUIRE_FALSE(u4e);
  auto [u5e, u5] = f.call<task_record>([&](auto cb) {
    s1.async_update({.id = b.id,
                     .expected = task_status::failed,
                     .to = task_status::pending,
                     .now = f.clk.now(),
                     .attempt = 0},
                    cb);
  });
  CHECK_FALSE(u5e);
  CHECK(u5.status == task_status::pending);
  other.reset();
}

TEST_CASE(
    "postgres: the fused fetch claims in the queue row; readers, writers and a rescue see "
    "the claim",
    "[postgres][fetch]") {
  pg_fixture f;
  auto& s = f.b->store();
  auto a = make_record({.type = "t", .max_attempts = 2}, f.clk.now());
  auto b = make_record({.type = "t", .max_attempts = 1}, f.clk.now());
  auto c = make_record({.type = "t"}, f.clk.now());
  auto [ie] = f.call<>([&](auto cb) { s.async_insert({a, b, c}, cb); });
  REQUIRE_FALSE(ie);
  const auto row = [&](const std::string& id) {
    return pg_exec("SELECT t.status || ' ' || t.attempt || ' ' || e.attempt FROM \"" + f.schema +
                   "\".tasks t JOIN \"" + f.schema + "\".queue e ON e.id = t.id WHERE t.id = '" +
                   id + "'");
  };
  const auto fetch = [&](std::size_t max) {
    auto [ec, r] = f.call<fetch_result>(
        [&](auto cb) { f.b->async_fetch({.max = max, .lease_for = 30s}, cb); });
    REQUIRE_FALSE(ec);
    return r;
  };
  auto first = fetch(10);
  REQUIRE(first.claimed.size() == 3);
  for (auto& t : first.claimed) {
    CHECK(t.record.status == task_status::running);
    CHECK(t.record.attempt == 1);
    CHECK(t.record.started_at == f.clk.now());
  }
  // The claim is the queue row's: the record row is untouched (one write per task saved).
  CHECK(row(a.id) == "0 0 1");
  // Readers see it running.
  auto [ge, got] = f.call<task_record>([&](auto cb) { s.async_get(a.id, cb); });
  REQUIRE_FALSE(ge);
  CHECK(got.status == task_status::running);
  CHECK(got.attempt == 1);
  CHECK(got.started_at == f.clk.now());
  CHECK(got.heartbeat_at == f.clk.now());
  auto [le, page] =
      f.call<task_page>([&](auto cb) { s.async_list({.statuses = {task_status::running}}, cb); });
  REQUIRE_FALSE(le);
  CHECK(page.records.size() == 3);
  auto [ce, counts] = f.call<task_counts>([&](auto cb) { s.async_counts(cb); });
  REQUIRE_FALSE(ce);
  CHECK(counts.total[static_cast<std::size_t>(task_status::running)] == 3);
  CHECK(counts.total[static_cast<std::size_t>(task_status::pending)] == 0);
  // A running task is not deleted.
  auto [re, removed] =
      f.call<std::vector<std::string>>([&](auto cb) { s.async_remove({.ids = {a.id}}, cb); });
  REQUIRE_FALSE(re);
  CHECK(removed.empty());
  // A cancel request is judged on the claim: a running task is asked to stop, not cancelled.
  auto [xe, xr] =
      f.call<task_record>([&](auto cb) { s.async_request_cancel(c.id, f.clk.now(), cb); });
  REQUIRE_FALSE(xe);
  CHECK(xr.status == task_status::running);
  CHECK(xr.cancel_requested);
  CHECK(row(c.id) == "1 1 1");  // written through: the record caught up with its claim
  auto d = make_record({.type = "t"}, f.clk.now());
  auto [ie2] = f.call<>([&](auto cb) { s.async_insert({d}, cb); });
  REQUIRE_FALSE(ie2);
  REQUIRE(fetch(1).claimed.size() == 1);
  // Their process dies: after the lease, a is rescued as attempt 2 (the claim counted), b has
  // no attempts left and is dropped; c and d, still leased, stay where they are.
  f.clk.advance(31s);
  auto again = fetch(10);
  REQUIRE(again.claimed.size() >= 1);
  const fetched_task* rescued = nullptr;
  for (auto& t : again.claimed)
    if (t.record.id == a.id) rescued = &t;
  REQUIRE(rescued);
  CHECK(rescued->record.attempt == 2);
  CHECK_THAT(rescued->record.log.back().message, Catch::Contains("rescued"));
  CHECK(row(a.id) == "1 2 1");  // a rescue writes the record
  REQUIRE(again.dropped.size() == 1);
  CHECK(again.dropped[0].id == b.id);
  CHECK(again.dropped[0].status == task_status::dropped);
  // Its outcome through the fused complete: recorded, the queue entry gone.
  auto [ue, results] = f.call<std::vector<update_result>>([&](auto cb) {
    f.b->async_complete({.completions = {{.held = rescued->held,
                                          .update = {.id = a.id,
                                                     .expected = task_status::running,
                                                     .expected_attempt = 2,
                                                     .to = task_status::succeeded,
                                                     .now = f.clk.now()}}}},
                        cb);
  });
  REQUIRE_FALSE(ue);
  REQUIRE(results.size() == 1);
  CHECK_FALSE(results[0].error);
  CHECK(pg_exec("SELECT count(*) FROM \"" + f.schema + "\".queue WHERE id = '" + a.id + "'") ==
        "0");
  auto [g2e, done] = f.call<task_record>([&](auto cb) { s.async_get(a.id, cb); });
  CHECK(done.status == task_status::succeeded);
  CHECK(done.attempt == 2);
}

TEST_CASE(
    "postgres: the fused fetch reads a cancel request at the record's top level, and records "
    "laid out by another writer take the exact path",
    "[postgres][fetch]") {
  pg_fixture f;
  auto& s = f.b->store();
  // The payload holds the same key, the other way: only the record's own counts.
  auto asked =
      make_record({.type = "t", .payload = json{{"cancel_requested", false}}}, f.clk.now());
  auto other = make_record({.type = "t", .payload = json{{"cancel_requested", true}}}, f.clk.now());
  auto [ie] = f.call<>([&](auto cb) { s.async_insert({asked, other}, cb); });
  REQUIRE_FALSE(ie);
  const std::string tasks = "\"" + f.schema + "\".tasks";
  // A retry's cancel request (the first occurrence: the record's own key).
  pg_exec("UPDATE " + tasks +
          " SET record = regexp_replace(record::text, '\"cancel_requested\":false', "
          "'\"cancel_requested\":true')::json WHERE id = '" +
          asked.id + "'");
  // Written by another program: jsonb's layout (spaces, keys by length).
  pg_exec("UPDATE " + tasks + " SET record = record::jsonb::json WHERE id = '" + other.id + "'");
  auto [ec, r] =
      f.call<fetch_result>([&](auto cb) { f.b->async_fetch({.max = 10, .lease_for = 30s}, cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(r.claimed.size() == 1);
  CHECK(r.claimed[0].record.id == other.id);
  CHECK(r.claimed[0].record.attempt == 1);
  CHECK(r.claimed[0].record.payload == json{{"cancel_requested", true}});
  CHECK(pg_exec("SELECT status || ' ' || attempt FROM " + tasks + " WHERE id = '" + other.id +
                "'") == "1 1");  // claimed through the record
  auto [ge, got] = f.call<task_record>([&](auto cb) { s.async_get(asked.id, cb); });
  REQUIRE_FALSE(ge);
  CHECK(got.status == task_status::cancelled);
  CHECK(got.attempt == 0);
  CHECK(pg_exec("SELECT count(*) FROM \"" + f.schema + "\".queue") == "1");
}

TEST_CASE("postgres: a task fetched by the fused path and lost is rescued through queue and store",
          "[postgres][fetch]") {
  // Processes that use queue() and store() (and taskq processes from before schema version 4
  // reserve the same way) share the schema with fused fetchers: they see the claim too.
  pg_fixture f;
  auto a = make_record({.type = "t", .max_attempts = 3}, f.clk.now());
  auto [ie] = f.call<>([&](auto cb) { f.b->store().async_insert({a}, cb); });
  REQUIRE_FALSE(ie);
  auto [fe, fetched] =
      f.call<fetch_result>([&](auto cb) { f.b->async_fetch({.max = 1, .lease_for = 30s}, cb); });
  REQUIRE(fetched.claimed.size() == 1);
  f.clk.advance(31s);  // its process died
  asio::io_context io2;
  auto other = postgres::backend::open(
      io2.get_executor(), {.conninfo = pg_conninfo(), .schema = f.schema, .time = &f.clk});
  auto [re, leases] = call<std::vector<lease>>(
      io2, [&](auto cb) { other->queue().async_reserve({.max = 1, .lease_for = 30s}, cb); });
  REQUIRE(leases.size() == 1);
  auto [ce, claimed] = call<claim_result>(io2, [&](auto cb) {
    other->store().async_claim({{a.id}, f.clk.now()}, cb);
  });
  REQUIRE_FALSE(ce);
  REQUIRE(claimed.claimed.size() == 1);
  CHECK(claimed.claimed[0].attempt == 2);
  CHECK_THAT(claimed.claimed[0].log.back().message, Catch::Contains("attempt 1; rescued"));
  // The first process's late outcome for attempt 1 is refused.
  auto [ue, results] = f.call<std::vector<update_result>>([&](auto cb) {
    f.b->async_complete({.completions = {{.held = fetched.claimed[0].held,
                                          .update = {.id = a.id,
                                                     .expected = task_status::running,
                                                     .expected_attempt = 1,
                                                     .to = task_status::succeeded,
                                                     .now = f.clk.now()}}}},
                        cb);
  });
  REQUIRE_FALSE(ue);
  CHECK(results[0].error == errc::status_conflict);
  other.reset();
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
  auto pushed = push("b");
  INFO(f.b->last_error());
  REQUIRE_FALSE(pushed);
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

TEST_CASE("postgres: a reconnect to a server that never answers gives up at connect_timeout",
          "[postgres]") {
  asio::io_context io;
  auto schema = fresh_schema("cto");
  auto b = postgres::backend::open(io.get_executor(),
                                   {.conninfo = pg_conninfo(),
                                    .schema = schema,
                                    .pool_size = 1,
                                    .reconnect_min = std::chrono::milliseconds(20),
                                    .reconnect_max = std::chrono::milliseconds(50),
                                    .connect_timeout = std::chrono::milliseconds(300)});
  auto push = [&](std::string id) {
    std::vector<queue_entry> e;
    e.push_back({id, "default", "t", "", 0, time_point{}});
    auto [ec] = call<>(io, [&](auto cb) { b->queue().async_push({std::move(e)}, cb); });
    return ec;
  };
  REQUIRE_FALSE(push("a"));
  // End this backend's sessions while the server still accepts new ones.
  const std::string mine =
      "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' "
      "AND query LIKE '%\"" +
      schema + "\"%'";
  auto pids = pg_exec("SELECT string_agg(pid::text, ',') " + mine);
  REQUIRE_FALSE(pids.empty());
  pg_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN (" + pids + ")");
  REQUIRE(run_until(io, [&] {
    return pg_exec("SELECT count(*) FROM pg_stat_activity WHERE pid IN (" + pids + ")") == "0";
  }));
  // A stopped postmaster: the kernel still completes TCP connections to its port, but nothing
  // ever answers the startup packet (a black hole).
  const pid_t postmaster =
      std::stoi(pg_exec("SELECT split_part(pg_read_file('postmaster.pid'), "
                        "E'\\n', 1)"));
  REQUIRE(::kill(postmaster, SIGSTOP) == 0);
  struct resume {
    pid_t pid;
    ~resume() { ::kill(pid, SIGCONT); }
  } guard{postmaster};
  auto t0 = std::chrono::steady_clock::now();
  auto ec = push("b");
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(ec == errc::backend_unavailable);
  CHECK(took < 5s);
  CHECK_THAT(b->last_error(), Catch::Contains("connect_timeout"));
  ::kill(postmaster, SIGCONT);
  // Once the server answers again, the next attempt (after the backoff) connects.
  REQUIRE(run_until(io, [&] { return !push("c"); }));
  b.reset();
  drop_schema(schema);
}

// --- schedule storage and leader election ---------------------------------------------------

namespace {

// 2026-01-01T00:00:00Z.
const time_point t0 = std::chrono::sys_days{std::chrono::year{2026} / 1 / 1};

schedule every_minute(std::string name) {
  return {.name = std::move(name), .task = {.type = "job"}, .cron = "* * * * *"};
}

std::optional<schedule_record> load(pg_fixture& f, const std::string& name,
                                    error_code* out = nullptr) {
  auto [ec, r] = f.call<std::optional<schedule_record>>(
      [&](auto cb) { f.b->schedules().async_load(name, cb); });
  if (out)
    *out = ec;
  else
    REQUIRE_FALSE(ec);
  return r;
}

void save(pg_fixture& f, schedule_record r) {
  auto [ec] = f.call<>([&](auto cb) { f.b->schedules().async_save(std::move(r), cb); });
  REQUIRE_FALSE(ec);
}

// Runs the io_context until nothing has happened on it for `quiet` (database round trips in
// flight complete well within that on the local test cluster).
void settle(asio::io_context& io, std::chrono::milliseconds quiet = 100ms) {
  auto last = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - last < quiet) {
    io.restart();
    if (io.poll() > 0)
      last = std::chrono::steady_clock::now();
    else
      std::this_thread::yield();
  }
}

}  // namespace

TEST_CASE("postgres: schedule store saves, loads in name order, removes, keeps the later progress",
          "[postgres][schedules]") {
  pg_fixture f;
  CHECK_FALSE(load(f, "b"));
  schedule_record b{.definition = every_minute("b"),
                    .state = {.cursor = t0 + 5min, .last_fired = t0 + 5min, .last_run_id = "r5"}};
  b.definition.task.payload = {{"k", std::string("v\0w", 3)}};  // json, not jsonb, keeps \u0000
  b.definition.catch_up = catch_up_policy::run_all;
  save(f, b);
  save(f, {.definition = every_minute("a")});
  auto got = load(f, "b");
  REQUIRE(got);
  CHECK(got->definition == b.definition);
  CHECK(got->state == b.state);
  auto [ec, all] =
      f.call<std::vector<schedule_record>>([&](auto cb) { f.b->schedules().async_load_all(cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(all.size() == 2);
  CHECK(all[0].definition.name == "a");
  CHECK(all[1].definition.name == "b");
  // Stored in the stable JSON mapping.
  CHECK(pg_exec("SELECT record->>'cron' FROM \"" + f.schema + "\".schedules WHERE name = 'a'") ==
        "* * * * *");

  // The save rule: a save that is behind keeps the stored cursor and last run...
  save(f, {.definition = b.definition, .state = {.cursor = t0 + 3min}});
  CHECK(load(f, "b")->state == b.state);
  // ...one ahead replaces them...
  save(f, {.definition = b.definition,
           .state = {.cursor = t0 + 7min, .last_fired = t0 + 7min, .last_run_id = "r7"}});
  CHECK(load(f, "b")->state.last_run_id == "r7");
  // ...and a new timing rule restarts the cursor.
  schedule_record retimed{.definition = b.definition, .state = {.cursor = t0 + 1min}};
  retimed.definition.cron = "*/5 * * * *";
  save(f, retimed);
  auto r = load(f, "b");
  CHECK(r->definition.cron == "*/5 * * * *");
  CHECK(r->state.cursor == t0 + 1min);
  CHECK(r->state.last_fired == t0 + 7min);

  // Racing saves on several connections: the latest cursor wins whatever the order.
  std::atomic<int> done{0};
  for (int m : {4, 9, 2, 8, 6, 3, 7, 5}) {
    f.b->schedules().async_save(
        {.definition = every_minute("race"), .state = {.cursor = t0 + std::chrono::minutes(m)}},
        [&](error_code e) {
          CHECK_FALSE(e);
          ++done;
        });
  }
  REQUIRE(run_until(f.io, [&] { return done == 8; }));
  CHECK(load(f, "race")->state.cursor == t0 + 9min);

  auto [e1, removed] = f.call<bool>([&](auto cb) { f.b->schedules().async_remove("a", cb); });
  CHECK_FALSE(e1);
  CHECK(removed);
  auto [e2, again] = f.call<bool>([&](auto cb) { f.b->schedules().async_remove("a", cb); });
  CHECK_FALSE(e2);
  CHECK_FALSE(again);
  CHECK_FALSE(load(f, "a"));
}

TEST_CASE("postgres: an undecodable stored schedule is an invalid_record naming it and the field",
          "[postgres][schedules]") {
  pg_fixture f;
  save(f, {.definition = every_minute("good")});
  pg_exec("INSERT INTO \"" + f.schema +
          "\".schedules VALUES ('bad', '{\"v\": 1, \"name\": \"bad\", \"task\": {\"type\": \"x\"}, "
          "\"cron\": 5}', 0)");
  error_code ec;
  CHECK_FALSE(load(f, "bad", &ec));
  CHECK(ec == errc::invalid_record);
  CHECK_THAT(f.b->last_error(), Catch::Contains("'bad'") && Catch::Contains("field"));
  auto [e2, all] =
      f.call<std::vector<schedule_record>>([&](auto cb) { f.b->schedules().async_load_all(cb); });
  CHECK(e2 == errc::invalid_record);
  CHECK(load(f, "good"));
  // A save replaces it.
  save(f, {.definition = every_minute("bad")});
  CHECK(load(f, "bad"));
}

TEST_CASE("postgres: a stored document nested deeper than the ceiling is an invalid_record",
          "[postgres][depth]") {
  // Written by another program (taskq never writes one): 600 levels, above json_depth_ceiling.
  // Before, the decoder built and copied it (recursively) like any other.
  pg_fixture f;
  auto [ec] = f.call<>([&](auto cb) {
    f.b->store().async_insert({make_record({.type = "t", .payload = 1}, f.clk.now())}, cb);
  });
  REQUIRE_FALSE(ec);
  const std::string deep = std::string(600, '[') + "1" + std::string(600, ']');
  pg_exec("UPDATE \"" + f.schema +
          "\".tasks SET record = replace(record::text, '\"payload\":1', '\"payload\":" + deep +
          "')::json");
  auto [gec, page] = f.call<task_page>([&](auto cb) { f.b->store().async_list({}, cb); });
  CHECK(gec == errc::invalid_record);
  pg_exec("INSERT INTO \"" + f.schema + "\".schedules VALUES ('deep', '" + deep + "', 0)");
  error_code lec;
  CHECK_FALSE(load(f, "deep", &lec));
  CHECK(lec == errc::invalid_record);
  CHECK_THAT(f.b->last_error(), Catch::Contains("nested deeper than 512 levels"));
}

TEST_CASE("postgres: a schema at version 1 is migrated to the current version",
          "[postgres][schedules]") {
  auto schema = fresh_schema("mig1");
  asio::io_context io;
  auto open = [&] {
    return postgres::backend::open(io.get_executor(),
                                   {.conninfo = pg_conninfo(), .schema = schema});
  };
  open().reset();
  // Back to what taskq with schema version 1 left.
  pg_exec("DROP TABLE \"" + schema + "\".schedules, \"" + schema + "\".leaders; ALTER TABLE \"" +
          schema + "\".queue DROP COLUMN attempt, DROP COLUMN claimed_at; DROP FUNCTION \"" +
          schema + "\".reserve_entries, \"" + schema + "\".fetch_tasks; DELETE FROM \"" + schema +
          "\".migrations WHERE version > 1");
  auto b = open();
  CHECK(pg_exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM \"" + schema +
                "\".migrations") == "1,2,3,4,5,6");
  CHECK(pg_exec("SELECT count(*) FROM \"" + schema + "\".schedules") == "0");
  // Versions 3 and 6: the queue's storage parameters.
  CHECK_THAT(pg_exec("SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = '\"" +
                     schema + "\".queue'::regclass"),
             Catch::Contains("fillfactor=45"));
  CHECK(pg_exec("SELECT count(*) FROM \"" + schema + "\".leaders") == "0");
  // Version 4: a claim's attempt and start in the queue row.
  CHECK(pg_exec("SELECT count(*) FROM information_schema.columns WHERE table_schema = '" + schema +
                "' AND table_name = 'queue' AND column_name IN ('attempt', 'claimed_at')") == "2");
  // Version 5: reserve and fetch as functions held to the queue's index.
  CHECK(pg_exec("SELECT count(*) FROM pg_proc WHERE pronamespace = '\"" + schema +
                "\"'::regnamespace AND proname IN ('reserve_entries', 'fetch_tasks') AND "
                "'enable_bitmapscan=off' = ANY(proconfig)") == "2");
  // Version 6: leases stay HOT (queue at fillfactor 45, above) and the functions' plans generic.
  CHECK(pg_exec("SELECT count(*) FROM pg_proc WHERE pronamespace = '\"" + schema +
                "\"'::regnamespace AND proname IN ('reserve_entries', 'fetch_tasks') AND "
                "'plan_cache_mode=force_generic_plan' = ANY(proconfig)") == "2");
  b.reset();
  drop_schema(schema);
}

TEST_CASE(
    "postgres: reserve and fetch read the queue's head through its index on a table "
    "never analysed",
    "[postgres][fetch]") {
  // A queue filled moments ago has no statistics: the planner, guessing a handful of rows per
  // queue name, used to scan every row of the queue by bitmap and sort them. The plans are read
  // from auto_explain, which sends them to this client as notices.
  pg_fixture f;
  host_conn h;
  std::vector<task_spec> specs(3000, task_spec{.type = "t"});
  postgres::enqueue(h.c, f.schema, std::move(specs), f.clk.now());
  std::vector<std::string> plans;
  PQsetNoticeProcessor(
      h.c,
      [](void* out, const char* m) { static_cast<std::vector<std::string>*>(out)->push_back(m); },
      &plans);
  h.exec("LOAD 'auto_explain'");
  h.exec("SET auto_explain.log_min_duration = 0");
  h.exec("SET auto_explain.log_nested_statements = on");
  h.exec("SET client_min_messages = log");
  // Past the plan cache's first five (custom) plans too: each call of a session is checked.
  for (const char* fn : {"reserve_entries", "fetch_tasks"}) {
    for (int call = 0; call < 7; ++call) {
      INFO(fn << " call " << call);
      plans.clear();
      h.exec("BEGIN");
      h.exec("SELECT * FROM \"" + f.schema + "\"." + fn +
             "('{default}', 9000000000000000, 10, '{}', '{}', 9000000000000001)");
      h.exec("ROLLBACK");
      std::string all;
      for (const auto& p : plans) all += p;
      INFO(all);
      CHECK_THAT(all, Catch::Contains("Index Scan using queue_order_idx"));
      CHECK_THAT(all, !Catch::Contains("Bitmap Heap Scan on queue") &&
                          !Catch::Contains("Seq Scan on queue"));
    }
  }
}

TEST_CASE("postgres: a fetch of a whole batch leases every row with a HOT update",
          "[postgres][fetch]") {
  // A lease changes no indexed column, so it needs only room on the row's page for the new
  // version; within one statement the batch's old versions are not yet dead to make room.
  // Counted by the transaction's own statistics, which are exact and immediate.
  pg_fixture f;
  host_conn h;
  std::vector<task_spec> specs(2000, task_spec{.type = "t"});
  postgres::enqueue(h.c, f.schema, std::move(specs), f.clk.now());
  h.exec("BEGIN");
  h.exec("SELECT count(*) FROM \"" + f.schema +
         "\".fetch_tasks('{default}', 9000000000000000, 2000, '{}', '{}', 9000000000000001)");
  const std::string stats =
      " FROM pg_stat_xact_user_tables WHERE relid = '\"" + f.schema + "\".queue'::regclass";
  const std::string updated = h.exec("SELECT n_tup_upd" + stats);
  const std::string hot = h.exec("SELECT n_tup_hot_upd" + stats);
  h.exec("ROLLBACK");
  CHECK(updated == "2000");
  CHECK(hot == "2000");
}

TEST_CASE("postgres: leader leases: one leader across backends; expiry and release hand over",
          "[postgres][leader]") {
  pg_fixture f;
  auto other = postgres::backend::open(
      f.io.get_executor(), {.conninfo = pg_conninfo(), .schema = f.schema, .time = &f.clk});
  auto ask = [&](postgres::backend& b, const char* who) {
    auto [ec, leader] =
        f.call<bool>([&](auto cb) { b.leaders().async_acquire("sched", who, 30s, cb); });
    REQUIRE_FALSE(ec);
    return leader;
  };
  CHECK(ask(*f.b, "a"));
  CHECK_FALSE(ask(*other, "b"));
  f.clk.advance(20s);
  CHECK(ask(*f.b, "a"));  // renewed until +50s
  f.clk.advance(20s);
  CHECK_FALSE(ask(*other, "b"));
  f.clk.advance(10s);  // a's lease ran out
  CHECK(ask(*other, "b"));
  CHECK_FALSE(ask(*f.b, "a"));
  CHECK(pg_exec("SELECT holder FROM \"" + f.schema + "\".leaders WHERE name = 'sched'") == "b");
  auto [e1] = f.call<>([&](auto cb) { f.b->leaders().async_release("sched", "a", cb); });
  CHECK_FALSE(e1);  // not a's: nothing happens
  CHECK_FALSE(ask(*f.b, "a"));
  auto [e2] = f.call<>([&](auto cb) { other->leaders().async_release("sched", "b", cb); });
  CHECK_FALSE(e2);
  CHECK(ask(*f.b, "a"));
  // Many candidates at once: exactly one is granted.
  f.clk.advance(1min);
  std::atomic<int> granted{0}, answered{0};
  for (int i = 0; i < 8; ++i) {
    auto& b = i % 2 ? *other : *f.b;
    std::string who = std::to_string(i);  // ("c" + ... trips GCC 12's -Wrestrict)
    b.leaders().async_acquire("race", who, 30s, [&](error_code ec, bool l) {
      CHECK_FALSE(ec);
      granted += l;
      ++answered;
    });
  }
  REQUIRE(run_until(f.io, [&] { return answered == 8; }));
  CHECK(granted == 1);
}

TEST_CASE(
    "postgres: two schedulers on two backends fire each occurrence once across a leader "
    "failover",
    "[postgres][leader]") {
  asio::io_context io;
  manual_clock clk(t0);
  auto schema = fresh_schema("fail");
  auto open = [&] {
    return postgres::backend::open(io.get_executor(), {.conninfo = pg_conninfo(),
                                                       .schema = schema,
                                                       .pool_size = 2,
                                                       .reconnect_min = 20ms,
                                                       .reconnect_max = 200ms,
                                                       .time = &clk});
  };
  auto b1 = open(), b2 = open();
  {
    client c1(io.get_executor(), b1->queue(), b1->store(), {.time = &clk});
    client c2(io.get_executor(), b2->queue(), b2->store(), {.time = &clk});
    auto opts = [&](postgres::backend& b, std::string id) {
      return scheduler_options{.store = &b.schedules(),
                               .leader = &b.leaders(),
                               .instance_id = std::move(id),
                               .leader_ttl = 3min,
                               .leader_renew = 1min};
    };
    scheduler s1(c1, opts(*b1, "one")), s2(c2, opts(*b2, "two"));
    auto def = every_minute("m");
    def.catch_up = catch_up_policy::run_all;
    for (auto* s : {&s1, &s2}) {
      auto [ec, r] = call<ensure_result>(io, [&](auto cb) { s->async_ensure_schedule(def, cb); });
      REQUIRE_FALSE(ec);
    }
    auto fired = [&] {
      auto [ec, page] = call<task_page>(io, [&](auto cb) {
        c2.async_list({.labels = {{"taskq.schedule", "m"}}, .limit = 1000}, cb);
      });
      REQUIRE_FALSE(ec);
      std::vector<time_point> out;
      for (auto& r : page.records) out.push_back(r.scheduled_for.value_or(time_point{}));
      std::sort(out.begin(), out.end());
      return out;
    };
    auto upto = [](int minutes) {
      std::vector<time_point> out;
      for (int m = 1; m <= minutes; ++m) out.push_back(t0 + std::chrono::minutes(m));
      return out;
    };
    // Moves the clock in steps of 15 s, letting each step's database work finish.
    auto step_to = [&](time_point t) {
      while (clk.now() < t) {
        clk.set(std::min(t, clk.now() + 15s));
        settle(io);
      }
    };
    clk.set(t0 + 30s);
    s1.async_run(asio::detached);
    REQUIRE(run_until(io, [&] { return s1.metrics().leader; }));
    s2.async_run(asio::detached);
    settle(io);
    CHECK_FALSE(s2.metrics().leader);
    step_to(t0 + 2min + 40s);
    CHECK(fired() == upto(2));
    CHECK(s2.metrics().totals.fired + s2.metrics().totals.deduplicated == 0);

    // The leader's database goes away: its renewal fails, it stops firing, its lease runs out
    // and the stand-by takes over, catching up what was missed (run_all).
    b1->close();
    step_to(t0 + 10min + 30s);
    CHECK_FALSE(s1.metrics().leader);
    CHECK(s2.metrics().leader);
    auto got = fired();
    CHECK(got == upto(10));  // each occurrence once: no duplicate, no gap
    CHECK(s2.metrics().totals.deduplicated == 0);
    CHECK(s1.metrics().totals.fired + s2.metrics().totals.fired == 10);
    s1.stop();
    s2.stop();
    settle(io);
  }
  b1.reset();
  b2.reset();
  drop_schema(schema);
}
