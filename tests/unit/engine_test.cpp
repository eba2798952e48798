// Executor, run_promise, worker and client end to end on the in-memory backends, with a
// manual clock.
#include "engine_fixture.hpp"
#include "nested_json.hpp"

#include <taskq/detail/deadline_heap.hpp>
#include <taskq/detail/outcome.hpp>
#include <taskq/detail/worker_admission.hpp>
#include <taskq/detail/worker_drain.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <latch>
#include <mutex>

using namespace taskq;
using namespace taskq::test;

namespace {}  // namespace

// --- run_promise / executor --------------------------------------------------------------

TEST_CASE("run_promise: every waiter sees the identical result with every kind of token",
          "[executor][promise]") {
  asio::io_context io;
  run_completion comp({.task_id = "t1", .attempt = 1}, io.get_executor());
  auto p = comp.get_promise();
  CHECK(p.run().task_id == "t1");
  CHECK_FALSE(p.done());

  std::optional<run_result> by_callback;
  p.async_wait([&](error_code, run_result r) { by_callback = r; });
  auto fut = p.async_wait(asio::use_future);
  std::optional<run_result> by_coro;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto [ec, r] = co_await p.async_wait(asio::as_tuple(asio::use_awaitable));
        by_coro = r;
      },
      asio::detached);
  auto deferred_op = p.async_wait(asio::deferred);
  std::optional<run_result> by_deferred;
  std::move(deferred_op)([&](error_code, run_result r) { by_deferred = r; });
  drain(io);
  CHECK_FALSE(by_callback);

  run_result r;
  r.result = json{{"answer", 42}};
  REQUIRE(comp.complete(r));
  CHECK_FALSE(comp.complete(run_result{}));  // first result wins
  drain(io);
  REQUIRE(by_callback);
  REQUIRE(by_coro);
  REQUIRE(by_deferred);
  CHECK(by_callback->result["answer"] == 42);
  CHECK(by_coro->result == by_callback->result);
  CHECK(by_deferred->result == by_callback->result);
  CHECK(fut.get().result == by_callback->result);
  CHECK(p.wait().result["answer"] == 42);
  CHECK(p.result()->ok());
}

TEST_CASE("run_promise: cancel completes every waiter at once and tells the work",
          "[executor][promise]") {
  asio::io_context io;
  run_completion comp({.task_id = "t"}, io.get_executor());
  std::optional<error_code> told;
  comp.on_cancel([&](error_code why) { told = why; });
  auto p = comp.get_promise();
  std::vector<error_code> seen;
  for (int i = 0; i < 3; ++i) p.async_wait([&](error_code ec, run_result) { seen.push_back(ec); });
  p.cancel();
  drain(io);
  CHECK(seen == std::vector<error_code>(3, errc::run_cancelled));
  CHECK(told == make_error_code(errc::run_cancelled));
  CHECK_FALSE(comp.complete(run_result{}));  // the late result is dropped
  CHECK(p.wait().error == errc::run_cancelled);
}

TEST_CASE("run_promise: cancelling a wait ends only that wait", "[executor][promise]") {
  asio::io_context io;
  run_completion comp({.task_id = "t"}, io.get_executor());
  auto p = comp.get_promise();
  asio::cancellation_signal sig;
  std::optional<error_code> w1, w2;
  p.async_wait(
      asio::bind_cancellation_slot(sig.slot(), [&](error_code ec, run_result) { w1 = ec; }));
  p.async_wait([&](error_code ec, run_result) { w2 = ec; });
  sig.emit(asio::cancellation_type::terminal);
  drain(io);
  CHECK(w1 == asio::error::operation_aborted);
  CHECK_FALSE(w2);
  CHECK_FALSE(p.done());
  comp.complete(run_result{});
  drain(io);
  CHECK(w2 == error_code{});
}

TEST_CASE("local_executor runs plain and coroutine handlers and waits for idle", "[executor]") {
  asio::io_context io;
  manual_clock clk;
  local_executor ex(io.get_executor(), {.threads = 2, .time = &clk});
  ex.handle("plain", [](task_context& c) { return json{{"got", c.payload()["x"]}}; });
  ex.handle("void", [](task_context&) {});
  ex.handle("coro", [](task_context& c) -> asio::awaitable<json> { co_return json(c.attempt()); });
  ex.handle("fail", [](task_context&) -> json { throw std::runtime_error("disk on fire"); });
  ex.handle("fatal", [](task_context&) -> json { throw permanent_error("bad input"); });

  auto req = [](std::string type, json payload = nullptr) {
    run_request r;
    r.task.id = "id-" + type;
    r.task.type = type;
    r.task.payload = std::move(payload);
    r.task.attempt = 2;
    r.run.task_id = r.task.id;
    r.run.attempt = 2;
    return r;
  };
  auto plain = ex.execute(req("plain", {{"x", 7}}));
  auto v = ex.execute(req("void"));
  auto coro = ex.execute(req("coro"));
  auto fail = ex.execute(req("fail"));
  auto fatal = ex.execute(req("fatal"));
  auto missing = ex.execute(req("nobody"));
  REQUIRE(run_until(io, [&] { return ex.outstanding() == 0; }));
  CHECK(plain.wait().result["got"] == 7);
  CHECK(v.wait().ok());
  CHECK(coro.wait().result == 2);
  CHECK(fail.wait().error == errc::handler_failed);
  CHECK(fail.wait().message == "disk on fire");
  CHECK(fail.wait().retryable);
  CHECK_FALSE(fatal.wait().retryable);
  CHECK(missing.wait().error == errc::handler_not_found);
  CHECK_THAT(missing.wait().message, Catch::Contains("'nobody'"));
  CHECK(plain.run().run_id != coro.run().run_id);
  bool idle = false;
  ex.async_wait_idle([&] { idle = true; });
  drain(io);
  CHECK(idle);
}

TEST_CASE("a custom executor is one small class", "[executor][custom]") {
  // Runs every task inline-free on the io_context and returns the payload doubled.
  class doubling_executor final : public executor {
   public:
    using executor::executor;

   protected:
    run_promise do_execute(run_request&& req) override {
      run_completion comp(req.run, get_executor());
      asio::post(get_executor(), [comp, v = req.task.payload.get<int>()] {
        run_result r;
        r.result = v * 2;
        comp.complete(std::move(r));
      });
      return comp.get_promise();
    }
  };

  engine_fixture f;
  doubling_executor ex(f.io.get_executor());
  worker w(f.c, ex);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "anything", .payload = 21});
  REQUIRE(f.wait_status(id, task_status::succeeded));
  CHECK(f.get(id).result == 42);
  w.stop();
  drain(f.io);
}

// --- worker admission and refill (pure) --------------------------------------------------

namespace {
lease lease_of(std::string type, std::string queue = "default", std::string key = "") {
  lease l;
  l.id = type + "-" + queue + "-" + key;
  l.type = std::move(type);
  l.queue = std::move(queue);
  l.concurrency_key = std::move(key);
  return l;
}
}  // namespace

TEST_CASE("worker admission: per-type, per-queue and per-key limits", "[worker][admission]") {
  worker_options o;
  o.queues = {"default", "mail"};
  o.limits.per_type = {{"resize", 2}};
  o.limits.per_queue = {{"mail", 1}};
  o.limits.per_key = 1;
  detail::worker_admission a(o);
  CHECK(a.filters() == detail::reserve_filters{{"default", "mail"}, {}, {}});

  auto r1 = lease_of("resize"), r2 = lease_of("resize"), r3 = lease_of("resize");
  REQUIRE(a.admits(r1));
  a.count(r1, +1);
  REQUIRE(a.admits(r2));
  a.count(r2, +1);
  CHECK_FALSE(a.admits(r3));  // the type is at its limit
  CHECK(a.filters().skip_types == std::vector<std::string>{"resize"});
  CHECK(a.admits(lease_of("other")));  // held back by a limit, it does not block other work

  auto m1 = lease_of("send", "mail"), m2 = lease_of("send", "mail");
  REQUIRE(a.admits(m1));
  a.count(m1, +1);
  CHECK_FALSE(a.admits(m2));
  CHECK(a.filters().queues == std::vector<std::string>{"default"});  // mail is at its limit

  auto k1 = lease_of("t", "default", "customer-1"), k2 = lease_of("u", "default", "customer-1");
  REQUIRE(a.admits(k1));
  a.count(k1, +1);
  CHECK_FALSE(a.admits(k2));
  CHECK(a.admits(lease_of("u", "default", "customer-2")));
  CHECK(a.filters().skip_keys == std::vector<std::string>{"customer-1"});

  // Counting out frees each limit again, and the filters with it.
  a.count(r1, -1);
  a.count(m1, -1);
  a.count(k1, -1);
  CHECK(a.admits(r3));
  CHECK(a.admits(m2));
  CHECK(a.admits(k2));
  CHECK(a.filters() == detail::reserve_filters{{"default", "mail"}, {}, {}});
}

