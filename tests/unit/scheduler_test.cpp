// The scheduler: the pure decision core without an io_context, then the scheduler end to end
// on the in-memory backends with a manual clock (time moves only through the clock).
#include "engine_fixture.hpp"
#include "nested_json.hpp"

#include <taskq/detail/schedule_state.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/detached.hpp>

#include <atomic>
#include <limits>

using namespace taskq;
using namespace taskq::test;
using std::chrono::sys_days;
using std::chrono::year;

namespace {

// 2026-01-01T00:00:00Z.
const time_point t0 = sys_days{year{2026} / 1 / 1};

time_point utc(int y, unsigned mo, unsigned d, int h = 0, int mi = 0, int s = 0) {
  return sys_days{year{y} / mo / d} + std::chrono::hours(h) + std::chrono::minutes(mi) +
         std::chrono::seconds(s);
}

schedule every_minute(std::string name = "m") {
  return {.name = std::move(name), .task = {.type = "job"}, .cron = "* * * * *"};
}

std::vector<time_point> times(std::initializer_list<time_point> l) {
  return l;
}

struct sched_fixture {
  asio::io_context io;
  manual_clock clk;
  memory::queue q{io.get_executor(), clk};
  memory::store s{io.get_executor()};
  client c{io.get_executor(), q, s, {.time = &clk}};
  memory::schedule_store store{io.get_executor()};
  std::optional<scheduler> sched;

  explicit sched_fixture(time_point start = t0) : clk(start) { sched.emplace(c, opts()); }

  scheduler_options opts() { return {.store = &store}; }

  void start() {
    sched->async_run(asio::detached);
    drain(io);
  }

