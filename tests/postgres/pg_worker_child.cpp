// A worker process for the multi-process tests: serves one PostgreSQL schema until SIGTERM.
//
//   taskq_pg_worker_child CONNINFO SCHEMA LEASE_MS MAX_IN_FLIGHT
//
// Handles type "echo" (returns its payload) on the io_context (a coroutine handler). Prints
// "ready" once the backend is open. Exit status 0 after a clean stop.
#include <taskq/backends/postgres/backend.hpp>
#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/task_context.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <csignal>
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  using namespace taskq;
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s CONNINFO SCHEMA LEASE_MS MAX_IN_FLIGHT\n", argv[0]);
    return 2;
  }
  asio::io_context io(1);
  error_code ec;
  std::string detail;
  auto b = postgres::backend::open(
      io.get_executor(), {.conninfo = argv[1], .schema = argv[2], .pool_size = 3}, ec, &detail);
  if (!b) {
    std::fprintf(stderr, "open: %s\n", detail.c_str());
    return 1;
  }
  client c(io.get_executor(), *b);
  local_executor exec(io.get_executor(), {.threads = 1});
  exec.handle("echo", [](task_context& ctx) -> asio::awaitable<json> { co_return ctx.payload(); });
  worker w(c, exec,
           {.max_in_flight = static_cast<std::size_t>(std::stoul(argv[4])),
            .reserve_batch = static_cast<std::size_t>(std::stoul(argv[4])),
            .lease = std::chrono::milliseconds(std::stol(argv[3]))});
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](error_code, int) { w.stop(std::chrono::seconds(5)); });
  bool done = false;
  w.async_run([&](error_code) {
    done = true;
    signals.cancel();
    b->close();
    io.stop();
  });
  std::printf("ready\n");
  std::fflush(stdout);
  io.run();
  return done ? 0 : 1;
}
