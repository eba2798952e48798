// Writing your own Executor backend: one small class. This one gives every run a dedicated
// std::jthread and turns run_promise::cancel() into a std::stop_token request — a fit for
// long, blocking jobs that should not occupy the shared pool.
#include <taskq/taskq.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <fmt/format.h>

#include <list>
#include <mutex>
#include <stop_token>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

class jthread_executor final : public taskq::executor {
 public:
  using job = std::function<taskq::json(const taskq::task_record&, std::stop_token)>;

  jthread_executor(asio::any_io_executor io, job fn)
      : executor(std::move(io)), job_(std::move(fn)) {}

  ~jthread_executor() override {
    std::lock_guard lock(mutex_);
    threads_.clear();  // jthread: request stop, then join
  }

 protected:
  taskq::run_promise do_execute(taskq::run_request&& req) override {
    taskq::run_completion completion(req.run, get_executor());
    std::lock_guard lock(mutex_);
    auto& thread = threads_.emplace_back([this, completion, task = req.task](std::stop_token stop) {
      taskq::run_result r;
      try {
        r.result = job_(task, stop);
        if (stop.stop_requested()) r.error = taskq::errc::run_cancelled;
      } catch (const std::exception& e) {
        r.error = taskq::errc::handler_failed;
        r.message = e.what();
        r.retryable = true;
      }
      completion.complete(std::move(r));  // ignored if the run was cancelled first
    });
    // cancel() on the promise (timeout, client cancel, shutdown) asks the thread to stop.
    completion.on_cancel(
        [source = thread.get_stop_source()](taskq::error_code) mutable { source.request_stop(); });
    return completion.get_promise();
  }

 private:
  job job_;
  std::mutex mutex_;
  std::list<std::jthread> threads_;
};

int main() {
  asio::io_context io;
  taskq::memory::queue queue(io.get_executor());
  taskq::memory::store store(io.get_executor());
  taskq::client client(io.get_executor(), queue, store);

  jthread_executor executor(io.get_executor(),
                            [](const taskq::task_record& t, std::stop_token stop) {
                              int n = t.payload.at("n").get<int>();
                              long long sum = 0;
                              for (int i = 1; i <= n && !stop.stop_requested(); ++i) sum += i;
                              return taskq::json{{"sum", sum}};
                            });

  taskq::worker worker(client, executor);
  worker.async_run(asio::detached);

  std::string id;
  client.async_enqueue(
      {.type = "sum", .payload = {{"n", 1000}}}, [&](taskq::error_code ec, std::string token) {
        if (ec) throw taskq::error(ec);
        id = token;
        client.async_wait(id, [&](taskq::error_code, taskq::task_record r) {
          fmt::print("task {} {}: {}\n", r.id, taskq::to_string(r.status), r.result.dump());
          worker.stop();
        });
      });
  io.run();
}
