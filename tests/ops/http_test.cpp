// The operations server with a real listener on 127.0.0.1 and a Beast client: routing, the
// JSON API, /metrics, limits, and the security checks (token, same-origin, read-only, Host).
#include "engine_fixture.hpp"

#include <taskq/http_server.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <thread>

using namespace taskq;
using namespace taskq::test;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

struct reply {
  int status = 0;
  std::string body, content_type;
  json j;
};

reply send(std::uint16_t port, http::verb verb, const std::string& target, std::string body = {},
           std::map<std::string, std::string> headers = {}) {
  asio::io_context cio;
  tcp::socket sock(cio);
  sock.connect({asio::ip::make_address("127.0.0.1"), port});
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
  for (auto& [k, v] : headers) req.set(k, v);
  if (!body.empty()) req.set(http::field::content_type, "application/json");
  req.body() = std::move(body);
  req.prepare_payload();
  http::write(sock, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(sock, buf, res);
  reply r;
  r.status = res.result_int();
  r.body = res.body();
  r.content_type = std::string(res[http::field::content_type]);
  r.j = json::parse(r.body, nullptr, false);
  return r;
}

reply get(std::uint16_t port, const std::string& target,
          std::map<std::string, std::string> h = {}) {
  return send(port, http::verb::get, target, {}, std::move(h));
}
reply post(std::uint16_t port, const std::string& target, std::string body = {},
           std::map<std::string, std::string> h = {}) {
  return send(port, http::verb::post, target, std::move(body), std::move(h));
}

// An engine served on 127.0.0.1; the io_context runs on its own thread.
struct served {
  asio::io_context io;
  memory::queue q{io.get_executor()};
  memory::store s{io.get_executor()};
  metrics_registry metrics;
  client c{io.get_executor(), q, s, {.metrics = &metrics}};
  scheduler sched{c, {.metrics = &metrics}};
  std::optional<http_server> server;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread runner;

  explicit served(http_server_options o = {}) {
    metrics.attach(c);
    metrics.attach(sched);
    server.emplace(io.get_executor(), http_server_sources{&c, &sched, &metrics}, std::move(o));
    server->start();
    runner = std::thread([this] { io.run(); });
  }
  ~served() {
    server->stop();
    sched.stop();
    work.reset();
    runner.join();
  }
  std::uint16_t port() const { return server->port(); }
  std::string enqueue(task_spec spec) { return c.enqueue(std::move(spec)); }
};

}  // namespace