  ensure_result ensure(schedule def) {
    std::optional<std::pair<error_code, ensure_result>> out;
    sched->async_ensure_schedule(std::move(def),
                                 [&](error_code ec, ensure_result r) { out.emplace(ec, r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    REQUIRE_FALSE(out->first);
    drain(io);
    return out->second;
  }

  error_code ensure_error(schedule def) {
    std::optional<error_code> out;
    sched->async_ensure_schedule(std::move(def), [&](error_code ec, ensure_result) { out = ec; });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return *out;
  }

  // Moves time to `t`, stopping at every pending deadline on the way (waits complete on time).
  void advance_to(time_point t) {
    drain(io);
    for (int guard = 0; guard < 100000; ++guard) {
      auto d = clk.next_deadline();
      if (!d || *d > t) break;
      clk.set(*d);
      drain(io);
    }
    clk.set(t);
    drain(io);
  }
  void advance(duration d) { advance_to(clk.now() + d); }

  std::vector<task_record> tasks(std::vector<task_status> statuses = {}) {
    std::optional<task_page> out;
    c.async_list({.statuses = statuses, .limit = 100000}, [&](error_code ec, task_page p) {
      REQUIRE_FALSE(ec);
      out = std::move(p);
    });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    auto v = std::move(out->records);
    std::sort(v.begin(), v.end(),
              [](auto& a, auto& b) { return a.scheduled_for < b.scheduled_for; });
    return v;
  }

  std::vector<time_point> fired(std::vector<task_status> statuses = {}) {
    std::vector<time_point> out;
    for (auto& r : tasks(statuses)) out.push_back(r.scheduled_for.value_or(time_point{}));
    return out;
  }

  void cancel(const std::string& id) {
    bool done = false;
    c.async_cancel(id, [&](error_code, task_record) { done = true; });
    REQUIRE(run_until(io, [&] { return done; }));
    drain(io);
  }

  schedule_info info(const std::string& name) {
    auto i = sched->info(name);
    REQUIRE(i);
    return *i;
  }
};

}  // namespace

// --- the pure core ------------------------------------------------------------------------

TEST_CASE("schedule timing: interval anchored, one-shot, cron", "[scheduler][pure]") {
  schedule iv{.name = "i", .task = {.type = "x"}, .every = 10s, .anchor = t0 + 3s};
  detail::schedule_timing ti(iv);
  CHECK(ti.next_after(t0) == t0 + 3s);
  CHECK(ti.next_after(t0 + 3s) == t0 + 13s);
  CHECK(ti.next_after(t0 - 1s) == t0 + 3s);
  CHECK(ti.next_after(t0 - 8s) == t0 - 7s);  // before the anchor too
  CHECK(ti.next_after(t0 - 7s) == t0 + 3s);
  CHECK_FALSE(ti.next_after(std::nullopt));

  schedule every{.name = "e", .task = {.type = "x"}, .cron = "@every 1m"};
  detail::schedule_timing te(every);
  CHECK(te.next_after(t0 + 1500ms) == t0 + 60s);  // aligned to the epoch, not to `t`

  schedule once{.name = "o", .task = {.type = "x"}, .at = t0 + 5s};
  detail::schedule_timing to(once);
  CHECK(to.next_after(std::nullopt) == t0 + 5s);
  CHECK(to.next_after(t0) == t0 + 5s);
  CHECK_FALSE(to.next_after(t0 + 5s));

  detail::schedule_timing tc(every_minute());
  CHECK(tc.next_after(t0) == t0 + 60s);
}

TEST_CASE("decide: catch-up policies skip, run_once, run_all with max", "[scheduler][pure]") {
  auto def = every_minute();
  def.misfire_grace = 30s;
  detail::schedule_timing tm(def);
  const auto now = t0 + 10min + 10s;  // occurrences t0+1m .. t0+10m are due

  def.catch_up = catch_up_policy::skip;
  auto d = detail::decide(def, tm, t0, {}, now);
  CHECK(d.fire == times({t0 + 10min}));  // 10 s late: within the grace
  CHECK(d.skipped == 9);
  CHECK(d.cursor == t0 + 10min);
  CHECK(detail::decide(def, tm, t0, {}, t0 + 10min + 40s).fire.empty());  // all missed

  def.catch_up = catch_up_policy::run_once;
  d = detail::decide(def, tm, t0, {}, t0 + 10min + 40s);
  CHECK(d.fire == times({t0 + 10min}));
  CHECK(d.skipped == 9);

  def.catch_up = catch_up_policy::run_all;
  def.max_catch_up = 3;
  d = detail::decide(def, tm, t0, {}, now);
  CHECK(d.fire == times({t0 + 8min, t0 + 9min, t0 + 10min}));
  CHECK(d.skipped == 7);
  def.max_catch_up = 100;
  CHECK(detail::decide(def, tm, t0, {}, now).fire.size() == 10);

  // Nothing due: nothing changes.
  d = detail::decide(def, tm, t0 + 10min, {}, now);
  CHECK(d.fire.empty());
  CHECK(d.cursor == t0 + 10min);
}

TEST_CASE("decide: overlap policies and max concurrency", "[scheduler][pure]") {
  auto def = every_minute();
  detail::schedule_timing tm(def);
  const auto now = t0 + 60s;

  def.overlap = overlap_policy::allow;
  CHECK(detail::decide(def, tm, t0, {.pending = 5, .running = 5}, now).fire.size() == 1);

  def.overlap = overlap_policy::skip_if_running;
  auto d = detail::decide(def, tm, t0, {.pending = 0, .running = 1}, now);
  CHECK(d.fire.empty());
  CHECK(d.skipped == 1);
  CHECK(d.cursor == t0 + 60s);
  CHECK(detail::decide(def, tm, t0, {.pending = 1}, now).fire.empty());
  CHECK(detail::decide(def, tm, t0, {}, now).fire.size() == 1);

  def.overlap = overlap_policy::queue_one;
  CHECK(detail::decide(def, tm, t0, {.pending = 0, .running = 1}, now).fire.size() == 1);
  CHECK(detail::decide(def, tm, t0, {.pending = 1, .running = 1}, now).fire.empty());

  // run_all with queue_one: the first missed occurrence queues, the rest are skipped.
  def.catch_up = catch_up_policy::run_all;
  d = detail::decide(def, tm, t0, {.pending = 0, .running = 1}, t0 + 3min);
  CHECK(d.fire == times({t0 + 1min}));
  CHECK(d.skipped == 2);

  // max_concurrency holds back (does not skip): the cursor stops before the held occurrence.
  def.overlap = overlap_policy::allow;
  def.max_concurrency = 2;
  d = detail::decide(def, tm, t0, {.pending = 1}, t0 + 3min);
  CHECK(d.fire == times({t0 + 1min}));
  CHECK(d.held_back);
  CHECK(d.skipped == 0);
  CHECK(tm.next_after(d.cursor) == t0 + 2min);
  d = detail::decide(def, tm, d.cursor, {.pending = 2}, t0 + 3min);
  CHECK(d.fire.empty());
  CHECK(d.held_back);
}

TEST_CASE("decide: one-shot fires once; huge downtime stays bounded", "[scheduler][pure]") {
  schedule once{.name = "o", .task = {.type = "x"}, .at = t0 + 5s};
  detail::schedule_timing to(once);
  CHECK(detail::decide(once, to, std::nullopt, {}, t0).fire.empty());
  auto d = detail::decide(once, to, std::nullopt, {}, t0 + 5s);
  CHECK(d.fire == times({t0 + 5s}));
  CHECK(detail::decide(once, to, d.cursor, {}, t0 + 1h).fire.empty());

  schedule fast{.name = "f", .task = {.type = "x"}, .cron = "* * * * * *"};  // every second
  fast.catch_up = catch_up_policy::run_all;
  fast.max_catch_up = 2;
  detail::schedule_timing tf(fast);
  d = detail::decide(fast, tf, t0, {}, t0 + std::chrono::hours(24 * 30), 100'000);
  CHECK(d.scan_restarted);
  CHECK(d.fire.size() == 2);
  CHECK(d.fire.back() == t0 + std::chrono::hours(24 * 30));
}

TEST_CASE("schedule validation names the field", "[scheduler][validate]") {
  std::string detail;
  CHECK_FALSE(validate(every_minute(), detail));
  auto check = [&](schedule s, errc code, std::string field) {
    auto ec = validate(s, detail);
    CHECK(ec == code);
    CHECK_THAT(detail, Catch::Contains(field));
  };
  auto s = every_minute();
  s.name = " ";
  check(s, errc::invalid_schedule, "'name'");
  s = every_minute();
  s.cron = "";
  check(s, errc::invalid_schedule, "exactly one timing rule");
  s.every = 1s;
  s.at = t0;
  check(s, errc::invalid_schedule, "exactly one timing rule");
  s = every_minute();
  s.cron = "0 25 * * *";
  check(s, errc::invalid_cron, "'hour' (field 2 of 5)");
  s = every_minute();
  s.time_zone = "Mars/Olympus";
  check(s, errc::invalid_time_zone, "'time_zone'");
  s = {.name = "n", .task = {.type = "x"}, .every = -1s};
  check(s, errc::invalid_schedule, "'every'");
  s = every_minute();
  s.task.unique_key = "k";
  check(s, errc::invalid_schedule, "'task.unique_key'");
  s = every_minute();
  s.task.type = "";
  check(s, errc::blank_type, "'task'");
  s = every_minute();
  s.max_catch_up = 0;
  check(s, errc::invalid_schedule, "'max_catch_up'");
  // Intervals and times beyond the clock's range: anchor + k * every would overflow.
  s = {.name = "n", .task = {.type = "x"}, .every = std::chrono::hours(24) * 100000};
  check(s, errc::invalid_schedule, "'every' must not exceed");
  s = {.name = "n", .task = {.type = "x"}, .every = 1h, .anchor = time_point::max()};
  check(s, errc::invalid_schedule, "'anchor'");
  s = {.name = "n", .task = {.type = "x"}, .at = time_point::min()};
  check(s, errc::invalid_schedule, "'at'");
  s = every_minute();
  s.cron = "@every 100000d";
  check(s, errc::invalid_schedule, "@every interval must not exceed");
  // The template's JSON depth is the task's: checked before anything copies it.
  // (Passed by reference: `check` takes a copy, and copying it would recurse 100,000 times.)
  s = every_minute();
  s.task.payload = nested_json(100'000);
  CHECK(validate(s, detail) == errc::payload_too_deep);
  CHECK_THAT(detail, Catch::Contains("'task'") && Catch::Contains("'payload'"));
}

// --- the scheduler end to end ---------------------------------------------------------------

TEST_CASE("schedule records round-trip through JSON; bad input names the field",
          "[scheduler][json]") {
  schedule_record r;
  r.definition = {.name = "nightly",
                  .task = {.type = "report",
                           .queue = "reports",
                           .payload = {{"kind", "daily"}},
                           .priority = 3,
                           .delay = 5s,
                           .max_attempts = 4,
                           .retry = {.initial_delay = 2s, .multiplier = 3},
                           .timeout = 1min,
                           .labels = {{"team", "ops"}},
                           .concurrency_key = "db",
                           .unique_for = unique_scope::any},
                  .cron = "30 2 * * *",
                  .time_zone = "Europe/Berlin",
                  .overlap = overlap_policy::queue_one,
                  .max_concurrency = 2,
                  .catch_up = catch_up_policy::run_all,
                  .max_catch_up = 7,
                  .misfire_grace = 90s,
                  .paused = true};
  r.state = {.cursor = t0 + 1h, .last_fired = t0 + 30min, .last_run_id = "abc"};
  error_code ec;
  std::string detail;
  auto back = schedule_record_from_json(json::parse(to_json(r).dump()), ec, detail);
  REQUIRE(back);
  CHECK_FALSE(ec);
  CHECK(back->definition == r.definition);
  CHECK(back->state == r.state);

  schedule_record one_shot{.definition = {.name = "once", .task = {.type = "t"}, .at = t0}};
  back = schedule_record_from_json(to_json(one_shot), ec, detail);
  REQUIRE(back);
  CHECK(back->definition == one_shot.definition);
  CHECK_FALSE(back->state.cursor);

  auto j = to_json(r);
  j["overlap"] = "sometimes";
  CHECK_FALSE(schedule_record_from_json(j, ec, detail));
  CHECK(ec == errc::invalid_record);
  CHECK(detail.find("'overlap'") != std::string::npos);
  j = to_json(r);
  j["task"]["retry"]["multiplier"] = "x";
  CHECK_FALSE(schedule_record_from_json(j, ec, detail));
  CHECK(detail.find("'task.retry.multiplier'") != std::string::npos);
  j = to_json(r);
  j["cursor"] = std::numeric_limits<std::int64_t>::max() / 100;  // beyond a duration's range
  CHECK_FALSE(schedule_record_from_json(j, ec, detail));
  CHECK(detail.find("'cursor'") != std::string::npos);
  j = to_json(r);
  j["task"]["timeout"] = std::numeric_limits<std::int64_t>::min() / 100;
  CHECK_FALSE(schedule_record_from_json(j, ec, detail));
  CHECK(detail.find("'task.timeout'") != std::string::npos);
  j = to_json(r);
  j["v"] = 2;
  CHECK_FALSE(schedule_record_from_json(j, ec, detail));
  CHECK(ec == errc::unsupported_format_version);
  CHECK_FALSE(schedule_record_from_json(json::array(), ec, detail));
  CHECK(ec == errc::invalid_record);
}

TEST_CASE("schedule stores keep the later progress on save", "[scheduler][store]") {
  schedule_record stored{
      .definition = every_minute(),
      .state = {.cursor = t0 + 5min, .last_fired = t0 + 5min, .last_run_id = "r5"}};
  schedule_record behind{.definition = every_minute(), .state = {.cursor = t0 + 3min}};
  detail::merge_on_save(stored, behind);
  CHECK(behind.state == stored.state);

  schedule_record ahead{
      .definition = every_minute(),
      .state = {.cursor = t0 + 7min, .last_fired = t0 + 7min, .last_run_id = "r7"}};
  detail::merge_on_save(stored, ahead);
  CHECK(ahead.state.cursor == t0 + 7min);
  CHECK(ahead.state.last_run_id == "r7");

  // A new timing rule restarts the cursor.
  schedule_record retimed{.definition = every_minute(), .state = {.cursor = t0 + 1min}};
  retimed.definition.cron = "*/5 * * * *";
  detail::merge_on_save(stored, retimed);
  CHECK(retimed.state.cursor == t0 + 1min);
  CHECK(retimed.state.last_fired == t0 + 5min);
}

TEST_CASE("scheduler: each occurrence enqueued once, with scheduled_for and dedupe key",
          "[scheduler]") {
  sched_fixture f;
  CHECK(f.ensure(every_minute("a")) == ensure_result::created);
  CHECK(f.ensure({.name = "b", .task = {.type = "job", .queue = "other"}, .every = 90s}) ==
        ensure_result::created);
  f.start();
  CHECK(f.clk.pending_waits() == 1);  // one wait for all schedules
  CHECK(f.clk.next_deadline() == t0 + 60s);
  f.advance(3min);
  auto all = f.tasks();
  REQUIRE(all.size() == 5);
  std::vector<std::pair<std::string, time_point>> got;
  for (auto& r : all) {
    got.emplace_back(r.labels.at("taskq.schedule"), *r.scheduled_for);
    CHECK(r.unique_key == occurrence_key(r.labels.at("taskq.schedule"), *r.scheduled_for));
    CHECK(r.unique_for == unique_scope::any);
  }
  std::sort(got.begin(), got.end(), [](auto& x, auto& y) {
    return std::tie(x.second, x.first) < std::tie(y.second, y.first);
  });
  CHECK(
      got ==
      std::vector<std::pair<std::string, time_point>>{
          {"a", t0 + 1min}, {"b", t0 + 90s}, {"a", t0 + 2min}, {"a", t0 + 3min}, {"b", t0 + 180s}});
  CHECK(occurrence_key("a", t0 + 1min) == "schedule:a:2026-01-01T00:01:00.000000Z");
  auto m = f.sched->metrics();
  CHECK(m.totals.fired == 5);
  CHECK(m.per_schedule.at("a").fired == 3);
  CHECK(m.lateness.count == 5);
  CHECK(m.lateness.max == duration::zero());  // the manual clock stops exactly at each due time
  auto i = f.info("a");
  CHECK(i.next_due == t0 + 4min);
  CHECK(i.last_fired == t0 + 3min);
  CHECK(i.last_run_status == task_status::pending);
  CHECK(i.active_runs == 3);
  CHECK(f.clk.pending_waits() == 1);
  f.sched->stop();
  f.advance(5min);
  CHECK(f.tasks().size() == 5);
}

TEST_CASE("scheduler: stop before start and twice is harmless; a second run is refused",
          "[scheduler]") {
  sched_fixture f;
  f.sched->stop();
  f.sched->stop();
  std::optional<error_code> first;
  f.sched->async_run([&](error_code ec) { first = ec; });
  drain(f.io);
  CHECK(first == error_code{});

  sched_fixture g;
  std::optional<error_code> a, b;
  g.sched->async_run([&](error_code ec) { a = ec; });
  g.sched->async_run([&](error_code ec) { b = ec; });
  drain(g.io);
  CHECK_FALSE(a);
  CHECK(b == errc::shutting_down);
  g.sched->stop();
  g.sched->stop();
  drain(g.io);
  CHECK(a == error_code{});
}

TEST_CASE("scheduler: overlap skip_if_running skips while the previous run is active",
          "[scheduler][overlap]") {
  sched_fixture f;
  auto def = every_minute();
  def.overlap = overlap_policy::skip_if_running;
  f.ensure(def);
  f.start();
  f.advance(1min);
  auto first = f.tasks();
  REQUIRE(first.size() == 1);
  f.advance(2min);  // the first run is still pending: both occurrences are skipped
  CHECK(f.fired() == times({t0 + 1min}));
  CHECK(f.info("m").counts.skipped == 2);
  f.cancel(first[0].id);  // its terminal event frees the schedule
  CHECK(f.info("m").active_runs == 0);
  CHECK(f.info("m").last_run_status == task_status::cancelled);
  f.advance(1min);
  CHECK(f.fired() == times({t0 + 1min, t0 + 4min}));
}

TEST_CASE("scheduler: overlap queue_one keeps one run queued behind the running one",
          "[scheduler][overlap]") {
  sched_fixture f;
  std::atomic<bool> release{false};
  local_executor exec{f.io.get_executor(), {.threads = 2, .time = &f.clk}};
  exec.handle("job", [&](task_context&) {
    while (!release.load()) std::this_thread::yield();
  });
  worker w(f.c, exec, {.limits = {.per_type = {{"job", 1}}}});
  w.async_run(asio::detached);
  auto def = every_minute();
  def.overlap = overlap_policy::queue_one;
  f.ensure(def);
  f.start();
  f.advance(1min);
  REQUIRE(run_until(f.io, [&] { return f.info("m").last_run_status == task_status::running; }));
  f.advance(1min);  // queued behind the running one
  f.advance(1min);  // one is already queued: skipped
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min}));
  CHECK(f.info("m").counts.skipped == 1);
  release = true;
  REQUIRE(run_until(f.io, [&] { return f.tasks({task_status::succeeded}).size() == 2; }));
  REQUIRE(run_until(f.io, [&] { return f.info("m").active_runs == 0; }));
  f.advance(1min);
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 4min}));
  w.stop();
  drain(f.io);
}

