// The metrics registry and the Prometheus text format: golden files for escaping, labels and
// histogram buckets; the registry fed by a real client, worker and scheduler.
#include "engine_fixture.hpp"

#include <taskq/prometheus.hpp>
#include <taskq/scheduler.hpp>

#include <catch2/catch.hpp>

#include <fstream>
#include <limits>
#include <sstream>

using namespace taskq;
using namespace taskq::test;

namespace {

std::string golden(const std::string& name) {
  std::ifstream in(std::string(TASKQ_GOLDEN_DIR) + "/" + name, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("prometheus: label values and help text are escaped (golden)", "[prometheus]") {
  std::vector<metric_family> f;
  f.push_back({"taskq_test_escaping",
               "Help with a \\ backslash\nand a newline; \"quotes\" stay.",
               metric_type::gauge,
               {},
               {{{{"queue", "a\"b"}, {"type", "back\\slash"}}, 1, {}, 0},
                {{{"queue", "multi\nline"}, {"type", "ünïcödé <script>"}}, 2.5, {}, 0},
                {{{"queue", ""}, {"type", "empty queue"}}, -0.125, {}, 0}}});
  f.push_back({"taskq_test_specials",
               "Special values.",
               metric_type::gauge,
               {},
               {{{{"v", "inf"}}, std::numeric_limits<double>::infinity(), {}, 0},
                {{{"v", "-inf"}}, -std::numeric_limits<double>::infinity(), {}, 0},
                {{{"v", "nan"}}, std::numeric_limits<double>::quiet_NaN(), {}, 0},
                {{{"v", "big"}}, 12345678901234.0, {}, 0},
                {{{"v", "small"}}, 1e-9, {}, 0}}});
  f.push_back({"taskq_test_unlabelled", "No labels.", metric_type::gauge, {}, {{{}, 7, {}, 0}}});
  f.push_back(
      {"taskq_test_empty", "A family without series is left out.", metric_type::gauge, {}, {}});
  CHECK(render_prometheus(f) == golden("escaping.prom"));
}

TEST_CASE("prometheus: counters merge by name and keep label order (golden)", "[prometheus]") {
  std::vector<metric_family> f;
  f.push_back({"taskq_test_events_total",
               "Events.",
               metric_type::counter,
               {},
               {{{{"queue", "default"}, {"type", "email"}}, 3, {}, 0}}});
  f.push_back({"taskq_test_other",
               "Other.",
               metric_type::gauge,
               {},
               {{{{"z", "1"}, {"a", "2"}}, 1, {}, 0}}});
  // A second family of the same name (another collector) is merged under the first header.
  f.push_back({"taskq_test_events_total",
               "Ignored help.",
               metric_type::gauge,
               {},
               {{{{"queue", "bulk"}, {"type", "report"}}, 4, {}, 0}}});
  CHECK(render_prometheus(f) == golden("labels.prom"));
}

TEST_CASE("prometheus: histogram buckets are cumulative with +Inf, sum and count (golden)",
          "[prometheus][histogram]") {
  bucket_histogram h({0.01, 0.1, 1, 10});
  h.observe(std::chrono::milliseconds(5));     // <= 0.01
  h.observe(std::chrono::milliseconds(10));    // == 0.01 (upper bound inclusive)
  h.observe(std::chrono::milliseconds(50));    // <= 0.1
  h.observe(std::chrono::milliseconds(2500));  // <= 10
  h.observe(std::chrono::seconds(30));         // +Inf only
  metric_series s{{{"queue", "default"}, {"type", "t"}}, 0, {}, 0};
  h.read(s);
  CHECK(s.buckets == std::vector<std::uint64_t>{2, 3, 3, 4});
  CHECK(s.count == 5);
  CHECK(s.value == Approx(32.565));
  std::vector<metric_family> f;
  f.push_back({"taskq_test_duration_seconds",
               "Durations.",
               metric_type::histogram,
               {0.01, 0.1, 1, 10},
               {s}});
  metric_series empty{{{"queue", "idle"}, {"type", "t"}}, 0, {}, 0};
  bucket_histogram({0.01, 0.1, 1, 10}).read(empty);
  f.back().series.push_back(empty);
  CHECK(render_prometheus(f) == golden("histogram.prom"));
}

TEST_CASE("metrics_registry: options are validated naming the field", "[prometheus]") {
  std::string detail;
  CHECK(validate(metrics_registry_options{.wait_buckets = {1, 0.5}}, &detail) ==
        errc::invalid_option);
  CHECK(detail.find("wait_buckets") != std::string::npos);
  CHECK(validate(metrics_registry_options{.max_task_series = 0}, &detail) == errc::invalid_option);
  CHECK(detail.find("max_task_series") != std::string::npos);
  CHECK_THROWS_AS(metrics_registry({.lateness_buckets = {-1}}), taskq::error);
  CHECK_FALSE(validate(metrics_registry_options{}));
}

TEST_CASE("metrics_registry: series are stable, and capped into _other", "[prometheus]") {
  metrics_registry m({.max_task_series = 2});
  auto& a = m.series("q1", "t1");
  CHECK(&m.series("q1", "t1") == &a);
  auto& b = m.series("q1", "t2");
  CHECK(&b != &a);
  auto& c = m.series("q2", "t3");  // over the cap
  CHECK(c.queue == "_other");
  CHECK(&m.series("q3", "t4") == &c);
  // From another thread (its own cache) the same series come back.
  task_series* from_thread = nullptr;
  std::thread([&] { from_thread = &m.series("q1", "t2"); }).join();
  CHECK(from_thread == &b);
  a.count(event_kind::enqueued, 3);
  c.count(event_kind::failed);
  auto text = render_prometheus(m.collect_fed());
  CHECK(has_line(text, "taskq_tasks_enqueued_total{queue=\"q1\",type=\"t1\"} 3"));
  CHECK(has_line(text, "taskq_tasks_failed_total{queue=\"_other\",type=\"_other\"} 1"));
}

TEST_CASE("metrics_registry: fed by a client and worker; gauges from the store and queue",
          "[prometheus][engine]") {
  metrics_registry m;
  engine_fixture f;
  client c(f.io.get_executor(), f.q, f.s, {.time = &f.clk, .metrics = &m});
  m.attach(c);
  f.exec.handle("ok", [](task_context&) { return json(1); });
  f.exec.handle("bad", [](task_context&) -> json { throw std::runtime_error("boom"); });
  worker w(c, f.exec, {.queues = {"default", "mail"}});
  w.async_run([](error_code) {});
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i)
    ids.push_back(std::get<1>(
        call<std::string>(f.io, [&](auto cb) { c.async_enqueue({.type = "ok"}, cb); })));
  auto [ec, bad] = call<std::string>(f.io, [&](auto cb) {
    c.async_enqueue({.type = "bad", .queue = "mail", .max_attempts = 1}, cb);
  });
  REQUIRE_FALSE(ec);
  auto [ec2, later] = call<std::string>(f.io, [&](auto cb) {
    c.async_enqueue({.type = "ok", .queue = "mail", .delay = std::chrono::hours(1)}, cb);
  });
  REQUIRE_FALSE(ec2);
  REQUIRE(run_until(f.io, [&] {
    return m.series("default", "ok").events[std::size_t(event_kind::succeeded)].load() == 3 &&
           m.series("mail", "bad").events[std::size_t(event_kind::failed)].load() == 1;
  }));
  f.clk.advance(std::chrono::minutes(2));
  auto [ec3, text] =
      call<std::string>(f.io, [&](auto cb) { m.async_scrape(f.io.get_executor(), cb); });
  REQUIRE_FALSE(ec3);
  CHECK(has_line(text, "taskq_tasks_enqueued_total{queue=\"default\",type=\"ok\"} 3"));
  CHECK(has_line(text, "taskq_tasks_started_total{queue=\"default\",type=\"ok\"} 3"));
  CHECK(has_line(text, "taskq_tasks_succeeded_total{queue=\"default\",type=\"ok\"} 3"));
  CHECK(has_line(text, "taskq_tasks_failed_total{queue=\"mail\",type=\"bad\"} 1"));
  CHECK(has_line(text, "taskq_tasks_enqueued_total{queue=\"mail\",type=\"ok\"} 1"));
  CHECK(has_line(text, "taskq_task_duration_seconds_count{queue=\"default\",type=\"ok\"} 3"));
  CHECK(has_line(text, "taskq_task_wait_seconds_count{queue=\"mail\",type=\"bad\"} 1"));
  CHECK(has_line(text, "taskq_tasks{queue=\"default\",status=\"succeeded\"} 3"));
  CHECK(has_line(text, "taskq_tasks{queue=\"mail\",status=\"pending\"} 1"));
  CHECK(has_line(text, "taskq_type_tasks{type=\"bad\",status=\"failed\"} 1"));
  CHECK(has_line(text, "taskq_queue_tasks{queue=\"mail\",state=\"delayed\"} 1"));
  CHECK(has_line(text, "taskq_queue_tasks{queue=\"default\",state=\"ready\"} 0"));
  CHECK(has_line(text, "taskq_queue_paused{queue=\"mail\"} 0"));
  CHECK(has_line(text, "taskq_queue_oldest_pending_age_seconds{queue=\"mail\"} 120"));
  CHECK(has_line(text, "taskq_store_up 1"));
  CHECK(text.find("# TYPE taskq_tasks gauge\n") != std::string::npos);
  w.stop();
  run_until(f.io, [&] { return true; });
}

TEST_CASE("metrics_registry: scheduler lateness and schedule gauges", "[prometheus][scheduler]") {
  metrics_registry m;
  engine_fixture f;
  client c(f.io.get_executor(), f.q, f.s, {.time = &f.clk, .metrics = &m});
  scheduler sched(c, {.metrics = &m});
  m.attach(sched);
  auto [ec, r] = call<ensure_result>(f.io, [&](auto cb) {
    sched.async_ensure_schedule(
        {.name = "tick", .task = {.type = "tick"}, .every = std::chrono::minutes(1)}, cb);
  });
  REQUIRE_FALSE(ec);
  bool stopped = false;
  sched.async_run([&](error_code) { stopped = true; });
  drain(f.io);
  f.clk.advance(std::chrono::seconds(61));
  REQUIRE(run_until(f.io, [&] { return sched.metrics().totals.fired >= 1; }));
  auto [ec2, text] =
      call<std::string>(f.io, [&](auto cb) { m.async_scrape(f.io.get_executor(), cb); });
  CHECK(has_line(text, "taskq_schedule_lateness_seconds_count{schedule=\"tick\"} 1"));
  CHECK(has_line(text, "taskq_schedule_fired_total{schedule=\"tick\"} 1"));
  CHECK(has_line(text, "taskq_schedule_paused{schedule=\"tick\"} 0"));
  CHECK(has_line(text, "taskq_schedules{state=\"active\"} 1"));
  CHECK(text.find("taskq_schedule_next_due_timestamp_seconds{schedule=\"tick\"} ") !=
        std::string::npos);
  CHECK(has_line(text, "taskq_tasks_enqueued_total{queue=\"default\",type=\"tick\"} 1"));
  sched.stop();
  REQUIRE(run_until(f.io, [&] { return stopped; }));
}