TEST_CASE("worker admission: unlimited types and queues are never held back",
          "[worker][admission]") {
  worker_options o;  // no limits
  detail::worker_admission a(o);
  for (int i = 0; i < 1000; ++i) {
    auto l = lease_of("t", "default", "k");
    REQUIRE(a.admits(l));
    a.count(l, +1);
  }
  CHECK(a.filters() == detail::reserve_filters{{"default"}, {}, {}});
}

TEST_CASE("worker admission: refills in batches of at least a quarter", "[worker][admission]") {
  worker_options o;
  o.max_in_flight = 64;
  o.reserve_batch = 32;
  detail::worker_admission a(o);
  auto f = a.filters();
  CHECK(a.refill(0, 0, f) == 32);   // idle: a full batch
  CHECK(a.refill(40, 0, f) == 24);  // room for 24, above the refill mark (32 / 4 = 8)
  CHECK(a.refill(56, 0, f) == 8);   // exactly the mark
  CHECK(a.refill(57, 0, f) == 0);   // 7 free: wait for more to finish
  CHECK(a.refill(64, 0, f) == 0);   // full
  CHECK_FALSE(a.has_room(64));
  CHECK(a.has_room(63));
  // Finished runs whose outcomes are being recorded do not hold back the next batch...
  CHECK(a.refill(0, 32, f) == 32);
  CHECK(a.refill(40, 63, f) == 24);
  // ...until as many outcomes as runs allowed wait on the backend.
  CHECK(a.refill(0, 64, f) == 0);
  // Nothing to reserve from when every served queue is at its limit.
  CHECK(a.refill(0, 0, detail::reserve_filters{}) == 0);
  // A batch smaller than four still refills one at a time.
  o.max_in_flight = 2;
  o.reserve_batch = 2;
  detail::worker_admission small(o);
  CHECK(small.refill(1, 0, small.filters()) == 1);
}

TEST_CASE("worker drain: a stop cancels the waits and arms the deadline only while work runs",
          "[worker][drain]") {
  const time_point t0{std::chrono::seconds(1000)};
  detail::worker_activity running;
  running.slots = 2;
  running.any_started = true;

  detail::worker_drain idle;
  auto a = idle.stop(t0, 10s, true, {});
  CHECK(a.cancel_waits);
  CHECK_FALSE(a.arm_at);  // nothing runs: nothing to wait for
  CHECK(idle.stopping());
  CHECK(idle.finished(true, {}));
  CHECK_FALSE(idle.finished(false, {}));  // no run() to complete

  detail::worker_drain before_run;
  a = before_run.stop(t0, 10s, false, running);
  CHECK(a.cancel_waits);
  CHECK_FALSE(a.arm_at);  // run() has not started: nothing of ours runs

  detail::worker_drain d;
  a = d.stop(t0, 10s, true, running);
  CHECK(a.cancel_waits);
  REQUIRE(a.arm_at);
  CHECK(*a.arm_at == t0 + 10s);
  CHECK_FALSE(a.cancel_previous);
  CHECK_FALSE(d.finished(true, running));

  detail::worker_activity fetching;  // what a fetch in flight claims is given back, not run
  fetching.reserving = true;
  detail::worker_drain c;
  auto fa = c.stop(t0, 5s, true, fetching);
  CHECK(fa.cancel_waits);
  CHECK_FALSE(fa.arm_at);
  CHECK_FALSE(c.finished(true, fetching));  // but the worker waits for it
}

TEST_CASE("worker drain: a second stop only brings the deadline forward", "[worker][drain]") {
  const time_point t0{std::chrono::seconds(1000)};
  detail::worker_activity running;
  running.slots = 1;
  running.any_started = true;
  detail::worker_drain d;
  auto first = d.stop(t0, 30s, true, running);
  REQUIRE(first.arm_at);

  auto later = d.stop(t0 + 1s, 60s, true, running);  // would end after the first: ignored
  CHECK_FALSE(later.cancel_waits);
  CHECK_FALSE(later.arm_at);

  auto sooner = d.stop(t0 + 1s, 2s, true, running);  // a second signal with a short drain
  CHECK_FALSE(sooner.cancel_waits);
  REQUIRE(sooner.arm_at);
  CHECK(*sooner.arm_at == t0 + 3s);
  CHECK(sooner.cancel_previous);
  CHECK(sooner.generation != first.generation);

  // The superseded deadline firing changes nothing; the current one expires the drain.
  CHECK_FALSE(d.on_deadline(first.generation));
  CHECK_FALSE(d.expired());
  CHECK(d.on_deadline(sooner.generation));
  CHECK(d.expired());

  // After expiry a stop arms nothing more.
  CHECK_FALSE(d.stop(t0 + 4s, 0s, true, running).arm_at);
}

TEST_CASE("worker drain: finished only when nothing is in flight", "[worker][drain]") {
  const time_point t0{std::chrono::seconds(1000)};
  detail::worker_drain d;
  CHECK_FALSE(d.finished(true, {}));  // not stopping
  d.stop(t0, 1s, true, {});
  CHECK(d.finished(true, {}));
  detail::worker_activity a;
  a.reserving = true;
  CHECK_FALSE(d.finished(true, a));
  a = {};
  a.updates_in_flight = 1;
  CHECK_FALSE(d.finished(true, a));
  a = {};
  a.slots = 1;  // reserved, not started: still to be given back or recorded
  CHECK_FALSE(d.finished(true, a));
}

// --- outcome rules (pure) -----------------------------------------------------------------

TEST_CASE("outcome rules: success, retry with backoff, failure, cancel, shutdown",
          "[worker][rules]") {
  const time_point now = time_point{} + 1000h;
  task_record t;
  t.attempt = 1;
  t.max_attempts = 3;
  t.retry = {.initial_delay = 10s, .max_delay = 1h, .multiplier = 2.0, .jitter = 0.0};

  run_result ok;
  CHECK(detail::decide_outcome(t, ok, {}, now, 0.5).to == task_status::succeeded);

  run_result transient;
  transient.error = errc::handler_failed;
  transient.message = "flaky";
  transient.retryable = true;
  auto o = detail::decide_outcome(t, transient, {}, now, 0.5);
  CHECK(o.to == task_status::pending);
  CHECK(o.event == event_kind::retry_scheduled);
  CHECK(o.retry_at == now + 10s);
  t.attempt = 2;
  CHECK(detail::decide_outcome(t, transient, {}, now, 0.5).retry_at == now + 20s);
  t.attempt = 3;
  o = detail::decide_outcome(t, transient, {}, now, 0.5);
  CHECK(o.to == task_status::failed);
  CHECK(o.error == "flaky");

  t.attempt = 1;
  run_result permanent = transient;
  permanent.retryable = false;
  CHECK(detail::decide_outcome(t, permanent, {}, now, 0.5).to == task_status::failed);

  run_result timed_out;
  timed_out.error = errc::run_timed_out;
  CHECK(detail::decide_outcome(t, timed_out, {}, now, 0.5).to == task_status::pending);

  run_result cancelled;
  cancelled.error = errc::run_cancelled;
  CHECK(detail::decide_outcome(t, cancelled, {.cancel_requested = true}, now, 0.5).to ==
        task_status::cancelled);

  run_result shutdown;
  shutdown.error = errc::shutting_down;
  o = detail::decide_outcome(t, shutdown, {.interrupted = true}, now, 0.5);
  CHECK(o.to == task_status::pending);
  CHECK(o.attempt == 0);  // the interrupted attempt is not counted
  CHECK(o.keep_position);
}

// --- worker + client end to end -----------------------------------------------------------