TEST_CASE("scheduler: max_concurrency holds occurrences back until a run ends",
          "[scheduler][concurrency]") {
  sched_fixture f;
  auto def = every_minute();
  def.max_concurrency = 2;
  def.catch_up = catch_up_policy::run_all;
  f.ensure(def);
  f.start();
  f.advance(4min);
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min}));
  auto i = f.info("m");
  CHECK(i.held_back);
  CHECK_FALSE(i.next_due);
  CHECK(i.counts.skipped == 0);
  f.cancel(f.tasks()[0].id);  // a slot frees: the oldest held occurrence goes next
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min}));
  CHECK(f.info("m").held_back);
  f.cancel(f.tasks()[1].id);
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min}));
  CHECK_FALSE(f.info("m").held_back);
  CHECK(f.info("m").next_due == t0 + 5min);
  f.advance(1min);  // 2 active again: the next occurrence waits
  CHECK(f.info("m").held_back);
  CHECK(f.fired().size() == 4);
  CHECK(f.sched->metrics().active_runs == 2);
}

TEST_CASE("scheduler: catch-up after downtime, through the schedule store",
          "[scheduler][catchup]") {
  auto run = [](catch_up_policy policy) {
    sched_fixture f;
    auto def = every_minute();
    def.catch_up = policy;
    def.max_catch_up = 3;
    def.misfire_grace = 20s;
    f.ensure(def);
    f.start();
    f.advance(1min);
    REQUIRE(f.fired() == times({t0 + 1min}));
    f.sched.reset();  // "the process stops"
    f.advance(9min + 30s);
    f.sched.emplace(f.c, f.opts());  // restart on the same stores
    CHECK(f.ensure(def) == ensure_result::unchanged);
    f.start();
    auto out = f.fired();
    f.advance(30s);  // and it goes on as usual
    CHECK(f.fired().back() == t0 + 11min);
    return out;
  };
  SECTION("skip") {
    CHECK(run(catch_up_policy::skip) == times({t0 + 1min}));
  }
  SECTION("run_once") {
    CHECK(run(catch_up_policy::run_once) == times({t0 + 1min, t0 + 10min}));
  }
  SECTION("run_all bounded by max_catch_up") {
    CHECK(run(catch_up_policy::run_all) == times({t0 + 1min, t0 + 8min, t0 + 9min, t0 + 10min}));
  }
}

