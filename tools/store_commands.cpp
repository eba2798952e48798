// taskq enqueue/list/show/cancel/retry/prune/stats/verify: administration of a file store.
#include "commands.hpp"

#include <taskq/backends/file/store.hpp>
#include <taskq/client.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/schedule_state.hpp>
#include <taskq/duration.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <iostream>
#include <map>
#include <optional>
#include <thread>

namespace taskq::tool {

namespace {

namespace fs = std::filesystem;

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Positional arguments and --options (flags take no value).
struct parsed {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  bool has(const std::string& k) const { return options.count(k) != 0; }
  std::optional<std::string> get(const std::string& k) const {
    auto it = options.find(k);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
};

parsed parse(const args& a, const std::vector<std::string>& valued,
             const std::vector<std::string>& flags) {
  parsed p;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& s = a[i];
    if (s.rfind("--", 0) != 0) {
      p.positional.push_back(s);
      continue;
    }
    auto name = s.substr(2);
    if (std::find(flags.begin(), flags.end(), name) != flags.end()) {
      p.options[name] = "";
    } else if (std::find(valued.begin(), valued.end(), name) != valued.end()) {
      if (i + 1 >= a.size()) throw usage_error("option --" + name + " needs a value");
      p.options[name] = a[++i];
    } else {
      throw usage_error("unknown option " + s);
    }
  }
  return p;
}

int to_int(const std::string& what, const std::string& v) {
  try {
    std::size_t n = 0;
    int x = std::stoi(v, &n);
    if (n != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw usage_error("--" + what + " must be an integer, got '" + v + "'");
  }
}

duration to_duration(const std::string& what, const std::string& v) {
  try {
    return parse_duration(v);
  } catch (const error& e) {
    // The library's own words (its detail), without the generic text of the code after it.
    std::string text = e.what();
    if (auto cut = text.find("): "); cut != std::string::npos) text.resize(cut + 1);
    throw usage_error("--" + what + ": " + text);
  }
}

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

/// A store opened for the command: read-only (no lock) or for writing (the lock).
struct opened {
  std::unique_ptr<file::backend> b;
  std::unique_ptr<client> c;
};

int open_store(runner& r, const std::string& dir, bool write, bool create, opened& o,
               std::ostream& err) {
  std::error_code fe;
  if (!create && !fs::is_directory(dir, fe)) {
    err << "taskq: " << dir << ": no such store directory\n";
    return 1;
  }
  error_code ec;
  std::string detail;
  if (write) {
    o.b = file::backend::open(r.io.get_executor(), dir,
                              {.retention = duration::zero(), .compact_min_bytes = 0}, ec, &detail);
    if (ec == errc::store_locked) {
      err << "taskq: " << detail
          << "\ntaskq: this command writes and needs the store's lock; stop the application that "
             "holds it (read commands list, show, stats and verify work meanwhile)\n";
      return 1;
    }
  } else {
    o.b = file::backend::open_read_only(r.io.get_executor(), dir, ec, &detail);
  }
  if (ec) {
    err << "taskq: " << (detail.empty() ? dir : detail) << ": " << ec.message() << "\n";
    return 1;
  }
  o.c = std::make_unique<client>(r.io.get_executor(), o.b->queue(), o.b->store());
  return 0;
}

std::string when(const std::optional<time_point>& t) {
  return t ? format_time(*t) : "-";
}

void print_record(std::ostream& out, const task_record& r) {
  out << "id:            " << r.id << "\n"
      << "type:          " << r.type << "\n"
      << "queue:         " << r.queue << "\n"
      << "status:        " << to_string(r.status)
      << (r.cancel_requested ? " (cancel requested)" : "") << "\n"
      << "attempt:       " << r.attempt << " of " << r.max_attempts << "\n"
      << "priority:      " << r.priority << "\n"
      << "created:       " << format_time(r.created_at) << "\n"
      << "available at:  " << format_time(r.available_at) << "\n"
      << "started:       " << when(r.started_at) << "\n"
      << "finished:      " << when(r.finished_at) << "\n"
      << "payload:       " << r.payload.dump() << "\n";
  if (!r.progress.is_null()) out << "progress:      " << r.progress.dump() << "\n";
  if (!r.result.is_null()) out << "result:        " << r.result.dump() << "\n";
  if (!r.last_error.empty()) out << "last error:    " << r.last_error << "\n";
  if (!r.log.empty()) {
    out << "log:\n";
    for (const auto& e : r.log) out << "  " << format_time(e.at) << "  " << e.message << "\n";
  }
}

int report(std::ostream& err, const std::string& id, error_code ec) {
  if (ec == errc::not_found)
    err << "taskq: no task with id " << id << "\n";
  else if (ec == errc::illegal_transition)
    err << "taskq: task " << id << ": " << ec.message() << "\n";
  else
    err << "taskq: " << ec.message() << "\n";
  return 1;
}

int enqueue(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {"type", "queue", "payload", "priority", "delay"}, {"stdin", "json", "create"});
  if (p.positional.size() != 1) throw usage_error("enqueue takes one DIR");
  if (!p.has("type")) throw usage_error("enqueue needs --type T");
  task_spec base{.type = *p.get("type")};
  if (auto q = p.get("queue")) base.queue = *q;
  if (auto n = p.get("priority")) base.priority = to_int("priority", *n);
  if (auto d = p.get("delay")) base.delay = to_duration("delay", *d);
  // Depth is checked on the text, before anything builds or copies it; bad text is quoted
  // only in part (a --stdin line may be megabytes).
  const std::size_t max_depth = validation_limits{}.max_json_depth;
  auto payload = [&](const std::string& text) {
    taskq::detail::json_text_error bad;
    auto j = taskq::detail::parse_json_text(text, max_depth, bad);
    auto quoted = text.size() <= 200
                      ? text
                      : text.substr(0, 200) + "... (" + std::to_string(text.size()) + " bytes)";
    if (bad == taskq::detail::json_text_error::too_deep)
      throw usage_error(fmt::format("payload is nested deeper than {} levels", max_depth));
    if (bad != taskq::detail::json_text_error::none)
      throw usage_error("payload is not valid JSON: " + quoted);
    return j;
  };
  if (auto j = p.get("payload")) base.payload = payload(*j);
  if (p.has("stdin") && p.has("payload")) throw usage_error("use --payload or --stdin, not both");
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], true, p.has("create"), o, err)) return rc;
  auto one = [&](task_spec spec) {
    error_code ec;
    auto id = o.c->enqueue(std::move(spec), ec);  // returns once durable
    if (ec) return report(err, "", ec);
    if (p.has("json"))
      out << json{{"id", id}}.dump() << std::endl;
    else
      out << id << std::endl;
    return 0;
  };
  if (!p.has("stdin")) return one(base);
  std::string line;
  for (std::size_t number = 1; std::getline(std::cin, line); ++number) {
    if (line.empty()) continue;
    auto spec = base;
    try {
      spec.payload = payload(line);
    } catch (const usage_error& e) {
      err << "taskq: stdin line " << number << ": " << e.what() << "\n";
      return 1;
    }
    if (int rc = one(std::move(spec))) return rc;
  }
  return 0;
}

