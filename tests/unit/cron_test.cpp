// Tests for taskq::cron_expression and the duration helpers: next-fire tables (checked
// against an independent brute-force oracle while writing them), a randomised cross-check
// against a naive matcher, DST transitions, every parse error, @every and durations.
#include <taskq/cron.hpp>
#include <taskq/duration.hpp>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::seconds;
using time_point = std::chrono::system_clock::time_point;
using taskq::cron_expression;

// "YYYY-MM-DD HH:MM:SS" in UTC.
time_point utc(const std::string& text) {
  int y = 0;
  unsigned mo = 0, d = 0, h = 0, mi = 0, s = 0;
  REQUIRE(std::sscanf(text.c_str(), "%d-%u-%u %u:%u:%u", &y, &mo, &d, &h, &mi, &s) == 6);
  const std::chrono::sys_days day{std::chrono::year{y} / std::chrono::month{mo} /
                                  std::chrono::day{d}};
  return time_point(day + std::chrono::hours(h) + std::chrono::minutes(mi) + seconds(s));
}

std::string str(std::optional<time_point> t) {
  if (!t) return "none";
  const auto secs = std::chrono::floor<seconds>(*t);
  const auto day = std::chrono::floor<std::chrono::days>(secs);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::hh_mm_ss hms{secs - day};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02u %02d:%02d:%02d", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                static_cast<int>(hms.seconds().count()));
  std::string out = buf;
  if (const auto ms = std::chrono::floor<milliseconds>(*t) - secs; ms.count() != 0) {
    out += fmt::format(".{:03}", ms.count());
  }
  return out;
}

struct next_row {
  const char* expr;
  const char* zone;
  const char* from;  // UTC
  const char* next;  // UTC, or "none"
};

