// Offloading long work from request handlers: the handler enqueues a task and hands back its
// token at once; later requests poll the task's status and progress by token.
//
// The two "request handlers" below stand in for your HTTP framework's routes
// (POST /reports and GET /reports/{token}).
#include <taskq/taskq.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>

namespace asio = boost::asio;
using namespace std::chrono_literals;

// POST /reports {"customer": ...} -> 202 Accepted {"token": ...}
asio::awaitable<taskq::json> create_report(taskq::client& client, const taskq::json& request) {
  const auto customer = request.at("customer").get<std::string>();
  taskq::task_spec spec{.type = "report.build",
                        .queue = "reports",
                        .payload = request,
                        .max_attempts = 3,
                        .timeout = 30s,
                        .labels = {{"customer", customer}},
                        .concurrency_key = customer};
  auto token = co_await client.async_enqueue(std::move(spec));
  taskq::json response{{"status", 202}, {"token", token}};
  co_return response;
}

// GET /reports/{token} -> {"state": ..., "progress": ..., "result": ...}
asio::awaitable<taskq::json> report_status(taskq::client& client, const std::string& token) {
  auto [ec, rec] = co_await client.async_get(token, asio::as_tuple(asio::use_awaitable));
  if (ec == taskq::errc::not_found) co_return taskq::json{{"status", 404}};
  taskq::json body{
      {"status", 200}, {"state", taskq::to_string(rec.status)}, {"progress", rec.progress}};
  if (rec.status == taskq::task_status::succeeded) body["result"] = rec.result;
  if (rec.status == taskq::task_status::failed) body["error"] = rec.last_error;
  co_return body;
}

int main() {
  asio::io_context io;
  taskq::memory::queue queue(io.get_executor());
  taskq::memory::store store(io.get_executor());
  taskq::client client(io.get_executor(), queue, store);

  // A coroutine handler: runs on the io_context, awaits without blocking a thread.
  taskq::local_executor executor(io.get_executor());
  executor.handle("report.build", [](taskq::task_context& ctx) -> asio::awaitable<taskq::json> {
    asio::steady_timer step(co_await asio::this_coro::executor);
    for (int percent = 25; percent <= 100; percent += 25) {
      step.expires_after(30ms);
      co_await step.async_wait(asio::use_awaitable);
      taskq::json progress{{"percent", percent}};
      bool keep_going = co_await ctx.async_heartbeat(std::move(progress));
      if (!keep_going) co_return taskq::json();
    }
    taskq::json result{{"rows", 1234}, {"customer", ctx.payload().at("customer")}};
    co_return result;
  });
  taskq::worker worker(client, executor, {.queues = {"reports"}, .limits = {.per_key = 1}});
  worker.async_run(asio::detached);

  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        taskq::json request{{"customer", "acme"}, {"month", "2026-11"}};
        auto accepted = co_await create_report(client, request);
        fmt::print("POST /reports -> {}\n", accepted.dump());
        const auto token = accepted.at("token").get<std::string>();

        asio::steady_timer poll(co_await asio::this_coro::executor);
        for (;;) {
          auto status = co_await report_status(client, token);
          fmt::print("GET /reports/{} -> {}\n", token, status.dump());
          if (status["state"] != "pending" && status["state"] != "running") break;
          poll.expires_after(25ms);
          co_await poll.async_wait(asio::use_awaitable);
        }
        fmt::print("GET /reports/unknown -> {}\n",
                   (co_await report_status(client, "unknown")).dump());
        worker.stop();
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
}