TEST_CASE("http: /metrics serves the Prometheus exposition", "[http]") {
  served sv;
  sv.enqueue({.type = "email", .queue = "mail"});
  auto r = get(sv.port(), "/metrics");
  REQUIRE(r.status == 200);
  CHECK(r.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(r.body.find("taskq_tasks_enqueued_total{queue=\"mail\",type=\"email\"} 1\n") !=
        std::string::npos);
  CHECK(r.body.find("taskq_tasks{queue=\"mail\",status=\"pending\"} 1\n") != std::string::npos);
  CHECK(r.body.find("taskq_queue_tasks{queue=\"mail\",state=\"ready\"} 1\n") != std::string::npos);
}

TEST_CASE("http: task list filters, text search and cursor paging", "[http][api]") {
  served sv;
  auto a = sv.enqueue(
      {.type = "report", .payload = {{"customer", "ACME Corp"}}, .labels = {{"tenant", "t1"}}});
  auto b = sv.enqueue(
      {.type = "report", .payload = {{"customer", "Globex"}}, .labels = {{"tenant", "t2"}}});
  auto c = sv.enqueue({.type = "email", .queue = "mail", .metadata = {{"note", "acme follow-up"}}});
  auto all = get(sv.port(), "/api/tasks");
  REQUIRE(all.status == 200);
  CHECK(all.j["tasks"].size() == 3);
  CHECK_FALSE(all.j["tasks"][0].contains("payload"));  // summaries only

  auto by_type = get(sv.port(), "/api/tasks?type=report");
  REQUIRE(by_type.j["tasks"].size() == 2);
  auto by_queue = get(sv.port(), "/api/tasks?queue=mail&status=pending");
  REQUIRE(by_queue.j["tasks"].size() == 1);
  CHECK(by_queue.j["tasks"][0]["id"] == c);
  auto by_label = get(sv.port(), "/api/tasks?label=tenant%3Dt2");
  REQUIRE(by_label.j["tasks"].size() == 1);
  CHECK(by_label.j["tasks"][0]["id"] == b);
  // Text search covers payload and metadata, case-insensitively.
  auto search = get(sv.port(), "/api/tasks?q=acme");
  REQUIRE(search.j["tasks"].size() == 2);
  CHECK(search.j["tasks"][0]["id"] == a);
  CHECK(search.j["tasks"][1]["id"] == c);
  auto created =
      get(sv.port(), "/api/tasks?created_after=2000-01-01T00:00:00Z&created_before=2000-01-02");
  CHECK(created.j["tasks"].empty());

  auto p1 = get(sv.port(), "/api/tasks?limit=2");
  REQUIRE(p1.j["tasks"].size() == 2);
  std::string cursor = p1.j["next_cursor"];
  REQUIRE_FALSE(cursor.empty());
  auto p2 = get(sv.port(), "/api/tasks?limit=2&cursor=" + cursor);
  REQUIRE(p2.j["tasks"].size() == 1);
  CHECK(p2.j["tasks"][0]["id"] == c);
  CHECK(p2.j["next_cursor"] == "");

  auto bad = get(sv.port(), "/api/tasks?status=finished");
  CHECK(bad.status == 400);
  CHECK(bad.j["error"]["field"] == "status");
  CHECK(bad.j["error"]["status"] == 400);
  CHECK(get(sv.port(), "/api/tasks?limit=0").j["error"]["field"] == "limit");
  CHECK(get(sv.port(), "/api/tasks?created_after=yesterday").j["error"]["field"] ==
        "created_after");
  CHECK(get(sv.port(), "/api/tasks?label=nokey").j["error"]["field"] == "label");
  CHECK(get(sv.port(), "/api/tasks?colour=red").j["error"]["field"] == "colour");
}

TEST_CASE("http: one task in full; enqueue, cancel, retry and delete", "[http][api]") {
  served sv;
  auto r = post(sv.port(), "/api/tasks",
                R"({"type":"report","queue":"q1","payload":{"x":"<script>alert(1)</script>"},
                    "labels":{"k":"v"},"delay":"1h","max_attempts":3})");
  REQUIRE(r.status == 201);
  std::string id = r.j["id"];
  auto t = get(sv.port(), "/api/tasks/" + id);
  REQUIRE(t.status == 200);
  CHECK(t.j["payload"]["x"] == "<script>alert(1)</script>");
  CHECK(t.j["labels"]["k"] == "v");
  CHECK(t.j["max_attempts"] == 3);
  CHECK(t.j["status"] == "pending");
  CHECK(t.j["log"].is_array());
  CHECK(t.j.contains("result"));
  CHECK(t.j.contains("metadata"));

  auto cancelled = post(sv.port(), "/api/tasks/" + id + "/cancel");
  REQUIRE(cancelled.status == 200);
  CHECK(cancelled.j["status"] == "cancelled");
  auto again = post(sv.port(), "/api/tasks/" + id + "/cancel");
  CHECK(again.status == 409);
  auto retried = post(sv.port(), "/api/tasks/" + id + "/retry");
  REQUIRE(retried.status == 200);
  CHECK(retried.j["status"] == "pending");
  auto del = send(sv.port(), http::verb::delete_, "/api/tasks/" + id);
  REQUIRE(del.status == 200);
  CHECK(del.j["deleted"][0] == id);
  auto gone = get(sv.port(), "/api/tasks/" + id);
  CHECK(gone.status == 404);
  CHECK(gone.j["error"]["field"] == "id");

  CHECK(post(sv.port(), "/api/tasks", "not json").j["error"]["field"] == "body");
  CHECK(post(sv.port(), "/api/tasks", R"({"type":"x","colour":1})").j["error"]["field"] ==
        "colour");
  CHECK(post(sv.port(), "/api/tasks", R"({"type":"x","delay":"soon"})").j["error"]["field"] ==
        "delay");
  auto blank = post(sv.port(), "/api/tasks", R"({"queue":"q"})");
  CHECK(blank.status == 400);
  CHECK(blank.j["error"]["message"].get<std::string>().find("type") != std::string::npos);
  CHECK(get(sv.port(), "/api/nothing").status == 404);
  CHECK(send(sv.port(), http::verb::put, "/api/tasks").status == 405);
}