TEST_CASE("worker runs a task; client waits for it; events and metrics follow", "[worker]") {
  engine_fixture f;
  std::mutex m;
  std::vector<event_kind> events;
  f.c.subscribe([&](const event& e) {
    std::lock_guard lock(m);
    events.push_back(e.kind);
  });
  f.exec.handle("hello", [](task_context& c) {
    c.heartbeat({{"half", true}});
    c.log("said hello");
    return json{{"greeting", "hello " + c.payload()["name"].get<std::string>()}};
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "hello", .payload = {{"name", "ada"}}});
  std::optional<task_record> done;
  f.c.async_wait(id, [&](error_code ec, task_record r) {
    REQUIRE_FALSE(ec);
    done = r;
  });
  REQUIRE(run_until(f.io, [&] { return done.has_value(); }));
  CHECK(done->status == task_status::succeeded);
  CHECK(done->result["greeting"] == "hello ada");
  CHECK(done->progress["half"] == true);
  CHECK(done->attempt == 1);
  CHECK(done->started_at);
  CHECK(done->finished_at);
  bool logged = std::any_of(done->log.begin(), done->log.end(),
                            [](auto& e) { return e.message == "said hello"; });
  CHECK(logged);
  {
    std::lock_guard lock(m);
    CHECK(events == std::vector<event_kind>{event_kind::enqueued, event_kind::started,
                                            event_kind::progress, event_kind::succeeded});
  }
  std::optional<metrics_snapshot> snap;
  f.c.async_metrics([&](error_code, metrics_snapshot s) { snap = s; });
  drain(f.io);
  REQUIRE(snap);
  CHECK(snap->succeeded == 1);
  CHECK(snap->counts.total[static_cast<int>(task_status::succeeded)] == 1);
  CHECK(snap->counts.by_type["hello"][static_cast<int>(task_status::succeeded)] == 1);
  CHECK(snap->enqueue_to_start.count == 1);
  CHECK(snap->run_duration.count == 1);

  // async_wait on an already-finished task completes at once.
  std::optional<task_status> again;
  f.c.async_wait(id, [&](error_code, task_record r) { again = r.status; });
  drain(f.io);
  CHECK(again == task_status::succeeded);
  w.stop();
  drain(f.io);
}

TEST_CASE("retryable failures are retried with backoff until attempts run out", "[worker][retry]") {
  engine_fixture f;
  std::atomic<int> calls{0};
  f.exec.handle("flaky", [&](task_context&) -> asio::awaitable<json> {
    ++calls;
    throw std::runtime_error("try again");
    co_return json();
  });
  worker w(f.c, f.exec, {.jitter_seed = 1});
  w.async_run(asio::detached);
  auto id =
      f.enqueue({.type = "flaky",
                 .max_attempts = 3,
                 .retry = {.initial_delay = 10s, .max_delay = 1h, .multiplier = 2, .jitter = 0}});
  REQUIRE(run_until(f.io, [&] { return calls == 1; }));
  drain(f.io);
  auto r = f.get(id);
  CHECK(r.status == task_status::pending);
  CHECK(r.attempt == 1);
  CHECK(r.last_error == "try again");
  CHECK(r.available_at == f.clk.now() + 10s);
  f.clk.advance(9s);
  drain(f.io);
  CHECK(calls == 1);
  f.clk.advance(1s);
  REQUIRE(run_until(f.io, [&] { return calls == 2; }));
  drain(f.io);
  f.clk.advance(20s);
  REQUIRE(run_until(f.io, [&] { return calls == 3; }));
  REQUIRE(f.wait_status(id, task_status::failed));
  r = f.get(id);
  CHECK(r.attempt == 3);
  f.clk.advance(1h);
  drain(f.io);
  CHECK(calls == 3);
  w.stop();
  drain(f.io);
}

TEST_CASE("a permanent error fails at once", "[worker][retry]") {
  engine_fixture f;
  f.exec.handle("bad", [](task_context&) -> json { throw permanent_error("no such user"); });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "bad", .max_attempts = 5});
  REQUIRE(f.wait_status(id, task_status::failed));
  auto r = f.get(id);
  CHECK(r.attempt == 1);
  CHECK(r.last_error == "no such user");
  w.stop();
  drain(f.io);
}

TEST_CASE("the timeout cancels the run, then it is retried or failed", "[worker][timeout]") {
  engine_fixture f;
  std::atomic<int> started{0};
  std::atomic<int> saw_cancel{0};
  f.exec.handle("slow", [&](task_context& c) -> asio::awaitable<json> {
    ++started;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
    auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted && c.cancelled()) ++saw_cancel;
    co_return json();
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "slow",
                       .max_attempts = 2,
                       .retry = {.initial_delay = 1s, .jitter = 0},
                       .timeout = 5s});
  REQUIRE(run_until(f.io, [&] { return started == 1; }));
  f.clk.advance(5s);
  REQUIRE(run_until(f.io, [&] { return saw_cancel == 1; }));
  REQUIRE(f.wait_status(id, task_status::pending));
  CHECK(f.get(id).last_error == "run timed out");
  f.clk.advance(1s);
  REQUIRE(run_until(f.io, [&] { return started == 2; }));
  f.clk.advance(5s);
  REQUIRE(f.wait_status(id, task_status::failed));
  w.stop();
  drain(f.io);
}

TEST_CASE("deadline heap: earliest first, erase from anywhere, re-push moves",
          "[worker][timeout]") {
  struct run {
    int id;
    std::size_t deadline_index = detail::deadline_heap<run>::npos;
  };
  std::vector<run> runs;
  for (int i = 0; i < 200; ++i) runs.push_back({i});
  detail::deadline_heap<run> heap;
  const time_point t0{};
  // Deadlines in a scrambled order; ties keep no particular order.
  for (auto& r : runs) heap.push(r, t0 + std::chrono::seconds((r.id * 37) % 200));
  CHECK(heap.size() == 200);
  // Erase every third, and move one of the others to the very end.
  for (auto& r : runs)
    if (r.id % 3 == 0) heap.erase(r);
  heap.erase(runs[0]);  // erasing twice is harmless
  heap.push(runs[1], t0 + std::chrono::hours(1));
  std::vector<int> order;
  time_point last = t0;
  while (!heap.empty()) {
    CHECK(heap.next() >= last);
    last = heap.next();
    order.push_back(heap.top().id);
    heap.pop();
  }
  CHECK(order.size() == 200 - 67);
  CHECK(order.back() == 1);
  for (auto& r : runs) CHECK(r.deadline_index == detail::deadline_heap<run>::npos);
}

TEST_CASE("timeouts of many runs: each expires at its own deadline, finished runs never",
          "[worker][timeout]") {
  engine_fixture f;
  std::atomic<int> cancelled{0};
  f.exec.handle("wait", [&](task_context& c) -> asio::awaitable<json> {
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    if (c.cancelled()) ++cancelled;
    co_return json();
  });
  f.exec.handle("quick", [](task_context&) { return json(); });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto slow = f.enqueue({.type = "wait", .max_attempts = 1, .timeout = 30s});
  auto quick = f.enqueue({.type = "quick", .max_attempts = 1, .timeout = 1s});
  REQUIRE(f.wait_status(quick, task_status::succeeded));
  auto soon = f.enqueue({.type = "wait", .max_attempts = 1, .timeout = 10s});
  REQUIRE(f.wait_status(soon, task_status::running));
  f.clk.advance(2s);  // past the finished run's deadline: nothing happens
  for (int i = 0; i < 20; ++i) f.io.poll();
  CHECK(cancelled == 0);
  f.clk.advance(9s);  // the later, shorter timeout fires first
  REQUIRE(f.wait_status(soon, task_status::failed));
  CHECK(f.get(soon).last_error == "run timed out");
  CHECK(f.get(slow).status == task_status::running);
  f.clk.advance(20s);
  REQUIRE(f.wait_status(slow, task_status::failed));
  CHECK(cancelled == 2);
  w.stop();
  drain(f.io);
}

