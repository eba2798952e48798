// Internal to src/: the pieces shared by the JSON mappings (task records, schedules): times as
// microseconds since the Unix epoch, and a field reader that remembers the first bad field so
// the error can name it.
#pragma once

#include <taskq/task.hpp>

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

namespace taskq::detail {

inline std::int64_t to_us(duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}
inline std::int64_t to_us(time_point t) {
  return to_us(t.time_since_epoch());
}
inline duration us_duration(std::int64_t us) {
  return std::chrono::duration_cast<duration>(std::chrono::microseconds(us));
}
inline time_point us_time(std::int64_t us) {
  return time_point(us_duration(us));
}

inline void put_opt(json& j, const char* key, const std::optional<time_point>& t) {
  if (t) j[key] = to_us(*t);
}

// A decoder that remembers the first bad field so the error can name it.
struct json_reader {
  const json& j;
  std::string bad;

  const json* field(const char* key, bool required) {
    auto it = j.find(key);
    if (it == j.end()) {
      if (required && bad.empty()) bad = key;
      return nullptr;
    }
    return &*it;
  }
  template <class T>
  void get(const char* key, T& out, bool required = true) {
    const json* f = field(key, required);
    if (!f) return;
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      // nlohmann converts a double to an integer with a plain cast: undefined beyond the
      // type's range (a stored 1e21, an integer too long for 64 bits). A bad field instead.
      if (f->is_number_float()) {
        const double d = f->get<double>();
        constexpr double lo = static_cast<double>(std::numeric_limits<T>::min());
        // One past the largest value: a power of two, exact as a double.
        constexpr double hi = static_cast<double>(std::numeric_limits<T>::max() / 2 + 1) * 2.0;
        if (!(d >= lo && d < hi)) {
          if (bad.empty()) bad = key;
          return;
        }
      }
    }
    try {
      f->get_to(out);
    } catch (const json::exception&) {
      if (bad.empty()) bad = key;
    }
  }
  // Microseconds a `duration` (nanoseconds in 64 bits) can hold; more is a bad field, not an
  // overflow.
  std::int64_t get_us(const char* key, std::int64_t v) {
    constexpr std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 1000;
    if (v > limit || v < -limit) {
      if (bad.empty()) bad = key;
      return 0;
    }
    return v;
  }
  void get_time(const char* key, time_point& out) {
    std::int64_t v = 0;
    get(key, v);
    out = us_time(get_us(key, v));
  }
  void get_opt_time(const char* key, std::optional<time_point>& out) {
    const json* f = field(key, false);
    if (!f || f->is_null()) return;
    if (!f->is_number_integer()) {
      if (bad.empty()) bad = key;
      return;
    }
    out = us_time(get_us(key, f->get<std::int64_t>()));
  }
  void get_duration(const char* key, duration& out) {
    std::int64_t v = 0;
    get(key, v);
    out = us_duration(get_us(key, v));
  }
  void get_json(const char* key, json& out) {
    if (const json* f = field(key, false)) out = *f;
  }
  /// An object written by retry_json (required); a bad member is named "key.member".
  void get_retry(const char* key, retry_policy& out) {
    const json* f = field(key, true);
    if (!f) return;
    if (!f->is_object()) {
      if (bad.empty()) bad = key;
      return;
    }
    json_reader rr{*f, {}};
    rr.get_duration("initial_delay", out.initial_delay);
    rr.get_duration("max_delay", out.max_delay);
    rr.get("multiplier", out.multiplier);
    rr.get("jitter", out.jitter);
    if (!rr.bad.empty() && bad.empty()) bad = std::string(key) + "." + rr.bad;
  }
  /// "active" (the default when missing) or "any".
  void get_unique_for(const char* key, unique_scope& out) {
    std::string scope = "active";
    get(key, scope, false);
    if (scope == "any")
      out = unique_scope::any;
    else if (scope != "active" && bad.empty())
      bad = key;
  }
};

inline json retry_json(const retry_policy& r) {
  return {{"initial_delay", to_us(r.initial_delay)},
          {"max_delay", to_us(r.max_delay)},
          {"multiplier", r.multiplier},
          {"jitter", r.jitter}};
}

inline const char* unique_for_text(unique_scope s) {
  return s == unique_scope::any ? "any" : "active";
}

}  // namespace taskq::detail
