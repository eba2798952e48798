// One behavioural suite for every Queue/Store backend (memory, file and, when built with it,
// PostgreSQL). Each test runs once per backend (Catch2 TEMPLATE_TEST_CASE over the types in
// conformance/backends.hpp).
#include "conformance/backends.hpp"
#include "engine_fixture.hpp"

#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/scheduler.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_future.hpp>

#include <tuple>

using namespace taskq;
using namespace taskq::test;

#ifdef TASKQ_CONFORMANCE_POSTGRES
// And against PostgreSQL: those cases need the test cluster, so CTest runs them apart
// (taskq_pg_conformance_tests, tests/postgres/CMakeLists.txt).
#include "postgres/conformance_backend.hpp"
#define BACKENDS memory_backend, memory_fused_backend, file_backend, postgres_backend
#else
#define BACKENDS memory_backend, memory_fused_backend, file_backend
#endif

namespace {

template <class Backend>
struct fixture {
  asio::io_context io;
  manual_clock clk;
  Backend backend{io, clk};
  taskq::queue& q = backend.queue();
  taskq::store& s = backend.store();

  /// A client over the backend's own fused operations when it has them, else over its queue
  /// and store (through composed_backend).
  client make_client(client_options o) {
    if constexpr (requires { backend.fused(); })
      return client{io.get_executor(), backend.fused(), std::move(o)};
    else
      return client{io.get_executor(), q, s, std::move(o)};
  }

  /// Starts an operation with a callback and runs the io_context until it completes.
  template <class... Ts, class Start>
  std::tuple<error_code, Ts...> call(Start start) {
    return taskq::test::call<Ts...>(io, std::move(start));
  }

  // --- queue helpers ---
  void push(std::vector<queue_entry> entries, errc expect = {}) {
    auto [ec] = call<>([&](auto cb) { q.async_push({std::move(entries)}, cb); });
    if (expect == errc{})
      CHECK_FALSE(ec);
    else
      CHECK(ec == expect);
  }
  void push1(std::string id, int priority = 0, duration delay = {}, std::string queue = "default",
             std::string type = "t", std::string key = "") {
    push({{id, queue, type, key, priority, clk.now() + delay}});
  }
  std::vector<lease> reserve(std::size_t n = 1, reserve_params p = {}) {
    p.max = n;
    auto [ec, l] = call<std::vector<lease>>([&](auto cb) { q.async_reserve(p, cb); });
    REQUIRE_FALSE(ec);
    return l;
  }
  static std::vector<std::string> ids(const std::vector<lease>& ls) {
    std::vector<std::string> out;
    for (auto& l : ls) out.push_back(l.id);
    return out;
  }

  // --- store helpers ---
  task_record rec(std::string id, task_spec spec = {.type = "t"}) {
    spec.id = std::move(id);
    return make_record(std::move(spec), clk.now());
  }
  error_code insert(std::vector<task_record> rs) {
    auto [ec] = call<>([&](auto cb) { s.async_insert(std::move(rs), cb); });
    return ec;
  }
  task_record get(const std::string& id) {
    auto [ec, r] = call<task_record>([&](auto cb) { s.async_get(id, cb); });
    REQUIRE_FALSE(ec);
    return r;
  }
  claim_result claim(std::vector<std::string> ids) {
    auto [ec, r] = call<claim_result>([&](auto cb) {
      s.async_claim({std::move(ids), clk.now()}, cb);
    });
    REQUIRE_FALSE(ec);
    return r;
  }
  std::pair<error_code, task_record> update(task_update u) {
    auto [ec, r] = call<task_record>([&](auto cb) { s.async_update(std::move(u), cb); });
    return {ec, r};
  }
  task_page list(task_filter f) {
    auto [ec, p] = call<task_page>([&](auto cb) { s.async_list(std::move(f), cb); });
    REQUIRE_FALSE(ec);
    return p;
  }
  static std::vector<std::string> ids(const task_page& p) {
    std::vector<std::string> out;
    for (auto& r : p.records) out.push_back(r.id);
    return out;
  }
};

}  // namespace

// --- queue --------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("queue: higher priority first, FIFO within a priority", "[conformance][queue]",
                   BACKENDS) {
  fixture<TestType> f;
  f.push1("a", 0);
  f.push1("b", 5);
  f.push1("c", 0);
  f.push1("d", 5);
  f.push1("e", -1);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"b", "d", "a", "c", "e"});
  CHECK(f.reserve(1).empty());
}

