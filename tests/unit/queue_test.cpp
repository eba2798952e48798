// The in-memory Queue: order, delays, leases, batch reserve, waiting reserve, pause/resume.
#include "engine_fixture.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/use_future.hpp>

using namespace taskq;
using namespace taskq::test;

namespace {

struct queue_fixture {
  asio::io_context io;
  manual_clock clk;
  memory::queue q{io.get_executor(), clk};

  void push(std::vector<queue_entry> entries, errc expect = {}) {
    std::optional<error_code> out;
    q.async_push({std::move(entries)}, [&](error_code ec) { out = ec; });
    drain(io);
    REQUIRE(out);
    if (expect == errc{})
      CHECK_FALSE(*out);
    else
      CHECK(*out == expect);
  }
  void push1(std::string id, int priority = 0, duration delay = {}, std::string queue = "default",
             std::string type = "t", std::string key = "") {
    push({{id, queue, type, key, priority, clk.now() + delay}});
  }
  std::vector<lease> reserve(std::size_t n = 1, reserve_params p = {}) {
    p.max = n;
    std::optional<std::vector<lease>> out;
    q.async_reserve(p, [&](error_code ec, std::vector<lease> l) {
      REQUIRE_FALSE(ec);
      out = std::move(l);
    });
    drain(io);
    REQUIRE(out);
    return *out;
  }
  std::vector<std::string> ids(const std::vector<lease>& ls) {
    std::vector<std::string> out;
    for (auto& l : ls) out.push_back(l.id);
    return out;
  }
};

}  // namespace

TEST_CASE("higher priority first, FIFO within a priority", "[queue]") {
  queue_fixture f;
  f.push1("a", 0);
  f.push1("b", 5);
  f.push1("c", 0);
  f.push1("d", 5);
  f.push1("e", -1);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"b", "d", "a", "c", "e"});
  CHECK(f.reserve(1).empty());
}

TEST_CASE("a delayed task is invisible until its time", "[queue]") {
  queue_fixture f;
  f.push1("later", 9, 10s);
  f.push1("now", 0);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"now"});
  f.clk.advance(9s);
  CHECK(f.reserve(5).empty());
  f.clk.advance(1s);
  CHECK(f.ids(f.reserve(5)) == std::vector<std::string>{"later"});
}

TEST_CASE("an expired lease returns the task to its original position", "[queue][lease]") {
  queue_fixture f;
  f.push1("a");
  f.push1("b");
  f.push1("c");
  reserve_params p;
  p.lease_for = 30s;
  auto first = f.reserve(1, p);
  REQUIRE(f.ids(first) == std::vector<std::string>{"a"});
  f.clk.advance(29s);
  CHECK(f.ids(f.reserve(1, p)) == std::vector<std::string>{"b"});
  f.clk.advance(2s);  // a's lease (not b's) has expired
  CHECK(f.ids(f.reserve(5, p)) == std::vector<std::string>{"a", "c"});

  // The stale lease can no longer ack, extend or release.
  std::optional<std::size_t> acked;
  f.q.async_ack(first, [&](error_code, std::size_t n) { acked = n; });
  drain(f.io);
  CHECK(acked == 0u);
  std::optional<error_code> rel;
  f.q.async_release({first[0].id, first[0].token}, [&](error_code ec) { rel = ec; });
  drain(f.io);
  CHECK(rel == make_error_code(errc::not_leased));
}

TEST_CASE("extend keeps a lease alive; ack removes for good", "[queue][lease]") {
  queue_fixture f;
  f.push1("a");
  reserve_params p;
  p.lease_for = 10s;
  auto l = f.reserve(1, p);
  f.clk.advance(8s);
  std::optional<std::vector<bool>> kept;
  f.q.async_extend(l, 10s, [&](error_code, std::vector<bool> k) { kept = k; });
  drain(f.io);
  CHECK(kept == std::vector<bool>{true});
  f.clk.advance(8s);
  CHECK(f.reserve(1).empty());  // still leased
  std::optional<std::size_t> acked;
  f.q.async_ack(l, [&](error_code, std::size_t n) { acked = n; });
  drain(f.io);
  CHECK(acked == 1u);
  f.clk.advance(1h);
  CHECK(f.reserve(1).empty());
}

