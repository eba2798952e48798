// A small taskq application for the browser and Prometheus tests: memory backends, a worker,
// a scheduler, the operations server on 127.0.0.1, and tasks whose handlers report progress
// slowly. Prints "listening on PORT" and runs until SIGTERM/SIGINT or --seconds elapse.
//
//   taskq_ops_demo [--port N] [--seconds S]
#include <taskq/http_server.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/taskq.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

std::atomic<bool> stopping{false};

int main(int argc, char** argv) {
  std::uint16_t port = 0;
  int seconds = 600;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--port") port = static_cast<std::uint16_t>(std::stoi(argv[i + 1]));
    if (a == "--seconds") seconds = std::stoi(argv[i + 1]);
  }
  asio::io_context io;
  taskq::memory::queue q(io.get_executor());
  taskq::memory::store s(io.get_executor());
  taskq::metrics_registry metrics;
  taskq::client client(io.get_executor(), q, s, {.metrics = &metrics});
  taskq::scheduler sched(client, {.metrics = &metrics});
  metrics.attach(client);
  metrics.attach(sched);
  taskq::local_executor exec(io.get_executor(), {.threads = 2});
  exec.handle("ok", [](taskq::task_context&) { return taskq::json{{"ok", true}}; });
  exec.handle("fail", [](taskq::task_context&) -> taskq::json {
    throw taskq::permanent_error("the mail server said no");
  });
  // Reports progress every 400 ms for 60 steps (about 24 s); stops when cancelled.
  exec.handle("slow", [](taskq::task_context& ctx) -> taskq::json {
    ctx.log("starting the slow job");
    for (int i = 1; i <= 60; ++i) {
      std::this_thread::sleep_for(400ms);
      if (stopping || !ctx.heartbeat({{"done", i}, {"total", 60}})) return nullptr;
      if (i % 10 == 0) ctx.log("step " + std::to_string(i) + " of 60");
    }
    return taskq::json{{"steps", 60}};
  });
  exec.handle("report", [](taskq::task_context&) { return taskq::json{{"rows", 42}}; });
  taskq::worker w(client, exec, {.queues = {"default", "mail", "reports"}, .max_in_flight = 8});
  w.async_run([](taskq::error_code) {});
  sched.async_run([](taskq::error_code) {});

  taskq::http_server server(io.get_executor(), {&client, &sched, &metrics},
                            {.port = port, .history_interval = 1000ms});
  server.start();

  // Seed: finished tasks of each kind, a slow one, a payload with markup, paused work.
  // (Blocking calls: from a thread of their own while the io_context runs.)
  std::thread seed([&] {
    sched.ensure_schedule({.name = "nightly-report",
                           .task = {.type = "report", .queue = "reports"},
                           .cron = "0 3 * * *"});
    for (int i = 0; i < 5; ++i) client.enqueue({.type = "ok", .payload = {{"n", i}}});
    client.enqueue({.type = "fail",
                    .queue = "mail",
                    .payload = {{"to", "ops@example.com"}},
                    .max_attempts = 1});
    client.enqueue({.type = "slow", .payload = {{"job", "slow-import"}}});
    client.enqueue({.type = "report",
                    .queue = "reports",
                    .payload = {{"title", "<script>window.__pwned = 1</script><b>bold</b>"}},
                    .labels = {{"tenant", "acme"}}});
    client.enqueue({.type = "ok", .queue = "mail", .payload = {{"later", true}}, .delay = 1h});
    std::printf("listening on %u\n", unsigned(server.port()));
    std::fflush(stdout);
  });

  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer limit(io, std::chrono::seconds(seconds));
  asio::steady_timer grace(io);
  auto stop = [&] {
    stopping = true;
    server.stop();
    sched.stop();
    w.stop();
    signals.cancel();
    limit.cancel();
    grace.expires_after(2s);
    grace.async_wait([&](boost::system::error_code) { io.stop(); });
  };
  signals.async_wait([&](boost::system::error_code ec, int) {
    if (!ec) stop();
  });
  limit.async_wait([&](boost::system::error_code ec) {
    if (!ec) stop();
  });
  std::thread second([&] { io.run(); });
  io.run();
  second.join();
  seed.join();
  return 0;
}