TEMPLATE_TEST_CASE("queue: a delayed task is invisible until its time", "[conformance][queue]",
                   BACKENDS) {
  fixture<TestType> f;
  f.push1("later", 9, 10s);
  f.push1("now", 0);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"now"});
  f.clk.advance(9s);
  CHECK(f.reserve(5).empty());
  f.clk.advance(1s);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"later"});
}

TEMPLATE_TEST_CASE("queue: an expired lease returns the task to its original position",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  f.push1("a");
  f.push1("b");
  f.push1("c");
  reserve_params p;
  p.lease_for = 30s;
  auto first = f.reserve(1, p);
  REQUIRE(f.ids(first) == std::vector<std::string>{"a"});
  f.clk.advance(29s);
  CHECK(f.ids(f.reserve(1, p)) == std::vector<std::string>{"b"});
  f.clk.advance(2s);
  CHECK(f.ids(f.reserve(5, p)) == std::vector<std::string>{"a", "c"});
  auto [e1, acked] = f.template call<std::size_t>([&](auto cb) { f.q.async_ack(first, cb); });
  CHECK(acked == 0u);
  auto [rel] = f.template call<>([&](auto cb) {
    f.q.async_release({first[0].id, first[0].token}, cb);
  });
  CHECK(rel == make_error_code(errc::not_leased));
}

TEMPLATE_TEST_CASE("queue: extend keeps a lease alive; ack removes for good",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  f.push1("a");
  reserve_params p;
  p.lease_for = 10s;
  auto l = f.reserve(1, p);
  f.clk.advance(8s);
  auto [e1, kept] =
      f.template call<std::vector<bool>>([&](auto cb) { f.q.async_extend(l, 10s, cb); });
  CHECK(kept == std::vector<bool>{true});
  f.clk.advance(8s);
  CHECK(f.reserve(1).empty());
  auto [e2, acked] = f.template call<std::size_t>([&](auto cb) { f.q.async_ack(l, cb); });
  CHECK(acked == 1u);
  f.clk.advance(1h);
  CHECK(f.reserve(1).empty());
}

TEMPLATE_TEST_CASE("queue: a late extend holds the task while nobody reserved it since",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  f.push1("a");
  f.push1("b");
  reserve_params p;
  p.lease_for = 10s;
  auto a = f.reserve(1, p);
  REQUIRE(f.ids(a) == std::vector<std::string>{"a"});
  f.clk.advance(11s);  // ran out; nobody has reserved it since
  auto [e1, kept] =
      f.template call<std::vector<bool>>([&](auto cb) { f.q.async_extend(a, 10s, cb); });
  REQUIRE_FALSE(e1);
  CHECK(kept == std::vector<bool>{true});
  CHECK(f.ids(f.reserve(5, p)) == std::vector<std::string>{"b"});  // "a" is held again
  f.clk.advance(11s);  // both ran out, and this time someone reserves them
  CHECK(f.ids(f.reserve(5, p)) == std::vector<std::string>{"a", "b"});
  auto [e2, kept2] =
      f.template call<std::vector<bool>>([&](auto cb) { f.q.async_extend(a, 10s, cb); });
  REQUIRE_FALSE(e2);
  CHECK(kept2 == std::vector<bool>{false});
}

TEMPLATE_TEST_CASE("queue: release keeps or gives up the original position", "[conformance][queue]",
                   BACKENDS) {
  {
    fixture<TestType> f;
    f.push1("a");
    f.push1("b");
    auto la = f.reserve(1);
    auto [ec] = f.template call<>([&](auto cb) {
      f.q.async_release({la[0].id, la[0].token, true, {}}, cb);
    });
    CHECK(ec == error_code{});
    CHECK(f.ids(f.reserve(2)) == std::vector<std::string>{"a", "b"});
  }
  {
    fixture<TestType> g;
    g.push1("a");
    g.push1("b");
    auto ga = g.reserve(1);
    auto [ec] = g.template call<>([&](auto cb) {
      g.q.async_release({ga[0].id, ga[0].token, false, g.clk.now() + 5s}, cb);
    });
    CHECK_FALSE(ec);
    CHECK(g.ids(g.reserve(2)) == std::vector<std::string>{"b"});
    g.clk.advance(5s);
    CHECK(g.ids(g.reserve(2)) == std::vector<std::string>{"a"});
  }
}