TEST_CASE("http: bulk retry and delete by filter", "[http][api]") {
  served sv;
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(sv.enqueue({.type = "t", .labels = {{"batch", "b1"}}}));
  sv.enqueue({.type = "t", .labels = {{"batch", "b2"}}});
  for (auto& id : ids) sv.c.cancel(id);
  CHECK(post(sv.port(), "/api/tasks/bulk-retry").j["error"]["field"] == "filter");
  auto r = post(sv.port(), "/api/tasks/bulk-retry?status=cancelled&label=batch%3Db1");
  REQUIRE(r.status == 200);
  CHECK(r.j["retried"].size() == 3);
  auto d = post(sv.port(), "/api/tasks/bulk-delete?label=batch%3Db1");
  REQUIRE(d.status == 200);
  CHECK(d.j["deleted"].size() == 3);
  CHECK(get(sv.port(), "/api/tasks").j["tasks"].size() == 1);
}

TEST_CASE("http: queues and schedules: list, pause, resume, run now", "[http][api]") {
  served sv;
  sv.enqueue({.type = "t", .queue = "bulk"});
  sv.sched.ensure_schedule({.name = "nightly", .task = {.type = "cleanup"}, .cron = "0 3 * * *"});
  auto qs = get(sv.port(), "/api/queues");
  REQUIRE(qs.status == 200);
  REQUIRE(qs.j["queues"].size() == 1);
  CHECK(qs.j["queues"][0]["name"] == "bulk");
  CHECK(qs.j["queues"][0]["ready"] == 1);
  CHECK(qs.j["queues"][0]["paused"] == false);
  CHECK(post(sv.port(), "/api/queues/bulk/pause").j["paused"] == true);
  CHECK(get(sv.port(), "/api/queues").j["queues"][0]["paused"] == true);
  CHECK(post(sv.port(), "/api/queues/bulk/resume").j["paused"] == false);

  auto ss = get(sv.port(), "/api/schedules");
  REQUIRE(ss.j["schedules"].size() == 1);
  CHECK(ss.j["schedules"][0]["name"] == "nightly");
  CHECK(ss.j["schedules"][0]["next_due"].is_string());
  CHECK(post(sv.port(), "/api/schedules/nightly/pause").j["paused"] == true);
  CHECK(post(sv.port(), "/api/schedules/nightly/resume").j["paused"] == false);
  auto run = post(sv.port(), "/api/schedules/nightly/run");
  REQUIRE(run.status == 200);
  std::string id = run.j["id"];
  CHECK(get(sv.port(), "/api/tasks/" + id).j["type"] == "cleanup");
  auto missing = post(sv.port(), "/api/schedules/nope/run");
  CHECK(missing.status == 404);
  CHECK(missing.j["error"]["field"] == "name");
  auto ov = get(sv.port(), "/api/overview");
  CHECK(ov.j["counts"]["total"]["pending"] == 2);
  CHECK(ov.j["counters"]["enqueued"] == 2);
  CHECK(get(sv.port(), "/api/history").j["points"].is_array());
}