TEST_CASE("scheduler: a stored schedule is adopted on restart without ensure",
          "[scheduler][store]") {
  sched_fixture f;
  f.ensure(every_minute());
  CHECK(f.store.size() == 1);
  f.sched.emplace(f.c, f.opts());
  f.start();
  f.advance(1min);
  CHECK(f.fired() == times({t0 + 1min}));
  CHECK(f.info("m").definition == every_minute());
}

TEST_CASE("scheduler: pause and resume", "[scheduler]") {
  sched_fixture f;
  f.ensure(every_minute());
  f.start();
  f.advance(1min);
  std::optional<error_code> ec;
  f.sched->async_pause("m", [&](error_code e) { ec = e; });
  REQUIRE(run_until(f.io, [&] { return ec.has_value(); }));
  CHECK_FALSE(*ec);
  f.advance(3min + 30s);
  CHECK(f.fired() == times({t0 + 1min}));
  CHECK(f.info("m").definition.paused);
  CHECK_FALSE(f.info("m").next_due);
  CHECK(f.clk.pending_waits() == 0);  // nothing to wait for
  ec.reset();
  f.sched->async_resume("m", [&](error_code e) { ec = e; });
  REQUIRE(run_until(f.io, [&] { return ec.has_value(); }));
  CHECK_FALSE(*ec);
  CHECK(f.info("m").next_due == t0 + 5min);  // what fell while paused is not run
  f.advance(60s);
  CHECK(f.fired() == times({t0 + 1min, t0 + 5min}));
  f.sched->async_pause("nope", [&](error_code e) { ec = e; });
  drain(f.io);
  CHECK(ec == errc::schedule_not_found);
}

TEST_CASE("scheduler: remove, with and without cancelling its runs", "[scheduler]") {
  auto remove = [](bool cancel_runs) {
    sched_fixture f;
    f.ensure(every_minute("a"));
    f.ensure(every_minute("b"));
    f.start();
    f.advance(2min);
    REQUIRE(f.tasks().size() == 4);
    std::optional<std::pair<error_code, std::size_t>> out;
    f.sched->async_remove("a", cancel_runs,
                          [&](error_code ec, std::size_t n) { out.emplace(ec, n); });
    REQUIRE(run_until(f.io, [&] { return out.has_value(); }));
    CHECK_FALSE(out->first);
    CHECK(out->second == (cancel_runs ? 2u : 0u));
    CHECK_FALSE(f.sched->info("a"));
    CHECK(f.store.size() == 1);
    f.advance(1min);
    std::size_t a_tasks = 0, a_cancelled = 0;
    for (auto& r : f.tasks()) {
      if (r.labels.at("taskq.schedule") != "a") continue;
      ++a_tasks;
      if (r.status == task_status::cancelled) ++a_cancelled;
    }
    CHECK(a_tasks == 2);  // no new ones
    CHECK(f.sched->list().size() == 1);
    return a_cancelled;
  };
  CHECK(remove(false) == 0);
  CHECK(remove(true) == 2);
}