TEMPLATE_TEST_CASE("queue: batch reserve spans queues and skips limited types and keys",
                   "[conformance][queue]", BACKENDS) {
  {
    fixture<TestType> f;
    f.push1("q1-low", 0, {}, "one");
    f.push1("q2-high", 3, {}, "two");
    f.push1("q1-high", 3, {}, "one");
    f.push1("q3", 9, {}, "three");
    reserve_params p;
    p.queues = {"one", "two"};
    CHECK(f.ids(f.reserve(10, p)) == std::vector<std::string>{"q2-high", "q1-high", "q1-low"});
  }
  {
    fixture<TestType> g;
    g.push1("slow-1", 5, {}, "default", "slow");
    g.push1("cust-a", 5, {}, "default", "fast", "A");
    g.push1("fast-1", 0, {}, "default", "fast");
    g.push1("cust-b", 0, {}, "default", "fast", "B");
    reserve_params s;
    s.skip_types = {"slow"};
    s.skip_keys = {"A"};
    CHECK(g.ids(g.reserve(10, s)) == std::vector<std::string>{"fast-1", "cust-b"});
    CHECK(g.ids(g.reserve(10)) == std::vector<std::string>{"slow-1", "cust-a"});
  }
}

TEMPLATE_TEST_CASE("queue: push is all or nothing and rejects duplicates", "[conformance][queue]",
                   BACKENDS) {
  fixture<TestType> f;
  f.push1("a");
  f.push({{"b", "default", "t", "", 0, {}}, {"a", "default", "t", "", 0, {}}}, errc::duplicate_id);
  f.push({{"c", "default", "t", "", 0, {}}, {"c", "default", "t", "", 0, {}}}, errc::duplicate_id);
  f.push({{"", "default", "t", "", 0, {}}}, errc::blank_id);
  CHECK(f.ids(f.reserve(10)) == std::vector<std::string>{"a"});
}

// memory::queue accepts a push of a leased id (it takes effect at the ack). Push checks and
// inserts ids in one pass and undoes a failed push: a repeat within one push and a failed
// push must leave things as they were.
TEST_CASE("memory queue: a leased id may be pushed again, once per push", "[queue][memory]") {
  fixture<memory_backend> f;
  auto e = [](std::string id) { return queue_entry{std::move(id), "default", "t", "", 0, {}}; };
  f.push1("a");
  REQUIRE(f.ids(f.reserve(1)) == std::vector<std::string>{"a"});
  f.push({e("a"), e("a")}, errc::duplicate_id);
  f.push({e("a"), e("x"), e("x")}, errc::duplicate_id);
  f.push({e("x"), e("")}, errc::blank_id);
  f.push({e("a"), e("x")});
  CHECK(f.ids(f.reserve(10)) == std::vector<std::string>{"x"});  // "a" is still leased
}

TEMPLATE_TEST_CASE("queue: a waiting reserve completes when work arrives or a delay elapses",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  reserve_params p;
  p.wait = true;
  p.queues = {"x", "y"};
  std::optional<std::vector<lease>> got;
  f.q.async_reserve(p, [&](error_code ec, std::vector<lease> l) {
    REQUIRE_FALSE(ec);
    got = std::move(l);
  });
  drain(f.io);
  CHECK_FALSE(got);
  f.push1("other", 0, {}, "z");
  CHECK_FALSE(got);
  f.push1("later", 0, 5s, "y");
  CHECK_FALSE(got);
  CHECK(f.clk.pending_waits() == 1);
  f.clk.advance(5s);
  REQUIRE(run_until(f.io, [&] { return got.has_value(); }));
  CHECK(f.ids(*got) == std::vector<std::string>{"later"});
}

TEMPLATE_TEST_CASE("queue: a waiting reserve can be cancelled and reserves nothing",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  asio::cancellation_signal sig;
  reserve_params p;
  p.wait = true;
  std::optional<error_code> out;
  f.q.async_reserve(
      p, asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, std::vector<lease> l) {
        CHECK(l.empty());
        out = ec;
      }));
  drain(f.io);
  sig.emit(asio::cancellation_type::terminal);
  REQUIRE(run_until(f.io, [&] { return out.has_value(); }));
  CHECK(out == asio::error::operation_aborted);
  f.push1("a");
  CHECK(f.ids(f.reserve(1)) == std::vector<std::string>{"a"});
}

TEMPLATE_TEST_CASE("queue: a paused queue hands out nothing until resumed, keeping order",
                   "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  f.push1("a");
  f.push1("b");
  auto [e1] = f.template call<>([&](auto cb) { f.q.async_set_paused("default", true, cb); });
  CHECK_FALSE(e1);
  CHECK(f.q.is_paused("default"));
  CHECK(f.reserve(5).empty());
  reserve_params p;
  p.wait = true;
  std::optional<std::vector<lease>> got;
  f.q.async_reserve(p, [&](error_code, std::vector<lease> l) { got = std::move(l); });
  drain(f.io);
  CHECK_FALSE(got);
  auto [e2] = f.template call<>([&](auto cb) { f.q.async_set_paused("default", false, cb); });
  CHECK_FALSE(e2);
  REQUIRE(run_until(f.io, [&] { return got.has_value(); }));
  CHECK(f.ids(*got) == std::vector<std::string>{"a"});
  CHECK_FALSE(f.q.is_paused("default"));
}

