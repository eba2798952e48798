// The store a command works on (tools/target.cpp): a file-store directory or a PostgreSQL
// database, opened for reading or writing; writes to a file store held by a running
// application go through its control channel.
#pragma once

#include "commands.hpp"

#include <taskq/admin.hpp>
#include <taskq/detail/blocking.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <memory>
#include <optional>
#include <thread>

namespace taskq::file {
class backend;
class control_client;
}  // namespace taskq::file
namespace taskq::postgres {
class backend;
}

namespace taskq::tool {

/// An io_context run by one thread for the duration of a command.
struct runner {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread t{[this] { io.run(); }};
  ~runner() {
    work.reset();
    t.join();
  }
};

/// Runs `start(handler)` (an async operation of signature void(error_code, T)) and waits
/// for it: the blocking form, for the command's thread.
template <class T, class Start>
std::tuple<error_code, T> wait_for(runner& r, Start&& start) {
  return taskq::detail::blocking_call<T>(r.io.get_executor(), std::forward<Start>(start));
}

/// True when `store` is a PostgreSQL connection string rather than a directory:
/// postgresql:// or postgres:// URIs, or key=value conninfo ("host=... dbname=...").
bool is_conninfo(const std::string& store);

/// A store opened for a command. Declare it after the runner (it must go first).
class target {
 public:
  explicit target(runner& r);
  ~target();
  target(const target&) = delete;
  target& operator=(const target&) = delete;

  /// Opens for reading: a file store without its lock (works while an application holds
  /// it), or the database. Returns 0, or the exit code after printing why to `err`.
  int open_read(const store_argument& a, std::ostream& err);
  /// Opens for admin writes: a file store through its owner's control channel when an
  /// application serves one, else with the lock (`create`: make the directory if missing);
  /// or the database.
  int open_write(const store_argument& a, bool create, std::ostream& err);

  /// Executes one admin request (taskq/admin.hpp) where the store lives. Returns the
  /// result object, or sets `ec` and `detail`.
  json admin(const json& request, error_code& ec, std::string& detail);

  taskq::queue& queue();
  taskq::store& store();
  taskq::schedule_store& schedules();
  bool postgres() const noexcept { return pg_ != nullptr; }

 private:
  int open_postgres(const store_argument& a, std::ostream& err);
  runner& r_;
  std::unique_ptr<file::backend> file_;
  std::unique_ptr<postgres::backend> pg_;
  std::unique_ptr<file::control_client> control_;
};

/// The store of a long-running command (serve, worker), opened on the command's own
/// io_context: an existing file store with its lock, or the database.
struct owned_store {
  std::unique_ptr<file::backend> file;
  std::unique_ptr<postgres::backend> pg;
  taskq::queue* queue = nullptr;
  taskq::store* store = nullptr;
  bool read_only = false;  ///< a file store another process holds, opened read-only
  ~owned_store();          ///< closes what it opened
};

/// Opens `where` for `command` (named in messages). `read_only_if_held`: a file store another
/// process holds is opened read-only (and a note printed) instead of refused. Returns 0, or
/// the exit code after printing why to `err`.
int open_owned(asio::any_io_executor ex, const std::string& where, const char* command,
               bool read_only_if_held, owned_store& out, std::ostream& err);

/// A time as ISO 8601 UTC, or "-".
inline std::string when(const std::optional<time_point>& t) {
  return t ? format_time(*t) : "-";
}

/// Prints an admin error for a task (`id` may be empty) as the tool always has; returns 1.
int report(std::ostream& err, const std::string& id, const error_code& ec,
           const std::string& detail = {});

}  // namespace taskq::tool
