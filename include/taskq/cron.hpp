// taskq — cron expressions and their next fire time, in any IANA time zone.
//
// This is pure computation (no Asio, no clock reads): a scheduler asks `next_after(now)`
// and arms its own timer. Parsing resolves the time zone once; next_after never allocates.
#pragma once

#include <taskq/error.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace date {
class time_zone;  // Howard Hinnant's date/tz library; kept out of this header on purpose.
}

namespace taskq {

namespace detail {
struct cron_parser;
}

/// A parsed cron schedule bound to a time zone.
///
/// Syntax (fields separated by blanks):
///   - 5 fields: `minute hour day-of-month month day-of-week`
///   - 6 fields: `second minute hour day-of-month month day-of-week`
///   - each field is `*`, or a comma list of `N`, `A-B`, `*/S`, `A-B/S` or `N/S` (= `N-max/S`).
///     Ranges: second 0-59, minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or
///     JAN-DEC, day-of-week 0-7 or SUN-SAT (0 and 7 are Sunday). Names are
///     case-insensitive. `?` means `*` in day-of-month and day-of-week.
///   - macros: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
///     `@hourly`, and `@every <duration>` with a positive Go-style duration
///     (see parse_duration), e.g. `@every 1h30m`.
///   - the Quartz specials `L`, `W` and `#` are rejected with errc::invalid_cron.
///
/// Day matching follows Vixie cron: when both day-of-month and day-of-week are restricted
/// a day matches if EITHER matches ("0 0 13 * FRI" fires on every 13th and every Friday);
/// when either is written as a plain `*` or `?`, the other alone decides. A field written
/// `*/1` counts as restricted.
///
/// Time zones and daylight saving time. Fire times are local wall-clock times in the
/// expression's zone (default "UTC"; other names are IANA names from the system tz
/// database, resolved once at parse time). Around transitions:
///   - spring forward: every matching local time inside the skipped gap fires once, at
///     the first instant after the gap (Europe/Berlin 2021-03-28 "30 2 * * *" fires at
///     03:00 CEST = 01:00 UTC; "*/15 2 * * *" fires once at 03:00, not four times);
///   - fall back: a local time that occurs twice fires once, at its first occurrence
///     (the earlier UTC instant); the repeated hour does not fire again.
/// With this rule the fire times are strictly increasing and never duplicated. It also
/// means a schedule that fires every minute is silent during the repeated hour, because
/// each local wall-clock time fires at most once.
/// Limitation: with the system tz database, date 3.0.1 applies no DST rule after 2037
/// (zones keep their last listed offset from then on).
/// `@every` ignores the zone: it is a fixed interval.
///
/// Thread safety: a const cron_expression may be used from any number of threads.
/// Size: about 80 bytes plus the expression text when it exceeds the string's small buffer.
class cron_expression {
 public:
  using time_point = std::chrono::system_clock::time_point;

  /// How far ahead next_after searches before giving up (e.g. "0 0 30 2 *" never fires).
  static constexpr int search_years = 8;

  /// Parses `expr` in `time_zone` (an IANA name such as "Europe/Berlin", or "UTC").
  /// Throws taskq::error: errc::invalid_cron with a detail naming the field, its 1-based
  /// position and the bad token, e.g. "cron field 'hour' (field 2 of 5): value 25 out of
  /// range 0-23 in '0 25 * * *'"; errc::invalid_time_zone when the zone is unknown.
  static cron_expression parse(std::string_view expr, std::string_view time_zone = "UTC");

  /// Non-throwing form: on failure returns nullopt, sets `ec` and writes the explanation
  /// into `detail`. On success clears `ec` and `detail`.
  static std::optional<cron_expression> parse(std::string_view expr, std::string_view time_zone,
                                              error_code& ec, std::string& detail);

  /// The first fire time strictly after `t`, or nullopt when there is none within
  /// `search_years` years (or the result would leave system_clock's range). Cron fire
  /// times are whole seconds; for `@every d` the result is `t` truncated to whole
  /// milliseconds plus `d`. Never allocates; thread-safe.
  std::optional<time_point> next_after(time_point t) const;

  /// The expression exactly as given to parse (surrounding blanks removed).
  const std::string& expression() const noexcept { return text_; }

  /// The time zone name: "UTC" or the IANA name given to parse.
  std::string_view time_zone_name() const noexcept;

  /// True for `@every <duration>` expressions.
  bool is_interval() const noexcept { return interval_.count() > 0; }

  /// The `@every` interval; zero for calendar expressions.
  std::chrono::milliseconds interval() const noexcept { return interval_; }

  /// Two expressions are equal when their text and time zone are equal (so "@daily" and
  /// "0 0 * * *" compare unequal even though they fire at the same times).
  friend bool operator==(const cron_expression& a, const cron_expression& b) noexcept {
    return a.zone_ == b.zone_ && a.text_ == b.text_;
  }

 private:
  cron_expression() = default;

  std::optional<std::int64_t> next_local_match(std::int64_t local_seconds) const noexcept;
  std::uint64_t day_mask(int year, unsigned month) const noexcept;

  friend struct detail::cron_parser;

  std::string text_;
  const date::time_zone* zone_ = nullptr;  // nullptr means UTC (no tz database needed)
  std::chrono::milliseconds interval_{0};  // > 0 only for @every
  std::uint64_t seconds_ = 0;              // bit n set: second n fires (0-59)
  std::uint64_t minutes_ = 0;              // bit n: minute n (0-59)
  std::uint32_t hours_ = 0;                // bit n: hour n (0-23)
  std::uint32_t days_of_month_ = 0;        // bit n: day n (1-31)
  std::uint16_t months_ = 0;               // bit n: month n (1-12)
  std::uint8_t days_of_week_ = 0;          // bit n: weekday n (0 = Sunday .. 6)
  bool dom_any_ = false;                   // day-of-month written as '*' or '?'
  bool dow_any_ = false;                   // day-of-week written as '*' or '?'
};

}  // namespace taskq
