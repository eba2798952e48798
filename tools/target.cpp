// Opening a command's store: file directory (read-only, locked, or through the owner's
// control channel) or PostgreSQL database.
#include "target.hpp"

#include <taskq/backends/file/control.hpp>
#include <taskq/backends/file/store.hpp>
#if TASKQ_TOOL_POSTGRES
#include <taskq/backends/postgres/backend.hpp>
#endif

#include <boost/asio/use_future.hpp>

#include <cctype>
#include <filesystem>
#include <iostream>

namespace taskq::tool {

namespace fs = std::filesystem;

bool is_conninfo(const std::string& s) {
  if (s.starts_with("postgresql://") || s.starts_with("postgres://")) return true;
  // key=value conninfo: the first word is a keyword followed by '='. A directory of that name
  // is still a directory.
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  std::size_t k = i;
  while (k < s.size() && (std::isalnum(static_cast<unsigned char>(s[k])) || s[k] == '_')) ++k;
  if (k == i) return false;
  while (k < s.size() && std::isspace(static_cast<unsigned char>(s[k]))) ++k;
  if (k >= s.size() || s[k] != '=') return false;
  std::error_code fe;
  return !fs::is_directory(s, fe);
}

void add_store_argument(CLI::App& sub, store_argument& a) {
  sub.add_option("STORE", a.store,
                 "file-store directory, or PostgreSQL connection string (postgresql://... or "
                 "'host=... dbname=...')")
      ->required();
  sub.add_option("--schema", a.schema, "PostgreSQL schema holding taskq's tables")
      ->capture_default_str();
}

target::target(runner& r) : r_(r) {}

target::~target() {
  control_.reset();
  if (file_) file_->close();
#if TASKQ_TOOL_POSTGRES
  if (pg_) pg_->close();
#endif
}

int target::open_postgres(const store_argument& a, std::ostream& err) {
#if TASKQ_TOOL_POSTGRES
  error_code ec;
  std::string detail;
  pg_ = postgres::backend::open(
      r_.io.get_executor(), {.conninfo = a.store, .schema = a.schema, .pool_size = 1}, ec, &detail);
  if (ec) {
    err << "taskq: PostgreSQL: " << (detail.empty() ? ec.message() : detail) << "\n";
    return 1;
  }
  return 0;
#else
  (void)a;
  err << "taskq: this taskq was built without the PostgreSQL backend\n";
  return 1;
#endif
}

int target::open_read(const store_argument& a, std::ostream& err) {
  if (is_conninfo(a.store)) return open_postgres(a, err);
  std::error_code fe;
  if (!fs::is_directory(a.store, fe)) {
    err << "taskq: " << a.store << ": no such store directory\n";
    return 1;
  }
  error_code ec;
  std::string detail;
  file_ = file::backend::open_read_only(r_.io.get_executor(), a.store, ec, &detail);
  if (ec) {
    err << "taskq: " << (detail.empty() ? a.store : detail) << ": " << ec.message() << "\n";
    return 1;
  }
  return 0;
}

int target::open_write(const store_argument& a, bool create, std::ostream& err) {
  if (is_conninfo(a.store)) return open_postgres(a, err);
  std::error_code fe;
  if (!create && !fs::is_directory(a.store, fe)) {
    err << "taskq: " << a.store << ": no such store directory\n";
    return 1;
  }
  error_code ec;
  std::string detail;
  // A live owner serves the control channel: the write is executed there.
  if (fs::is_directory(a.store, fe)) {
    auto cc = std::make_unique<file::control_client>();
    if (cc->connect(a.store, ec, detail)) {
      control_ = std::move(cc);
      return 0;
    }
    if (ec) {
      err << "taskq: " << detail << ": " << ec.message() << "\n";
      return 1;
    }
  }
  // No owner: take the lock (an owner without a control channel makes this store_locked).
  file_ = file::backend::open(
      r_.io.get_executor(), a.store,
      {.retention = duration::zero(), .compact_min_bytes = 0, .control = {.enabled = false}}, ec,
      &detail);
  if (ec == errc::store_locked) {
    err << "taskq: " << detail
        << "\ntaskq: this command writes and needs the store's lock, and its owner serves no "
           "control channel; stop the application that holds it, or enable its control channel "
           "(read commands list, show, stats and verify work meanwhile)\n";
    return 1;
  }
  if (ec) {
    err << "taskq: " << (detail.empty() ? a.store : detail) << ": " << ec.message() << "\n";
    return 1;
  }
  return 0;
}

owned_store::~owned_store() {
  if (file) file->close();
#if TASKQ_TOOL_POSTGRES
  if (pg) pg->close();
#endif
}

int open_owned(asio::any_io_executor ex, const std::string& where, const char* command,
               bool read_only_if_held, owned_store& out, std::ostream& err) {
  error_code ec;
  std::string detail;
  if (is_conninfo(where)) {
#if TASKQ_TOOL_POSTGRES
    out.pg = postgres::backend::open(ex, {.conninfo = where}, ec, &detail);
    if (ec) {
      err << "taskq " << command << ": PostgreSQL: " << (detail.empty() ? ec.message() : detail)
          << "\n";
      return 1;
    }
    out.queue = &out.pg->queue();
    out.store = &out.pg->store();
    return 0;
#else
    err << "taskq " << command << ": '" << where
        << "' looks like a PostgreSQL connection string, but this taskq was built without "
           "PostgreSQL support\n";
    return 1;
#endif
  }
  std::error_code fe;
  if (!fs::is_directory(where, fe)) {
    err << "taskq " << command << ": " << where << ": no such store directory\n";
    return 1;
  }
  out.file = file::backend::open(ex, where, {}, ec, &detail);
  if (ec == errc::store_locked && read_only_if_held) {
    // Held by a running application: work on what it has written, read-only.
    out.file = file::backend::open_read_only(ex, where, ec, &detail);
    if (!ec) {
      out.read_only = true;
      err << "taskq " << command << ": " << where
          << " is held by another process; serving it read-only (as of now)\n";
    }
  }
  if (ec) {
    err << "taskq " << command << ": " << (detail.empty() ? where : detail) << ": " << ec.message()
        << "\n";
    return 1;
  }
  out.queue = &out.file->queue();
  out.store = &out.file->store();
  return 0;
}

json target::admin(const json& request, error_code& ec, std::string& detail) {
  if (control_) {
    auto response = control_->call(request, ec, detail);
    if (ec) return {};
    return admin_result(response, ec, detail);
  }
  admin_target t{.ex = r_.io.get_executor(), .queue = &queue(), .store = &store()};
  t.schedules = &schedules();
  auto response = async_admin(std::move(t), request, asio::use_future).get();
  return admin_result(response, ec, detail);
}

taskq::queue& target::queue() {
#if TASKQ_TOOL_POSTGRES
  if (pg_) return pg_->queue();
#endif
  return file_->queue();
}
taskq::store& target::store() {
#if TASKQ_TOOL_POSTGRES
  if (pg_) return pg_->store();
#endif
  return file_->store();
}
taskq::schedule_store& target::schedules() {
#if TASKQ_TOOL_POSTGRES
  if (pg_) return pg_->schedules();
#endif
  return file_->schedules();
}

int report(std::ostream& err, const std::string& id, const error_code& ec,
           const std::string& detail) {
  if (ec == errc::not_found)
    err << "taskq: no task with id " << id << "\n";
  else if (ec == errc::illegal_transition)
    err << "taskq: task " << id << ": " << ec.message() << "\n";
  else if (!detail.empty() && detail != id)
    err << "taskq: " << detail << ": " << ec.message() << "\n";
  else
    err << "taskq: " << ec.message() << "\n";
  return 1;
}

}  // namespace taskq::tool