TEST_CASE("release keeps or gives up the original position", "[queue][lease]") {
  queue_fixture f;
  f.push1("a");
  f.push1("b");
  auto la = f.reserve(1);
  std::optional<error_code> ec;
  f.q.async_release({la[0].id, la[0].token, true, {}}, [&](error_code e) { ec = e; });
  drain(f.io);
  CHECK(ec == error_code{});
  CHECK(f.ids(f.reserve(2)) == std::vector<std::string>{"a", "b"});

  queue_fixture g;
  g.push1("a");
  g.push1("b");
  auto ga = g.reserve(1);
  g.q.async_release({ga[0].id, ga[0].token, false, g.clk.now() + 5s}, [](error_code) {});
  drain(g.io);
  CHECK(g.ids(g.reserve(2)) == std::vector<std::string>{"b"});
  g.clk.advance(5s);
  CHECK(g.ids(g.reserve(2)) == std::vector<std::string>{"a"});
}

TEST_CASE("batch reserve spans queues in global order and skips limited types and keys",
          "[queue]") {
  queue_fixture f;
  f.push1("q1-low", 0, {}, "one");
  f.push1("q2-high", 3, {}, "two");
  f.push1("q1-high", 3, {}, "one");
  f.push1("q3", 9, {}, "three");
  reserve_params p;
  p.queues = {"one", "two"};
  CHECK(f.ids(f.reserve(10, p)) == std::vector<std::string>{"q2-high", "q1-high", "q1-low"});

  queue_fixture g;
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

TEST_CASE("push is all or nothing and rejects duplicates", "[queue]") {
  queue_fixture f;
  f.push1("a");
  f.push({{"b", "default", "t", "", 0, {}}, {"a", "default", "t", "", 0, {}}}, errc::duplicate_id);
  f.push({{"c", "default", "t", "", 0, {}}, {"c", "default", "t", "", 0, {}}}, errc::duplicate_id);
  f.push({{"", "default", "t", "", 0, {}}}, errc::blank_id);
  CHECK(f.ids(f.reserve(10)) == std::vector<std::string>{"a"});
}

TEST_CASE("a waiting reserve completes when work arrives or a delay elapses", "[queue][wait]") {
  queue_fixture f;
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
  CHECK(f.clk.pending_waits() == 1);  // one timer for the earliest delay
  f.clk.advance(5s);
  drain(f.io);
  REQUIRE(got);
  CHECK(f.ids(*got) == std::vector<std::string>{"later"});
}

TEST_CASE("a waiting reserve can be cancelled and reserves nothing", "[queue][wait]") {
  queue_fixture f;
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
  drain(f.io);
  CHECK(out == asio::error::operation_aborted);
  f.push1("a");
  CHECK(f.ids(f.reserve(1)) == std::vector<std::string>{"a"});
}

TEST_CASE("a paused queue hands out nothing until resumed, keeping order", "[queue][pause]") {
  queue_fixture f;
  f.push1("a");
  f.push1("b");
  f.q.async_set_paused("default", true, [](error_code) {});
  drain(f.io);
  CHECK(f.q.is_paused("default"));
  CHECK(f.reserve(5).empty());
  reserve_params p;
  p.wait = true;
  std::optional<std::vector<lease>> got;
  f.q.async_reserve(p, [&](error_code, std::vector<lease> l) { got = std::move(l); });
  drain(f.io);
  CHECK_FALSE(got);
  f.q.async_set_paused("default", false, [](error_code) {});
  drain(f.io);
  REQUIRE(got);
  CHECK(f.ids(*got) == std::vector<std::string>{"a"});
}

TEST_CASE("queue operations work with use_future", "[queue][tokens]") {
  queue_fixture f;
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
