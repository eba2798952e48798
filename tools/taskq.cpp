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
    "                 print the next N fire times of a cron expression\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  std::string_view command = argv[1];
  taskq::tool::args rest(argv + 2, argv + argc);
  if (command == "cron") return taskq::tool::cron_command(rest, std::cout, std::cerr);
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << usage;
    return 0;
  }
  std::cerr << "taskq: unknown command '" << command << "'\n" << usage;
  return 2;
}