TEST_CASE("scheduler: ensure_schedule is idempotent and updates in place", "[scheduler]") {
  sched_fixture f;
  auto def = every_minute();
  CHECK(f.ensure(def) == ensure_result::created);
  CHECK(f.ensure(def) == ensure_result::unchanged);
  f.start();
  f.advance(1min);
  auto active = f.info("m").active_runs;
  REQUIRE(active == 1);

  auto changed = def;
  changed.task.payload = {{"v", 2}};
  CHECK(f.ensure(changed) == ensure_result::updated);
  CHECK(f.info("m").next_due == t0 + 2min);  // same timing: same next due
  CHECK(f.info("m").active_runs == 1);       // runs untouched
  f.advance(1min);
  CHECK(f.tasks().back().payload == json{{"v", 2}});

  auto hourly = changed;
  hourly.cron = "0 * * * *";
  CHECK(f.ensure(hourly) == ensure_result::updated);
  CHECK(f.info("m").next_due == t0 + 1h);
  CHECK(f.info("m").active_runs == 2);
  CHECK(f.clk.next_deadline() <= t0 + 3min);  // the old wait may stay; it is harmless
  f.advance(1h);
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 1h}));
  CHECK(f.sched->list().size() == 1);
  CHECK(f.ensure(hourly) == ensure_result::unchanged);
  auto bad = hourly;
  bad.cron = "61 * * * *";
  CHECK(f.ensure_error(bad) == errc::invalid_cron);
}

TEST_CASE("scheduler: run_now and backfill", "[scheduler][manual]") {
  sched_fixture f;
  auto def = every_minute();
  def.overlap = overlap_policy::skip_if_running;
  f.ensure(def);
  f.advance(30s);
  std::optional<std::pair<error_code, std::string>> now_run;
  f.sched->async_run_now("m", [&](error_code ec, std::string id) { now_run.emplace(ec, id); });
  REQUIRE(run_until(f.io, [&] { return now_run.has_value(); }));
  REQUIRE_FALSE(now_run->first);
  auto r = f.tasks().at(0);
  CHECK(r.id == now_run->second);
  CHECK(r.scheduled_for == t0 + 30s);
  CHECK(r.unique_key.empty());
  // A second manual run in spite of skip_if_running.
  now_run.reset();
  f.sched->async_run_now("m", [&](error_code ec, std::string id) { now_run.emplace(ec, id); });
  REQUIRE(run_until(f.io, [&] { return now_run.has_value(); }));
  CHECK(f.tasks().size() == 2);
  CHECK(f.info("m").counts.manual == 2);

  std::optional<std::pair<error_code, backfill_result>> bf;
  auto backfill = [&](time_point from, time_point to) {
    bf.reset();
    f.sched->async_backfill("m", from, to,
                            [&](error_code ec, backfill_result r) { bf.emplace(ec, r); });
    REQUIRE(run_until(f.io, [&] { return bf.has_value(); }));
  };
  backfill(t0 - 3h, t0 - 3h + 3min);  // [from, to): 3 occurrences
  REQUIRE_FALSE(bf->first);
  CHECK(bf->second.ids.size() == 3);
  CHECK(bf->second.already_enqueued == 0);
  backfill(t0 - 3h + 2min, t0 - 3h + 5min);  // overlaps one already enqueued
  CHECK(bf->second.ids.size() == 2);
  CHECK(bf->second.already_enqueued == 1);
  auto fired = f.fired();
  CHECK(std::vector<time_point>(fired.begin(), fired.begin() + 5) ==
        times({t0 - 3h, t0 - 3h + 1min, t0 - 3h + 2min, t0 - 3h + 3min, t0 - 3h + 4min}));
  backfill(t0 - 24h * 30, t0);  // 43,200 occurrences > max_backfill
  CHECK(bf->first == errc::invalid_schedule);
  f.sched->async_run_now("nope", [&](error_code ec, std::string id) { now_run.emplace(ec, id); });
  drain(f.io);
  CHECK(now_run->first == errc::schedule_not_found);
}

TEST_CASE("scheduler: two instances on one store never duplicate an occurrence",
          "[scheduler][dedupe]") {
  sched_fixture f;
  scheduler other(f.c, f.opts());
  auto def = every_minute();
  f.ensure(def);
  std::optional<error_code> ec;
  other.async_ensure_schedule(def, [&](error_code e, ensure_result) { ec = e; });
  REQUIRE(run_until(f.io, [&] { return ec.has_value(); }));
  f.start();
  other.async_run(asio::detached);
  f.advance(5min);
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 5min}));
  auto a = f.sched->metrics().totals, b = other.metrics().totals;
  CHECK(a.fired + b.fired == 5);
  CHECK(a.deduplicated + b.deduplicated == 5);
  CHECK(a.errors + b.errors == 0);
  other.stop();
  drain(f.io);
}

TEST_CASE("scheduler: the handler sees scheduled_for, due and start times", "[scheduler]") {
  sched_fixture f;
  std::mutex m;
  std::optional<time_point> scheduled_for, due, started;
  local_executor exec{f.io.get_executor(), {.threads = 1, .time = &f.clk}};
  exec.handle("job", [&](task_context& ctx) {
    std::lock_guard lock(m);
    scheduled_for = ctx.scheduled_for();
    due = ctx.run().due_at;
    started = ctx.started_at();
  });
  worker w(f.c, exec);
  w.async_run(asio::detached);
  f.ensure({.name = "once", .task = {.type = "job", .delay = 5s}, .at = t0 + 10s});
  f.start();
  f.advance(10s);
  CHECK(f.info("once").last_fired == t0 + 10s);
  f.advance(5s);
  REQUIRE(run_until(f.io, [&] {
    std::lock_guard lock(m);
    return started.has_value();
  }));
  CHECK(scheduled_for == t0 + 10s);
  CHECK(due == t0 + 15s);  // the template's delay applies after the enqueue
  CHECK(started == t0 + 15s);
  auto waited = f.sched->metrics().queue_wait;  // enqueued at t0+10s, started at t0+15s
  CHECK(waited.count == 1);
  CHECK(waited.max == 5s);
  CHECK_FALSE(f.info("once").next_due);  // a one-shot fires once
  w.stop();
  drain(f.io);
}