int list(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {"status", "type", "queue", "limit"}, {"json"});
  if (p.positional.size() != 1) throw usage_error("list takes one DIR");
  task_filter f;
  f.limit = 100;
  if (auto s = p.get("status")) {
    error_code ec;
    auto st = parse_status(*s, ec);
    if (ec) throw usage_error("--status: unknown status '" + *s + "'");
    f.statuses.push_back(*st);
  }
  if (auto t = p.get("type")) f.types.push_back(*t);
  if (auto q = p.get("queue")) f.queues.push_back(*q);
  if (auto n = p.get("limit")) {
    auto v = to_int("limit", *n);
    if (v <= 0) throw usage_error("--limit must be positive");
    f.limit = static_cast<std::size_t>(v);
  }
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], false, false, o, err)) return rc;
  error_code ec;
  auto page = o.c->list(f, ec);
  if (ec) return report(err, "", ec);
  if (p.has("json")) {
    json arr = json::array();
    for (auto& rec : page.records) arr.push_back(to_json(rec));
    out << arr.dump() << "\n";
    return 0;
  }
  out << fmt::format("{:<36}  {:<9}  {:<20}  {:<12}  {:>7}  {}\n", "ID", "STATUS", "TYPE", "QUEUE",
                     "ATTEMPT", "CREATED");
  for (auto& rec : page.records)
    out << fmt::format("{:<36}  {:<9}  {:<20}  {:<12}  {:>7}  {}\n", rec.id, to_string(rec.status),
                       rec.type, rec.queue, fmt::format("{}/{}", rec.attempt, rec.max_attempts),
                       format_time(rec.created_at));
  if (!page.next_cursor.empty()) out << "(more: raise --limit)\n";
  return 0;
}

