// The taskq command-line tool's commands, on CLI11 (subcommands, generated help, validators).
//
// A command plugs in with one registration function, listed once in tools/taskq.cpp:
//
//   void add_worker_command(CLI::App& app, context& ctx) {
//     auto* sub = app.add_subcommand("worker", "run a worker against STORE");
//     auto o = std::make_shared<worker_opts>();
//     add_store_argument(*sub, o->store);          // STORE: a directory or a conninfo
//     sub->add_option("--concurrency", o->n)->check(CLI::PositiveNumber);
//     sub->callback([o, &ctx] { ctx.rc = run_worker(*o, ctx.out, ctx.err); });
//   }
//
// A command written in the earlier style, `int f(const args&, std::ostream& out,
// std::ostream& err)` parsing its own arguments, plugs in unchanged with add_args_command().
//
// Exit codes: 0 success, 1 operational error, 2 usage error (CLI11's parse errors included).
#pragma once

#include <CLI/CLI.hpp>

#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace taskq::tool {

using args = std::vector<std::string>;

/// What every command writes to, and the exit code its callback sets.
struct context {
  std::ostream& out;
  std::ostream& err;
  int rc = 0;
};

/// A usage error found after parsing (a combination CLI11 cannot express): exit code 2,
/// printed as "taskq COMMAND: message".
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The registration functions, called in order by main (tools/taskq.cpp).
void add_cron_command(CLI::App& app, context& ctx);      // cron_command.cpp
void add_task_commands(CLI::App& app, context& ctx);     // store_commands.cpp
void add_queue_command(CLI::App& app, context& ctx);     // queue_command.cpp
void add_schedule_command(CLI::App& app, context& ctx);  // schedule_command.cpp

/// Commands that parse their own arguments (registered with add_args_command).
/// taskq serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]
/// (tools/serve_command.cpp): the dashboard, JSON API and /metrics over a store.
int serve_command(const args& a, std::ostream& out, std::ostream& err);
/// taskq worker STORE --type T ... --exec CMD [ARGS...]: runs tasks as child processes
/// (tools/worker_command.cpp).
int worker_command(const args& a, std::ostream& out, std::ostream& err);

/// Registers a command whose function parses its own arguments (every argument after the
/// command's name is passed through untouched).
CLI::App* add_args_command(CLI::App& app, context& ctx, const std::string& name,
                           const std::string& description,
                           int (*fn)(const args&, std::ostream&, std::ostream&));

/// Adds the STORE positional every store command takes: a file-store directory or a
/// PostgreSQL connection string (postgresql://..., postgres://..., or key=value conninfo),
/// and --schema for the latter.
struct store_argument {
  std::string store;
  std::string schema = "taskq";
};
void add_store_argument(CLI::App& sub, store_argument& a);

/// Makes `fn(*opts, ctx)` the command's action; its return value is the exit code.
template <class Opts, class Fn>
void run_with(CLI::App* sub, std::shared_ptr<Opts> opts, context& ctx, Fn fn) {
  sub->callback([opts = std::move(opts), &ctx, fn] { ctx.rc = fn(*opts, ctx); });
}

/// --json: machine-readable output.
inline void add_json_flag(CLI::App* sub, bool& flag) {
  sub->add_flag("--json", flag, "machine-readable output");
}

}  // namespace taskq::tool