TEMPLATE_TEST_CASE("queue: operations work with use_future", "[conformance][queue]", BACKENDS) {
  fixture<TestType> f;
  std::thread t([&] {
    auto work = asio::make_work_guard(f.io);
    f.io.run_for(5s);
  });
  f.q.async_push({{{"a", "default", "t", "", 0, {}}}}, asio::use_future).get();
  auto leases = f.q.async_reserve({}, asio::use_future).get();
  REQUIRE(leases.size() == 1);
  CHECK(f.q.async_ack(leases, asio::use_future).get() == 1u);
  auto st = f.q.async_stats("", asio::use_future).get();
  CHECK(st.ready + st.leased + st.delayed == 0);
  f.io.stop();
  t.join();
}

// --- store --------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("store: insert is all or nothing; duplicate ids and unique keys are refused",
                   "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  CHECK_FALSE(f.insert({f.rec("a"), f.rec("b")}));
  CHECK(f.insert({f.rec("c"), f.rec("a")}) == errc::duplicate_id);
  CHECK(f.insert({f.rec("d"), f.rec("d")}) == errc::duplicate_id);
  auto blank = f.rec("x");
  blank.id.clear();
  CHECK(f.insert({blank}) == errc::blank_id);
  auto [ec, missing] = f.template call<task_record>([&](auto cb) { f.s.async_get("c", cb); });
  CHECK(ec == errc::not_found);

  CHECK_FALSE(f.insert({f.rec("u1", {.type = "t", .unique_key = "k"})}));
  CHECK(f.insert({f.rec("u2", {.type = "t", .unique_key = "k"})}) == errc::duplicate_unique_key);
  CHECK(f.insert({f.rec("u3", {.type = "t", .unique_key = "j"}),
                  f.rec("u4", {.type = "t", .unique_key = "j"})}) == errc::duplicate_unique_key);
  // A finished task frees an `active` key, but not an `any` key.
  CHECK(f.update({.id = "u1",
                  .expected = task_status::pending,
                  .to = task_status::cancelled,
                  .now = f.clk.now()})
            .first == error_code{});
  CHECK_FALSE(f.insert({f.rec("u5", {.type = "t", .unique_key = "k"})}));
  CHECK_FALSE(
      f.insert({f.rec("v1", {.type = "t", .unique_key = "v", .unique_for = unique_scope::any})}));
  CHECK(f.update({.id = "v1",
                  .expected = task_status::pending,
                  .to = task_status::cancelled,
                  .now = f.clk.now()})
            .first == error_code{});
  CHECK(f.insert({f.rec("v2", {.type = "t", .unique_key = "v"})}) == errc::duplicate_unique_key);
  // Retrying the cancelled u1 would take k back while u5 holds it.
  CHECK(f.update({.id = "u1",
                  .expected = task_status::cancelled,
                  .to = task_status::pending,
                  .now = f.clk.now()})
            .first == errc::duplicate_unique_key);
  auto a = f.get("a");
  CHECK(a == f.rec("a"));
}

TEMPLATE_TEST_CASE("store: update is a compare-and-set", "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  REQUIRE_FALSE(f.insert({f.rec("a")}));
  CHECK(
      f.update({.id = "a", .expected = task_status::running, .to = task_status::succeeded}).first ==
      errc::status_conflict);
  CHECK(
      f.update({.id = "a", .expected = task_status::pending, .to = task_status::succeeded}).first ==
      errc::illegal_transition);
  CHECK(
      f.update({.id = "zz", .expected = task_status::pending, .to = task_status::running}).first ==
      errc::not_found);
  CHECK(f.get("a").status == task_status::pending);  // unchanged by the failures
  auto c = f.claim({"a"});
  REQUIRE(c.claimed.size() == 1);
  CHECK(c.claimed[0].attempt == 1);
  CHECK(f.update({.id = "a",
                  .expected = task_status::running,
                  .expected_attempt = 2,
                  .to = task_status::succeeded})
            .first == errc::status_conflict);
  auto [ec, after] = f.update({.id = "a",
                               .expected = task_status::running,
                               .expected_attempt = 1,
                               .to = task_status::succeeded,
                               .now = f.clk.now(),
                               .result = json{{"ok", true}},
                               .log = log_entry{f.clk.now(), "done"}});
  REQUIRE_FALSE(ec);
  CHECK(after.status == task_status::succeeded);
  CHECK(after.result["ok"] == true);
  CHECK(after.finished_at == f.clk.now());
  CHECK(f.get("a") == after);
}