// Every expected value here was worked out by hand and confirmed by an independent
// brute-force implementation (Python zoneinfo) scanning local wall-clock times.
const next_row next_table[] = {
    {"* * * * *", "UTC", "2024-01-01 00:00:00", "2024-01-01 00:01:00"},
    {"* * * * *", "UTC", "2024-01-01 00:00:30", "2024-01-01 00:01:00"},
    {"* * * * *", "UTC", "2024-01-01 00:00:59", "2024-01-01 00:01:00"},
    {"* * * * *", "UTC", "2024-12-31 23:59:00", "2025-01-01 00:00:00"},
    {"0 * * * *", "UTC", "2024-01-01 00:00:00", "2024-01-01 01:00:00"},
    {"0 * * * *", "UTC", "2024-01-01 00:59:59", "2024-01-01 01:00:00"},
    {"0 * * * *", "UTC", "2024-02-29 23:00:00", "2024-03-01 00:00:00"},
    {"0 0 * * *", "UTC", "2024-12-31 23:59:59", "2025-01-01 00:00:00"},
    {"0 0 * * *", "UTC", "2024-02-28 00:00:00", "2024-02-29 00:00:00"},
    {"0 0 * * *", "UTC", "2025-02-28 00:00:00", "2025-03-01 00:00:00"},
    {"0 0 1 1 *", "UTC", "2024-01-01 00:00:00", "2025-01-01 00:00:00"},
    {"0 0 1 1 *", "UTC", "2023-12-31 23:59:59", "2024-01-01 00:00:00"},
    {"0 0 29 2 *", "UTC", "2024-01-01 00:00:00", "2024-02-29 00:00:00"},
    {"0 0 29 2 *", "UTC", "2024-02-29 00:00:00", "2028-02-29 00:00:00"},
    {"0 0 29 2 *", "UTC", "2025-01-01 00:00:00", "2028-02-29 00:00:00"},
    {"0 0 29 2 *", "UTC", "2096-03-01 00:00:00", "2104-02-29 00:00:00"},
    {"0 12 28-31 2 *", "UTC", "2024-02-28 12:00:00", "2024-02-29 12:00:00"},
    {"0 12 28-31 2 *", "UTC", "2025-02-28 12:00:00", "2026-02-28 12:00:00"},
    {"0 0 31 * *", "UTC", "2024-01-31 00:00:00", "2024-03-31 00:00:00"},
    {"0 0 31 * *", "UTC", "2024-04-01 00:00:00", "2024-05-31 00:00:00"},
    {"0 0 31 * *", "UTC", "2024-05-31 00:00:00", "2024-07-31 00:00:00"},
    {"0 0 31 * *", "UTC", "2024-07-31 00:00:00", "2024-08-31 00:00:00"},
    {"0 0 31 * *", "UTC", "2024-08-31 00:00:00", "2024-10-31 00:00:00"},
    {"0 0 31 * *", "UTC", "2024-10-31 00:00:00", "2024-12-31 00:00:00"},
    {"0 0 30 * *", "UTC", "2024-01-30 00:00:00", "2024-03-30 00:00:00"},
    {"0 0 30 * *", "UTC", "2025-01-30 00:00:00", "2025-03-30 00:00:00"},
    {"0 0 1 * *", "UTC", "2024-01-15 10:00:00", "2024-02-01 00:00:00"},
    {"0 0 1 * *", "UTC", "2024-12-01 00:00:00", "2025-01-01 00:00:00"},
    {"*/5 * * * *", "UTC", "2024-01-01 10:03:00", "2024-01-01 10:05:00"},
    {"*/5 * * * *", "UTC", "2024-01-01 10:55:00", "2024-01-01 11:00:00"},
    {"*/5 * * * *", "UTC", "2024-01-01 23:59:59", "2024-01-02 00:00:00"},
    {"*/7 * * * *", "UTC", "2024-01-01 10:56:00", "2024-01-01 11:00:00"},
    {"*/7 * * * *", "UTC", "2024-01-01 10:50:00", "2024-01-01 10:56:00"},
    {"1-30/2 * * * *", "UTC", "2024-01-01 10:28:00", "2024-01-01 10:29:00"},
    {"1-30/2 * * * *", "UTC", "2024-01-01 10:29:00", "2024-01-01 11:01:00"},
    {"1-30/2 * * * *", "UTC", "2024-01-01 10:00:00", "2024-01-01 10:01:00"},
    {"5/15 * * * *", "UTC", "2024-01-01 10:00:00", "2024-01-01 10:05:00"},
    {"5/15 * * * *", "UTC", "2024-01-01 10:05:00", "2024-01-01 10:20:00"},
    {"5/15 * * * *", "UTC", "2024-01-01 10:50:00", "2024-01-01 11:05:00"},
    {"0,15,30,45 * * * *", "UTC", "2024-01-01 10:44:59", "2024-01-01 10:45:00"},
    {"10-12,50 * * * *", "UTC", "2024-01-01 10:12:00", "2024-01-01 10:50:00"},
    {"10-12,50 * * * *", "UTC", "2024-01-01 10:50:00", "2024-01-01 11:10:00"},
    {"0 9-17 * * MON-FRI", "UTC", "2024-01-05 17:00:00", "2024-01-08 09:00:00"},
    {"0 9-17 * * MON-FRI", "UTC", "2024-01-05 16:00:00", "2024-01-05 17:00:00"},
    {"0 9-17 * * MON-FRI", "UTC", "2024-01-06 12:00:00", "2024-01-08 09:00:00"},
    {"0 9-17 * * 1-5", "UTC", "2024-01-07 08:00:00", "2024-01-08 09:00:00"},
    {"30 8 * * mon,Wed,FRI", "UTC", "2024-01-01 08:30:00", "2024-01-03 08:30:00"},
    {"30 8 * * mon,Wed,FRI", "UTC", "2024-01-05 08:30:00", "2024-01-08 08:30:00"},
    {"0 0 * * 0", "UTC", "2024-01-01 00:00:00", "2024-01-07 00:00:00"},
    {"0 0 * * 7", "UTC", "2024-01-01 00:00:00", "2024-01-07 00:00:00"},
    {"0 0 * * SUN", "UTC", "2024-01-01 00:00:00", "2024-01-07 00:00:00"},
    {"0 0 * * 5-7", "UTC", "2024-01-01 00:00:00", "2024-01-05 00:00:00"},
    {"0 0 * * 5-7", "UTC", "2024-01-06 00:00:00", "2024-01-07 00:00:00"},
    {"0 0 * * 5-7", "UTC", "2024-01-07 00:00:00", "2024-01-12 00:00:00"},
    {"0 0 * * 6", "UTC", "2024-02-25 00:00:00", "2024-03-02 00:00:00"},
    {"0 0 13 * FRI", "UTC", "2024-01-01 00:00:00", "2024-01-05 00:00:00"},
    {"0 0 13 * FRI", "UTC", "2024-01-12 00:00:00", "2024-01-13 00:00:00"},
    {"0 0 13 * FRI", "UTC", "2024-09-06 00:00:00", "2024-09-13 00:00:00"},
    {"0 0 13 * FRI", "UTC", "2024-09-13 00:00:00", "2024-09-20 00:00:00"},
    {"0 0 1 * MON", "UTC", "2024-01-01 00:00:00", "2024-01-08 00:00:00"},
    {"0 0 1 * MON", "UTC", "2024-01-29 00:00:00", "2024-02-01 00:00:00"},
    {"0 0 */2 * *", "UTC", "2024-01-31 00:00:00", "2024-02-01 00:00:00"},
    {"0 0 */2 * *", "UTC", "2024-01-01 00:00:00", "2024-01-03 00:00:00"},
    {"0 0 */2 * MON", "UTC", "2024-01-01 00:00:00", "2024-01-03 00:00:00"},
    {"0 0 */2 * MON", "UTC", "2024-01-07 00:00:00", "2024-01-08 00:00:00"},
    {"0 0 ? * MON", "UTC", "2024-01-02 00:00:00", "2024-01-08 00:00:00"},
    {"0 0 15 * ?", "UTC", "2024-01-02 00:00:00", "2024-01-15 00:00:00"},
    {"0 0 * JAN,jul *", "UTC", "2024-01-31 12:00:00", "2024-07-01 00:00:00"},
    {"0 0 1 jan-mar/2 *", "UTC", "2024-01-01 00:00:00", "2024-03-01 00:00:00"},
    {"0 0 1 jan-mar/2 *", "UTC", "2024-03-01 00:00:00", "2025-01-01 00:00:00"},
    {"0 0 1 */3 *", "UTC", "2024-02-01 00:00:00", "2024-04-01 00:00:00"},
    {"0 0 1 DEC *", "UTC", "2024-12-01 00:00:00", "2025-12-01 00:00:00"},
    {"15 14 1 * *", "UTC", "2024-03-01 14:15:00", "2024-04-01 14:15:00"},
    {"0 22 * * 1-5", "UTC", "2024-03-01 22:00:00", "2024-03-04 22:00:00"},
    {"23 0-20/2 * * *", "UTC", "2024-01-01 20:23:00", "2024-01-02 00:23:00"},
    {"23 0-20/2 * * *", "UTC", "2024-01-01 03:00:00", "2024-01-01 04:23:00"},
    {"0 0,12 1 */2 *", "UTC", "2024-01-01 12:00:00", "2024-03-01 00:00:00"},
    {"0 4 8-14 * *", "UTC", "2024-01-14 04:00:00", "2024-02-08 04:00:00"},
    {"59 23 31 12 *", "UTC", "2024-01-01 00:00:00", "2024-12-31 23:59:00"},
    {"59 23 31 12 *", "UTC", "2024-12-31 23:59:00", "2025-12-31 23:59:00"},
    {"0 0 29 2 MON", "UTC", "2025-02-01 00:00:00", "2025-02-03 00:00:00"},
    {"*/10 * * * * *", "UTC", "2024-01-01 00:00:05", "2024-01-01 00:00:10"},
    {"*/10 * * * * *", "UTC", "2024-01-01 00:00:50", "2024-01-01 00:01:00"},
    {"* * * * * *", "UTC", "2024-01-01 00:00:00", "2024-01-01 00:00:01"},
    {"30 0 0 * * *", "UTC", "2024-01-01 00:00:30", "2024-01-02 00:00:30"},
    {"15,45 */2 * * * *", "UTC", "2024-01-01 00:01:45", "2024-01-01 00:02:15"},
    {"0 0 0 1 1 *", "UTC", "2024-06-01 00:00:00", "2025-01-01 00:00:00"},
    {"5-10 * * * * *", "UTC", "2024-01-01 00:00:10", "2024-01-01 00:01:05"},
    {"0 30 9 * * MON", "UTC", "2024-01-01 09:30:00", "2024-01-08 09:30:00"},
    {"@hourly", "UTC", "2024-01-01 00:30:00", "2024-01-01 01:00:00"},
    {"@daily", "UTC", "2024-01-01 00:30:00", "2024-01-02 00:00:00"},
    {"@midnight", "UTC", "2024-01-01 00:30:00", "2024-01-02 00:00:00"},
    {"@weekly", "UTC", "2024-01-01 00:30:00", "2024-01-07 00:00:00"},
    {"@monthly", "UTC", "2024-01-31 00:30:00", "2024-02-01 00:00:00"},
    {"@yearly", "UTC", "2024-01-01 00:30:00", "2025-01-01 00:00:00"},
    {"@ANNUALLY", "UTC", "2024-01-01 00:30:00", "2025-01-01 00:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-03-27 23:00:00", "2021-03-28 01:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-03-28 00:59:59", "2021-03-28 01:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-03-28 01:00:00", "2021-03-29 00:30:00"},
    {"*/15 2 * * *", "Europe/Berlin", "2021-03-28 00:50:00", "2021-03-28 01:00:00"},
    {"0 3 * * *", "Europe/Berlin", "2021-03-27 23:00:00", "2021-03-28 01:00:00"},
    {"30 3 * * *", "Europe/Berlin", "2021-03-27 23:00:00", "2021-03-28 01:30:00"},
    {"30 1 * * *", "Europe/Berlin", "2021-03-27 23:00:00", "2021-03-28 00:30:00"},
    {"0 12 * * *", "Europe/Berlin", "2021-03-27 12:00:00", "2021-03-28 10:00:00"},
    {"0 12 * * *", "Europe/Berlin", "2021-03-26 12:00:00", "2021-03-27 11:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-10-30 23:00:00", "2021-10-31 00:30:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-10-31 00:30:00", "2021-11-01 01:30:00"},
    {"30 2 * * *", "Europe/Berlin", "2021-10-31 01:10:00", "2021-11-01 01:30:00"},
    {"0 3 * * *", "Europe/Berlin", "2021-10-31 00:30:00", "2021-10-31 02:00:00"},
    {"0 3 * * *", "Europe/Berlin", "2021-10-31 01:10:00", "2021-10-31 02:00:00"},
    {"0 * * * *", "Europe/Berlin", "2021-10-31 00:00:00", "2021-10-31 02:00:00"},
    {"0 * * * *", "Europe/Berlin", "2021-10-30 23:30:00", "2021-10-31 00:00:00"},
    {"45 2 * * *", "Europe/Berlin", "2021-10-31 01:50:00", "2021-11-01 01:45:00"},
    {"0 12 * * *", "Europe/Berlin", "2021-10-31 11:00:00", "2021-11-01 11:00:00"},
    {"0 0 * * *", "Europe/Berlin", "2024-03-30 12:00:00", "2024-03-30 23:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2024-03-30 12:00:00", "2024-03-31 01:00:00"},
    {"30 2 * * *", "Europe/Berlin", "2024-10-26 12:00:00", "2024-10-27 00:30:00"},
    {"30 2 * * *", "America/New_York", "2024-03-10 05:00:00", "2024-03-10 07:00:00"},
    {"30 2 * * *", "America/New_York", "2024-03-10 07:00:00", "2024-03-11 06:30:00"},
    {"0 2 * * *", "America/New_York", "2024-03-09 12:00:00", "2024-03-10 07:00:00"},
    {"59 1 * * *", "America/New_York", "2024-03-09 12:00:00", "2024-03-10 06:59:00"},
    {"0 3 * * *", "America/New_York", "2024-03-09 12:00:00", "2024-03-10 07:00:00"},
    {"0 12 * * *", "America/New_York", "2024-03-09 12:00:00", "2024-03-09 17:00:00"},
    {"0 12 * * *", "America/New_York", "2024-03-09 17:00:00", "2024-03-10 16:00:00"},
    {"30 1 * * *", "America/New_York", "2024-11-03 00:00:00", "2024-11-03 05:30:00"},
    {"30 1 * * *", "America/New_York", "2024-11-03 05:30:00", "2024-11-04 06:30:00"},
    {"30 1 * * *", "America/New_York", "2024-11-03 06:10:00", "2024-11-04 06:30:00"},
    {"0 * * * *", "America/New_York", "2024-11-03 05:00:00", "2024-11-03 07:00:00"},
    {"0 * * * *", "America/New_York", "2024-11-03 05:30:00", "2024-11-03 07:00:00"},
    {"0 * * * *", "America/New_York", "2024-11-03 06:00:00", "2024-11-03 07:00:00"},
    {"0 * * * *", "America/New_York", "2024-11-03 04:00:00", "2024-11-03 05:00:00"},
    {"0 0 * * *", "America/New_York", "2024-11-03 00:00:00", "2024-11-03 04:00:00"},
    {"0 0 * * *", "America/New_York", "2024-11-03 04:00:00", "2024-11-04 05:00:00"},
    {"0 2 * * *", "America/New_York", "2024-11-03 04:00:00", "2024-11-03 07:00:00"},
    {"30 2 * * *", "America/New_York", "2021-03-14 06:00:00", "2021-03-14 07:00:00"},
    {"30 1 * * *", "America/New_York", "2021-11-07 00:00:00", "2021-11-07 05:30:00"},
    {"0 9 * * MON-FRI", "America/New_York", "2024-03-08 14:00:00", "2024-03-11 13:00:00"},
    {"0 0 1 * *", "Asia/Tokyo", "2024-01-31 15:00:00", "2024-02-29 15:00:00"},
    {"0 0 1 1 *", "Australia/Sydney", "2024-06-01 00:00:00", "2024-12-31 13:00:00"},
    {"0 9 * * *", "Asia/Kolkata", "2024-01-01 00:00:00", "2024-01-01 03:30:00"},
};

}  // namespace

