// Quick start: register a handler, enqueue a task, watch its progress, wait for the result.
//
// The host owns the io_context; taskq runs plain-function handlers on its own small thread
// pool so blocking work never stalls the host's event loop.
#include <taskq/taskq.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>

#include <filesystem>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  asio::io_context io;

  // A durable store in a directory: every enqueue and state change is in its journal (fsynced,
  // group-committed) before it completes, so tasks survive a crash or restart. Swap in
  // taskq::memory::queue / taskq::memory::store for tests and throw-away work.
  const std::filesystem::path dir = argc > 1 ? argv[1] : "taskq-quickstart-data";
  auto backend = taskq::file::backend::open(io.get_executor(), dir);
  fmt::print("store {}: {} task(s) recovered\n", dir.string(), backend->recovery().tasks);
  taskq::client client(io.get_executor(), backend->queue(), backend->store());

  // Handlers are registered per task type. This one runs on the executor's thread pool.
  taskq::local_executor executor(io.get_executor());
  executor.handle("thumbnail", [](taskq::task_context& ctx) {
    const int pages = ctx.payload().at("pages").get<int>();
    for (int page = 1; page <= pages; ++page) {
      std::this_thread::sleep_for(20ms);  // the "work"
      // Report progress; returns false if the task was cancelled meanwhile.
      if (!ctx.heartbeat({{"page", page}, {"of", pages}})) return taskq::json();
    }
    return taskq::json{{"thumbnails", pages}, {"file", ctx.payload().at("file")}};
  });

  taskq::worker worker(client, executor, {.queues = {"default"}, .max_in_flight = 8});
  worker.async_run(asio::detached);

  client.subscribe([](const taskq::event& e) {
    if (e.kind == taskq::event_kind::progress)
      fmt::print("  progress: page {} of {}\n", e.progress.at("page").get<int>(),
                 e.progress.at("of").get<int>());
  });

  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        // (Build the spec outside the co_await: GCC 12 miscompiles string literals in a
        // braced initializer inside a co_await expression.)
        taskq::task_spec spec{.type = "thumbnail",
                              .payload = {{"file", "report.pdf"}, {"pages", 3}}};
        auto id = co_await client.async_enqueue(std::move(spec));  // default token: deferred
        fmt::print("enqueued task {}\n", id);

        taskq::task_record done = co_await client.async_wait(id);
        fmt::print("task {} {} after {} attempt(s): {}\n", done.id, taskq::to_string(done.status),
                   done.attempt, done.result.dump());
        worker.stop();  // drains, then the io_context runs out of work
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });

  io.run();
  return 0;
}
