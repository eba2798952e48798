// Test fixture for the engine: an io_context driven by polling, a manual clock, in-memory
// backends, a client, a local executor. Time moves only through clock.advance().
#pragma once

#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/client.hpp>
#include <taskq/executor.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <thread>
#include <tuple>

namespace taskq::test {

using namespace std::chrono_literals;

/// Runs the io_context until `pred` holds. Handlers on the executor's thread pool run on
/// real threads, so this polls (yielding) up to a generous wall-clock bound; the bound only
/// turns a hang into a failure, it never decides a result.
template <class Pred>
bool run_until(asio::io_context& io, Pred pred, std::chrono::seconds bound = 20s) {
  auto deadline = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    io.restart();
    if (io.poll() == 0) std::this_thread::yield();
    if (std::chrono::steady_clock::now() > deadline) return false;
  }
  io.restart();
  io.poll();
  return true;
}

/// Starts an operation with a callback and runs the io_context until it completes; returns
/// the completion's arguments.
template <class... Ts, class Start>
std::tuple<error_code, Ts...> call(asio::io_context& io, Start start) {
  std::optional<std::tuple<error_code, Ts...>> out;
  start([&](error_code ec, Ts... ts) { out.emplace(ec, std::move(ts)...); });
  REQUIRE(run_until(io, [&] { return out.has_value(); }));
  return std::move(*out);
}

/// A Store that forwards every operation to `inner` except the batch update (the seam's
/// default applies). Tests derive from it and override what they change.
class forwarding_store : public store {
 public:
  explicit forwarding_store(store& inner) : inner_(inner) {}
  bool durable() const noexcept override { return false; }

 protected:
  void do_insert(std::vector<task_record> r, handler<void(error_code)> h) override {
    inner_.async_insert(std::move(r), std::move(h));
  }
  void do_get(std::string id, handler<void(error_code, task_record)> h) override {
    inner_.async_get(std::move(id), std::move(h));
  }
  void do_claim(claim_params p, handler<void(error_code, claim_result)> h) override {
    inner_.async_claim(std::move(p), std::move(h));
  }
  void do_update(task_update u, handler<void(error_code, task_record)> h) override {
    inner_.async_update(std::move(u), std::move(h));
  }
  void do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) override {
    inner_.async_heartbeat(std::move(p), std::move(h));
  }
  void do_append_log(std::string id, log_entry e, handler<void(error_code)> h) override {
    inner_.async_append_log(std::move(id), std::move(e), std::move(h));
  }
  void do_request_cancel(std::string id, time_point now,
                         handler<void(error_code, task_record)> h) override {
    inner_.async_request_cancel(std::move(id), now, std::move(h));
  }
  void do_list(task_filter f, handler<void(error_code, task_page)> h) override {
    inner_.async_list(std::move(f), std::move(h));
  }
  void do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) override {
    inner_.async_remove(std::move(f), std::move(h));
  }
  void do_prune(time_point before, handler<void(error_code, std::size_t)> h) override {
    inner_.async_prune(before, std::move(h));
  }
  void do_counts(handler<void(error_code, task_counts)> h) override {
    inner_.async_counts(std::move(h));
  }

 private:
  store& inner_;
};

/// Runs ready handlers until none is left (for state that depends only on posted work).
inline void drain(asio::io_context& io) {
  for (int i = 0; i < 1000; ++i) {
    io.restart();
    if (io.poll() == 0) return;
  }
}

struct engine_fixture {
  asio::io_context io;
  manual_clock clk;
  memory::queue q{io.get_executor(), clk};
  memory::store s{io.get_executor()};
  client c{io.get_executor(), q, s, {.time = &clk}};
  local_executor exec{io.get_executor(), {.threads = 2, .time = &clk}};

  /// Enqueues through the async API and returns the id (fails the test on error).
  std::string enqueue(task_spec spec) {
    std::optional<std::pair<error_code, std::string>> out;
    c.async_enqueue(std::move(spec), [&](error_code ec, std::string id) { out.emplace(ec, id); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    REQUIRE_FALSE(out->first);
    return out->second;
  }

  task_record get(const std::string& id) {
    std::optional<task_record> out;
    c.async_get(id, [&](error_code ec, task_record r) {
      REQUIRE_FALSE(ec);
      out = std::move(r);
    });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return *out;
  }

  task_status status(const std::string& id) { return get(id).status; }

  bool wait_status(const std::string& id, task_status st) {
    return run_until(io, [&] {
      std::optional<task_record> r;
      c.async_get(id, [&](error_code, task_record rec) { r = std::move(rec); });
      drain(io);
      return r && r->status == st;
    });
  }
};

}  // namespace taskq::test
