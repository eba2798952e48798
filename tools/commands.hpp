// Sub-commands of the taskq command-line tool. Each takes its arguments (without the
// sub-command's own name), writes results to `out` and errors to `err`, and returns the
// process exit code (0 success, 1 operational error, 2 usage error).
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace taskq::tool {

using args = std::vector<std::string>;

/// taskq cron next EXPR [--tz ZONE] [--from ISO-8601-TIME] [--count N]
int cron_command(const args& a, std::ostream& out, std::ostream& err);

/// File-store administration: enqueue, list, show, cancel, retry, prune, stats, verify
/// (tools/store_commands.cpp). Exit codes as above.
bool is_store_command(std::string_view name);
int store_command(std::string_view name, const args& a, std::ostream& out, std::ostream& err);

/// taskq serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]
/// (tools/serve_command.cpp): the dashboard, JSON API and /metrics over a store.
int serve_command(const args& a, std::ostream& out, std::ostream& err);
/// taskq worker STORE --type T ... --exec CMD [ARGS...]: runs tasks as child processes
/// (tools/worker_command.cpp). Exit codes as above.
int worker_command(const args& a, std::ostream& out, std::ostream& err);

}  // namespace taskq::tool
