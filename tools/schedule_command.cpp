// taskq schedules STORE: the stored schedules (timing, last fired, next due);
// taskq schedules pause|resume|remove|run STORE NAME: change one (through the owner's control
// channel for a live file store).
#include "target.hpp"

#include <taskq/detail/schedule_state.hpp>
#include <taskq/duration.hpp>

#include <fmt/format.h>

#include <ostream>

namespace taskq::tool {

namespace {

struct list_opts {
  store_argument target;
  bool json = false;
};

int list(const list_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_read(o.target, ctx.err)) return rc;
  auto [ec, all] = wait_for<std::vector<schedule_record>>(
      r, [&](auto h) { t.schedules().async_load_all(std::move(h)); });
  if (ec) return report(ctx.err, "", ec);
  // The next occurrence after the stored cursor: what a scheduler adopting the store fires
  // first (when it is in the past, the catch-up policy decides).
  auto next_due = [](const schedule_record& rec) -> std::optional<time_point> {
    std::string detail;
    if (rec.definition.paused || validate(rec.definition, detail)) return std::nullopt;
    taskq::detail::schedule_timing timing(rec.definition);
    if (timing.is_one_shot()) return rec.state.cursor ? std::nullopt : rec.definition.at;
    return timing.next_after(rec.state.cursor);
  };
  auto& out = ctx.out;
  if (o.json) {
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

struct change_opts {
  store_argument target;
  std::string name;
  bool cancel_runs = false;
  bool json = false;
};

int change(const std::string& verb, const change_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_write(o.target, false, ctx.err)) return rc;
  error_code ec;
  std::string detail;
  json req{{"op", "schedule_" + verb}, {"name", o.name}};
  if (verb == "remove") req["cancel_runs"] = o.cancel_runs;
  auto res = t.admin(req, ec, detail);
  if (ec == errc::schedule_not_found) {
    ctx.err << "taskq: no schedule named " << o.name << "\n";
    return 1;
  }
  if (ec) return report(ctx.err, "", ec, detail);
  if (o.json) {
    res["schedule"] = o.name;
    ctx.out << res.dump() << "\n";
  } else if (verb == "run") {
    ctx.out << res.value("id", "") << "\n";
  } else if (verb == "remove") {
    ctx.out << "schedule " << o.name << " removed";
    if (o.cancel_runs) ctx.out << " (" << res.value("cancelled", 0) << " runs cancelled)";
    ctx.out << "\n";
  } else {
    ctx.out << "schedule " << o.name << (verb == "pause" ? " paused" : " resumed") << "\n";
  }
  return 0;
}

}  // namespace

void add_schedule_command(CLI::App& app, context& ctx) {
  auto o = std::make_shared<list_opts>();
  auto* sched = app.add_subcommand("schedules",
                                   "stored schedules: timing, last fired, next due; or change one");
  sched->group("Queues and schedules");
  // STORE belongs to the listing; the change subcommands take their own.
  sched->add_option("STORE", o->target.store,
                    "file-store directory, or PostgreSQL connection string");
  sched->add_option("--schema", o->target.schema, "PostgreSQL schema holding taskq's tables")
      ->capture_default_str();
  add_json_flag(sched, o->json);
  sched->callback([sched, o, &ctx] {
    if (!sched->get_subcommands().empty()) return;  // a change subcommand ran
    if (o->target.store.empty()) throw usage_error("schedules needs STORE");
    ctx.rc = list(*o, ctx);
  });
  struct verb_help {
    const char* verb;
    const char* help;
  };
  for (auto [verb, help] : {
           verb_help{"pause", "schedule NAME fires nothing until resumed"},
           verb_help{"resume", "resume schedule NAME from now (missed occurrences are not run)"},
           verb_help{"remove", "delete schedule NAME"},
           verb_help{"run", "enqueue one run of schedule NAME now; prints its id"},
       }) {
    auto co = std::make_shared<change_opts>();
    auto* sub = sched->add_subcommand(verb, help);
    add_store_argument(*sub, co->target);
    sub->add_option("NAME", co->name, "schedule name")->required();
    if (std::string(verb) == "remove")
      sub->add_flag("--cancel-runs", co->cancel_runs, "also cancel its pending and running runs");
    add_json_flag(sub, co->json);
    run_with(sub, co, ctx, [v = std::string(verb)](const change_opts& o, context& ctx) {
      return change(v, o, ctx);
    });
  }
}

}  // namespace taskq::tool
