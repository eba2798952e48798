// The taskq command-line tool: checks cron expressions and administers file stores.
#include "commands.hpp"

#include <iostream>
#include <string_view>

namespace {

constexpr std::string_view usage =
    "usage: taskq <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  cron next EXPR [--tz ZONE] [--from ISO-8601-TIME] [--count N]\n"
    "                 print the next N fire times of a cron expression\n"
    "\n"
    "file store (DIR) commands; add --json for machine-readable output:\n"
    "  enqueue DIR --type T [--queue Q] [--payload JSON] [--priority N] [--delay D] [--stdin]\n"
    "          [--create]     enqueue; prints each id once it is durable\n"
    "  list DIR [--status S] [--type T] [--queue Q] [--limit N]\n"
    "  show DIR ID            record, progress and run log\n"
    "  cancel DIR ID          retry DIR ID\n"
    "  prune DIR --older-than D\n"
    "  stats DIR              counts by status, queue and type\n"
    "  verify DIR             check every record (reports file and offset of corruption)\n"
    "  schedules DIR          stored schedules: timing, last fired, next due\n"
    "  serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]\n"
    "         dashboard, JSON API and /metrics (STORE: DIR or a PostgreSQL conninfo)\n"
    "list, show, stats, verify and schedules work while an application holds the store; the others "
    "need\n"
    "its lock.\n"
    "\n"
    "worker STORE --type T [--queue Q]... [--concurrency N] [--timeout D] [--memory BYTES]\n"
    "       [--json] --exec CMD [ARGS...]\n"
    "                 run tasks as child processes, on a file store or PostgreSQL\n"
    "                 (taskq worker --help)\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  std::string_view command = argv[1];
  taskq::tool::args rest(argv + 2, argv + argc);
  if (command == "cron") return taskq::tool::cron_command(rest, std::cout, std::cerr);
  if (command == "serve") return taskq::tool::serve_command(rest, std::cout, std::cerr);
  if (command == "worker") return taskq::tool::worker_command(rest, std::cout, std::cerr);
  if (taskq::tool::is_store_command(command))
    return taskq::tool::store_command(command, rest, std::cout, std::cerr);
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << usage;
    return 0;
  }
  std::cerr << "taskq: unknown command '" << command << "'\n" << usage;
  return 2;
}
