// Internal to src/: the pieces shared by the JSON mappings (task records, schedules): times as
// microseconds since the Unix epoch, and a field reader that remembers the first bad field so
// the error can name it.
#pragma once

#include <taskq/task.hpp>

#include <chrono>
#include <optional>
#include <string>

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
    try {
      f->get_to(out);
    } catch (const json::exception&) {
      if (bad.empty()) bad = key;
    }
  }
  void get_time(const char* key, time_point& out) {
    std::int64_t v = 0;
    get(key, v);
    out = us_time(v);
  }
  void get_opt_time(const char* key, std::optional<time_point>& out) {
    const json* f = field(key, false);
    if (!f || f->is_null()) return;
    if (!f->is_number_integer()) {
      if (bad.empty()) bad = key;
      return;
    }
    out = us_time(f->get<std::int64_t>());
  }
  void get_duration(const char* key, duration& out) {
    std::int64_t v = 0;
    get(key, v);
    out = us_duration(v);
  }
  void get_json(const char* key, json& out) {
    if (const json* f = field(key, false)) out = *f;
  }
};

}  // namespace taskq::detail