TEMPLATE_TEST_CASE("store: claim moves pending to running; rescues or drops lost running tasks",
                   "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  REQUIRE_FALSE(f.insert({f.rec("a", {.type = "t", .max_attempts = 2}),
                          f.rec("b", {.type = "t", .max_attempts = 1}), f.rec("c")}));
  auto c1 = f.claim({"a", "b", "missing"});
  CHECK(c1.claimed.size() == 2);
  CHECK(c1.skipped == std::vector<std::string>{"missing"});
  // Their worker died: a second claim rescues a (attempt 2) and drops b (no attempts left).
  f.clk.advance(1min);
  auto c2 = f.claim({"a", "b"});
  REQUIRE(c2.claimed.size() == 1);
  CHECK(c2.claimed[0].id == "a");
  CHECK(c2.claimed[0].attempt == 2);
  REQUIRE(c2.dropped.size() == 1);
  CHECK(c2.dropped[0].status == task_status::dropped);
  CHECK(f.get("b").status == task_status::dropped);
  // A cancelled task is not claimable.
  auto [ec, r] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("c", f.clk.now(), cb); });
  CHECK(r.status == task_status::cancelled);
  auto c3 = f.claim({"c"});
  CHECK(c3.skipped == std::vector<std::string>{"c"});
  CHECK(c3.claimed.empty());
  // A cancel requested while its worker was lost wins over the rescue, and the record says so.
  REQUIRE_FALSE(f.insert({f.rec("d")}));
  REQUIRE(f.claim({"d"}).claimed.size() == 1);
  auto [dec, dr] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("d", f.clk.now(), cb); });
  REQUIRE_FALSE(dec);
  CHECK(dr.status == task_status::running);
  auto c4 = f.claim({"d"});
  CHECK(c4.skipped == std::vector<std::string>{"d"});
  CHECK(f.get("d").status == task_status::cancelled);
}

TEMPLATE_TEST_CASE("store: cancel, heartbeat and run log", "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  REQUIRE_FALSE(f.insert({f.rec("p"), f.rec("r")}));
  auto [e1, p] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("p", f.clk.now(), cb); });
  CHECK_FALSE(e1);
  CHECK(p.status == task_status::cancelled);
  auto [e2, p2] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("p", f.clk.now(), cb); });
  CHECK(e2 == errc::illegal_transition);
  auto [e3, p3] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("nope", f.clk.now(), cb); });
  CHECK(e3 == errc::not_found);

  f.claim({"r"});
  auto [e4, flag0] = f.template call<bool>([&](auto cb) {
    f.s.async_heartbeat({.id = "r", .attempt = 1, .progress = json(50), .now = f.clk.now()}, cb);
  });
  CHECK_FALSE(e4);
  CHECK_FALSE(flag0);
  auto [e5, r] = f.template call<task_record>(
      [&](auto cb) { f.s.async_request_cancel("r", f.clk.now(), cb); });
  CHECK(r.status == task_status::running);
  CHECK(r.cancel_requested);
  auto [e6, flag1] = f.template call<bool>(
      [&](auto cb) { f.s.async_heartbeat({.id = "r", .attempt = 1, .now = f.clk.now()}, cb); });
  CHECK(flag1);
  auto [e7, flag2] = f.template call<bool>(
      [&](auto cb) { f.s.async_heartbeat({.id = "r", .attempt = 2, .now = f.clk.now()}, cb); });
  CHECK(e7 == errc::status_conflict);
  auto [e8] = f.template call<>([&](auto cb) {
    f.s.async_append_log("r", {f.clk.now(), "hello"}, cb);
  });
  CHECK_FALSE(e8);
  auto [e9] = f.template call<>([&](auto cb) {
    f.s.async_append_log("nope", {f.clk.now(), "x"}, cb);
  });
  CHECK(e9 == errc::not_found);
  auto got = f.get("r");
  CHECK(got.progress == json(50));
  REQUIRE_FALSE(got.log.empty());
  CHECK(got.log.back().message == "hello");
}