TEST_CASE("cancelling a pending task is immediate; a running one is told", "[worker][cancel]") {
  engine_fixture f;
  std::atomic<int> started{0};
  std::atomic<bool> observed{false};
  f.exec.handle("loop", [&](task_context& c) {
    ++started;
    while (c.heartbeat()) std::this_thread::yield();
    observed = c.cancelled();
  });
  worker w(f.c, f.exec, {.max_in_flight = 1});
  w.async_run(asio::detached);
  auto running = f.enqueue({.type = "loop"});
  REQUIRE(run_until(f.io, [&] { return started == 1; }));
  auto waiting = f.enqueue({.type = "loop"});

  std::optional<task_record> after;
  f.c.async_cancel(waiting, [&](error_code ec, task_record r) {
    REQUIRE_FALSE(ec);
    after = r;
  });
  REQUIRE(run_until(f.io, [&] { return after.has_value(); }));
  CHECK(after->status == task_status::cancelled);

  after.reset();
  f.c.async_cancel(running, [&](error_code ec, task_record r) {
    REQUIRE_FALSE(ec);
    after = r;
  });
  REQUIRE(run_until(f.io, [&] { return after.has_value(); }));
  CHECK(after->cancel_requested);
  REQUIRE(f.wait_status(running, task_status::cancelled));
  REQUIRE(run_until(f.io, [&] { return observed.load(); }));
  CHECK(started == 1);  // the cancelled pending task never ran

  std::optional<error_code> again;
  f.c.async_cancel(running, [&](error_code ec, task_record) { again = ec; });
  REQUIRE(run_until(f.io, [&] { return again.has_value(); }));
  CHECK(*again == errc::illegal_transition);
  w.stop();
  drain(f.io);
}

TEST_CASE("shutdown drains: running tasks finish, or are returned to pending", "[worker][drain]") {
  engine_fixture f;
  std::atomic<int> started{0};
  f.exec.handle("quick", [&](task_context& c) -> asio::awaitable<json> {
    ++started;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return json(c.cancelled());
  });
  worker w(f.c, f.exec, {.drain_timeout = 10s});
  bool stopped = false;
  w.async_run([&](error_code ec) {
    CHECK_FALSE(ec);
    stopped = true;
  });
  auto id = f.enqueue({.type = "quick"});
  REQUIRE(run_until(f.io, [&] { return started == 1; }));
  w.stop();
  drain(f.io);
  CHECK_FALSE(stopped);  // still draining
  f.clk.advance(10s);    // drain deadline: cancelled and given back
  REQUIRE(run_until(f.io, [&] { return stopped; }));
  auto r = f.get(id);
  CHECK(r.status == task_status::pending);
  CHECK(r.attempt == 0);  // the interrupted attempt does not count

  // A new worker picks it up: nothing was lost.
  f.exec.handle("quick", [](task_context&) { return json("done"); });
  worker w2(f.c, f.exec);
  w2.async_run(asio::detached);
  REQUIRE(f.wait_status(id, task_status::succeeded));
  CHECK(f.get(id).attempt == 1);
  w2.stop();
  drain(f.io);
}

TEST_CASE("a second stop with a shorter drain ends the drain at once", "[worker][drain]") {
  engine_fixture f;
  std::atomic<int> started{0};
  f.exec.handle("hang", [&](task_context&) -> asio::awaitable<json> {
    ++started;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return json();
  });
  worker w(f.c, f.exec, {.drain_timeout = 1h});
  bool stopped = false;
  w.async_run([&](error_code ec) {
    CHECK_FALSE(ec);
    stopped = true;
  });
  auto id = f.enqueue({.type = "hang"});
  REQUIRE(run_until(f.io, [&] { return started == 1; }));
  w.stop();
  drain(f.io);
  CHECK_FALSE(stopped);
  w.stop(10s);  // shorter: the deadline moves to 10 s from now
  drain(f.io);
  CHECK_FALSE(stopped);
  w.stop(30s);                                        // longer: ignored
  w.stop(0s);                                         // now
  REQUIRE(run_until(f.io, [&] { return stopped; }));  // the clock never moved
  auto r = f.get(id);
  CHECK(r.status == task_status::pending);
  CHECK(r.attempt == 0);  // the interrupted attempt does not count
}

TEST_CASE("stop before start and stop twice are harmless", "[worker][drain]") {
  engine_fixture f;
  worker w(f.c, f.exec);
  w.stop();
  w.stop();
  bool done = false;
  w.async_run([&](error_code ec) {
    CHECK_FALSE(ec);
    done = true;
  });
  REQUIRE(run_until(f.io, [&] { return done; }));
  w.stop();
  drain(f.io);
}

TEST_CASE("concurrency limits per type, queue and key; held-back work does not block others",
          "[worker][limits]") {
  engine_fixture f;
  std::mutex m;
  std::map<std::string, int> now_running, peak;
  auto track = [&](const std::string& k, int d) {
    std::lock_guard lock(m);
    now_running[k] += d;
    peak[k] = std::max(peak[k], now_running[k]);
  };
  auto handler = [&](task_context& c) -> asio::awaitable<json> {
    track(c.type(), +1);
    track("key:" + c.task().concurrency_key, +1);
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    track(c.type(), -1);
    track("key:" + c.task().concurrency_key, -1);
    co_return json();
  };
  f.exec.handle("report", handler);
  f.exec.handle("mail", handler);
  worker w(f.c, f.exec,
           {.max_in_flight = 8, .limits = {.per_type = {{"report", 1}}, .per_key = 2}});
  w.async_run(asio::detached);
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(f.enqueue({.type = "report", .priority = 5}));
  for (int i = 0; i < 12; ++i)
    ids.push_back(f.enqueue({.type = "mail", .concurrency_key = i % 2 ? "A" : "B"}));
  REQUIRE(run_until(f.io, [&] {
    std::optional<metrics_snapshot> s;
    f.c.async_metrics([&](error_code, metrics_snapshot x) { s = x; });
    drain(f.io);
    return s && s->succeeded == ids.size();
  }));
  CHECK(peak["report"] == 1);
  CHECK(peak["key:A"] <= 2);
  CHECK(peak["key:B"] <= 2);
  CHECK(peak["mail"] >= 2);  // mail ran beside the limited reports
  w.stop();
  drain(f.io);
}