TEST_CASE("cron next_after matches the verified table", "[cron]") {
  for (const auto& row : next_table) {
    INFO(row.expr << " in " << row.zone << " after " << row.from);
    const auto c = cron_expression::parse(row.expr, row.zone);
    CHECK(str(c.next_after(utc(row.from))) == row.next);
    // Just before the expected time must yield the expected time too.
    if (std::string(row.next) != "none") {
      CHECK(str(c.next_after(utc(row.next) - 1ms)) == row.next);
    }
  }
}

TEST_CASE("cron next_after is strictly after a fractional start", "[cron]") {
  const auto c = cron_expression::parse("* * * * * *");
  CHECK(str(c.next_after(utc("2024-01-01 00:00:00") + 999ms)) == "2024-01-01 00:00:01");
  CHECK(str(c.next_after(utc("2024-01-01 00:00:00") + 1ns)) == "2024-01-01 00:00:01");
  CHECK(str(c.next_after(utc("2024-01-01 00:00:00"))) == "2024-01-01 00:00:01");
  CHECK(str(c.next_after(utc("2024-01-01 00:00:00") - 1ns)) == "2024-01-01 00:00:00");
}

TEST_CASE("cron expressions that never fire return nullopt quickly", "[cron]") {
  for (const char* expr : {"0 0 30 2 *", "0 0 31 2 *", "0 0 31 4 *", "0 0 31 4,6,9,11 *",
                           "0 0 30,31 2 *", "0 0 0 31 6 *"}) {
    INFO(expr);
    const auto c = cron_expression::parse(expr, "Europe/Berlin");
    const auto start = std::chrono::steady_clock::now();
    int found = 0;
    for (int i = 0; i < 1000; ++i) found += c.next_after(utc("2024-01-01 00:00:00")).has_value();
    CHECK(found == 0);
    CHECK(std::chrono::steady_clock::now() - start < 1s);
  }
  // Beyond system_clock's range (year 2262) there is nothing to return.
  CHECK_FALSE(cron_expression::parse("0 0 1 1 *").next_after(utc("2261-06-01 00:00:00")));
}

