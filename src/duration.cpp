// Go-style duration parsing and formatting (see include/taskq/duration.hpp).
#include <taskq/duration.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace taskq {
namespace {

using std::chrono::milliseconds;

constexpr std::uint64_t ns_per_ms = 1'000'000;
// Totals are kept in nanoseconds like Go, so fractions of any unit stay exact enough; the
// signed 64-bit range (about 292 years) is the limit.
constexpr std::uint64_t max_total_ns =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

std::optional<std::uint64_t> unit_ns(std::string_view unit) {
  if (unit == "ns") return 1;
  if (unit == "us" || unit == "\xC2\xB5s" || unit == "\xCE\xBCs") return 1'000;  // µ (micro, mu)
  if (unit == "ms") return ns_per_ms;
  if (unit == "s") return 1'000 * ns_per_ms;
  if (unit == "m") return 60'000 * ns_per_ms;
  if (unit == "h") return 3'600'000 * ns_per_ms;
  if (unit == "d") return 86'400'000 * ns_per_ms;
  return std::nullopt;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Returns the total in nanoseconds, or nullopt when the text is not a valid duration.
std::optional<std::uint64_t> parse_ns(std::string_view s) {
  if (s.empty()) return std::nullopt;
  if (s.front() == '+') s.remove_prefix(1);
  if (s == "0") return 0;
  if (s.empty()) return std::nullopt;
  std::uint64_t total = 0;
  while (!s.empty()) {
    // <digits>[.<digits>]
    std::uint64_t whole = 0;
    std::size_t i = 0;
    bool any_digit = false;
    for (; i < s.size() && is_digit(s[i]); ++i) {
      if (whole > (max_total_ns - 9) / 10) return std::nullopt;
      whole = whole * 10 + static_cast<std::uint64_t>(s[i] - '0');
      any_digit = true;
    }
    std::uint64_t frac = 0;
    std::uint64_t scale = 1;
    if (i < s.size() && s[i] == '.') {
      ++i;
      for (; i < s.size() && is_digit(s[i]); ++i) {
        any_digit = true;
        // Digits beyond 1e-18 of a unit cannot change a nanosecond total; drop them.
        if (scale < 1'000'000'000'000'000'000ULL) {
          frac = frac * 10 + static_cast<std::uint64_t>(s[i] - '0');
          scale *= 10;
        }
      }
    }
    if (!any_digit) return std::nullopt;
    std::size_t unit_end = i;
    while (unit_end < s.size() && !is_digit(s[unit_end]) && s[unit_end] != '.') ++unit_end;
    auto unit = unit_ns(s.substr(i, unit_end - i));
    if (!unit) return std::nullopt;
    if (whole > max_total_ns / *unit) return std::nullopt;
    std::uint64_t term = whole * *unit;
    if (frac != 0) {
      // frac/scale < 1, so this adds less than one unit; long double keeps 64-bit precision.
      term += static_cast<std::uint64_t>(static_cast<long double>(frac) *
                                         static_cast<long double>(*unit) /
                                         static_cast<long double>(scale));
    }
    if (term > max_total_ns - total) return std::nullopt;
    total += term;
    s.remove_prefix(unit_end);
  }
  return total;
}

}  // namespace

milliseconds parse_duration(std::string_view text, error_code& ec) noexcept {
  ec.clear();
  auto ns = parse_ns(text);
  if (!ns) {
    ec = make_error_code(errc::invalid_option);
    return milliseconds::zero();
  }
  return milliseconds(static_cast<std::int64_t>((*ns + ns_per_ms / 2) / ns_per_ms));
}

milliseconds parse_duration(std::string_view text) {
  error_code ec;
  auto d = parse_duration(text, ec);
  if (ec) {
    throw error(ec, fmt::format("invalid duration '{}' (expected e.g. \"1h30m\", \"250ms\", "
                                "\"7d\"; must not be negative)",
                                text));
  }
  return d;
}

std::string format_duration(milliseconds d) {
  if (d == milliseconds::zero()) return "0s";
  std::string out;
  // Work on the magnitude in unsigned arithmetic so INT64_MIN does not overflow.
  auto count = d.count();
  std::uint64_t v =
      count < 0 ? 0 - static_cast<std::uint64_t>(count) : static_cast<std::uint64_t>(count);
  if (count < 0) out += '-';
  const std::uint64_t h = v / 3'600'000;
  const std::uint64_t m = v / 60'000 % 60;
  const std::uint64_t s = v / 1'000 % 60;
  const std::uint64_t ms = v % 1'000;
  if (h != 0) out += std::to_string(h) + "h";
  if (m != 0) out += std::to_string(m) + "m";
  if (s != 0) out += std::to_string(s) + "s";
  if (ms != 0) out += std::to_string(ms) + "ms";
  return out;
}

}  // namespace taskq