TEMPLATE_TEST_CASE("store: list filters and pages in id order", "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  std::vector<task_record> rs;
  for (int i = 0; i < 7; ++i) {
    task_spec spec{.type = i % 2 ? "odd" : "even",
                   .queue = i < 3 ? "q1" : "q2",
                   .labels = {{"batch", i < 5 ? "x" : "y"}}};
    rs.push_back(f.rec("id-" + std::to_string(i), spec));
    f.clk.advance(1s);
  }
  REQUIRE_FALSE(f.insert(rs));
  f.claim({"id-0"});
  CHECK(f.ids(f.list({.types = {"odd"}})) == std::vector<std::string>{"id-1", "id-3", "id-5"});
  CHECK(f.ids(f.list({.queues = {"q1"}})) == std::vector<std::string>{"id-0", "id-1", "id-2"});
  CHECK(f.ids(f.list({.statuses = {task_status::running}})) == std::vector<std::string>{"id-0"});
  CHECK(f.ids(f.list({.labels = {{"batch", "y"}}})) == std::vector<std::string>{"id-5", "id-6"});
  CHECK(f.ids(f.list({.ids = {"id-4", "id-2", "nope"}})) ==
        std::vector<std::string>{"id-2", "id-4"});
  CHECK(f.list({.created_after = rs[2].created_at, .created_before = rs[4].created_at})
            .records.size() == 2);
  auto p1 = f.list({.limit = 3});
  CHECK(f.ids(p1) == std::vector<std::string>{"id-0", "id-1", "id-2"});
  CHECK(p1.next_cursor == "id-2");
  auto p2 = f.list({.limit = 3, .after_id = p1.next_cursor});
  CHECK(f.ids(p2) == std::vector<std::string>{"id-3", "id-4", "id-5"});
  auto p3 = f.list({.limit = 3, .after_id = p2.next_cursor});
  CHECK(f.ids(p3) == std::vector<std::string>{"id-6"});
  CHECK(p3.next_cursor.empty());
}

TEMPLATE_TEST_CASE("store: remove skips running tasks; prune deletes old finished ones; counts",
                   "[conformance][store]", BACKENDS) {
  fixture<TestType> f;
  REQUIRE_FALSE(f.insert({f.rec("a", {.type = "x", .queue = "q"}), f.rec("b", {.type = "x"}),
                          f.rec("c", {.type = "y"}), f.rec("d", {.type = "y"})}));
  f.claim({"a", "c", "d"});
  REQUIRE_FALSE(f.update({.id = "c",
                          .expected = task_status::running,
                          .to = task_status::succeeded,
                          .now = f.clk.now()})
                    .first);
  f.clk.advance(1h);
  REQUIRE_FALSE(f.update({.id = "d",
                          .expected = task_status::running,
                          .to = task_status::failed,
                          .now = f.clk.now()})
                    .first);

  auto [ec, counts] = f.template call<task_counts>([&](auto cb) { f.s.async_counts(cb); });
  auto n = [](const task_counts::by_status& s, task_status st) {
    return s[static_cast<std::size_t>(st)];
  };
  CHECK(n(counts.total, task_status::running) == 1);
  CHECK(n(counts.total, task_status::pending) == 1);
  CHECK(n(counts.total, task_status::succeeded) == 1);
  CHECK(n(counts.total, task_status::failed) == 1);
  CHECK(n(counts.by_type["x"], task_status::running) == 1);
  CHECK(n(counts.by_queue["q"], task_status::running) == 1);
  CHECK(n(counts.by_queue["default"], task_status::pending) == 1);

  auto [e2, removed] = f.template call<std::vector<std::string>>(
      [&](auto cb) { f.s.async_remove({.types = {"x"}}, cb); });
  CHECK(removed == std::vector<std::string>{"b"});  // a is running
  auto [e3, pruned] =
      f.template call<std::size_t>([&](auto cb) { f.s.async_prune(f.clk.now() - 30min, cb); });
  CHECK(pruned == 1u);  // c finished an hour ago; d just now
  auto left = f.list({});
  CHECK(f.ids(left) == std::vector<std::string>{"a", "d"});
  auto [e4, c2] = f.template call<task_counts>([&](auto cb) { f.s.async_counts(cb); });
  CHECK(c2.by_type.count("x") == 1);
  CHECK(n(c2.total, task_status::succeeded) == 0);
  CHECK(n(c2.total, task_status::pending) == 0);
}

// --- schedule store -------------------------------------------------------------------------

namespace {
template <class F>
std::optional<schedule_record> load_schedule(F& f, const std::string& name) {
  auto [ec, r] = f.template call<std::optional<schedule_record>>(
      [&](auto cb) { f.backend.schedules().async_load(name, cb); });
  REQUIRE_FALSE(ec);
  return r;
}
template <class F>
void save_schedule(F& f, schedule_record r) {
  auto [ec] =
      f.template call<>([&](auto cb) { f.backend.schedules().async_save(std::move(r), cb); });
  REQUIRE_FALSE(ec);
}
}  // namespace