TEST_CASE("pause and resume a queue through the client", "[worker][pause]") {
  engine_fixture f;
  std::atomic<int> runs{0};
  f.exec.handle("t", [&](task_context&) -> asio::awaitable<json> {
    ++runs;
    co_return json();
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  f.c.async_set_paused("default", true, [](error_code) {});
  drain(f.io);
  auto id = f.enqueue({.type = "t"});
  drain(f.io);
  CHECK(runs == 0);
  CHECK(f.status(id) == task_status::pending);
  f.c.async_set_paused("default", false, [](error_code) {});
  REQUIRE(f.wait_status(id, task_status::succeeded));
  w.stop();
  drain(f.io);
}

TEST_CASE("a worker that dies mid-run: its lease expires and the task is rescued or dropped",
          "[worker][lease]") {
  engine_fixture f;
  // A "dead" worker: reserve and claim by hand, then never finish.
  std::optional<std::vector<lease>> leases;
  auto id = f.enqueue({.type = "t", .max_attempts = 2});
  f.q.async_reserve({.lease_for = 30s}, [&](error_code, std::vector<lease> l) { leases = l; });
  drain(f.io);
  REQUIRE(leases->size() == 1);
  f.s.async_claim({{id}, f.clk.now()}, [](error_code, claim_result) {});
  drain(f.io);
  CHECK(f.status(id) == task_status::running);

  std::atomic<int> runs{0};
  f.exec.handle("t", [&](task_context& c) -> asio::awaitable<json> {
    ++runs;
    co_return json(c.attempt());
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  drain(f.io);
  CHECK(runs == 0);
  f.clk.advance(30s);
  REQUIRE(f.wait_status(id, task_status::succeeded));
  CHECK(f.get(id).attempt == 2);
  CHECK(f.get(id).result == 2);

  // With no attempts left, the lost task is dropped.
  auto id2 = f.enqueue({.type = "other", .queue = "lost", .max_attempts = 1});
  leases.reset();
  f.q.async_reserve({.queues = {"lost"}, .lease_for = 30s},
                    [&](error_code, std::vector<lease> l) { leases = l; });
  drain(f.io);
  f.s.async_claim({{id2}, f.clk.now()}, [](error_code, claim_result) {});
  drain(f.io);
  std::atomic<int> dropped{0};
  f.c.subscribe([&](const event& e) { dropped += e.kind == event_kind::dropped; });
  worker w2(f.c, f.exec, {.queues = {"lost"}});
  w2.async_run(asio::detached);
  f.clk.advance(31s);
  REQUIRE(f.wait_status(id2, task_status::dropped));
  CHECK(dropped == 1);
  w.stop();
  w2.stop();
  drain(f.io);
}

TEST_CASE("client: bad input, unique keys, retry, delete and prune", "[client]") {
  engine_fixture f;
  std::optional<error_code> ec;
  f.c.async_enqueue({.type = ""}, [&](error_code e, std::string) { ec = e; });
  drain(f.io);
  CHECK(ec == make_error_code(errc::blank_type));

  // A bad spec in a batch: nothing of the batch is written.
  ec.reset();
  f.c.async_enqueue_batch({{.type = "ok"}, {.type = "ok", .max_attempts = 0}},
                          [&](error_code e, std::vector<std::string>) { ec = e; });
  drain(f.io);
  CHECK(ec == make_error_code(errc::invalid_max_attempts));
  std::optional<task_page> page;
  f.c.async_list({}, [&](error_code, task_page p) { page = p; });
  drain(f.io);
  CHECK(page->records.empty());

  auto a = f.enqueue({.type = "t", .unique_key = "customer-7"});
  ec.reset();
  f.c.async_enqueue({.type = "t", .unique_key = "customer-7"},
                    [&](error_code e, std::string) { ec = e; });
  drain(f.io);
  CHECK(ec == make_error_code(errc::duplicate_unique_key));

  f.c.async_cancel(a, [](error_code, task_record) {});
  drain(f.io);
  auto b = f.enqueue({.type = "t", .unique_key = "customer-7"});  // key freed
  CHECK(b != a);

  // Retry a cancelled task: its key is held by b now.
  std::optional<error_code> rec;
  f.c.async_retry(a, [&](error_code e, task_record) { rec = e; });
  drain(f.io);
  CHECK(rec == make_error_code(errc::duplicate_unique_key));
  f.c.async_remove({.ids = {b}}, [](error_code, std::vector<std::string>) {});
  drain(f.io);
  rec.reset();
  f.c.async_retry(a, [&](error_code e, task_record r) {
    rec = e;
    CHECK(r.status == task_status::pending);
    CHECK(r.attempt == 0);
  });
  drain(f.io);
  CHECK(rec == error_code{});

  // Bulk delete by label; prune finished ones by age.
  auto l1 = f.enqueue({.type = "t", .labels = {{"batch", "9"}}});
  auto l2 = f.enqueue({.type = "t", .labels = {{"batch", "9"}}});
  f.enqueue({.type = "t", .labels = {{"batch", "10"}}});
  std::optional<std::vector<std::string>> removed;
  f.c.async_remove({.labels = {{"batch", "9"}}},
                   [&](error_code, std::vector<std::string> ids) { removed = ids; });
  drain(f.io);
  REQUIRE(removed);
  CHECK(removed->size() == 2);
  std::optional<error_code> gone;
  f.c.async_get(l1, [&](error_code e, task_record) { gone = e; });
  drain(f.io);
  CHECK(gone == make_error_code(errc::not_found));
  (void)l2;

  auto old = f.enqueue({.type = "t"});
  f.c.async_cancel(old, [](error_code, task_record) {});
  drain(f.io);
  f.clk.advance(2h);
  std::optional<std::size_t> pruned;
  f.c.async_prune(1h, [&](error_code, std::size_t n) { pruned = n; });
  drain(f.io);
  CHECK(pruned == 1u);
}

TEST_CASE("deep JSON from callers and handlers is refused, never a crash", "[client][depth]") {
  engine_fixture f;
  // Enqueue: 100,000 levels crashed validate() (recursive dump) before the depth check.
  std::optional<error_code> ec;
  f.c.async_enqueue({.type = "t", .payload = nested_json(100'000)},
                    [&](error_code e, std::string) { ec = e; });
  drain(f.io);
  CHECK(ec == make_error_code(errc::payload_too_deep));
  // The client's configured limit applies.
  client strict{f.io.get_executor(), f.q, f.s, {.limits = {.max_json_depth = 2}, .time = &f.clk}};
  ec.reset();
  strict.async_enqueue({.type = "t", .payload = nested_json(3)},
                       [&](error_code e, std::string) { ec = e; });
  drain(f.io);
  CHECK(ec == make_error_code(errc::payload_too_deep));

  // A handler's progress and result: refused with their own errors; the task fails cleanly.
  std::atomic<int> heartbeat_error{0};
  f.exec.handle("deep", [&](task_context& ctx) -> json {
    ctx.async_heartbeat(nested_json(100'000),
                        [&](error_code e, bool) { heartbeat_error = e.value(); });
    while (heartbeat_error == 0) std::this_thread::yield();
    return nested_json(100'000);
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "deep", .max_attempts = 3});
  REQUIRE(f.wait_status(id, task_status::failed));
  CHECK(heartbeat_error == static_cast<int>(errc::progress_too_deep));
  auto r = f.get(id);
  CHECK(r.attempt == 1);  // not retried: the same handler would return the same result
  CHECK(r.result.is_null());
  CHECK(r.progress.is_null());
  CHECK_THAT(r.last_error, Catch::Contains("'result'"));
  w.stop();
  drain(f.io);
}

TEST_CASE("client: list filters and pages", "[client]") {
  engine_fixture f;
  for (int i = 0; i < 5; ++i) f.enqueue({.type = "a", .queue = "q1"});
  for (int i = 0; i < 3; ++i) f.enqueue({.type = "b", .queue = "q2", .labels = {{"k", "v"}}});
  auto list = [&](task_filter flt) {
    std::optional<task_page> p;
    f.c.async_list(flt, [&](error_code, task_page x) { p = x; });
    drain(f.io);
    return *p;
  };
  CHECK(list({.types = {"a"}}).records.size() == 5);
  CHECK(list({.queues = {"q2"}}).records.size() == 3);
  CHECK(list({.labels = {{"k", "v"}}}).records.size() == 3);
  CHECK(list({.statuses = {task_status::running}}).records.empty());
  auto p1 = list({.limit = 3});
  REQUIRE(p1.records.size() == 3);
  REQUIRE_FALSE(p1.next_cursor.empty());
  auto p2 = list({.limit = 3, .after_id = p1.next_cursor});
  REQUIRE(p2.records.size() == 3);
  auto p3 = list({.limit = 3, .after_id = p2.next_cursor});
  CHECK(p3.records.size() == 2);
  CHECK(p3.next_cursor.empty());
  CHECK(p1.records.back().id < p2.records.front().id);
}

TEST_CASE("blocking client calls work from another thread and refuse the io thread",
          "[client][blocking]") {
  engine_fixture f;
  std::thread io_thread([&] {
    auto guard = asio::make_work_guard(f.io);
    f.io.run_for(10s);
  });
  auto id = f.c.enqueue({.type = "t"});
  CHECK(f.c.get(id).status == task_status::pending);
  error_code ec;
  f.c.get("nope", ec);
  CHECK(ec == errc::not_found);
  CHECK_THROWS_AS(f.c.enqueue({.type = ""}), taskq::error);
  std::optional<error_code> inside;
  asio::post(f.io, [&] {
    error_code e;
    f.c.get(id, e);
    inside = e;
  });
  while (!inside) std::this_thread::yield();
  CHECK(*inside == errc::blocking_on_io_thread);
  f.io.stop();
  io_thread.join();
}

TEST_CASE("a retry racing the old holder's ack is not lost", "[client][queue][race]") {
  engine_fixture f;
  auto id = f.enqueue({.type = "t"});
  // A worker holds a lease on the pending task...
  std::optional<std::vector<lease>> held;
  f.q.async_reserve({}, [&](error_code, std::vector<lease> l) { held = l; });
  drain(f.io);
  REQUIRE(held->size() == 1);
  // ...the client cancels it (the queue entry stays: it is leased)...
  f.c.async_cancel(id, [](error_code, task_record) {});
  drain(f.io);
  // ...the worker's claim skips it...
  std::optional<claim_result> claimed;
  f.s.async_claim({{id}, f.clk.now()}, [&](error_code, claim_result r) { claimed = r; });
  drain(f.io);
  REQUIRE(claimed->skipped.size() == 1);
  // ...the client retries it before the worker acks...
  std::optional<error_code> retried;
  f.c.async_retry(id, [&](error_code ec, task_record) { retried = ec; });
  drain(f.io);
  REQUIRE(retried == error_code{});
  // ...and the worker's ack of its old lease must not take the retried task away.
  f.q.async_ack(*held, [](error_code, std::size_t) {});
  drain(f.io);
  std::optional<std::vector<lease>> again;
  f.q.async_reserve({}, [&](error_code, std::vector<lease> l) { again = l; });
  drain(f.io);
  REQUIRE(again->size() == 1);
  CHECK(again->front().id == id);
  CHECK(f.status(id) == task_status::pending);
}

TEST_CASE("waiting for a task whose outcome is being recorded still completes", "[client][race]") {
  engine_fixture f;
  std::atomic<bool> go{false};
  f.exec.handle("t", [&](task_context&) {
    while (!go) std::this_thread::yield();
    return json(1);
  });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  auto id = f.enqueue({.type = "t"});
  REQUIRE(run_until(f.io, [&] { return w.running() == 1; }));
  go = true;  // finishes with nobody waiting: the update goes out without its record
  std::optional<task_record> done;
  f.c.async_wait(id, [&](error_code, task_record r) { done = r; });
  REQUIRE(run_until(f.io, [&] { return done.has_value(); }));
  CHECK(done->status == task_status::succeeded);
  w.stop();
  drain(f.io);
}

namespace {
/// A store that holds every update until the test releases it: an outcome on its way.
class held_update_store final : public forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  std::vector<std::pair<task_update, handler<void(error_code, task_record)>>> held;

  void release_all() {
    auto all = std::move(held);
    held.clear();
    for (auto& [u, h] : all) forwarding_store::do_update(std::move(u), std::move(h));
  }

 protected:
  void do_update(task_update u, handler<void(error_code, task_record)> h) override {
    held.emplace_back(std::move(u), std::move(h));
  }
};
}  // namespace

TEST_CASE("a worker keeps renewing a task's lease while the run's outcome is being recorded",
          "[worker][lease]") {
  asio::io_context io;
  manual_clock clk;
  memory::queue q{io.get_executor(), clk};
  memory::store mem{io.get_executor()};
  held_update_store s(mem);
  client c{io.get_executor(), q, s, {.time = &clk}};
  local_executor exec{io.get_executor(), {.threads = 1, .time = &clk}};
  exec.handle("t", [](task_context&) { return json(1); });
  worker_options o;
  o.lease = 30s;  // renewed every 10 s
  worker w(c, exec, o);
  w.async_run(asio::detached);
  auto [ec, id] = call<std::string>(io, [&](auto cb) { c.async_enqueue({.type = "t"}, cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(run_until(io, [&] { return !s.held.empty(); }));  // the run is over; its outcome waits
  for (int i = 0; i < 5; ++i) {  // 50 s: the lease would have lapsed at 30 s without renewals
    clk.advance(10s);
    drain(io);
  }
  auto [sec, st] = call<queue_stats>(io, [&](auto cb) { q.async_stats("default", cb); });
  REQUIRE_FALSE(sec);
  CHECK(st.leased == 1);
  CHECK(st.ready == 0);  // nobody else could reserve it meanwhile
  s.release_all();
  REQUIRE(run_until(io, [&] {
    std::optional<task_record> r;
    c.async_get(id, [&](error_code, task_record rec) { r = std::move(rec); });
    drain(io);
    return r && r->status == task_status::succeeded;
  }));
  auto [sec2, st2] = call<queue_stats>(io, [&](auto cb) { q.async_stats("default", cb); });
  CHECK(st2.leased + st2.ready + st2.delayed == 0);  // acked once recorded
  w.stop();
  drain(io);
}

TEST_CASE("real clock: a wait can be cancelled, and emitting its slot afterwards is harmless",
          "[clock]") {
  asio::io_context io;
  asio::cancellation_signal sig;
  std::optional<error_code> first;
  default_clock().async_wait_until(
      io.get_executor(), default_clock().now() + 1ms,
      asio::bind_cancellation_slot(sig.slot(), [&](error_code ec) { first = ec; }));
  io.run();
  CHECK(first == error_code{});
  sig.emit(asio::cancellation_type::terminal);  // the timer is gone: must not be touched

  io.restart();
  std::optional<error_code> second;
  default_clock().async_wait_until(
      io.get_executor(), default_clock().now() + 1h,
      asio::bind_cancellation_slot(sig.slot(), [&](error_code ec) { second = ec; }));
  io.poll();
  sig.emit(asio::cancellation_type::terminal);
  io.run();
  CHECK(second == asio::error::operation_aborted);
}

// --- the injected logger ------------------------------------------------------------------

namespace {

/// A queue whose acks fail (as a backend that lost its connection would): the worker acks a
/// finished task with nobody waiting for the answer.
class failing_ack_queue final : public queue {
 public:
  failing_ack_queue(queue& inner, asio::any_io_executor ex) : inner_(inner), ex_(std::move(ex)) {}
  bool is_paused(const std::string& q) const override { return inner_.is_paused(q); }

 protected:
  void do_push(push_params p, handler<void(error_code)> h) override {
    inner_.async_push(std::move(p), std::move(h));
  }
  void do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) override {
    inner_.async_reserve(std::move(p), std::move(h));
  }
  void do_ack(std::vector<lease>, handler<void(error_code, std::size_t)> h) override {
    detail::post_completion(std::move(h), ex_, error_code(errc::backend_unavailable),
                            std::size_t{0});
  }
  void do_extend(std::vector<lease> l, duration d,
                 handler<void(error_code, std::vector<bool>)> h) override {
    inner_.async_extend(std::move(l), d, std::move(h));
  }
  void do_release(release_params p, handler<void(error_code)> h) override {
    inner_.async_release(std::move(p), std::move(h));
  }
  void do_remove(std::string id, handler<void(error_code, bool)> h) override {
    inner_.async_remove(std::move(id), std::move(h));
  }
  void do_set_paused(std::string q, bool paused, handler<void(error_code)> h) override {
    inner_.async_set_paused(std::move(q), paused, std::move(h));
  }
  void do_stats(std::string q, handler<void(error_code, queue_stats)> h) override {
    inner_.async_stats(std::move(q), std::move(h));
  }

 private:
  queue& inner_;
  asio::any_io_executor ex_;
};

}  // namespace

TEST_CASE("a failed fire-and-forget ack reaches the host's logger", "[worker][log]") {
  asio::io_context io;
  manual_clock clk;
  memory::queue mq{io.get_executor(), clk};
  failing_ack_queue q{mq, io.get_executor()};
  memory::store s{io.get_executor()};
  std::mutex m;
  std::vector<std::pair<log_level, std::string>> lines;
  client c{
      io.get_executor(), q, s, {.time = &clk, .log = logger([&](log_level l, std::string_view msg) {
                                                std::lock_guard lock(m);
                                                lines.emplace_back(l, std::string(msg));
                                              })}};
  local_executor exec{io.get_executor(), {.threads = 1, .time = &clk}};
  exec.handle("t", [](task_context&) { return json(); });
  worker w(c, exec);
  w.async_run(asio::detached);
  std::optional<std::string> id;
  c.async_enqueue({.type = "t"}, [&](error_code ec, std::string i) {
    REQUIRE_FALSE(ec);
    id = i;
  });
  REQUIRE(run_until(io, [&] {
    std::lock_guard lock(m);
    return !lines.empty();
  }));
  w.stop();
  drain(io);
  std::lock_guard lock(m);
  CHECK(lines.front().first == log_level::error);
  CHECK(lines.front().second ==
        "finished: ack: " + error_code(errc::backend_unavailable).message());
}

TEST_CASE("logger: levels below the minimum are not formatted or delivered", "[log]") {
  std::vector<std::string> got;
  logger log([&](log_level l,
                 std::string_view m) { got.push_back(fmt::format("{} {}", to_string(l), m)); },
             log_level::warning);
  log.info("hidden {}", 1);
  log.warning("shown {}", 2);
  log.error("task {}: {}", "x", "boom");
  CHECK(got == std::vector<std::string>{"warning shown 2", "error task x: boom"});
  CHECK_FALSE(logger().enabled(log_level::error));
}

// --- the public contract: default tokens, both blocking forms, completion executors -------

TEST_CASE("every async member defaults to asio::deferred: co_await with no token",
          "[client][contract]") {
  engine_fixture f;
  f.exec.handle("echo", [](task_context& c) { return c.payload(); });
  worker w(f.c, f.exec);
  w.async_run(asio::detached);
  std::optional<task_record> got, stored, done;
  std::optional<run_result> run;
  std::optional<error_code> unknown;
  std::optional<std::vector<std::string>> batch;
  bool finished = false;
  std::exception_ptr failure;
  run_completion comp({.task_id = "r1", .attempt = 1}, f.io.get_executor());
  auto promise = comp.get_promise();
  run_result answer;
  answer.result = json{{"answer", 42}};
  task_spec spec{.type = "echo", .payload = {{"n", 7}}};
  std::vector<task_spec> no_specs;
  asio::co_spawn(
      f.io,
      [&]() -> asio::awaitable<void> {
        auto id = co_await f.c.async_enqueue(std::move(spec));
        got = co_await f.c.async_get(id);
        stored = co_await f.s.async_get(id);  // the Store seam's templates default too
        done = co_await f.c.async_wait(id);
        batch = co_await f.c.async_enqueue_batch(std::move(no_specs));
        try {
          co_await f.c.async_get(std::string("no-such-task"));
        } catch (const boost::system::system_error& e) {
          unknown = e.code();
        }
        comp.complete(answer);
        run = co_await promise.async_wait();
      },
      [&](std::exception_ptr e) {
        failure = e;
        finished = true;
      });
  REQUIRE(run_until(f.io, [&] { return finished; }));
  REQUIRE_FALSE(failure);
  REQUIRE(got);
  CHECK(got->payload["n"] == 7);
  REQUIRE(stored);
  CHECK(stored->id == got->id);
  REQUIRE(done);
  CHECK(done->status == task_status::succeeded);
  CHECK(done->result["n"] == 7);
  REQUIRE(batch);
  CHECK(batch->empty());
  REQUIRE(unknown);
  CHECK(*unknown == errc::not_found);
  REQUIRE(run);
  CHECK(run->result["answer"] == 42);
  w.stop();
}

TEST_CASE("the throwing batch enqueue names the index and the field of the first bad spec",
          "[client][contract][batch]") {
  engine_fixture f;
  std::thread io_thread([&] {
    auto guard = asio::make_work_guard(f.io);
    f.io.run_for(10s);
  });
  std::vector<task_spec> specs{
      {.type = "a"}, {.type = "b"}, {.type = ""}, {.type = "d", .queue = ""}};
  try {
    f.c.enqueue_batch(specs);
    FAIL("enqueue_batch accepted a blank type");
  } catch (const taskq::error& e) {
    CHECK(e.code() == errc::blank_type);
    std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("batch index 2"));
    CHECK_THAT(what, Catch::Contains("'type'"));
  }
  specs[2].type = "c";
  try {
    f.c.enqueue_batch(specs);
    FAIL("enqueue_batch accepted a blank queue");
  } catch (const taskq::error& e) {
    CHECK(e.code() == errc::blank_queue);
    CHECK_THAT(std::string(e.what()), Catch::Contains("batch index 3"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("'queue'"));
  }
  // The error_code form reports the same code; nothing was written by either.
  specs[2].type = "";
  error_code ec;
  CHECK(f.c.enqueue_batch(specs, ec).empty());
  CHECK(ec == errc::blank_type);
  CHECK(f.c.list({}).records.empty());
  // Errors that are not about one spec carry no index.
  std::optional<std::string> inside;
  asio::post(f.io, [&] {
    try {
      f.c.enqueue_batch({{.type = "x"}});
      inside = "no error";
    } catch (const taskq::error& e) {
      inside = e.what();
      CHECK(e.code() == errc::blocking_on_io_thread);
    }
  });
  while (!inside) std::this_thread::yield();
  CHECK_THAT(*inside, !Catch::Contains("batch index"));
  f.io.stop();
  io_thread.join();
}

TEST_CASE("the error_code forms of pause_queue, resume_queue and metrics match the throwing ones",
          "[client][contract][blocking]") {
  engine_fixture f;
  std::thread io_thread([&] {
    auto guard = asio::make_work_guard(f.io);
    f.io.run_for(10s);
  });
  error_code ec = errc::io_error;
  f.c.pause_queue("default", ec);
  CHECK_FALSE(ec);
  CHECK(f.q.is_paused("default"));
  ec = errc::io_error;
  f.c.resume_queue("default", ec);
  CHECK_FALSE(ec);
  CHECK_FALSE(f.q.is_paused("default"));
  f.c.enqueue({.type = "t"});
  ec = errc::io_error;
  auto m = f.c.metrics(ec);
  CHECK_FALSE(ec);
  CHECK(m.enqueued == 1);
  CHECK(m.counts.total[static_cast<std::size_t>(task_status::pending)] == 1);
  CHECK(f.c.metrics().enqueued == 1);

  // On the io thread both forms refuse with the same code.
  std::optional<std::vector<std::pair<error_code, error_code>>> inside;
  asio::post(f.io, [&] {
    std::vector<std::pair<error_code, error_code>> out;
    auto thrown = [](auto fn) {
      try {
        fn();
      } catch (const taskq::error& e) {
        return e.code();
      }
      return error_code{};
    };
    error_code e;
    f.c.pause_queue("default", e);
    out.emplace_back(e, thrown([&] { f.c.pause_queue("default"); }));
    f.c.resume_queue("default", e);
    out.emplace_back(e, thrown([&] { f.c.resume_queue("default"); }));
    f.c.metrics(e);
    out.emplace_back(e, thrown([&] { f.c.metrics(); }));
    inside = std::move(out);
  });
  while (!inside) std::this_thread::yield();
  REQUIRE(inside->size() == 3);
  for (auto& [by_code, by_throw] : *inside) {
    CHECK(by_code == errc::blocking_on_io_thread);
    CHECK(by_throw == by_code);
  }
  f.io.stop();
  io_thread.join();
}

TEST_CASE("forwarded client operations complete on the client's executor, not the backend's",
          "[client][contract][executor]") {
  // The queue and store complete on their own io_context, run by another thread; the client
  // is on `io`, run by this one.
  asio::io_context io, backend_io;
  manual_clock clk;
  memory::queue q{backend_io.get_executor(), clk};
  memory::store s{backend_io.get_executor()};
  client c{io.get_executor(), q, s, {.time = &clk}};
  std::thread backend_thread([&] {
    auto guard = asio::make_work_guard(backend_io);
    backend_io.run_for(10s);
  });
  auto on_client = [&] { return io.get_executor().running_in_this_thread(); };

  std::optional<std::string> id;
  c.async_enqueue({.type = "t"}, [&](error_code ec, std::string i) {
    CHECK_FALSE(ec);
    CHECK(on_client());
    id = i;
  });
  REQUIRE(run_until(io, [&] { return id.has_value(); }));

  int done = 0;
  bool returned = false;
  c.async_get(*id, [&](error_code ec, task_record r) {
    CHECK_FALSE(ec);
    CHECK(r.id == *id);
    CHECK(on_client());
    ++done;
  });
  c.async_list({}, [&](error_code ec, task_page p) {
    CHECK_FALSE(ec);
    CHECK(p.records.size() == 1);
    CHECK(on_client());
    ++done;
  });
  c.async_prune(1h, [&](error_code ec, std::size_t n) {
    CHECK_FALSE(ec);
    CHECK(n == 0);
    CHECK(on_client());
    ++done;
  });
  c.async_set_paused("default", true, [&](error_code ec) {
    CHECK_FALSE(ec);
    CHECK(on_client());
    CHECK(returned);  // never inline
    ++done;
  });
  returned = true;
  REQUIRE(run_until(io, [&] { return done == 4; }));
  CHECK(q.is_paused("default"));

  // A token's own associated executor still wins over the client's.
  auto strand = asio::make_strand(io);
  bool on_strand = false;
  c.async_get(*id, asio::bind_executor(strand, [&](error_code, task_record) {
    on_strand = strand.running_in_this_thread();
    ++done;
  }));
  REQUIRE(run_until(io, [&] { return done == 5; }));
  CHECK(on_strand);
  backend_io.stop();
  backend_thread.join();
}

namespace {
/// A Store without a batch update of its own (the seam's default applies), over a memory store.
struct memory_inner {
  explicit memory_inner(asio::any_io_executor ex) : mem(std::move(ex)) {}
  memory::store mem;
};
class store_without_batch final : private memory_inner, public forwarding_store {
 public:
  explicit store_without_batch(asio::any_io_executor ex)
      : memory_inner(std::move(ex)), forwarding_store(mem) {}
};
}  // namespace

TEST_CASE("the default batch update completes on the handler's executor, empty or not",
          "[store][contract][executor]") {
  asio::io_context io;
  auto strand = asio::make_strand(io);
  store_without_batch s(io.get_executor());
  std::thread::id test_thread = std::this_thread::get_id();
  for (std::size_t n : {0u, 2u}) {
    std::vector<task_update> updates;
    for (std::size_t i = 0; i < n; ++i) updates.push_back({.id = "missing-" + std::to_string(i)});
    std::optional<std::vector<update_result>> results;
    bool returned = false, on_strand = false;
    std::thread::id ran_on;
    s.async_update_batch(
        std::move(updates),
        asio::bind_executor(strand, [&](error_code ec, std::vector<update_result> r) {
          CHECK_FALSE(ec);
          CHECK(returned);  // never inline
          on_strand = strand.running_in_this_thread();
          ran_on = std::this_thread::get_id();
          results = std::move(r);
        }));
    returned = true;
    REQUIRE(run_until(io, [&] { return results.has_value(); }));
    CHECK(on_strand);
    CHECK(ran_on == test_thread);  // this thread runs io: no hop to another thread
    REQUIRE(results->size() == n);
    for (auto& r : *results) CHECK(r.error == errc::not_found);
  }
}

// --- the Backend seam's composition over a separate Queue and Store ------------------------

namespace {
task_record pending_record(std::string id, int priority, time_point now) {
  auto r = make_record({.type = "t", .priority = priority}, now);
  r.id = std::move(id);
  return r;
}

// In-memory Queue and Store behind the generic composition, on a manual clock.
struct composed_fixture {
  asio::io_context io;
  manual_clock clk;
  memory::queue q{io.get_executor(), clk};
  memory::store s{io.get_executor()};
  composed_backend b{io.get_executor(), q, s, {.time = &clk}};
};
}  // namespace

TEST_CASE("composed backend: enqueue is all or nothing; fetch claims in order, admit holds back",
          "[backend][composed]") {
  composed_fixture f;
  auto& io = f.io;
  auto& clk = f.clk;
  auto& s = f.s;
  auto& b = f.b;
  const auto now = clk.now();

  enqueue_params ep;
  ep.records = {pending_record("a", 0, now), pending_record("b", 5, now),
                pending_record("c", 0, now)};
  auto [ec] = call<>(io, [&](auto h) { b.async_enqueue(std::move(ep), h); });
  REQUIRE_FALSE(ec);

  // A batch with a duplicate id writes nothing: "d" is not stored either.
  enqueue_params dup;
  dup.records = {pending_record("d", 0, now), pending_record("a", 0, now)};
  std::tie(ec) = call<>(io, [&](auto h) { b.async_enqueue(std::move(dup), h); });
  CHECK(ec == errc::duplicate_id);
  auto [gec, rec] = call<task_record>(io, [&](auto h) { s.async_get("d", h); });
  CHECK(gec == errc::not_found);

  // Priority first, then FIFO; "b" is refused by admit and keeps its place.
  fetch_params fp;
  fp.max = 2;
  fp.admit = [](const lease& l) { return l.id != "b"; };
  auto [fec, got] = call<fetch_result>(io, [&](auto h) { b.async_fetch(std::move(fp), h); });
  REQUIRE_FALSE(fec);
  REQUIRE(got.claimed.size() == 1);
  CHECK(got.claimed[0].held.id == "a");
  CHECK(got.claimed[0].record.id == "a");
  CHECK(got.claimed[0].record.status == task_status::running);
  CHECK(got.claimed[0].record.attempt == 1);
  drain(io);  // the give-back of "b"

  fetch_params again;
  again.max = 5;
  std::tie(fec, got) = call<fetch_result>(io, [&](auto h) { b.async_fetch(std::move(again), h); });
  REQUIRE_FALSE(fec);
  REQUIRE(got.claimed.size() == 2);
  CHECK(got.claimed[0].held.id == "b");  // its original place, ahead of "c"
  CHECK(got.claimed[1].held.id == "c");
}

TEST_CASE("composed backend: complete acks a final outcome, requeues a retry, refuses a stale one",
          "[backend][composed]") {
  composed_fixture f;
  auto& io = f.io;
  auto& clk = f.clk;
  auto& q = f.q;
  auto& s = f.s;
  auto& b = f.b;
  const auto now = clk.now();
  enqueue_params ep;
  ep.records = {pending_record("ok", 0, now), pending_record("retry", 0, now),
                pending_record("stale", 0, now)};
  ep.records[1].max_attempts = 3;
  auto [ec] = call<>(io, [&](auto h) { b.async_enqueue(std::move(ep), h); });
  REQUIRE_FALSE(ec);
  fetch_params fp;
  fp.max = 3;
  auto [fec, got] = call<fetch_result>(io, [&](auto h) { b.async_fetch(std::move(fp), h); });
  REQUIRE_FALSE(fec);
  REQUIRE(got.claimed.size() == 3);

  complete_params cp;
  for (auto& f : got.claimed) {
    completion c;
    c.update.id = f.record.id;
    c.update.expected = task_status::running;
    c.update.expected_attempt = f.record.attempt;
    c.update.now = now;
    c.update.to = task_status::succeeded;
    if (f.record.id == "retry") {
      c.update.to = task_status::pending;
      c.update.available_at = now + 10s;
    }
    if (f.record.id == "stale") c.update.expected_attempt = f.record.attempt + 1;
    c.held = f.held;
    cp.completions.push_back(std::move(c));
  }
  auto [cec, results] =
      call<std::vector<update_result>>(io, [&](auto h) { b.async_complete(std::move(cp), h); });
  REQUIRE_FALSE(cec);
  REQUIRE(results.size() == 3);
  CHECK_FALSE(results[0].error);
  CHECK_FALSE(results[1].error);
  CHECK(results[2].error == errc::status_conflict);
  drain(io);  // the ack and the requeue

  auto [sec, st] = call<queue_stats>(io, [&](auto h) { q.async_stats("", h); });
  REQUIRE_FALSE(sec);
  CHECK(st.ready == 0);
  CHECK(st.delayed == 1);  // "retry", until now + 10s
  CHECK(st.leased == 1);   // "stale": left to whoever holds it
  auto [gec, rec] = call<task_record>(io, [&](auto h) { s.async_get("ok", h); });
  CHECK(rec.status == task_status::succeeded);

  clk.advance(10s);
  fetch_params later;
  std::tie(fec, got) = call<fetch_result>(io, [&](auto h) { b.async_fetch(std::move(later), h); });
  REQUIRE(got.claimed.size() == 1);
  CHECK(got.claimed[0].record.id == "retry");
  CHECK(got.claimed[0].record.attempt == 2);
}

TEST_CASE("composed backend: a waiting fetch is cancelled with nothing claimed",
          "[backend][composed]") {
  composed_fixture f;
  auto& io = f.io;
  auto& clk = f.clk;
  auto& b = f.b;
  asio::cancellation_signal cancel;
  std::optional<std::pair<error_code, fetch_result>> out;
  fetch_params fp;
  fp.wait = true;
  b.async_fetch(std::move(fp),
                asio::bind_cancellation_slot(cancel.slot(), [&](error_code ec, fetch_result r) {
                  out.emplace(ec, std::move(r));
                }));
  drain(io);
  CHECK_FALSE(out);
  cancel.emit(asio::cancellation_type::terminal);
  REQUIRE(run_until(io, [&] { return out.has_value(); }));
  CHECK(out->first == asio::error::operation_aborted);
  CHECK(out->second.claimed.empty());

  // The record enqueued afterwards is still there for the next fetch.
  enqueue_params ep;
  ep.records = {pending_record("x", 0, clk.now())};
  auto [ec] = call<>(io, [&](auto h) { b.async_enqueue(std::move(ep), h); });
  REQUIRE_FALSE(ec);
  fetch_params next;
  auto [fec, got] = call<fetch_result>(io, [&](auto h) { b.async_fetch(std::move(next), h); });
  REQUIRE(got.claimed.size() == 1);
}
