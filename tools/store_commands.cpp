// taskq enqueue/list/show/cancel/retry/delete/prune/stats/verify: the tasks of a store (a
// file-store directory or a PostgreSQL database).
#include "target.hpp"

#include <taskq/backends/file/store.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/duration.hpp>

#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <optional>

namespace taskq::tool {

namespace {

/// CLI11 validators for taskq's own value syntaxes (the message names the value).
const CLI::Validator duration_value(
    [](std::string& v) -> std::string {
      try {
        parse_duration(v);
        return {};
      } catch (const error& e) {
        // The library's own words (its detail), without the generic text of the code after it.
        std::string text = e.what();
        if (auto cut = text.find("): "); cut != std::string::npos) text.resize(cut + 1);
        return text;
      }
    },
    "DURATION", "duration");

/// Parses a payload given on the command line or stdin: depth-checked on the text before
/// anything builds or copies it; bad text is quoted only in part (a --stdin line may be
/// megabytes). Empty `problem` on success.
json parse_payload(const std::string& text, std::string& problem) {
  const std::size_t max_depth = validation_limits{}.max_json_depth;
  detail::json_text_error bad;
  auto j = detail::parse_json_text(text, max_depth, bad);
  if (bad == detail::json_text_error::too_deep)
    problem = fmt::format("payload is nested deeper than {} levels", max_depth);
  else if (bad != detail::json_text_error::none)
    problem = "payload is not valid JSON: " +
              (text.size() <= 200
                   ? text
                   : text.substr(0, 200) + "... (" + std::to_string(text.size()) + " bytes)");
  return j;
}

const CLI::Validator json_value(
    [](std::string& v) -> std::string {
      std::string problem;
      parse_payload(v, problem);
      return problem;
    },
    "JSON", "json");

const CLI::Validator status_value(
    [](std::string& v) -> std::string {
      error_code ec;
      parse_status(v, ec);
      return ec ? "unknown status '" + v + "'" : std::string();
    },
    "STATUS", "status");

duration to_duration(const std::string& v) {
  error_code ec;
  return parse_duration(v, ec);  // validated by duration_value
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

// --- enqueue ------------------------------------------------------------------------------

struct enqueue_opts {
  store_argument target;
  std::string type, queue, payload, delay;
  std::optional<int> priority;
  bool stdin_lines = false, json = false, create = false;
};

int enqueue(const enqueue_opts& o, context& ctx) {
  if (o.type.empty()) throw usage_error("enqueue needs --type T");
  if (o.stdin_lines && !o.payload.empty()) throw usage_error("use --payload or --stdin, not both");
  json task{{"type", o.type}};
  if (!o.queue.empty()) task["queue"] = o.queue;
  if (o.priority) task["priority"] = *o.priority;
  if (!o.delay.empty())
    task["delay_us"] =
        std::chrono::duration_cast<std::chrono::microseconds>(to_duration(o.delay)).count();
  if (!o.payload.empty()) {
    std::string problem;  // checked by json_value already
    task["payload"] = parse_payload(o.payload, problem);
    if (!problem.empty()) throw usage_error(problem);
  }
  runner r;
  target t(r);
  if (int rc = t.open_write(o.target, o.create, ctx.err)) return rc;
  auto one = [&](json spec) {
    error_code ec;
    std::string detail;
    auto res = t.admin({{"op", "enqueue"}, {"task", std::move(spec)}}, ec, detail);
    if (ec) return report(ctx.err, "", ec, detail);
    auto id = res.value("id", "");
    if (o.json)
      ctx.out << json{{"id", id}}.dump() << std::endl;  // each id once it is durable
    else
      ctx.out << id << std::endl;
    return 0;
  };
  if (!o.stdin_lines) return one(task);
  std::string line;
  for (std::size_t number = 1; std::getline(std::cin, line); ++number) {
    if (line.empty()) continue;
    auto spec = task;
    std::string problem;
    spec["payload"] = parse_payload(line, problem);
    if (!problem.empty()) {
      ctx.err << "taskq: stdin line " << number << ": " << problem << "\n";
      return 1;
    }
    if (int rc = one(std::move(spec))) return rc;
  }
  return 0;
}

// --- list, show ---------------------------------------------------------------------------

struct list_opts {
  store_argument target;
  std::string status, type, queue;
  std::size_t limit = 100;
  bool json = false;
};

int list(const list_opts& o, context& ctx) {
  task_filter f;
  f.limit = o.limit;
  if (!o.status.empty()) {
    error_code ec;
    f.statuses.push_back(*parse_status(o.status, ec));
  }
  if (!o.type.empty()) f.types.push_back(o.type);
  if (!o.queue.empty()) f.queues.push_back(o.queue);
  runner r;
  target t(r);
  if (int rc = t.open_read(o.target, ctx.err)) return rc;
  auto [ec, page] = wait_for<task_page>(r, [&](auto h) { t.store().async_list(f, std::move(h)); });
  if (ec) return report(ctx.err, "", ec);
  auto& out = ctx.out;
  if (o.json) {
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

struct id_opts {
  store_argument target;
  std::string id;
  bool json = false;
};

int show(const id_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_read(o.target, ctx.err)) return rc;
  auto [ec, rec] =
      wait_for<task_record>(r, [&](auto h) { t.store().async_get(o.id, std::move(h)); });
  if (ec) return report(ctx.err, o.id, ec);
  if (o.json)
    ctx.out << to_json(rec).dump() << "\n";
  else
    print_record(ctx.out, rec);
  return 0;
}

// --- cancel, retry, delete, prune ---------------------------------------------------------

/// cancel / retry / delete ID through the store's writer.
int change(const std::string& op, const id_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_write(o.target, false, ctx.err)) return rc;
  error_code ec;
  std::string detail;
  auto res = t.admin({{"op", op}, {"id", o.id}}, ec, detail);
  if (ec) return report(ctx.err, o.id, ec, detail);
  if (op == "delete") {
    ctx.out << (o.json ? res.dump() : o.id + " deleted") << "\n";
    return 0;
  }
  auto rec = record_from_json(res.at("record"));
  if (o.json)
    ctx.out << to_json(rec).dump() << "\n";
  else
    ctx.out << rec.id << " " << to_string(rec.status)
            << (rec.cancel_requested && rec.status == task_status::running ? " (cancel requested)"
                                                                           : "")
            << "\n";
  return 0;
}

struct prune_opts {
  store_argument target;
  std::string older_than;
  bool json = false;
};

int prune(const prune_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_write(o.target, false, ctx.err)) return rc;
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(to_duration(o.older_than));
  error_code ec;
  std::string detail;
  auto res = t.admin({{"op", "prune"}, {"older_than_us", us.count()}}, ec, detail);
  if (ec) return report(ctx.err, "", ec, detail);
  auto n = res.value("pruned", std::size_t{0});
  if (o.json)
    ctx.out << json{{"pruned", n}}.dump() << "\n";
  else
    ctx.out << "pruned " << n << " finished task" << (n == 1 ? "" : "s") << "\n";
  return 0;
}

// --- stats, verify ------------------------------------------------------------------------

struct store_opts {
  store_argument target;
  bool json = false;
};

int stats(const store_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_read(o.target, ctx.err)) return rc;
  auto [ec, c] = wait_for<task_counts>(r, [&](auto h) { t.store().async_counts(std::move(h)); });
  if (ec) return report(ctx.err, "", ec);
  auto& out = ctx.out;
  auto row = [](const task_counts::by_status& s) {
    json j;
    for (std::size_t i = 0; i < task_status_count; ++i)
      j[std::string(to_string(static_cast<task_status>(i)))] = s[i];
    return j;
  };
  if (o.json) {
    json j{{"total", row(c.total)}, {"by_queue", json::object()}, {"by_type", json::object()}};
    for (auto& [q, s] : c.by_queue) j["by_queue"][q] = row(s);
    for (auto& [ty, s] : c.by_type) j["by_type"][ty] = row(s);
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
  for (auto& [ty, s] : c.by_type) line("type " + ty, s);
  return 0;
}

int verify(const store_opts& o, context& ctx) {
  if (is_conninfo(o.target.store))
    throw usage_error("verify checks the files of a file store; PostgreSQL checks its own");
  error_code ec;
  std::string detail, warning;
  auto n = file::verify_store(o.target.store, ec, detail, warning);
  if (o.json) {
    json j{{"ok", !ec}, {"records", n}};
    if (ec) j["error"] = detail.empty() ? ec.message() : detail;
    if (!warning.empty()) j["warning"] = warning;
    ctx.out << j.dump() << "\n";
    return ec ? 1 : 0;
  }
  if (ec) {
    ctx.err << "taskq: " << (detail.empty() ? o.target.store : detail) << ": " << ec.message()
            << "\n";
    return 1;
  }
  if (!warning.empty())
    ctx.out << "warning: " << warning << " (an append in progress, or a crash)\n";
  ctx.out << "ok: " << n << " records checked\n";
  return 0;
}

}  // namespace

void add_task_commands(CLI::App& app, context& ctx) {
  const std::string group = "Tasks (STORE: a file-store directory or a PostgreSQL conninfo)";
  {
    auto o = std::make_shared<enqueue_opts>();
    auto* sub = app.add_subcommand("enqueue", "enqueue a task; prints each id once it is durable");
    sub->group(group);
    add_store_argument(*sub, o->target);
    sub->add_option("--type", o->type, "task type (required)");
    sub->add_option("--queue", o->queue, "queue name (default: default)");
    sub->add_option("--payload", o->payload, "payload JSON")->check(json_value);
    sub->add_option("--priority", o->priority, "higher runs first");
    sub->add_option("--delay", o->delay, "run no earlier than now + D (e.g. 90s, 1h30m)")
        ->check(duration_value);
    sub->add_flag("--stdin", o->stdin_lines, "one task per stdin line, the line its payload");
    sub->add_flag("--create", o->create, "create the file store if missing");
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, enqueue);
  }
  {
    auto o = std::make_shared<list_opts>();
    auto* sub = app.add_subcommand("list", "list tasks, oldest first");
    sub->group(group);
    add_store_argument(*sub, o->target);
    sub->add_option("--status", o->status,
                    "pending, running, succeeded, failed, cancelled, dropped")
        ->check(status_value);
    sub->add_option("--type", o->type, "only this type");
    sub->add_option("--queue", o->queue, "only this queue");
    sub->add_option("--limit", o->limit, "at most N rows")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, list);
  }
  {
    auto o = std::make_shared<id_opts>();
    auto* sub = app.add_subcommand("show", "one task: record, progress and run log");
    sub->group(group);
    add_store_argument(*sub, o->target);
    sub->add_option("ID", o->id, "task id")->required();
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, show);
  }
  for (auto [name, help] : {std::pair{"cancel", "cancel a task (a running one is asked to stop)"},
                            std::pair{"retry", "run a finished task again"},
                            std::pair{"delete", "delete a task that is not running"}}) {
    auto o = std::make_shared<id_opts>();
    auto* sub = app.add_subcommand(name, help);
    sub->group(group);
    add_store_argument(*sub, o->target);
    sub->add_option("ID", o->id, "task id")->required();
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, [op = std::string(name)](const id_opts& o, context& ctx) {
      return change(op, o, ctx);
    });
  }
  {
    auto o = std::make_shared<prune_opts>();
    auto* sub = app.add_subcommand("prune", "delete finished tasks older than D");
    sub->group(group);
    add_store_argument(*sub, o->target);
    sub->add_option("--older-than", o->older_than, "age, e.g. 7d, 24h")
        ->required()
        ->check(duration_value);
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, prune);
  }
  {
    auto o = std::make_shared<store_opts>();
    auto* sub = app.add_subcommand("stats", "counts by status, queue and type");
    sub->group(group);
    add_store_argument(*sub, o->target);
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, stats);
  }
  {
    auto o = std::make_shared<store_opts>();
    auto* sub = app.add_subcommand(
        "verify", "check every record of a file store (reports file and offset of corruption)");
    sub->group(group);
    sub->add_option("DIR", o->target.store, "file-store directory")->required();
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx, verify);
  }
}

}  // namespace taskq::tool
