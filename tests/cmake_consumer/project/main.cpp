// Enqueues one task, runs it and prints its status: proves the package is usable.
#include <taskq/taskq.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdio>

int main() {
  boost::asio::io_context io;
  taskq::memory::queue q(io.get_executor());
  taskq::memory::store s(io.get_executor());
  taskq::client client(io.get_executor(), q, s);
  taskq::local_executor exec(io.get_executor(), {.threads = 1});
  exec.handle("ping", [](taskq::task_context&) { return taskq::json("pong"); });
  taskq::worker worker(client, exec);
  worker.async_run(boost::asio::detached);
  client.async_enqueue({.type = "ping"}, [&](taskq::error_code ec, std::string id) {
    if (ec) std::abort();
    client.async_wait(id, [&](taskq::error_code, taskq::task_record r) {
      std::printf("%s %s\n", std::string(taskq::to_string(r.status)).c_str(),
                  r.result.dump().c_str());
      worker.stop();
    });
  });
  io.run();
  return 0;
}
