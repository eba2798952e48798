// The backends the conformance suite runs against: each gives a taskq::queue, a taskq::store
// and a taskq::schedule_store on an io_context and a manual clock. A new backend is done when
// conformance/backend_suite.cpp passes against it.
#pragma once

#include <taskq/backends/file/store.hpp>
#include <taskq/backends/memory/backend.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/schedule_store.hpp>

#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>
#include <atomic>
#include <filesystem>
#include <string>

namespace taskq::test {

struct memory_backend {
  static constexpr const char* name = "memory";
  memory_backend(asio::io_context& io, manual_clock& clk)
      : q(io.get_executor(), clk), s(io.get_executor()), sched(io.get_executor()) {}
  taskq::queue& queue() { return q; }
  taskq::store& store() { return s; }
  taskq::schedule_store& schedules() { return sched; }
  memory::queue q;
  memory::store s;
  memory::schedule_store sched;
};

/// The memory queue and store behind memory::backend's fused operations: clients (and so
/// workers) use fused(); the Queue and Store cases run on the same pair.
struct memory_fused_backend {
  static constexpr const char* name = "memory, fused";
  memory_fused_backend(asio::io_context& io, manual_clock& clk)
      : b(io.get_executor(), clk), sched(io.get_executor()) {}
  taskq::queue& queue() { return b.get_queue(); }
  taskq::store& store() { return b.get_store(); }
  taskq::schedule_store& schedules() { return sched; }
  taskq::backend& fused() { return b; }
  memory::backend b;
  memory::schedule_store sched;
};

/// A fresh private directory under the system temp dir, removed on destruction.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    static std::atomic<int> n{0};
    path = std::filesystem::temp_directory_path() /
           ("taskq-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::remove_all(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

struct file_backend {
  static constexpr const char* name = "file";
  file_backend(asio::io_context& io, manual_clock& clk)
      : b(file::backend::open(io.get_executor(), dir.path / "store",
                              {.retention = duration::zero(), .time = &clk})) {}
  ~file_backend() { b->close(); }
  taskq::queue& queue() { return b->queue(); }
  taskq::store& store() { return b->store(); }
  taskq::schedule_store& schedules() { return b->schedules(); }
  temp_dir dir;
  std::unique_ptr<file::backend> b;
};

}  // namespace taskq::test