TEST_CASE("http: the dashboard is served with a strict content security policy",
          "[http][dashboard]") {
  served sv;
  asio::io_context cio;
  tcp::socket sock(cio);
  sock.connect({asio::ip::make_address("127.0.0.1"), sv.port()});
  http::request<http::string_body> req{http::verb::get, "/", 11};
  req.set(http::field::host, "127.0.0.1:" + std::to_string(sv.port()));
  http::write(sock, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(sock, buf, res);
  CHECK(res.result_int() == 200);
  CHECK(res.body().find("<script src=\"/app.js\"") != std::string::npos);
  CHECK(std::string(res["Content-Security-Policy"]).find("script-src 'self'") != std::string::npos);
  CHECK(std::string(res["X-Content-Type-Options"]) == "nosniff");
  CHECK(get(sv.port(), "/app.js").content_type == "text/javascript; charset=utf-8");
  CHECK(get(sv.port(), "/nope.js").status == 404);
}

TEST_CASE("http: security: same-origin check, token, read-only mode, Host and limits",
          "[http][security]") {
  SECTION("a cross-site request cannot change state") {
    served sv;
    auto id = sv.enqueue({.type = "t"});
    auto r =
        post(sv.port(), "/api/tasks/" + id + "/cancel", {}, {{"Sec-Fetch-Site", "cross-site"}});
    CHECK(r.status == 403);
    CHECK(r.j["error"]["field"] == "Sec-Fetch-Site");
    auto o =
        post(sv.port(), "/api/tasks/" + id + "/cancel", {}, {{"Origin", "http://evil.example"}});
    CHECK(o.status == 403);
    CHECK(o.j["error"]["field"] == "Origin");
    CHECK(sv.c.get(id).status == task_status::pending);
    auto same = post(sv.port(), "/api/tasks/" + id + "/cancel", {},
                     {{"Sec-Fetch-Site", "same-origin"},
                      {"Origin", "http://127.0.0.1:" + std::to_string(sv.port())}});
    CHECK(same.status == 200);
    // Reads are not state-changing: a cross-site GET is answered (the browser keeps the
    // body from the other site's script).
    CHECK(get(sv.port(), "/api/tasks", {{"Sec-Fetch-Site", "cross-site"}}).status == 200);
  }
  SECTION("a bearer token guards the API and /metrics, not the static files") {
    served sv({.bearer_token = "s3cret"});
    auto no = get(sv.port(), "/api/tasks");
    CHECK(no.status == 401);
    CHECK(no.j["error"]["field"] == "Authorization");
    CHECK(get(sv.port(), "/metrics").status == 401);
    CHECK(get(sv.port(), "/api/tasks", {{"Authorization", "Bearer wrong"}}).status == 401);
    CHECK(get(sv.port(), "/api/tasks", {{"Authorization", "Bearer s3cret"}}).status == 200);
    CHECK(post(sv.port(), "/api/tasks", R"({"type":"t"})", {{"Authorization", "Bearer s3cret"}})
              .status == 201);
    CHECK(get(sv.port(), "/").status == 200);
  }
  SECTION("a host auth hook decides") {
    served sv({.authorize = [](const http_auth_request& a) { return !a.state_changing; }});
    CHECK(get(sv.port(), "/api/tasks").status == 200);
    CHECK(post(sv.port(), "/api/tasks", R"({"type":"t"})").status == 403);
  }
  SECTION("read-only mode refuses every change") {
    served sv({.read_only = true});
    auto id = sv.enqueue({.type = "t"});
    auto r = post(sv.port(), "/api/tasks/" + id + "/cancel");
    CHECK(r.status == 403);
    CHECK(r.j["error"]["message"] == "this server is read-only");
    CHECK(send(sv.port(), http::verb::delete_, "/api/tasks/" + id).status == 403);
    CHECK(get(sv.port(), "/api/tasks/" + id).status == 200);
  }
  SECTION("a foreign Host header is refused (DNS rebinding)") {
    served sv;
    auto r = get(sv.port(), "/api/tasks", {{"Host", "attacker.example:80"}});
    CHECK(r.status == 421);
    CHECK(r.j["error"]["field"] == "Host");
  }
  SECTION("request size limits") {
    served sv({.max_body_bytes = 64});
    auto r =
        post(sv.port(), "/api/tasks", R"({"type":"t","payload":")" + std::string(200, 'x') + "\"}");
    CHECK(r.status == 413);
    CHECK(r.j["error"]["field"] == "body");
    auto h = get(sv.port(), "/api/tasks", {{"X-Big", std::string(20000, 'y')}});
    CHECK(h.status == 431);
  }
  SECTION("options are validated naming the field") {
    asio::io_context io;
    memory::queue q{io.get_executor()};
    memory::store s{io.get_executor()};
    client c{io.get_executor(), q, s};
    std::string detail;
    CHECK(validate(http_server_options{.address = "localhost"}, {&c}, &detail) ==
          errc::invalid_option);
    CHECK(detail.find("address") != std::string::npos);
    CHECK(validate(http_server_options{}, {}, &detail) == errc::invalid_option);
    CHECK(detail.find("client") != std::string::npos);
    CHECK_THROWS_AS(http_server(io.get_executor(), {&c}, {.max_connections = 0}), taskq::error);
  }
}