TEST_CASE("scheduler: cron in a DST zone, through the client", "[scheduler][dst]") {
  sched_fixture f(utc(2021, 3, 27));
  f.ensure({.name = "berlin",
            .task = {.type = "job"},
            .cron = "30 2 * * *",
            .time_zone = "Europe/Berlin"});
  f.ensure({.name = "ny",
            .task = {.type = "job"},
            .cron = "30 1 * * *",
            .time_zone = "America/New_York"});
  f.start();
  f.advance_to(utc(2021, 3, 30));
  std::vector<time_point> berlin, ny;
  for (auto& r : f.tasks())
    (r.labels.at("taskq.schedule") == "berlin" ? berlin : ny).push_back(*r.scheduled_for);
  // 02:30 CET = 01:30Z; on the 28th 02:30 does not exist: 03:00 CEST = 01:00Z; then 00:30Z.
  CHECK(berlin == times({utc(2021, 3, 27, 1, 30), utc(2021, 3, 28, 1), utc(2021, 3, 29, 0, 30)}));
  CHECK(ny == times({utc(2021, 3, 27, 5, 30), utc(2021, 3, 28, 5, 30), utc(2021, 3, 29, 5, 30)}));

  // New York falls back on 2021-11-07: 01:30 happens twice and fires once.
  sched_fixture g(utc(2021, 11, 6));
  g.ensure({.name = "ny",
            .task = {.type = "job"},
            .cron = "30 1 * * *",
            .time_zone = "America/New_York"});
  g.start();
  g.advance_to(utc(2021, 11, 9));
  CHECK(g.fired() ==
        times({utc(2021, 11, 6, 5, 30), utc(2021, 11, 7, 5, 30), utc(2021, 11, 8, 6, 30)}));
}

TEST_CASE("scheduler: every blocking form has an error_code twin reporting what the other throws",
          "[scheduler][blocking][contract]") {
  sched_fixture f;
  auto guard = asio::make_work_guard(f.io);
  std::thread io_thread([&] { f.io.run(); });
  auto thrown = [](auto fn) {
    try {
      fn();
    } catch (const taskq::error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("nope"));  // the detail names it
      return e.code();
    }
    return error_code{};
  };
  // An unknown schedule: the same code both ways.
  error_code ec;
  f.sched->pause("nope", ec);
  CHECK(ec == errc::schedule_not_found);
  CHECK(thrown([&] { f.sched->pause("nope"); }) == ec);
  ec = {};
  f.sched->resume("nope", ec);
  CHECK(ec == errc::schedule_not_found);
  CHECK(thrown([&] { f.sched->resume("nope"); }) == ec);
  ec = {};
  CHECK(f.sched->remove("nope", true, ec) == 0);
  CHECK(ec == errc::schedule_not_found);
  CHECK(thrown([&] { f.sched->remove("nope", true); }) == ec);
  ec = {};
  CHECK(f.sched->run_now("nope", ec).empty());
  CHECK(ec == errc::schedule_not_found);
  CHECK(thrown([&] { f.sched->run_now("nope"); }) == ec);
  ec = {};
  CHECK(f.sched->backfill("nope", t0 - 2min, t0, ec).ids.empty());
  CHECK(ec == errc::schedule_not_found);
  CHECK(thrown([&] { f.sched->backfill("nope", t0 - 2min, t0); }) == ec);
  // A known one: the error_code forms succeed and clear the code.
  REQUIRE(f.sched->ensure_schedule(every_minute()) == ensure_result::created);
  ec = errc::io_error;
  CHECK_FALSE(f.sched->run_now("m", ec).empty());
  CHECK_FALSE(ec);
  ec = errc::io_error;
  CHECK(f.sched->backfill("m", t0 - 2min, t0, ec).ids.size() == 2);
  CHECK_FALSE(ec);
  ec = errc::io_error;
  f.sched->pause("m", ec);
  CHECK_FALSE(ec);
  CHECK(f.sched->info("m")->definition.paused);
  ec = errc::io_error;
  f.sched->resume("m", ec);
  CHECK_FALSE(ec);
  CHECK_FALSE(f.sched->info("m")->definition.paused);
  ec = errc::io_error;
  CHECK(f.sched->remove("m", true, ec) == 3);
  CHECK_FALSE(ec);
  f.sched.reset();
  guard.reset();
  f.io.stop();
  io_thread.join();
}

TEST_CASE("scheduler: pause and resume complete on the client's executor, not the store's",
          "[scheduler][contract][executor]") {
  // The schedule store completes on its own io_context, run by another thread.
  asio::io_context io, store_io;
  manual_clock clk(t0);
  memory::queue q{io.get_executor(), clk};
  memory::store s{io.get_executor()};
  client c{io.get_executor(), q, s, {.time = &clk}};
  memory::schedule_store store{store_io.get_executor()};
  std::optional<scheduler> sched;
  sched.emplace(c, scheduler_options{.store = &store});
  std::thread store_thread([&] {
    auto guard = asio::make_work_guard(store_io);
    store_io.run_for(10s);
  });
  std::optional<error_code> ensured;
  sched->async_ensure_schedule(every_minute(), [&](error_code ec, ensure_result) { ensured = ec; });
  REQUIRE(run_until(io, [&] { return ensured.has_value(); }));
  REQUIRE_FALSE(*ensured);
  int done = 0;
  sched->async_pause("m", [&](error_code ec) {
    CHECK_FALSE(ec);
    CHECK(io.get_executor().running_in_this_thread());
    ++done;
  });
  REQUIRE(run_until(io, [&] { return done == 1; }));
  sched->async_resume("m", [&](error_code ec) {
    CHECK_FALSE(ec);
    CHECK(io.get_executor().running_in_this_thread());
    ++done;
  });
  REQUIRE(run_until(io, [&] { return done == 2; }));
  sched.reset();
  drain(io);
  store_io.stop();
  store_thread.join();
}

TEST_CASE("scheduler: blocking forms work from another thread", "[scheduler][blocking]") {
  sched_fixture f;
  auto guard = asio::make_work_guard(f.io);
  std::thread io_thread([&] { f.io.run(); });
  CHECK(f.sched->ensure_schedule(every_minute()) == ensure_result::created);
  CHECK_THROWS_AS(f.sched->ensure_schedule({.name = "x", .task = {.type = "j"}}), taskq::error);
  auto id = f.sched->run_now("m");
  CHECK_FALSE(id.empty());
  CHECK(f.sched->backfill("m", t0 - 2min, t0).ids.size() == 2);
  f.sched->pause("m");
  f.sched->resume("m");
  CHECK(f.sched->remove("m", true) == 3);
  CHECK_THROWS_AS(f.sched->pause("m"), taskq::error);
  error_code ec;
  f.sched->ensure_schedule(every_minute(), ec);
  CHECK_FALSE(ec);
  f.sched.reset();
  guard.reset();
  f.io.stop();
  io_thread.join();
}

namespace {

// A store that fails the next `fail_inserts` inserts with an I/O error, else forwards.
class flaky_store final : public forwarding_store {
 public:
  flaky_store(asio::any_io_executor ex, taskq::store& inner)
      : forwarding_store(inner), ex_(std::move(ex)), inner_(inner) {}
  std::atomic<int> fail_inserts{0};

 protected:
  void do_insert(std::vector<task_record> r, handler<void(error_code)> h) override {
    if (fail_inserts.load() > 0) {
      --fail_inserts;
      return asio::post(ex_, [h = std::move(h)]() mutable { std::move(h)(errc::io_error); });
    }
    inner_.async_insert(std::move(r), std::move(h));
  }