// ---- randomised cross-check against a naive matcher -------------------------------------

namespace {

struct generated {
  std::string text;
  std::set<unsigned> sets[6];  // second, minute, hour, dom, month, dow (0-6)
  bool dom_any = false;
  bool dow_any = false;
};

const char* const month_names[] = {"JAN", "feb", "Mar", "APR", "may", "JUN",
                                   "jul", "AUG", "sep", "OCT", "nov", "DEC"};
const char* const day_names[] = {"SUN", "mon", "Tue", "WED", "thu", "FRI", "sat"};

// Renders a random field over [lo, hi] and records the set it denotes.
std::string random_field(std::mt19937& rng, unsigned index, unsigned lo, unsigned hi,
                         std::set<unsigned>& set, bool& any) {
  auto pick = [&](unsigned a, unsigned b) {
    return std::uniform_int_distribution<unsigned>(a, b)(rng);
  };
  auto name = [&](unsigned v) -> std::string {
    if (index == 4 && pick(0, 2) == 0) return month_names[v - 1];
    if (index == 5 && v <= 6 && pick(0, 2) == 0) return day_names[v];
    return std::to_string(v);
  };
  auto add = [&](unsigned v) { set.insert(index == 5 && v == 7 ? 0 : v); };
  const unsigned star_hi = index == 5 ? 6 : hi;
  any = false;
  switch (pick(0, 5)) {
    case 0:
      any = true;
      for (unsigned v = lo; v <= star_hi; ++v) add(v);
      return (index == 3 || index == 5) && pick(0, 1) ? "?" : "*";
    case 1: {
      const unsigned v = pick(lo, hi);
      add(v);
      return name(v);
    }
    case 2: {
      std::string out;
      for (unsigned n = pick(2, 4); n > 0; --n) {
        const unsigned v = pick(lo, hi);
        add(v);
        if (!out.empty()) out += ',';
        out += name(v);
      }
      return out;
    }
    case 3: {
      const unsigned a = pick(lo, hi);
      const unsigned b = pick(a, hi);
      for (unsigned v = a; v <= b; ++v) add(v);
      return fmt::format("{}-{}", name(a), name(b));
    }
    case 4: {
      const unsigned step = pick(1, std::max(1u, (hi - lo) / 2));
      for (unsigned v = lo; v <= star_hi; v += step) add(v);
      return fmt::format("*/{}", step);
    }
    default: {
      const unsigned a = pick(lo, hi);
      const unsigned step = pick(1, std::max(1u, (hi - lo) / 3));
      if (pick(0, 1) == 0) {
        for (unsigned v = a; v <= hi; v += step) add(v);
        return fmt::format("{}/{}", name(a), step);
      }
      const unsigned b = pick(a, hi);
      for (unsigned v = a; v <= b; v += step) add(v);
      return fmt::format("{}-{}/{}", name(a), name(b), step);
    }
  }
}

generated random_expression(std::mt19937& rng, bool with_seconds) {
  static const unsigned lo[6] = {0, 0, 0, 1, 1, 0};
  static const unsigned hi[6] = {59, 59, 23, 31, 12, 7};
  generated g;
  bool any = false;
  for (unsigned i = 0; i < 6; ++i) {
    if (i == 0 && !with_seconds) {
      g.sets[0].insert(0);
      continue;
    }
    const std::string f = random_field(rng, i, lo[i], hi[i], g.sets[i], any);
    if (i == 3) g.dom_any = any;
    if (i == 5) g.dow_any = any;
    if (!g.text.empty()) g.text += ' ';
    g.text += f;
  }
  return g;
}

// Scans day by day, then every matching hour/minute/second: obviously right, and slow.
std::optional<time_point> naive_next(const generated& g, time_point t) {
  using namespace std::chrono;
  auto day = floor<days>(t);
  for (int i = 0; i < 366 * 9; ++i, day += days(1)) {
    const year_month_day ymd{day};
    if (!g.sets[4].count(static_cast<unsigned>(ymd.month()))) continue;
    const bool dom = g.sets[3].count(static_cast<unsigned>(ymd.day())) > 0;
    const bool dow = g.sets[5].count(weekday{day}.c_encoding()) > 0;
    const bool match = g.dom_any && g.dow_any ? true
                       : g.dom_any            ? dow
                       : g.dow_any            ? dom
                                              : dom || dow;
    if (!match) continue;
    for (unsigned h : g.sets[2]) {
      for (unsigned m : g.sets[1]) {
        for (unsigned s : g.sets[0]) {
          const time_point c = day + hours(h) + minutes(m) + seconds(s);
          if (c > t) return c;
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("cron next_after agrees with a naive matcher on random expressions", "[cron]") {
  std::mt19937 rng(20240229);
  std::uniform_int_distribution<std::int64_t> start_dist(
      utc("2023-01-01 00:00:00").time_since_epoch().count(),
      utc("2030-12-31 00:00:00").time_since_epoch().count());
  for (int i = 0; i < 400; ++i) {
    const generated g = random_expression(rng, i % 4 == 0);
    INFO(g.text);
    const auto c = cron_expression::parse(g.text);
    auto t = time_point(time_point::duration(start_dist(rng)));
    for (int k = 0; k < 4; ++k) {
      INFO("after " << str(t));
      const auto expected = naive_next(g, t);
      const auto got = c.next_after(t);
      REQUIRE(str(got) == str(expected));
      if (!got) break;
      t = *got;
    }
  }
}

// ---- daylight saving time ---------------------------------------------------------------

namespace {

std::vector<std::string> sequence(const char* expr, const char* zone, const char* from, int n) {
  const auto c = cron_expression::parse(expr, zone);
  std::vector<std::string> out;
  auto t = utc(from);
  for (int i = 0; i < n; ++i) {
    const auto next = c.next_after(t);
    if (!next) break;
    REQUIRE(*next > t);
    out.push_back(str(next));
    t = *next;
  }
  return out;
}

using strings = std::vector<std::string>;

}  // namespace

TEST_CASE("cron DST: Europe/Berlin spring forward fires skipped times once after the gap",
          "[cron][dst]") {
  // 2021-03-28: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
  CHECK(sequence("*/30 * * * *", "Europe/Berlin", "2021-03-28 00:00:00", 4) ==
        strings{"2021-03-28 00:30:00", "2021-03-28 01:00:00", "2021-03-28 01:30:00",
                "2021-03-28 02:00:00"});
  CHECK(sequence("30 2 * * *", "Europe/Berlin", "2021-03-26 12:00:00", 4) ==
        strings{"2021-03-27 01:30:00", "2021-03-28 01:00:00", "2021-03-29 00:30:00",
                "2021-03-30 00:30:00"});
  // Times outside the gap keep their wall-clock time; only the UTC offset changes.
  CHECK(sequence("0 1 * * *", "Europe/Berlin", "2021-03-26 12:00:00", 3) ==
        strings{"2021-03-27 00:00:00", "2021-03-28 00:00:00", "2021-03-28 23:00:00"});
  CHECK(sequence("15 3 * * *", "Europe/Berlin", "2021-03-26 12:00:00", 3) ==
        strings{"2021-03-27 02:15:00", "2021-03-28 01:15:00", "2021-03-29 01:15:00"});
  // Seconds-level expressions inside the gap collapse to one fire too.
  CHECK(sequence("*/20 * 1,2 * * *", "Europe/Berlin", "2021-03-28 00:59:30", 3) ==
        strings{"2021-03-28 00:59:40", "2021-03-28 01:00:00", "2021-03-28 23:00:00"});
}

TEST_CASE("cron DST: Europe/Berlin fall back fires a repeated time once", "[cron][dst]") {
  // 2021-10-31: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:00-02:59 occurs twice.
  CHECK(sequence("*/30 * * * *", "Europe/Berlin", "2021-10-30 23:45:00", 4) ==
        strings{"2021-10-31 00:00:00", "2021-10-31 00:30:00", "2021-10-31 02:00:00",
                "2021-10-31 02:30:00"});
  CHECK(sequence("30 2 * * *", "Europe/Berlin", "2021-10-29 12:00:00", 4) ==
        strings{"2021-10-30 00:30:00", "2021-10-31 00:30:00", "2021-11-01 01:30:00",
                "2021-11-02 01:30:00"});
  // Outside the overlap: 01:30 and 03:30 local each fire once, at the right offset.
  CHECK(sequence("30 1,3 * * *", "Europe/Berlin", "2021-10-30 12:00:00", 4) ==
        strings{"2021-10-30 23:30:00", "2021-10-31 02:30:00", "2021-11-01 00:30:00",
                "2021-11-01 02:30:00"});
  // Starting inside the second pass does not fire the repeated time again.
  CHECK(str(cron_expression::parse("*/10 * * * *", "Europe/Berlin")
                .next_after(utc("2021-10-31 01:05:00"))) == "2021-10-31 02:00:00");
  CHECK(str(cron_expression::parse("*/10 * * * *", "Europe/Berlin")
                .next_after(utc("2021-10-31 00:55:00"))) == "2021-10-31 02:00:00");
}

TEST_CASE("cron DST: America/New_York spring forward and fall back", "[cron][dst]") {
  // 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
  CHECK(sequence("0,30 * * * *", "America/New_York", "2024-03-10 06:00:00", 4) ==
        strings{"2024-03-10 06:30:00", "2024-03-10 07:00:00", "2024-03-10 07:30:00",
                "2024-03-10 08:00:00"});
  CHECK(sequence("30 2 * * *", "America/New_York", "2024-03-08 12:00:00", 3) ==
        strings{"2024-03-09 07:30:00", "2024-03-10 07:00:00", "2024-03-11 06:30:00"});
  CHECK(sequence("0 9 * * *", "America/New_York", "2024-03-08 12:00:00", 3) ==
        strings{"2024-03-08 14:00:00", "2024-03-09 14:00:00", "2024-03-10 13:00:00"});
  // 2024-11-03: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:00-01:59 occurs twice.
  CHECK(sequence("0,30 * * * *", "America/New_York", "2024-11-03 04:45:00", 4) ==
        strings{"2024-11-03 05:00:00", "2024-11-03 05:30:00", "2024-11-03 07:00:00",
                "2024-11-03 07:30:00"});
  CHECK(sequence("30 1 * * *", "America/New_York", "2024-11-01 12:00:00", 4) ==
        strings{"2024-11-02 05:30:00", "2024-11-03 05:30:00", "2024-11-04 06:30:00",
                "2024-11-05 06:30:00"});
  CHECK(sequence("0 9 * * *", "America/New_York", "2024-11-02 12:00:00", 3) ==
        strings{"2024-11-02 13:00:00", "2024-11-03 14:00:00", "2024-11-04 14:00:00"});
}

TEST_CASE("cron fire times are strictly increasing across a year of DST in several zones",
          "[cron][dst]") {
  for (const char* zone : {"Europe/Berlin", "America/New_York", "Australia/Sydney",
                           "Australia/Lord_Howe", "America/Santiago", "UTC"}) {
    for (const char* expr : {"*/7 * * * *", "30 2 * * *", "0 * * * *", "*/45 * * * * *"}) {
      INFO(expr << " in " << zone);
      const auto c = cron_expression::parse(expr, zone);
      auto t = utc("2024-01-01 00:00:00");
      const auto end = utc(std::string(expr) == "*/45 * * * * *" ? "2024-01-20 00:00:00"
                                                                 : "2025-01-01 00:00:00");
      int fires = 0;
      while (t < end) {
        const auto next = c.next_after(t);
        // Plain ifs: one assertion per step would add a million to the report.
        if (!next || *next <= t || *next - t > std::chrono::hours(26)) {
          FAIL("after " << str(t) << " got " << str(next));
        }
        t = *next;
        ++fires;
      }
      CHECK(fires > 0);
    }
  }
}

// ---- macros and @every --------------------------------------------------------------------

TEST_CASE("cron @every adds a fixed interval", "[cron]") {
  const auto c = cron_expression::parse("@every 1h30m", "Europe/Berlin");
  CHECK(c.is_interval());
  CHECK(c.interval() == 90min);
  const auto t = utc("2021-03-28 00:45:00");
  CHECK(c.next_after(t) == t + 90min);
  // Truncated to whole milliseconds, and still strictly after t.
  CHECK(c.next_after(t + 1500us) == t + 1ms + 90min);
  CHECK(cron_expression::parse("@every 250ms").next_after(t) == t + 250ms);
  CHECK(cron_expression::parse("@EVERY 7d").next_after(t) == t + std::chrono::hours(168));
  CHECK(cron_expression::parse("@every  10s ").next_after(t) == t + 10s);
  CHECK_FALSE(cron_expression::parse("@every 1s").next_after(time_point::max()));
  CHECK_FALSE(cron_expression::parse("0 0 * * *").is_interval());
}

TEST_CASE("cron macros equal their expansions", "[cron]") {
  const std::pair<const char*, const char*> macros[] = {
      {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
      {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
      {"@hourly", "0 * * * *"}, {"@Daily", "0 0 * * *"},
  };
  for (const auto& [macro, expansion] : macros) {
    INFO(macro);
    const auto a = cron_expression::parse(macro, "America/New_York");
    const auto b = cron_expression::parse(expansion, "America/New_York");
    auto t = utc("2024-02-27 00:00:00");
    for (int i = 0; i < 20; ++i) {
      const auto na = a.next_after(t);
      REQUIRE(na == b.next_after(t));
      t = *na;
    }
  }
}

// ---- accessors, equality, size ----------------------------------------------------------

TEST_CASE("cron accessors and equality", "[cron]") {
  const auto a = cron_expression::parse("  */5 * * * *\t", "Europe/Berlin");
  CHECK(a.expression() == "*/5 * * * *");
  CHECK(a.time_zone_name() == "Europe/Berlin");
  CHECK(cron_expression::parse("@daily").time_zone_name() == "UTC");
  CHECK(a == cron_expression::parse("*/5 * * * *", "Europe/Berlin"));
  CHECK_FALSE(a == cron_expression::parse("*/5 * * * *", "UTC"));
  CHECK_FALSE(a == cron_expression::parse("*/5 * * * * ", "America/New_York"));
  CHECK_FALSE(cron_expression::parse("@daily") == cron_expression::parse("0 0 * * *"));
  auto copy = a;
  CHECK(copy == a);
  CHECK(sizeof(cron_expression) <= 96);
}

// ---- errors -------------------------------------------------------------------------------

namespace {

struct error_row {
  const char* expr;
  const char* detail;
};

const error_row error_table[] = {
    {"0 25 * * *", "cron field 'hour' (field 2 of 5): value 25 out of range 0-23 in '0 25 * * *'"},
    {"60 * * * *",
     "cron field 'minute' (field 1 of 5): value 60 out of range 0-59 in '60 * * * *'"},
    {"0 0 32 * *",
     "cron field 'day-of-month' (field 3 of 5): value 32 out of range 1-31 in '0 0 32 * *'"},
    {"0 0 0 * *",
     "cron field 'day-of-month' (field 3 of 5): value 0 out of range 1-31 in '0 0 0 * *'"},
    {"0 0 * 13 *", "cron field 'month' (field 4 of 5): value 13 out of range 1-12 in '0 0 * 13 *'"},
    {"0 0 * 0 *", "cron field 'month' (field 4 of 5): value 0 out of range 1-12 in '0 0 * 0 *'"},
    {"0 0 * * 8",
     "cron field 'day-of-week' (field 5 of 5): value 8 out of range 0-7 in '0 0 * * 8'"},
    {"61 0 0 * * *",
     "cron field 'second' (field 1 of 6): value 61 out of range 0-59 in '61 0 0 * * *'"},
    {"0 60 0 * * *",
     "cron field 'minute' (field 2 of 6): value 60 out of range 0-59 in '0 60 0 * * *'"},
    {"0 0 24 * * *",
     "cron field 'hour' (field 3 of 6): value 24 out of range 0-23 in '0 0 24 * * *'"},
    {"0 0 0 * * 9",
     "cron field 'day-of-week' (field 6 of 6): value 9 out of range 0-7 in '0 0 0 * * 9'"},
    {"99999999999 * * * *",
     "cron field 'minute' (field 1 of 5): value 99999999999 out of range 0-59 in "
     "'99999999999 * * * *'"},
    {"x * * * *", "cron field 'minute' (field 1 of 5): invalid token 'x' in 'x * * * *'"},
    {"1a * * * *", "cron field 'minute' (field 1 of 5): invalid token '1a' in '1a * * * *'"},
    {"-5 * * * *", "cron field 'minute' (field 1 of 5): invalid token '-5' in '-5 * * * *'"},
    {"5- * * * *", "cron field 'minute' (field 1 of 5): missing value in '5- * * * *'"},
    {"0 0 * * FOO",
     "cron field 'day-of-week' (field 5 of 5): invalid token 'FOO' (expected a number or a "
     "name such as MON) in '0 0 * * FOO'"},
    {"0 0 * * JAN",
     "cron field 'day-of-week' (field 5 of 5): invalid token 'JAN' (expected a number or a "
     "name such as MON) in '0 0 * * JAN'"},
    {"0 0 * MON *",
     "cron field 'month' (field 4 of 5): invalid token 'MON' (expected a number or a name "
     "such as JAN) in '0 0 * MON *'"},
    {"0 0 * JAN-FOO *",
     "cron field 'month' (field 4 of 5): invalid token 'FOO' (expected a number or a name "
     "such as JAN) in '0 0 * JAN-FOO *'"},
    {"0 JAN * * *", "cron field 'hour' (field 2 of 5): invalid token 'JAN' in '0 JAN * * *'"},
    {"0 0 L * *",
     "cron field 'day-of-month' (field 3 of 5): 'L' uses the L, W or # special, which is not "
     "supported in '0 0 L * *'"},
    {"0 0 LW * *",
     "cron field 'day-of-month' (field 3 of 5): 'LW' uses the L, W or # special, which is not "
     "supported in '0 0 LW * *'"},
    {"0 0 15W * *",
     "cron field 'day-of-month' (field 3 of 5): '15W' uses the L, W or # special, which is not "
     "supported in '0 0 15W * *'"},
    {"0 0 L-3 * *",
     "cron field 'day-of-month' (field 3 of 5): 'L-3' uses the L, W or # special, which is not "
     "supported in '0 0 L-3 * *'"},
    {"0 0 * * 5#3",
     "cron field 'day-of-week' (field 5 of 5): '5#3' uses the L, W or # special, which is not "
     "supported in '0 0 * * 5#3'"},
    {"0 0 * * FRI#2",
     "cron field 'day-of-week' (field 5 of 5): 'FRI#2' uses the L, W or # special, which is "
     "not supported in '0 0 * * FRI#2'"},
    {"0 0 * * 5L",
     "cron field 'day-of-week' (field 5 of 5): '5L' uses the L, W or # special, which is not "
     "supported in '0 0 * * 5L'"},
    {"*/0 * * * *",
     "cron field 'minute' (field 1 of 5): step 0 in '*/0' (must be at least 1) in '*/0 * * * *'"},
    {"*/ * * * *", "cron field 'minute' (field 1 of 5): invalid step '' in '*/' in '*/ * * * *'"},
    {"*/x * * * *",
     "cron field 'minute' (field 1 of 5): invalid step 'x' in '*/x' in '*/x * * * *'"},
    {"*/60 * * * *",
     "cron field 'minute' (field 1 of 5): step 60 in '*/60' is larger than the field's "
     "maximum 59 in '*/60 * * * *'"},
    {"30-10 * * * *",
     "cron field 'minute' (field 1 of 5): range '30-10' runs backwards (start after end) in "
     "'30-10 * * * *'"},
    {"0 0 * * FRI-MON",
     "cron field 'day-of-week' (field 5 of 5): range 'FRI-MON' runs backwards (start after "
     "end) in '0 0 * * FRI-MON'"},
    {"1,,2 * * * *", "cron field 'minute' (field 1 of 5): empty list element in '1,,2 * * * *'"},
    {"1, * * * *", "cron field 'minute' (field 1 of 5): empty list element in '1, * * * *'"},
    {"? * * * *",
     "cron field 'minute' (field 1 of 5): '?' is only allowed in day-of-month and day-of-week "
     "in '? * * * *'"},
    {"0 0 * ? *",
     "cron field 'month' (field 4 of 5): '?' is only allowed in day-of-month and day-of-week "
     "in '0 0 * ? *'"},
    {"", "cron expression is empty"},
    {"   ", "cron expression is empty"},
    {"* * * *",
     "cron expression must have 5 fields (minute hour day-of-month month day-of-week) or 6 "
     "(with a leading second), got 4 in '* * * *'"},
    {"* * * * * * *",
     "cron expression must have 5 fields (minute hour day-of-month month day-of-week) or 6 "
     "(with a leading second), got 7 in '* * * * * * *'"},
    {"@fortnightly",
     "unknown cron macro '@fortnightly' (expected @yearly, @annually, @monthly, @weekly, "
     "@daily, @midnight, @hourly or @every <duration>) in '@fortnightly'"},
    {"@daily 5", "cron macro @daily takes no arguments in '@daily 5'"},
    {"@every", "@every needs a duration such as '@every 1h30m' in '@every'"},
    {"@every 0s", "@every: duration '0s' must be at least 1ms in '@every 0s'"},
    {"@every 100us", "@every: duration '100us' must be at least 1ms in '@every 100us'"},
    {"@every -5m",
     "@every: invalid duration '-5m' (expected e.g. 10s, 1h30m, 250ms, 7d) in '@every -5m'"},
    {"@every 5 minutes",
     "@every: invalid duration '5 minutes' (expected e.g. 10s, 1h30m, 250ms, 7d) in "
     "'@every 5 minutes'"},
};

}  // namespace

TEST_CASE("cron parse errors name the field, its position and the bad token", "[cron]") {
  for (const auto& row : error_table) {
    INFO("'" << row.expr << "'");
    taskq::error_code ec;
    std::string detail;
    const auto parsed = cron_expression::parse(row.expr, "UTC", ec, detail);
    CHECK_FALSE(parsed);
    CHECK(ec == taskq::errc::invalid_cron);
    CHECK(detail == row.detail);
    try {
      (void)cron_expression::parse(row.expr);
      FAIL("no exception");
    } catch (const taskq::error& e) {
      CHECK(e.code() == taskq::errc::invalid_cron);
      CHECK(std::string(e.what()).find(row.detail) != std::string::npos);
    }
  }
}

TEST_CASE("cron unknown time zones are reported with their name", "[cron]") {
  for (const char* zone : {"Mars/Olympus", "", "Europe/berlin_", "CEST"}) {
    INFO("'" << zone << "'");
    taskq::error_code ec;
    std::string detail;
    CHECK_FALSE(cron_expression::parse("0 0 * * *", zone, ec, detail));
    CHECK(ec == taskq::errc::invalid_time_zone);
    CHECK(detail.starts_with(fmt::format("unknown time zone '{}'", zone)));
    CHECK_THROWS_AS(cron_expression::parse("0 0 * * *", zone), taskq::error);
  }
  // A bad expression is reported before the zone is looked at.
  taskq::error_code ec;
  std::string detail;
  CHECK_FALSE(cron_expression::parse("0 25 * * *", "Mars/Olympus", ec, detail));
  CHECK(ec == taskq::errc::invalid_cron);
  // Success clears both outputs.
  CHECK(cron_expression::parse("0 0 * * *", "Asia/Tokyo", ec, detail));
  CHECK_FALSE(ec);
  CHECK(detail.empty());
}

// ---- durations ----------------------------------------------------------------------------

TEST_CASE("parse_duration reads Go-style durations and days", "[duration]") {
  const std::pair<const char*, milliseconds> cases[] = {
      {"0", 0ms},
      {"0s", 0ms},
      {"1h30m", 90min},
      {"250ms", 250ms},
      {"10s", 10s},
      {"2h", 2h},
      {"1.5h", 90min},
      {"45m", 45min},
      {"1d", 24h},
      {"7d", 168h},
      {"1d12h", 36h},
      {"100us", 0ms},
      {"499us", 0ms},
      {"500us", 1ms},
      {"1500us", 2ms},
      {"1500\xC2\xB5s", 2ms},
      {"2500000ns", 3ms},
      {"1.5s", 1500ms},
      {".5s", 500ms},
      {"0.001s", 1ms},
      {"1h0m0s", 1h},
      {"1s250ms", 1250ms},
      {"+5m", 5min},
      {"3m3m", 6min},
      {"100000h", std::chrono::hours(100000)},
  };
  for (const auto& [text, expected] : cases) {
    INFO(text);
    taskq::error_code ec;
    CHECK(taskq::parse_duration(text, ec) == expected);
    CHECK_FALSE(ec);
    CHECK(taskq::parse_duration(text) == expected);
  }
}

TEST_CASE("parse_duration rejects malformed and negative input", "[duration]") {
  for (const char* text :
       {"",        "-1s", "-0",  "1",  "10",    "s",  "1x",   "1 h",
        " 1h",     "1h ", "1hh", "h1", "1..5s", ".s", "1e3s", "99999999999999999999s",
        "200000d", "1.5", "abc", "+",  "5M",    "1H"}) {
    INFO("'" << text << "'");
    taskq::error_code ec;
    CHECK(taskq::parse_duration(text, ec) == 0ms);
    CHECK(ec == taskq::errc::invalid_option);
    try {
      (void)taskq::parse_duration(text);
      FAIL("no exception");
    } catch (const taskq::error& e) {
      CHECK(e.code() == taskq::errc::invalid_option);
      CHECK(std::string(e.what()).find(fmt::format("'{}'", text)) != std::string::npos);
    }
  }
}

TEST_CASE("format_duration writes what parse_duration reads", "[duration]") {
  CHECK(taskq::format_duration(90min) == "1h30m");
  CHECK(taskq::format_duration(250ms) == "250ms");
  CHECK(taskq::format_duration(10s) == "10s");
  CHECK(taskq::format_duration(0ms) == "0s");
  CHECK(taskq::format_duration(1500ms) == "1s500ms");
  CHECK(taskq::format_duration(48h) == "48h");
  CHECK(taskq::format_duration(3601001ms) == "1h1s1ms");
  CHECK(taskq::format_duration(-90s) == "-1m30s");
  CHECK(taskq::format_duration(milliseconds::min()) == "-2562047788015h12m55s808ms");
  for (auto d : {1ms, 999ms, 1000ms, 61001ms, 86400000ms, 123456789ms}) {
    CHECK(taskq::parse_duration(taskq::format_duration(d)) == d);
  }
}
