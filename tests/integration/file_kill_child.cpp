// The child of the kill test (file_crash_test.cpp): opens a file store, enqueues tasks and
// runs them until killed or done.
//
//   taskq_file_kill_child DIR ACK_FILE EXEC_FILE ENQUEUE_COUNT
//
// Writes each id to ACK_FILE (one write() per batch, after the enqueue completed, i.e. after
// it is durable); each execution appends "id\n" to EXEC_FILE before the handler returns.
// Exits 0 once it enqueued ENQUEUE_COUNT tasks and nothing is pending or running.
#include <taskq/backends/file/store.hpp>
#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <thread>

using namespace taskq;

namespace {

void write_all(int fd, const std::string& s) {
  // One write() per call, O_APPEND: lines of concurrent writers never interleave. A SIGKILL
  // may still cut a write short (the parent reads around that, see read_lines).
  if (::write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size())) std::abort();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: taskq_file_kill_child DIR ACK_FILE EXEC_FILE ENQUEUE_COUNT\n";
    return 2;
  }
  const int to_enqueue = std::atoi(argv[4]);
  int ack_fd = ::open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  int exec_fd = ::open(argv[3], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (ack_fd < 0 || exec_fd < 0) return 3;

  asio::io_context io;
  auto work = asio::make_work_guard(io);
  error_code ec;
  std::string detail;
  auto b = file::backend::open(io.get_executor(), argv[1],
                               {.mode = file::durability::sync,
                                .retention = duration::zero(),
                                .maintenance_interval = std::chrono::milliseconds(20),
                                .compact_min_bytes = 64 * 1024},
                               ec, &detail);
  if (ec) {
    std::cerr << "child: open failed: " << detail << " (" << ec.message() << ")\n";
    return 4;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([&] { io.run(); });

  client c(io.get_executor(), b->queue(), b->store());
  local_executor exec(io.get_executor(), {.threads = 2});
  exec.handle("job", [&](task_context& ctx) {
    write_all(exec_fd, ctx.id() + "\n");
    return json(true);
  });
  worker w(c, exec, {.max_in_flight = 16, .reserve_batch = 8, .lease = std::chrono::seconds(30)});
  w.async_run(asio::detached);

  std::mt19937 rng(static_cast<unsigned>(::getpid()));
  int enqueued = 0;
  while (enqueued < to_enqueue) {
    int n = std::min<int>(to_enqueue - enqueued, 1 + static_cast<int>(rng() % 8));
    std::vector<task_spec> specs;
    for (int i = 0; i < n; ++i)
      specs.push_back({.type = "job", .payload = enqueued + i, .max_attempts = 100000});
    auto ids = c.enqueue_batch(std::move(specs), ec);
    if (ec) {
      std::cerr << "child: enqueue failed: " << ec.message() << "\n";
      return 5;
    }
    std::string lines;
    for (auto& id : ids) lines += id + "\n";
    write_all(ack_fd, lines);
    enqueued += n;
  }
  // Run until nothing is left.
  for (;;) {
    auto counts = b->store().async_counts(asio::use_future).get();
    auto open = counts.total[static_cast<std::size_t>(task_status::pending)] +
                counts.total[static_cast<std::size_t>(task_status::running)];
    if (open == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Everything is durable: leave without tearing the engine down.
  b->close();
  std::_Exit(0);
}
