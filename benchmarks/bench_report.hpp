// Shared by the benchmark programs: how a figure is printed. Human-readable by default; with
// --json one {"name":...,"value":...,"unit":...} object per line, so runs can be compared by
// a script.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace taskq_bench {

inline bool json_output = false;

inline void report(const std::string& name, double value, const char* unit) {
  if (json_output)
    std::printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  else
    std::printf("%-58s %14.4g %s\n", name.c_str(), value, unit);
  std::fflush(stdout);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace taskq_bench
