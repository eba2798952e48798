// The taskq command-line tool: checks cron expressions and administers stores (file
// directories and PostgreSQL databases). Commands register themselves on CLI11 (see
// commands.hpp for how a new one plugs in).
#include "commands.hpp"

#include <iostream>

namespace taskq::tool {

CLI::App* add_args_command(CLI::App& app, context& ctx, const std::string& name,
                           const std::string& description,
                           int (*fn)(const args&, std::ostream&, std::ostream&)) {
  auto* sub = app.add_subcommand(name, description);
  sub->prefix_command();  // every later argument, options included, is the command's
  sub->set_help_flag();   // and so is --help
  sub->callback([sub, fn, &ctx] { ctx.rc = fn(sub->remaining(), ctx.out, ctx.err); });
  return sub;
}

}  // namespace taskq::tool

namespace {

/// The command the user named (the deepest one parsed), for error messages.
std::string command_path(CLI::App& app) {
  std::string path = "taskq";
  for (CLI::App* at = &app;;) {
    auto subs = at->get_subcommands();
    if (subs.empty()) return path;
    at = subs.front();
    path += " " + at->get_name();
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace taskq::tool;
  context ctx{std::cout, std::cerr};
  CLI::App app{
      "taskq: check cron expressions and administer task stores.\n"
      "Reads (list, show, stats, verify, schedules) work while an application holds a "
      "file store;\nwrites go through its control channel, or take the store's lock "
      "when no application holds it.",
      "taskq"};
  app.require_subcommand(1);
  app.fallthrough(false);
  // Every command, in help order. A new command is one line here (see commands.hpp).
  add_task_commands(app, ctx);
  add_queue_command(app, ctx);
  add_schedule_command(app, ctx);
  add_cron_command(app, ctx);
  add_args_command(app, ctx, "serve",
                   "serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]: the "
                   "dashboard, JSON API and /metrics over a store",
                   serve_command);
  add_args_command(app, ctx, "worker",
                   "worker STORE --type T ... --exec CMD [ARGS...]: run tasks as child "
                   "processes (taskq worker --help)",
                   worker_command);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, ctx.out, ctx.err);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e, ctx.out, ctx.err);
  } catch (const CLI::ParseError& e) {
    ctx.err << command_path(app) << ": " << e.what() << "\n"
            << "run '" << command_path(app) << " --help' for usage\n";
    return 2;
  } catch (const usage_error& e) {
    ctx.err << command_path(app) << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    ctx.err << command_path(app) << ": " << e.what() << "\n";
    return 1;
  }
  return ctx.rc;
}