 private:
  asio::any_io_executor ex_;
  taskq::store& inner_;
};
}  // namespace

TEST_CASE("scheduler: an occurrence whose enqueue fails transiently is retried, not lost",
          "[scheduler][reliability]") {
  asio::io_context io;
  manual_clock clk(t0);
  memory::queue q(io.get_executor(), clk);
  memory::store inner(io.get_executor());
  flaky_store s(io.get_executor(), inner);
  client c(io.get_executor(), q, s, {.time = &clk});
  memory::schedule_store store(io.get_executor());
  scheduler sched(c, {.store = &store});
  sched.async_run(asio::detached);
  std::optional<error_code> ensured;
  sched.async_ensure_schedule(every_minute("m"),
                              [&](error_code ec, ensure_result) { ensured = ec; });
  REQUIRE(run_until(io, [&] { return ensured.has_value(); }));
  REQUIRE_FALSE(*ensured);

  auto count = [&] {
    std::optional<std::size_t> n;
    c.async_list({}, [&](error_code, task_page p) { n = p.records.size(); });
    run_until(io, [&] { return n.has_value(); });
    return *n;
  };
  s.fail_inserts = 2;
  clk.set(t0 + 60s);  // due: the first enqueue fails
  drain(io);
  CHECK(count() == 0);
  clk.advance(1s);  // first retry fails too
  drain(io);
  CHECK(count() == 0);
  clk.advance(2s);  // second retry succeeds
  drain(io);
  REQUIRE(count() == 1);
  std::optional<task_page> page;
  c.async_list({}, [&](error_code, task_page p) { page = std::move(p); });
  run_until(io, [&] { return page.has_value(); });
  CHECK(page->records.front().scheduled_for == t0 + 60s);
  CHECK(sched.metrics().totals.errors == 2);
  CHECK(sched.metrics().totals.fired == 1);
  sched.stop();
  drain(io);
}

// --- several instances with leader election ---------------------------------------------------

namespace {

// An election that can be made unreachable (this instance's database connection is lost) or
// unresponsive (its answers never come).
class flaky_election final : public leader_election {
 public:
  flaky_election(asio::any_io_executor ex, leader_election& inner)
      : ex_(std::move(ex)), inner_(inner) {}
  std::atomic<bool> down{false};
  std::atomic<bool> hang{false};

 protected:
  void do_acquire(std::string name, std::string holder, duration ttl,
                  handler<void(error_code, bool)> h) override {
    if (hang) return unanswered_.push_back(std::move(h));
    if (down)
      return detail::post_completion(std::move(h), ex_, error_code(errc::backend_unavailable),
                                     false);
    inner_.async_acquire(std::move(name), std::move(holder), ttl, std::move(h));
  }
  void do_release(std::string name, std::string holder, handler<void(error_code)> h) override {
    if (down)
      return detail::post_completion(std::move(h), ex_, error_code(errc::backend_unavailable));
    inner_.async_release(std::move(name), std::move(holder), std::move(h));
  }

 private:
  asio::any_io_executor ex_;
  leader_election& inner_;
  std::vector<handler<void(error_code, bool)>> unanswered_;
};

scheduler_options led(sched_fixture& f, leader_election& e, std::string id) {
  return {.store = &f.store,
          .leader = &e,
          .instance_id = std::move(id),
          .leader_ttl = 3min,
          .leader_renew = 1min};
}

void ensure_on(sched_fixture& f, scheduler& s, schedule def) {
  std::optional<error_code> ec;
  s.async_ensure_schedule(std::move(def), [&](error_code e, ensure_result) { ec = e; });
  REQUIRE(run_until(f.io, [&] { return ec.has_value(); }));
  REQUIRE_FALSE(*ec);
}

}  // namespace

TEST_CASE("scheduler: leader election options are checked", "[scheduler][leader]") {
  sched_fixture f;
  memory::leader_election e(f.io.get_executor(), f.clk);
  auto o = led(f, e, "a");
  o.leader_renew = o.leader_ttl;
  CHECK_THROWS_AS(scheduler(f.c, o), error);
  o.leader_renew = 0s;
  CHECK_THROWS_AS(scheduler(f.c, o), error);
  o.leader_renew = 1min;
  CHECK_NOTHROW(scheduler(f.c, o));
  drain(f.io);
}

TEST_CASE("memory leader election: one holder, renewals, expiry, release", "[scheduler][leader]") {
  asio::io_context io;
  manual_clock clk(t0);
  memory::leader_election e(io.get_executor(), clk);
  auto ask = [&](std::string who) {
    return std::get<1>(call<bool>(io, [&](auto cb) { e.async_acquire("r", who, 30s, cb); }));
  };
  CHECK(ask("a"));
  CHECK_FALSE(ask("b"));
  clk.advance(20s);
  CHECK(ask("a"));  // renewed until t0 + 50s
  clk.advance(20s);
  CHECK_FALSE(ask("b"));
  CHECK(e.holder("r") == "a");
  clk.advance(10s);  // a's lease ran out
  CHECK(e.holder("r").empty());
  CHECK(ask("b"));
  CHECK_FALSE(ask("a"));
  call<>(io, [&](auto cb) { e.async_release("r", "a", cb); });  // not a's: nothing happens
  CHECK(e.holder("r") == "b");
  call<>(io, [&](auto cb) { e.async_release("r", "b", cb); });
  CHECK(ask("a"));
}

TEST_CASE(
    "scheduler: with leader election only the leader fires; a stopped leader's stand-by "
    "takes over",
    "[scheduler][leader]") {
  sched_fixture f;
  memory::leader_election e(f.io.get_executor(), f.clk);
  f.sched.emplace(f.c, led(f, e, "a"));
  scheduler b(f.c, led(f, e, "b"));
  auto def = every_minute();
  def.catch_up = catch_up_policy::run_all;
  f.ensure(def);
  ensure_on(f, b, def);
  f.advance(30s);  // renewals fall between occurrences
  f.start();
  b.async_run(asio::detached);
  drain(f.io);
  CHECK(e.holder("taskq.scheduler") == "a");
  CHECK(f.sched->metrics().leader);
  CHECK_FALSE(b.metrics().leader);
  f.advance(2min);  // 2:30
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min}));
  CHECK(b.metrics().totals.fired + b.metrics().totals.deduplicated == 0);  // never tried

  // Manual runs and backfills work on the stand-by.
  std::optional<error_code> manual;
  b.async_run_now("m", [&](error_code ec, std::string) { manual = ec; });
  REQUIRE(run_until(f.io, [&] { return manual.has_value(); }));
  CHECK_FALSE(*manual);
  CHECK(b.metrics().totals.manual == 1);
  auto [ec, bf] = call<backfill_result>(
      f.io, [&](auto cb) { b.async_backfill("m", t0 - 3min, t0 - 1min, cb); });
  CHECK_FALSE(ec);
  CHECK(bf.ids.size() == 2);

  f.advance(15s);   // 2:45
  f.sched->stop();  // gives leadership up
  f.advance(1min);  // 3:45: b took over at 3:30 and caught 3:00 up (within misfire_grace)
  CHECK(e.holder("taskq.scheduler") == "b");
  CHECK(b.metrics().leader);
  CHECK_FALSE(f.sched->metrics().leader);
  f.advance(2min);  // 5:45
  auto all = f.fired();
  all.erase(std::find(all.begin(), all.end(), t0 + 2min + 30s));  // the manual run
  all.erase(all.begin(), all.begin() + 2);                        // the backfill
  CHECK(all == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 5min}));
  CHECK(f.sched->metrics().totals.fired == 2);
  CHECK(b.metrics().totals.fired == 3);
  CHECK(b.metrics().totals.deduplicated == 0);
  CHECK(b.metrics().leadership_changes == 1);
  b.stop();
  f.sched.reset();  // before the election it uses
  drain(f.io);
}

