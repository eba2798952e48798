// Internal: guards for values that come from outside (callers, the CLI, stored documents)
// before anything recursive or overflowing touches them: the nesting depth of JSON, measured
// without recursion, and time arithmetic that saturates instead of wrapping.
//
// nlohmann::json's serializer, copy constructor and comparison recurse once per nesting level,
// so a deeply nested document (100,000 `[`, 200 KB) overflows the stack wherever it is copied
// or dumped. Everything that lets JSON in checks its depth first, with the functions here.
#pragma once

#include <taskq/task.hpp>

#include <cstddef>
#include <limits>
#include <string_view>

namespace taskq::detail {

/// The nesting depth (arrays and objects) of JSON text: 0 for a scalar, 1 for `[1]`. Scans the
/// text once without recursion and without building anything; stops early and returns a value
/// above `limit` as soon as the depth passes it. Text that is not JSON yields some count: the
/// parse that follows reports it as malformed.
std::size_t json_text_depth(std::string_view text, std::size_t limit) noexcept;

/// The nesting depth of a json value, walked with an explicit stack (never recursive); stops
/// early once it passes `limit`.
std::size_t json_depth(const json& j, std::size_t limit);

/// The configured depth limit, capped at json_depth_ceiling.
inline std::size_t effective_json_depth(const validation_limits& l) noexcept {
  return l.max_json_depth < json_depth_ceiling ? l.max_json_depth : json_depth_ceiling;
}

/// Why parse_json_text refused its input.
enum class json_text_error { none, malformed, too_deep };

/// Parses JSON text whose depth is at most `max_depth` (checked first, see json_text_depth).
/// On failure returns null and sets `err`.
json parse_json_text(std::string_view text, std::size_t max_depth, json_text_error& err);

/// `t + d`, saturated at the ends of time_point's range instead of overflowing.
inline time_point saturating_add(time_point t, duration d) noexcept {
  using rep = duration::rep;
  const rep a = t.time_since_epoch().count(), b = d.count();
  if (b > 0 && a > std::numeric_limits<rep>::max() - b) return time_point::max();
  if (b < 0 && a < std::numeric_limits<rep>::min() - b) return time_point::min();
  return t + d;
}

/// `t - d`, saturated like saturating_add.
inline time_point saturating_sub(time_point t, duration d) noexcept {
  if (d == duration::min()) return saturating_add(saturating_add(t, duration::max()), duration(1));
  return saturating_add(t, -d);
}

}  // namespace taskq::detail