int show(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {}, {"json"});
  if (p.positional.size() != 2) throw usage_error("show takes DIR and ID");
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], false, false, o, err)) return rc;
  error_code ec;
  auto rec = o.c->get(p.positional[1], ec);
  if (ec) return report(err, p.positional[1], ec);
  if (p.has("json"))
    out << to_json(rec).dump() << "\n";
  else
    print_record(out, rec);
  return 0;
}

int change(const std::string& what, const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {}, {"json"});
  if (p.positional.size() != 2) throw usage_error(what + " takes DIR and ID");
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], true, false, o, err)) return rc;
  error_code ec;
  auto rec = what == "cancel" ? o.c->cancel(p.positional[1], ec) : o.c->retry(p.positional[1], ec);
  if (ec) return report(err, p.positional[1], ec);
  if (p.has("json"))
    out << to_json(rec).dump() << "\n";
  else
    out << rec.id << " " << to_string(rec.status)
        << (rec.cancel_requested && rec.status == task_status::running ? " (cancel requested)" : "")
        << "\n";
  return 0;
}

int prune(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {"older-than"}, {"json"});
  if (p.positional.size() != 1) throw usage_error("prune takes one DIR");
  if (!p.has("older-than")) throw usage_error("prune needs --older-than D");
  auto d = to_duration("older-than", *p.get("older-than"));
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], true, false, o, err)) return rc;
  error_code ec;
  auto n = o.c->prune(d, ec);
  if (ec) return report(err, "", ec);
  if (p.has("json"))
    out << json{{"pruned", n}}.dump() << "\n";
  else
    out << "pruned " << n << " finished task" << (n == 1 ? "" : "s") << "\n";
  return 0;
}

int stats(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {}, {"json"});
  if (p.positional.size() != 1) throw usage_error("stats takes one DIR");
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], false, false, o, err)) return rc;
  auto c = o.b->store().async_counts(asio::use_future).get();
  auto row = [](const task_counts::by_status& s) {
    json j;
    for (std::size_t i = 0; i < task_status_count; ++i)
      j[std::string(to_string(static_cast<task_status>(i)))] = s[i];
    return j;
  };
  if (p.has("json")) {
    json j{{"total", row(c.total)}, {"by_queue", json::object()}, {"by_type", json::object()}};
    for (auto& [q, s] : c.by_queue) j["by_queue"][q] = row(s);
    for (auto& [t, s] : c.by_type) j["by_type"][t] = row(s);
    out << j.dump() << "\n";
    return 0;
  }
  auto line = [&](const std::string& name, const task_counts::by_status& s) {
    out << fmt::format("{:<24}", name);
    for (auto n : s) out << fmt::format("  {:>9}", n);
    out << "\n";
  };
  out << fmt::format("{:<24}", "");
  for (std::size_t i = 0; i < task_status_count; ++i)
    out << fmt::format("  {:>9}", to_string(static_cast<task_status>(i)));
  out << "\n";
  line("total", c.total);
  for (auto& [q, s] : c.by_queue) line("queue " + q, s);
  for (auto& [t, s] : c.by_type) line("type " + t, s);
  return 0;
}