TEST_CASE(
    "scheduler: a leader whose renewal fails stops at once; the stand-by takes over after "
    "the ttl and catches up per policy",
    "[scheduler][leader]") {
  auto run = [](catch_up_policy policy) {
    sched_fixture f;
    memory::leader_election e(f.io.get_executor(), f.clk);
    flaky_election a_link(f.io.get_executor(), e);
    f.sched.emplace(f.c, led(f, a_link, "a"));
    scheduler b(f.c, led(f, e, "b"));
    auto def = every_minute();
    def.catch_up = policy;
    f.ensure(def);
    ensure_on(f, b, def);
    f.advance(30s);
    f.start();  // a leads from 0:30, renewing at 1:30, 2:30, 3:30 (lease until 6:30)
    b.async_run(asio::detached);
    f.advance(3min + 15s);  // 3:45
    CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min}));
    a_link.down = true;  // a's renewal at 4:30 fails: a fires 4:00, then nothing
    f.advance(1min);     // 4:45
    CHECK_FALSE(f.sched->metrics().leader);
    CHECK_FALSE(b.metrics().leader);  // a's lease runs until 6:30
    f.advance(1min + 40s);            // 6:25
    CHECK(f.fired().back() == t0 + 4min);
    f.advance(10s);  // 6:35: b took over at 6:30, with 5:00 and 6:00 missed
    CHECK(b.metrics().leader);
    a_link.down = false;  // a is back, but b leads now
    f.advance(2min);      // 8:35
    CHECK_FALSE(f.sched->metrics().leader);
    CHECK(f.sched->metrics().totals.fired == 4);
    CHECK(f.sched->metrics().totals.deduplicated == 0);
    CHECK(b.metrics().totals.deduplicated == 0);
    b.stop();
    f.sched.reset();  // before the election it uses
    drain(f.io);
    return f.fired();
  };
  SECTION("run_all: nothing is skipped") {
    CHECK(run(catch_up_policy::run_all) == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min,
                                                  t0 + 5min, t0 + 6min, t0 + 7min, t0 + 8min}));
  }
  SECTION("run_once: the latest missed occurrence stands in for both") {
    CHECK(run(catch_up_policy::run_once) ==
          times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 6min, t0 + 7min, t0 + 8min}));
  }
  SECTION("skip: only the occurrence within misfire_grace fires") {
    CHECK(run(catch_up_policy::skip) ==
          times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 6min, t0 + 7min, t0 + 8min}));
  }
}

TEST_CASE(
    "scheduler: an occurrence whose enqueue failed is still retried after leadership is "
    "lost (no gap at a failover)",
    "[scheduler][leader][reliability]") {
  sched_fixture f;
  memory::leader_election e(f.io.get_executor(), f.clk);
  flaky_election a_link(f.io.get_executor(), e);
  flaky_store a_tasks(f.io.get_executor(), f.s);
  client ca(f.io.get_executor(), f.q, a_tasks, {.time = &f.clk});
  std::optional<scheduler> a;
  a.emplace(ca, led(f, a_link, "a"));
  scheduler b(f.c, led(f, e, "b"));
  auto def = every_minute();
  def.catch_up = catch_up_policy::run_all;
  ensure_on(f, *a, def);
  ensure_on(f, b, def);
  f.advance(30s);
  a->async_run(asio::detached);
  drain(f.io);
  b.async_run(asio::detached);
  a_tasks.fail_inserts = 1000;  // a's enqueue of 1:00 fails, and its retries too
  f.advance(40s);               // 1:10
  CHECK(f.fired().empty());
  CHECK(f.store.size() == 1);
  a_link.down = true;     // a stops leading at its 1:30 renewal; b leads from 3:30
  f.advance(2min + 30s);  // 3:40: b caught 2:00 and 3:00 up (the stored cursor is at 1:00)
  CHECK(b.metrics().leader);
  CHECK(f.fired() == times({t0 + 2min, t0 + 3min}));
  a_tasks.fail_inserts = 0;  // a's next retry of 1:00 gets through
  f.advance(1min + 30s);     // 5:10
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 5min}));
  CHECK(a->metrics().totals.fired == 1);
  b.stop();
  a.reset();  // before the election it uses
  drain(f.io);
}

TEST_CASE("scheduler: a leader whose renewal goes unanswered stops firing when its lease runs out",
          "[scheduler][leader]") {
  sched_fixture f;
  memory::leader_election e(f.io.get_executor(), f.clk);
  flaky_election a_link(f.io.get_executor(), e);
  f.sched.emplace(f.c, led(f, a_link, "a"));
  scheduler b(f.c, led(f, e, "b"));
  auto def = every_minute();
  def.catch_up = catch_up_policy::run_all;
  f.ensure(def);
  ensure_on(f, b, def);
  f.advance(30s);
  f.start();  // a's lease: until 3:30
  b.async_run(asio::detached);
  f.advance(40s);
  a_link.hang = true;     // a's renewal at 1:30 is never answered
  f.advance(2min + 50s);  // 4:00: a's lease ran out at 3:30, when b took over
  CHECK_FALSE(f.sched->metrics().leader);
  CHECK(b.metrics().leader);
  f.advance(1min);  // 5:00
  CHECK(f.fired() == times({t0 + 1min, t0 + 2min, t0 + 3min, t0 + 4min, t0 + 5min}));
  // a did not fire after its lease ran out (not even to be deduplicated).
  CHECK(f.sched->metrics().totals.fired == 3);
  CHECK(f.sched->metrics().totals.deduplicated == 0);
  CHECK(b.metrics().totals.fired == 2);
  CHECK(b.metrics().totals.deduplicated == 0);
  b.stop();
  f.sched.reset();  // before the election it uses
  drain(f.io);
}
