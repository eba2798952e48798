// Periodic and delayed work: a schedule that fires every second, plus a one-shot schedule
// 1.5 s from now. Each run knows the occurrence it serves (scheduled_for). The program stops
// after three periodic runs and the one-shot, in about three seconds.
//
// The scheduler waits on ONE timer for the earliest due schedule, and gives each occurrence a
// dedupe key, so a restart or a second scheduler never runs an occurrence twice.
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/scheduler.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <fmt/format.h>

#include <atomic>

namespace asio = boost::asio;
using namespace std::chrono_literals;

int main() {
  asio::io_context io;
  taskq::memory::queue queue(io.get_executor());
  taskq::memory::store store(io.get_executor());
  taskq::client client(io.get_executor(), queue, store);

  taskq::local_executor executor(io.get_executor(), {.threads = 1});
  taskq::worker worker(client, executor);
  taskq::scheduler scheduler(client);

  std::atomic<int> ticks{0};
  std::atomic<bool> reminded{false};
  auto maybe_stop = [&] {
    if (ticks >= 3 && reminded) {
      // Stop from the I/O thread: the scheduler fires nothing more, the worker drains.
      asio::post(io, [&] {
        scheduler.stop();
        worker.stop();
      });
    }
  };
  executor.handle("tick", [&](taskq::task_context& ctx) {
    auto late = ctx.started_at() - *ctx.scheduled_for();
    fmt::print("tick #{} for {} (started {} us after its time)\n", ++ticks,
               taskq::format_time(*ctx.scheduled_for()),
               std::chrono::duration_cast<std::chrono::microseconds>(late).count());
    maybe_stop();
  });
  executor.handle("reminder", [&](taskq::task_context& ctx) {
    fmt::print("reminder: {}\n", ctx.payload().at("text").get<std::string>());
    reminded = true;
    maybe_stop();
  });

  // A periodic job: every whole second (a 6-field cron "* * * * * *" would do the same), and
  // never two at once.
  scheduler.async_ensure_schedule({.name = "tick",
                                   .task = {.type = "tick", .max_attempts = 1},
                                   .cron = "@every 1s",
                                   .overlap = taskq::overlap_policy::skip_if_running},
                                  [](taskq::error_code ec, taskq::ensure_result) {
                                    if (ec) fmt::print("tick schedule: {}\n", ec.message());
                                  });
  // A delayed one-shot.
  scheduler.async_ensure_schedule(
      {.name = "reminder",
       .task = {.type = "reminder", .payload = {{"text", "stretch your legs"}}},
       .at = client.time().now() + 1500ms},
      [](taskq::error_code ec, taskq::ensure_result) {
        if (ec) fmt::print("reminder schedule: {}\n", ec.message());
      });

  worker.async_run(asio::detached);
  scheduler.async_run([&](taskq::error_code) {
    auto m = scheduler.metrics();
    fmt::print("scheduler stopped: {} runs fired, lateness p50 {} us, max {} us\n", m.totals.fired,
               std::chrono::duration_cast<std::chrono::microseconds>(m.lateness.p50).count(),
               std::chrono::duration_cast<std::chrono::microseconds>(m.lateness.max).count());
  });
  io.run();
  return ticks >= 3 && reminded ? 0 : 1;
}
