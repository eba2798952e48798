// `taskq cron next EXPR [--tz ZONE] [--from ISO-8601-TIME] [--count N]`: prints the next N
// fire times of a cron expression, in ISO 8601 with the zone's UTC offset, one per line.
#include "commands.hpp"

#include <taskq/cron.hpp>

#include <date/tz.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace taskq::tool {
namespace {

using std::chrono::seconds;
using time_point = std::chrono::system_clock::time_point;

// Reads exactly `n` digits from the front of `s`.
bool take_digits(std::string_view& s, std::size_t n, int& out) {
  if (s.size() < n) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + n, out);
  if (ec != std::errc() || ptr != s.data() + n) return false;
  s.remove_prefix(n);
  return true;
}

bool take_char(std::string_view& s, char c) {
  if (s.empty() || s.front() != c) return false;
  s.remove_prefix(1);
  return true;
}

// Parses YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|+HH:MM|-HH:MM|+HHMM|+HH]. Without an offset
// the time is local wall-clock time in `zone` (nullptr = UTC); a local time that does not
// exist or occurs twice resolves the way cron_expression does (after the gap / first).
std::optional<time_point> parse_time(std::string_view s, const date::time_zone* zone) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (!take_digits(s, 4, y) || !take_char(s, '-') || !take_digits(s, 2, mo) || !take_char(s, '-') ||
      !take_digits(s, 2, d)) {
    return std::nullopt;
  }
  std::chrono::nanoseconds frac{0};
  if (!s.empty() && (s.front() == 'T' || s.front() == 't' || s.front() == ' ')) {
    s.remove_prefix(1);
    if (!take_digits(s, 2, h) || !take_char(s, ':') || !take_digits(s, 2, mi)) {
      return std::nullopt;
    }
    if (take_char(s, ':')) {
      if (!take_digits(s, 2, sec)) return std::nullopt;
      if (take_char(s, '.') || take_char(s, ',')) {
        std::int64_t scale = 100'000'000;
        if (s.empty() || s.front() < '0' || s.front() > '9') return std::nullopt;
        while (!s.empty() && s.front() >= '0' && s.front() <= '9') {
          frac += std::chrono::nanoseconds((s.front() - '0') * scale);
          scale /= 10;
          s.remove_prefix(1);
        }
      }
    }
  }
  const std::chrono::year_month_day ymd{std::chrono::year(y), std::chrono::month(mo),
                                        std::chrono::day(d)};
  if (!ymd.ok() || h > 23 || mi > 59 || sec > 59) return std::nullopt;
  const auto wall = std::chrono::sys_days(ymd).time_since_epoch() + std::chrono::hours(h) +
                    std::chrono::minutes(mi) + seconds(sec);

  if (s.empty()) {  // local time in the zone
    if (zone == nullptr) return time_point(wall + frac);
    const auto info = zone->get_info(date::local_seconds(wall));
    if (info.result == date::local_info::nonexistent) return time_point(info.second.begin);
    return time_point(wall - info.first.offset + frac);
  }
  if (s == "Z" || s == "z") return time_point(wall + frac);
  const char sign = s.front();
  if (sign != '+' && sign != '-') return std::nullopt;
  s.remove_prefix(1);
  int oh = 0, om = 0;
  if (!take_digits(s, 2, oh)) return std::nullopt;
  if (!s.empty()) {
    take_char(s, ':');
    if (!take_digits(s, 2, om) || !s.empty()) return std::nullopt;
  }
  if (oh > 23 || om > 59) return std::nullopt;
  const seconds offset = std::chrono::hours(oh) + std::chrono::minutes(om);
  return time_point(wall - (sign == '+' ? offset : -offset) + frac);
}

// 2024-03-31T03:00:00+02:00 (with .mmm when the time has milliseconds, e.g. from @every).
std::string format_time(time_point t, const date::time_zone* zone) {
  const auto ms = std::chrono::floor<std::chrono::milliseconds>(t);
  const seconds offset = zone == nullptr ? seconds(0) : zone->get_info(ms).offset;
  const auto local = ms.time_since_epoch() + offset;
  const auto day = std::chrono::floor<std::chrono::days>(local);
  const std::chrono::year_month_day ymd{std::chrono::sys_days(day)};
  const std::chrono::hh_mm_ss hms{local - day};
  char buf[64];
  int n =
      std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d", static_cast<int>(ymd.year()),
                    static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                    static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                    static_cast<int>(hms.seconds().count()));
  std::string out(buf, static_cast<std::size_t>(n));
  if (const auto sub = hms.subseconds().count(); sub != 0) {
    n = std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(sub));
    out.append(buf, static_cast<std::size_t>(n));
  }
  const auto off_min = offset.count() / 60;
  const auto abs_min = off_min < 0 ? -off_min : off_min;
  n = std::snprintf(buf, sizeof buf, "%c%02d:%02d", off_min < 0 ? '-' : '+',
                    static_cast<int>(abs_min / 60), static_cast<int>(abs_min % 60));
  out.append(buf, static_cast<std::size_t>(n));
  return out;
}

struct next_opts {
  std::vector<std::string> expr;  // an unquoted expression arrives as several arguments
  std::string zone_name = "UTC";
  std::optional<std::string> from_text;
  long long count = 5;
};

int print_next(const next_opts& o, context& ctx) {
  auto& out = ctx.out;
  auto& err = ctx.err;
  std::string expr;
  for (auto& part : o.expr) expr += (expr.empty() ? "" : " ") + part;
  const auto count = o.count;
  error_code ec;
  std::string detail;
  const auto cron = cron_expression::parse(expr, o.zone_name, ec, detail);
  if (!cron) {
    err << "taskq: " << detail << "\n";
    return 1;
  }
  const date::time_zone* zone =
      cron->time_zone_name() == "UTC" ? nullptr : date::locate_zone(cron->time_zone_name());

  time_point t = std::chrono::system_clock::now();
  if (o.from_text) {
    const auto parsed = parse_time(*o.from_text, zone);
    if (!parsed) {
      throw usage_error("--from: cannot read '" + *o.from_text +
                        "' as an ISO 8601 time such as 2024-01-01T00:00:00Z");
    }
    t = *parsed;
  }

  for (long long i = 0; i < count; ++i) {
    const auto next = cron->next_after(t);
    if (!next) {
      err << "taskq: '" << cron->expression() << "' does not fire within "
          << cron_expression::search_years << " years after " << format_time(t, zone) << "\n";
      return i == 0 ? 1 : 0;
    }
    out << format_time(*next, zone) << "\n";
    t = *next;
  }
  return 0;
}

}  // namespace

void add_cron_command(CLI::App& app, context& ctx) {
  auto* cron = app.add_subcommand("cron", "check cron expressions");
  cron->require_subcommand(1);
  auto o = std::make_shared<next_opts>();
  auto* sub = cron->add_subcommand("next", "print the next N fire times of a cron expression");
  sub->add_option("EXPR", o->expr,
                  "a cron expression (quote it), e.g. '0 9 * * MON-FRI', '@daily', '@every 90m'")
      ->required();
  sub->add_option("--tz", o->zone_name, "IANA time zone the expression runs in")
      ->capture_default_str();
  sub->add_option("--from", o->from_text,
                  "start time, exclusive (default now), e.g. 2024-01-01T00:00:00Z, "
                  "2024-01-01T09:00:00+02:00, or without an offset for local time in --tz");
  sub->add_option("--count", o->count, "how many fire times to print")
      ->check(CLI::Range(1LL, 1'000'000LL))
      ->capture_default_str();
  run_with(sub, o, ctx, print_next);
}

}  // namespace taskq::tool
