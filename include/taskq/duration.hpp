// taskq — Go-style duration strings ("1h30m", "250ms", "7d").
//
// Durations appear in schedules (`@every 15m`) and in the command-line tool. taskq keeps
// time at millisecond resolution, so parsing rounds to the nearest millisecond.
#pragma once

#include <taskq/error.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace taskq {

/// Parses a Go-style duration: one or more `<number><unit>` terms, e.g. "1h30m", "250ms",
/// "1.5h", "10s", "7d". Units: ns, us (or µs), ms, s, m, h, d (d = 24h, no DST meaning).
/// Numbers may have a decimal fraction. The bare string "0" means zero. The result is
/// rounded to the nearest millisecond (half away from zero), so "100us" is 0ms.
///
/// Errors: errc::invalid_option when the text is empty, malformed, negative, has an unknown
/// unit, or overflows. The returned value is then zero.
std::chrono::milliseconds parse_duration(std::string_view text, error_code& ec) noexcept;

/// As above, but throws taskq::error (code errc::invalid_option) whose detail quotes the text.
std::chrono::milliseconds parse_duration(std::string_view text);

/// Formats a duration the way parse_duration reads it, largest unit first and zero terms
/// left out: 90min -> "1h30m", 250ms -> "250ms", 1500ms -> "1s500ms", 0 -> "0s". Hours
/// are not folded into days (48h -> "48h"), as in Go. Negative values get a leading '-'.
std::string format_duration(std::chrono::milliseconds d);

}  // namespace taskq
