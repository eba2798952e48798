// taskq queue pause|resume STORE NAME: stop or restart handing a named queue's tasks to
// workers (every worker on the store; through the owner's control channel for a live file
// store).
#include "target.hpp"

#include <ostream>

namespace taskq::tool {

namespace {

struct queue_opts {
  store_argument target;
  std::string name;
  bool json = false;
};

int set_paused(bool paused, const queue_opts& o, context& ctx) {
  runner r;
  target t(r);
  if (int rc = t.open_write(o.target, false, ctx.err)) return rc;
  error_code ec;
  std::string detail;
  t.admin({{"op", paused ? "queue_pause" : "queue_resume"}, {"queue", o.name}}, ec, detail);
  if (ec) return report(ctx.err, "", ec, detail);
  if (o.json)
    ctx.out << json{{"queue", o.name}, {"paused", paused}}.dump() << "\n";
  else
    ctx.out << "queue " << o.name << (paused ? " paused" : " resumed") << "\n";
  return 0;
}

}  // namespace

void add_queue_command(CLI::App& app, context& ctx) {
  auto* queue = app.add_subcommand("queue", "pause or resume a named queue");
  queue->group("Queues and schedules");
  queue->require_subcommand(1);
  for (bool paused : {true, false}) {
    auto o = std::make_shared<queue_opts>();
    auto* sub = queue->add_subcommand(
        paused ? "pause" : "resume",
        paused ? "workers take no task of queue NAME until it is resumed" : "resume queue NAME");
    add_store_argument(*sub, o->target);
    sub->add_option("NAME", o->name, "queue name")->required();
    add_json_flag(sub, o->json);
    run_with(sub, o, ctx,
             [paused](const queue_opts& o, context& ctx) { return set_paused(paused, o, ctx); });
  }
}

}  // namespace taskq::tool