TEMPLATE_TEST_CASE("schedule store: save, load, load_all in name order, remove",
                   "[conformance][schedules]", BACKENDS) {
  fixture<TestType> f;
  auto def = [](std::string name) {
    return schedule{.name = std::move(name),
                    .task = {.type = "report", .payload = {{"n", 1}}, .labels = {{"a", "b"}}},
                    .cron = "*/5 * * * *",
                    .time_zone = "Europe/Berlin",
                    .catch_up = catch_up_policy::run_all};
  };
  CHECK_FALSE(load_schedule(f, "b"));
  save_schedule(f, {.definition = def("b"), .state = {.cursor = f.clk.now()}});
  save_schedule(f, {.definition = def("a")});
  auto b = load_schedule(f, "b");
  REQUIRE(b);
  CHECK(b->definition == def("b"));
  CHECK(b->state.cursor == f.clk.now());
  auto [ec, all] = f.template call<std::vector<schedule_record>>(
      [&](auto cb) { f.backend.schedules().async_load_all(cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(all.size() == 2);
  CHECK(all[0].definition.name == "a");
  CHECK(all[1].definition.name == "b");

  auto remove = [&](std::string name) {
    auto [rec, removed] = f.template call<bool>(
        [&](auto cb) { f.backend.schedules().async_remove(std::move(name), cb); });
    REQUIRE_FALSE(rec);
    return removed;
  };
  CHECK(remove("a"));
  CHECK_FALSE(remove("a"));
  CHECK_FALSE(load_schedule(f, "a"));
  CHECK(load_schedule(f, "b"));
}

TEMPLATE_TEST_CASE("schedule store: a save never moves progress backwards",
                   "[conformance][schedules]", BACKENDS) {
  fixture<TestType> f;
  auto t = f.clk.now();
  auto def = schedule{.name = "m", .task = {.type = "t"}, .cron = "* * * * *"};
  save_schedule(f, {.definition = def,
                    .state = {.cursor = t + 5min, .last_fired = t + 5min, .last_run_id = "r5"}});
  auto changed = def;
  changed.paused = true;  // a definition change from a scheduler that is behind
  save_schedule(f, {.definition = changed, .state = {.cursor = t + 2min}});
  auto r = load_schedule(f, "m");
  REQUIRE(r);
  CHECK(r->definition.paused);
  CHECK(r->state.cursor == t + 5min);
  CHECK(r->state.last_run_id == "r5");
  save_schedule(f, {.definition = def, .state = {.cursor = t + 9min}});
  CHECK(load_schedule(f, "m")->state.cursor == t + 9min);
}

TEMPLATE_TEST_CASE("scheduler on the backend: each occurrence once; a restart catches up",
                   "[conformance][schedules]", BACKENDS) {
  fixture<TestType> f;
  f.clk.set(std::chrono::sys_days{std::chrono::year{2026} / 1 / 1});
  const auto t0 = f.clk.now();
  client c = f.make_client({.time = &f.clk});
  auto fired = [&] {
    std::vector<time_point> out;
    for (auto& r : f.list({.limit = 1000}).records) out.push_back(r.scheduled_for.value());
    std::sort(out.begin(), out.end());
    return out;
  };
  auto wait_fired = [&](std::size_t n) {
    REQUIRE(run_until(f.io, [&] { return fired().size() >= n; }));
    return fired();
  };
  auto def = schedule{.name = "m",
                      .task = {.type = "t"},
                      .cron = "* * * * *",
                      .catch_up = catch_up_policy::run_once};
  {
    scheduler sched(c, {.store = &f.backend.schedules()});
    auto [ec, r] =
        f.template call<ensure_result>([&](auto cb) { sched.async_ensure_schedule(def, cb); });
    REQUIRE_FALSE(ec);
    sched.async_run(asio::detached);
    drain(f.io);
    f.clk.set(t0 + 1min);
    CHECK(wait_fired(1) == std::vector<time_point>{t0 + 1min});
    f.clk.set(t0 + 2min);
    CHECK(wait_fired(2) == std::vector<time_point>{t0 + 1min, t0 + 2min});
    // The cursor reaches the store once the occurrence is enqueued.
    REQUIRE(run_until(f.io, [&] {
      auto r = load_schedule(f, "m");
      return r && r->state.cursor == t0 + 2min;
    }));
    sched.stop();
    drain(f.io);
  }
  // Down for 10 minutes; a new instance adopts the stored schedule and runs once for them.
  f.clk.set(t0 + 12min + 30s);
  scheduler again(c, {.store = &f.backend.schedules()});
  again.async_run(asio::detached);
  CHECK(wait_fired(3) == std::vector<time_point>{t0 + 1min, t0 + 2min, t0 + 12min});
  drain(f.io);
  CHECK(fired().size() == 3);
  again.stop();
  drain(f.io);
}

TEMPLATE_TEST_CASE("client enqueue: stored and queued once; a failed enqueue leaves neither",
                   "[conformance][client]", BACKENDS) {
  fixture<TestType> f;
  // Only PostgreSQL's store queues what it inserts (one statement); the others are written
  // in two steps by the client. Either way the outcome below is the same.
  CHECK(f.q.fed_by(f.s) == (std::string(TestType::name) == "postgres"));
  client c = f.make_client({.time = &f.clk});
  auto enqueue = [&](task_spec spec) {
    return f.template call<std::string>([&](auto cb) { c.async_enqueue(std::move(spec), cb); });
  };
  auto [e1, a] = enqueue({.type = "t", .unique_key = "k"});
  REQUIRE_FALSE(e1);
  auto [e2, b] = enqueue({.type = "t", .priority = 2});
  REQUIRE_FALSE(e2);
  auto [e3, dup] = enqueue({.type = "t", .unique_key = "k"});
  CHECK(e3 == errc::duplicate_unique_key);
  auto [e4, dup_id] = enqueue({.type = "t", .id = a});
  CHECK(e4 == errc::duplicate_id);
  CHECK(f.get(a).status == task_status::pending);
  // Each task is queued exactly once (a second push of its id is a duplicate), in order.
  f.push({{a, "default", "t", "", 0, f.clk.now()}}, errc::duplicate_id);
  auto leases = f.reserve(10);
  CHECK(f.ids(leases) == std::vector<std::string>{b, a});
  CHECK(f.list({}).records.size() == 2);
}

// --- end to end
// ------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("worker end to end: enqueue, run, retry, cancel", "[conformance][worker]",
                   BACKENDS) {
  fixture<TestType> f;
  client c = f.make_client({.time = &f.clk});
  local_executor exec{f.io.get_executor(), {.threads = 2, .time = &f.clk}};
  std::atomic<int> flaky_runs{0};
  exec.handle("double", [](task_context& ctx) { return json(ctx.payload().get<int>() * 2); });
  exec.handle("flaky", [&](task_context&) -> json {
    if (++flaky_runs < 2) throw std::runtime_error("not yet");
    return json("ok");
  });
  worker w(c, exec);
  w.async_run(asio::detached);

  auto enqueue = [&](task_spec spec) {
    auto [ec, id] =
        f.template call<std::string>([&](auto cb) { c.async_enqueue(std::move(spec), cb); });
    REQUIRE_FALSE(ec);
    return id;
  };
  // Polls the record (client::async_wait is covered by the engine tests; polling keeps this
  // test about the backend).
  auto wait = [&](const std::string& id) {
    std::optional<task_record> r;
    REQUIRE(run_until(f.io, [&] {
      std::optional<task_record> now;
      c.async_get(id, [&](error_code, task_record rec) { now = std::move(rec); });
      // Until the get completes (a networked backend needs I/O, not just posted work).
      REQUIRE(run_until(f.io, [&] { return now.has_value(); }));
      if (now && is_terminal(now->status)) r = std::move(now);
      return r.has_value();
    }));
    return *r;
  };
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(enqueue({.type = "double", .payload = i}));
  for (int i = 0; i < 20; ++i) {
    auto r = wait(ids[i]);
    CHECK(r.status == task_status::succeeded);
    CHECK(r.result == i * 2);
  }
  auto flaky =
      enqueue({.type = "flaky", .retry = {.initial_delay = 1s, .max_delay = 1s, .jitter = 0.0}});
  // Move time in steps until the retry (due 1 s after the failure is recorded) has run.
  REQUIRE(run_until(f.io, [&] {
    f.clk.advance(1s);
    std::optional<task_record> r;
    c.async_get(flaky, [&](error_code, task_record rec) { r = std::move(rec); });
    REQUIRE(run_until(f.io, [&] { return r.has_value(); }));
    return r && r->status == task_status::succeeded;
  }));
  auto fr = wait(flaky);
  CHECK(fr.status == task_status::succeeded);
  CHECK(fr.attempt == 2);

  auto later = enqueue({.type = "double", .payload = 1, .delay = 1h});
  auto [ec, cancelled] = f.template call<task_record>([&](auto cb) { c.async_cancel(later, cb); });
  CHECK_FALSE(ec);
  CHECK(cancelled.status == task_status::cancelled);
  w.stop();
  drain(f.io);
}