int schedules(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {}, {"json"});
  if (p.positional.size() != 1) throw usage_error("schedules takes one DIR");
  runner r;
  opened o;
  if (int rc = open_store(r, p.positional[0], false, false, o, err)) return rc;
  auto all = o.b->schedules().async_load_all(asio::use_future).get();
  // The next occurrence after the stored cursor: what a scheduler adopting the store fires
  // first (when it is in the past, the catch-up policy decides).
  auto next_due = [](const schedule_record& rec) -> std::optional<time_point> {
    std::string detail;
    if (rec.definition.paused || validate(rec.definition, detail)) return std::nullopt;
    taskq::detail::schedule_timing timing(rec.definition);
    if (timing.is_one_shot()) return rec.state.cursor ? std::nullopt : rec.definition.at;
    return timing.next_after(rec.state.cursor);
  };
  if (p.has("json")) {
    json arr = json::array();
    for (auto& rec : all) {
      auto j = to_json(rec);
      if (auto n = next_due(rec)) j["next_due"] = format_time(*n);
      arr.push_back(std::move(j));
    }
    out << arr.dump() << "\n";
    return 0;
  }
  auto timing_text = [](const schedule& d) {
    if (!d.cron.empty()) return d.cron + (d.time_zone == "UTC" ? "" : " (" + d.time_zone + ")");
    if (d.at) return "at " + format_time(*d.at);
    return "every " +
           format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(d.every));
  };
  out << fmt::format("{:<24}  {:<28}  {:<16}  {:<8}  {:<27}  {}\n", "NAME", "TIMING", "TYPE",
                     "STATE", "LAST FIRED", "NEXT DUE");
  for (auto& rec : all)
    out << fmt::format("{:<24}  {:<28}  {:<16}  {:<8}  {:<27}  {}\n", rec.definition.name,
                       timing_text(rec.definition), rec.definition.task.type,
                       rec.definition.paused ? "paused" : "active", when(rec.state.last_fired),
                       when(next_due(rec)));
  return 0;
}

int verify(const args& a, std::ostream& out, std::ostream& err) {
  auto p = parse(a, {}, {"json"});
  if (p.positional.size() != 1) throw usage_error("verify takes one DIR");
  error_code ec;
  std::string detail, warning;
  auto n = file::verify_store(p.positional[0], ec, detail, warning);
  if (p.has("json")) {
    json j{{"ok", !ec}, {"records", n}};
    if (ec) j["error"] = detail.empty() ? ec.message() : detail;
    if (!warning.empty()) j["warning"] = warning;
    out << j.dump() << "\n";
    return ec ? 1 : 0;
  }
  if (ec) {
    err << "taskq: " << (detail.empty() ? p.positional[0] : detail) << ": " << ec.message() << "\n";
    return 1;
  }
  if (!warning.empty()) out << "warning: " << warning << " (an append in progress, or a crash)\n";
  out << "ok: " << n << " records checked\n";
  return 0;
}

}  // namespace

bool is_store_command(std::string_view name) {
  return name == "enqueue" || name == "list" || name == "show" || name == "cancel" ||
         name == "retry" || name == "prune" || name == "stats" || name == "verify" ||
         name == "schedules";
}

int store_command(std::string_view name, const args& a, std::ostream& out, std::ostream& err) {
  try {
    if (name == "enqueue") return enqueue(a, out, err);
    if (name == "list") return list(a, out, err);
    if (name == "show") return show(a, out, err);
    if (name == "cancel" || name == "retry") return change(std::string(name), a, out, err);
    if (name == "prune") return prune(a, out, err);
    if (name == "stats") return stats(a, out, err);
    if (name == "verify") return verify(a, out, err);
    if (name == "schedules") return schedules(a, out, err);
  } catch (const usage_error& e) {
    err << "taskq " << name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    err << "taskq " << name << ": " << e.what() << "\n";
    return 1;
  }
  err << "taskq: unknown command '" << name << "'\n";
  return 2;
}

}  // namespace taskq::tool
