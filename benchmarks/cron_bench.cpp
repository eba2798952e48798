// Cron benchmark: next-fire computations per second, against a naive minute-by-minute scan
// measured in the same run, plus parse throughput and the memory of 100,000 expressions.
//
//   taskq_cron_bench          human-readable lines
//   taskq_cron_bench --json   one {"name":...,"value":...,"unit":...} object per line
#include <taskq/cron.hpp>

#include <date/tz.h>
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using time_point = std::chrono::system_clock::time_point;
using namespace std::chrono_literals;

bool json = false;

void report(const std::string& name, double value, const char* unit) {
  if (json) {
    std::printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  } else {
    std::printf("%-62s %12.4g %s\n", name.c_str(), value, unit);
  }
  std::fflush(stdout);
}

// The fields of a local wall-clock minute, for the naive baseline's predicates.
struct civil_minute {
  unsigned month, day, weekday, hour, minute;  // weekday: 0 = Sunday
};

struct scenario {
  const char* expr;
  const char* zone;
  // The same schedule as a plain predicate, for the naive scan. None of these schedules
  // fires inside a DST gap or overlap, so the naive scan's answers must agree exactly.
  std::function<bool(const civil_minute&)> matches;
};

// The naive way: convert every minute after t to local time and test it.
std::optional<time_point> naive_next(const scenario& s, const date::time_zone* zone, time_point t) {
  auto m = std::chrono::floor<std::chrono::minutes>(t) + 1min;
  const auto limit = m + std::chrono::hours(24 * 366);
  for (; m < limit; m += 1min) {
    const auto local =
        zone != nullptr ? zone->to_local(m).time_since_epoch() : m.time_since_epoch();
    const auto day = std::chrono::floor<std::chrono::days>(local);
    const std::chrono::year_month_day ymd{std::chrono::sys_days(day)};
    const std::chrono::hh_mm_ss hms{local - day};
    const civil_minute c{static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                         std::chrono::weekday(std::chrono::sys_days(day)).c_encoding(),
                         static_cast<unsigned>(hms.hours().count()),
                         static_cast<unsigned>(hms.minutes().count())};
    if (s.matches(c)) return time_point(m);
  }
  return std::nullopt;
}

// Calls `next` repeatedly from 2024-01-01 for about `budget`; returns calls per second.
// Chains each result into the next call, restarting at the start when a year has passed,
// so the work is the real "what comes after this fire time" question.
template <class Next>
double measure(Next next, clock_type::duration budget, std::size_t& calls) {
  const time_point start = std::chrono::sys_days(std::chrono::year(2024) / 1 / 1);
  const time_point end = std::chrono::sys_days(std::chrono::year(2025) / 1 / 1);
  time_point t = start;
  calls = 0;
  const auto begin = clock_type::now();
  auto now = begin;
  while (now - begin < budget) {
    for (int i = 0; i < 64; ++i) {
      const auto n = next(t);
      ++calls;
      t = (!n || *n >= end) ? start : *n;
    }
    now = clock_type::now();
  }
  return static_cast<double>(calls) / std::chrono::duration<double>(now - begin).count();
}

const scenario scenarios[] = {
    {"*/5 * * * *", "UTC", [](const civil_minute& c) { return c.minute % 5 == 0; }},
    {"0 9 * * MON-FRI", "UTC",
     [](const civil_minute& c) {
       return c.minute == 0 && c.hour == 9 && c.weekday >= 1 && c.weekday <= 5;
     }},
    {"0 0 1 * *", "UTC",
     [](const civil_minute& c) { return c.minute == 0 && c.hour == 0 && c.day == 1; }},
    {"30 4 1,15 * *", "UTC",
     [](const civil_minute& c) {
       return c.minute == 30 && c.hour == 4 && (c.day == 1 || c.day == 15);
     }},
    {"0 9 * * MON-FRI", "Europe/Berlin",
     [](const civil_minute& c) {
       return c.minute == 0 && c.hour == 9 && c.weekday >= 1 && c.weekday <= 5;
     }},
    {"*/15 * * * *", "America/New_York", [](const civil_minute& c) { return c.minute % 15 == 0; }},
};

void bench_next_after() {
  for (const auto& s : scenarios) {
    const auto c = taskq::cron_expression::parse(s.expr, s.zone);
    const date::time_zone* zone =
        std::string_view(s.zone) == "UTC" ? nullptr : date::locate_zone(s.zone);
    // Check the two agree before timing them.
    int disagreements = 0;
    time_point t = std::chrono::sys_days(std::chrono::year(2024) / 1 / 1);
    for (int i = 0; i < 200; ++i) {
      const auto a = c.next_after(t);
      if (a != naive_next(s, zone, t)) ++disagreements;
      if (!a) break;
      t = *a;
    }
    const std::string label = std::string("'") + s.expr + "' " + s.zone;
    std::size_t calls = 0;
    const double fast = measure([&](time_point x) { return c.next_after(x); }, 400ms, calls);
    const double naive =
        measure([&](time_point x) { return naive_next(s, zone, x); }, 400ms, calls);
    report("next_after " + label, fast, "calls/s");
    report("naive minute scan " + label, naive, "calls/s");
    report("speedup over naive " + label, fast / naive, "x");
    if (disagreements != 0) report("DISAGREEMENTS " + label, disagreements, "count");
  }
}

// Bytes malloc has handed out, counting large blocks that it serves with mmap.
std::size_t heap_in_use() {
  const auto info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

void bench_parse_and_memory() {
  // A realistic mix: short texts fit std::string's small buffer, longer ones allocate.
  const char* const texts[] = {
      "*/5 * * * *", "0 9 * * MON-FRI",   "0 0 1 * *",       "30 4 1,15 * *", "@daily",
      "@every 90s",  "0 */2 * * SAT,SUN", "15 9-17 * * 1-5", "0 0 0 1 1 *",   "5,10,15,20 * * * *"};
  constexpr std::size_t count = 100'000;
  std::vector<taskq::cron_expression> all;
  all.reserve(count);
  const auto before = heap_in_use();
  const auto begin = clock_type::now();
  for (std::size_t i = 0; i < count; ++i) {
    all.push_back(taskq::cron_expression::parse(texts[i % std::size(texts)],
                                                i % 2 == 0 ? "UTC" : "Europe/Berlin"));
  }
  const auto elapsed = std::chrono::duration<double>(clock_type::now() - begin).count();
  // The vector was reserved before `before`, so this is only what the expressions own.
  const auto owned_heap = static_cast<double>(heap_in_use() - before);
  const double inline_bytes = static_cast<double>(sizeof(taskq::cron_expression) * count);
  report("parse (mix of 10 expressions, UTC and Europe/Berlin)", count / elapsed, "parses/s");
  report("sizeof(cron_expression)", sizeof(taskq::cron_expression), "bytes");
  report("100000 expressions: inline (sizeof x n)", inline_bytes / 1e6, "MB");
  report("100000 expressions: owned heap (texts over 15 chars)", owned_heap / 1e6, "MB");
  report("100000 expressions: total", (inline_bytes + owned_heap) / 1e6, "MB");
  report("100000 expressions: bytes per expression", (inline_bytes + owned_heap) / count, "bytes");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--json") json = true;
  }
  // Load the tz database before timing anything.
  (void)taskq::cron_expression::parse("0 0 * * *", "Europe/Berlin");
  bench_next_after();
  bench_parse_and_memory();
}
