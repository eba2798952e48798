// The task record's JSON mapping: to_json and record_from_json (the stable mapping of
// task.hpp), the direct writer (append_record_json) and reader (read_record_text) that the
// journal and the PostgreSQL backend use on their hot paths. No Asio here.
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>
#include <taskq/task.hpp>

#include "json_fields.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace taskq {

// --- the json tree (to_json, record_from_json) ------------------------------------

using detail::json_reader;
using detail::put_opt;
using detail::retry_json;
using detail::to_us;
using detail::unique_for_text;
using detail::us_duration;
using detail::us_time;

json to_json(const task_record& r) {
  json j = {
      {"v", 1},
      {"id", r.id},
      {"type", r.type},
      {"queue", r.queue},
      {"payload", r.payload},
      {"metadata", r.metadata},
      {"priority", r.priority},
      {"available_at", to_us(r.available_at)},
      {"max_attempts", r.max_attempts},
      {"retry", retry_json(r.retry)},
      {"timeout", to_us(r.timeout)},
      {"labels", r.labels},
      {"concurrency_key", r.concurrency_key},
      {"unique_key", r.unique_key},
      {"unique_for", unique_for_text(r.unique_for)},
      {"status", to_string(r.status)},
      {"attempt", r.attempt},
      {"progress", r.progress},
      {"result", r.result},
      {"last_error", r.last_error},
      {"created_at", to_us(r.created_at)},
      {"updated_at", to_us(r.updated_at)},
      {"cancel_requested", r.cancel_requested},
  };
  json log = json::array();
  for (const auto& e : r.log) log.push_back({{"at", to_us(e.at)}, {"message", e.message}});
  j["log"] = std::move(log);
  put_opt(j, "scheduled_for", r.scheduled_for);
  put_opt(j, "started_at", r.started_at);
  put_opt(j, "finished_at", r.finished_at);
  put_opt(j, "heartbeat_at", r.heartbeat_at);
  return j;
}

std::optional<task_record> record_from_json(const json& j, error_code& ec, std::string& detail) {
  if (!j.is_object()) {
    ec = errc::invalid_record;
    detail = "task record: expected a JSON object";
    return std::nullopt;
  }
  json_reader rd{j, {}};
  int version = 0;
  rd.get("v", version);
  if (rd.bad.empty() && version != 1) {
    ec = errc::unsupported_format_version;
    detail = fmt::format("task record: format version {} (this build reads version 1)", version);
    return std::nullopt;
  }
  task_record r;
  rd.get("id", r.id);
  rd.get("type", r.type);
  rd.get("queue", r.queue);
  rd.get_json("payload", r.payload);
  rd.get_json("metadata", r.metadata);
  rd.get("priority", r.priority);
  rd.get_time("available_at", r.available_at);
  rd.get("max_attempts", r.max_attempts);
  rd.get_retry("retry", r.retry);
  rd.get_duration("timeout", r.timeout);
  rd.get("labels", r.labels, false);
  rd.get("concurrency_key", r.concurrency_key, false);
  rd.get("unique_key", r.unique_key, false);
  rd.get_unique_for("unique_for", r.unique_for);
  rd.get_opt_time("scheduled_for", r.scheduled_for);
  std::string status;
  rd.get("status", status);
  if (rd.bad.empty()) {
    error_code sec;
    auto s = parse_status(status, sec);
    if (!s)
      rd.bad = "status";
    else
      r.status = *s;
  }
  rd.get("attempt", r.attempt);
  rd.get_json("progress", r.progress);
  rd.get_json("result", r.result);
  rd.get("last_error", r.last_error, false);
  if (const json* log = rd.field("log", false)) {
    if (!log->is_array()) {
      if (rd.bad.empty()) rd.bad = "log";
    } else {
      for (const auto& e : *log) {
        json_reader er{e, {}};
        log_entry le;
        if (!e.is_object())
          er.bad = "entry";
        else {
          er.get_time("at", le.at);
          er.get("message", le.message);
        }
        if (!er.bad.empty()) {
          if (rd.bad.empty()) rd.bad = "log." + er.bad;
          break;
        }
        r.log.push_back(std::move(le));
      }
    }
  }
  rd.get_time("created_at", r.created_at);
  rd.get_time("updated_at", r.updated_at);
  rd.get_opt_time("started_at", r.started_at);
  rd.get_opt_time("finished_at", r.finished_at);
  rd.get_opt_time("heartbeat_at", r.heartbeat_at);
  rd.get("cancel_requested", r.cancel_requested, false);
  if (!rd.bad.empty()) {
    ec = errc::invalid_record;
    detail = fmt::format("task record: field '{}' is missing or has the wrong type", rd.bad);
    return std::nullopt;
  }
  ec = {};
  return r;
}

namespace {

/// A string as dump() writes it: printable ASCII without quotes or backslashes is copied as it
/// is; anything else goes through nlohmann's serializer (escapes, UTF-8 check).
void append_json_string(std::string& out, std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f) {
      out += json(s).dump();
      return;
    }
  }
  out += '"';
  out.append(s);
  out += '"';
}

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
  out.append(buf, end);
}

/// A JSON value; null (the usual payload, metadata, progress and result) without building a
/// serializer, which reads the locale.
void append_json_value(std::string& out, const json& v) {
  if (v.is_null())
    out += "null";
  else
    out += v.dump();
}

/// A double as dump() writes it. Records repeat the same few (a retry policy's multiplier and
/// jitter, written one after the other), so the texts of the last few made on this thread are
/// kept, matched by bit pattern; a miss replaces the oldest.
void append_double(std::string& out, double d) {
  struct cached {
    double value;
    std::string text;
  };
  thread_local std::array<cached, 4> cache = [] {
    std::array<cached, 4> c;
    for (auto& e : c) e = {0.0, json(0.0).dump()};
    return c;
  }();
  thread_local std::size_t oldest = 0;
  for (const auto& e : cache)
    if (std::memcmp(&d, &e.value, sizeof d) == 0) {
      out += e.text;
      return;
    }
  auto& e = cache[oldest];
  oldest = (oldest + 1) % cache.size();
  e = {d, json(d).dump()};
  out += e.text;
}

/// `,"key":` (no comma before the first member), in one append.
template <std::size_t N>
void append_key(std::string& out, const char (&key)[N], bool first = false) {
  std::array<char, N + 3> buf;
  std::size_t n = 0;
  if (!first) buf[n++] = ',';
  buf[n++] = '"';
  std::memcpy(buf.data() + n, key, N - 1);
  n += N - 1;
  buf[n++] = '"';
  buf[n++] = ':';
  out.append(buf.data(), n);
}

}  // namespace

void detail::append_labels_json(std::string& out, const label_map& labels) {
  out += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    append_json_string(out, k);
    out += ':';
    append_json_string(out, v);
  }
  out += '}';
}

void detail::append_record_json(std::string& out, const task_record& r) {
  // The members in the order of nlohmann's object (std::map: sorted by key), as to_json
  // writes them.
  auto opt_time = [&](const auto& key, const std::optional<time_point>& t) {
    if (!t) return;
    append_key(out, key);
    append_int(out, to_us(*t));
  };
  out += '{';
  append_key(out, "attempt", true);
  append_int(out, r.attempt);
  append_key(out, "available_at");
  append_int(out, to_us(r.available_at));
  append_key(out, "cancel_requested");
  out += r.cancel_requested ? "true" : "false";
  append_key(out, "concurrency_key");
  append_json_string(out, r.concurrency_key);
  append_key(out, "created_at");
  append_int(out, to_us(r.created_at));
  opt_time("finished_at", r.finished_at);
  opt_time("heartbeat_at", r.heartbeat_at);
  append_key(out, "id");
  append_json_string(out, r.id);
  append_key(out, "labels");
  append_labels_json(out, r.labels);
  append_key(out, "last_error");
  append_json_string(out, r.last_error);
  append_key(out, "log");
  out += '[';
  for (std::size_t i = 0; i < r.log.size(); ++i) {
    out += i ? ",{" : "{";
    append_key(out, "at", true);
    append_int(out, to_us(r.log[i].at));
    append_key(out, "message");
    append_json_string(out, r.log[i].message);
    out += '}';
  }
  out += ']';
  append_key(out, "max_attempts");
  append_int(out, r.max_attempts);
  append_key(out, "metadata");
  append_json_value(out, r.metadata);
  append_key(out, "payload");
  append_json_value(out, r.payload);
  append_key(out, "priority");
  append_int(out, r.priority);
  append_key(out, "progress");
  append_json_value(out, r.progress);
  append_key(out, "queue");
  append_json_string(out, r.queue);
  append_key(out, "result");
  append_json_value(out, r.result);
  append_key(out, "retry");
  out += '{';
  append_key(out, "initial_delay", true);
  append_int(out, to_us(r.retry.initial_delay));
  append_key(out, "jitter");
  append_double(out, r.retry.jitter);
  append_key(out, "max_delay");
  append_int(out, to_us(r.retry.max_delay));
  append_key(out, "multiplier");
  append_double(out, r.retry.multiplier);
  out += '}';
  opt_time("scheduled_for", r.scheduled_for);
  opt_time("started_at", r.started_at);
  append_key(out, "status");
  append_json_string(out, to_string(r.status));
  append_key(out, "timeout");
  append_int(out, to_us(r.timeout));
  append_key(out, "type");
  append_json_string(out, r.type);
  append_key(out, "unique_for");
  append_json_string(out, unique_for_text(r.unique_for));
  append_key(out, "unique_key");
  append_json_string(out, r.unique_key);
  append_key(out, "updated_at");
  append_int(out, to_us(r.updated_at));
  append_key(out, "v");
  out += '1';
  out += '}';
}

namespace {

/// Reads a record in the layout append_record_json writes (any key order and whitespace),
/// straight into a task_record: payload, metadata, progress and result are the only parts
/// that become json trees. Every read refuses (returns false) rather than guess on anything
/// outside that layout — a non-ASCII or unusually escaped string, a number that is not a plain
/// integer where one is expected, an unknown or repeated key, a missing one, a document nested
/// deeper than json_depth_ceiling, malformed text — so that the general path decides those.
/// The record fields in the sorted order append_record_json writes them; the bit of each in a
/// set of fields is its index.
enum class record_field {
  attempt,
  available_at,
  cancel_requested,
  concurrency_key,
  created_at,
  finished_at,
  heartbeat_at,
  id,
  labels,
  last_error,
  log,
  max_attempts,
  metadata,
  payload,
  priority,
  progress,
  queue,
  result,
  retry,
  scheduled_for,
  started_at,
  status,
  timeout,
  type,
  unique_for,
  unique_key,
  updated_at,
  v
};
constexpr std::uint32_t bit(record_field f) {
  return 1u << static_cast<unsigned>(f);
}

class record_text_reader {
 public:
  explicit record_text_reader(std::string_view text)
      : p_(text.data()), end_(text.data() + text.size()) {}

  bool read(task_record& r) {
    if (!lit('{')) return false;
    std::uint32_t seen = 0;
    std::size_t next = 0;  // keys come sorted: the next one is usually keys[next]
    if (lit('}')) return false;
    do {
      std::string_view key;
      if (!plain_key(key) || !lit(':')) return false;
      std::size_t k = next < keys.size() && keys[next] == key ? next : find(key);
      if (k == keys.size() || (seen & (1u << k))) return false;
      seen |= 1u << k;
      next = k + 1;
      if (!value(static_cast<field>(k), r)) return false;
    } while (lit(','));
    if (!lit('}')) return false;
    ws();
    return p_ == end_ && (seen & required) == required;
  }

 private:
  using field = record_field;
  static constexpr std::array<std::string_view, 28> keys = {"attempt",
                                                            "available_at",
                                                            "cancel_requested",
                                                            "concurrency_key",
                                                            "created_at",
                                                            "finished_at",
                                                            "heartbeat_at",
                                                            "id",
                                                            "labels",
                                                            "last_error",
                                                            "log",
                                                            "max_attempts",
                                                            "metadata",
                                                            "payload",
                                                            "priority",
                                                            "progress",
                                                            "queue",
                                                            "result",
                                                            "retry",
                                                            "scheduled_for",
                                                            "started_at",
                                                            "status",
                                                            "timeout",
                                                            "type",
                                                            "unique_for",
                                                            "unique_key",
                                                            "updated_at",
                                                            "v"};
  // What record_from_json requires.
  static constexpr std::uint32_t required =
      bit(field::attempt) | bit(field::available_at) | bit(field::created_at) | bit(field::id) |
      bit(field::max_attempts) | bit(field::priority) | bit(field::queue) | bit(field::retry) |
      bit(field::status) | bit(field::timeout) | bit(field::type) | bit(field::updated_at) |
      bit(field::v);

  static std::size_t find(std::string_view key) {
    return static_cast<std::size_t>(std::find(keys.begin(), keys.end(), key) - keys.begin());
  }

  bool value(field f, task_record& r) {
    switch (f) {
      case field::attempt:
        return int_value(r.attempt);
      case field::available_at:
        return time(r.available_at);
      case field::cancel_requested:
        return boolean(r.cancel_requested);
      case field::concurrency_key:
        return string(r.concurrency_key);
      case field::created_at:
        return time(r.created_at);
      case field::finished_at:
        return opt_time(r.finished_at);
      case field::heartbeat_at:
        return opt_time(r.heartbeat_at);
      case field::id:
        return string(r.id);
      case field::labels:
        return labels(r.labels);
      case field::last_error:
        return string(r.last_error);
      case field::log:
        return log(r.log);
      case field::max_attempts:
        return int_value(r.max_attempts);
      case field::metadata:
        return json_value(r.metadata);
      case field::payload:
        return json_value(r.payload);
      case field::priority:
        return int_value(r.priority);
      case field::progress:
        return json_value(r.progress);
      case field::queue:
        return string(r.queue);
      case field::result:
        return json_value(r.result);
      case field::retry:
        return retry(r.retry);
      case field::scheduled_for:
        return opt_time(r.scheduled_for);
      case field::started_at:
        return opt_time(r.started_at);
      case field::status: {
        std::string s;
        error_code ec;
        if (!string(s)) return false;
        auto st = parse_status(s, ec);
        if (!st) return false;
        r.status = *st;
        return true;
      }
      case field::timeout: {
        std::int64_t us = 0;
        if (!micros(us)) return false;
        r.timeout = us_duration(us);
        return true;
      }
      case field::type:
        return string(r.type);
      case field::unique_for: {
        std::string s;
        if (!string(s) || (s != "active" && s != "any")) return false;
        r.unique_for = s == "any" ? unique_scope::any : unique_scope::active;
        return true;
      }
      case field::unique_key:
        return string(r.unique_key);
      case field::updated_at:
        return time(r.updated_at);
      case field::v: {
        int v = 0;
        return int_value(v) && v == 1;
      }
    }
    return false;
  }

  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool lit(char c) {
    ws();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool word(std::string_view w) {
    ws();
    if (static_cast<std::size_t>(end_ - p_) < w.size() || std::string_view(p_, w.size()) != w)
      return false;
    p_ += w.size();
    return true;
  }
  /// A key: printable ASCII, no escapes.
  bool plain_key(std::string_view& out) {
    if (!lit('"')) return false;
    const char* b = p_;
    while (p_ < end_ && *p_ != '"') {
      auto c = static_cast<unsigned char>(*p_);
      if (c < 0x20 || c >= 0x7f || c == '\\') return false;
      ++p_;
    }
    if (p_ == end_) return false;
    out = std::string_view(b, static_cast<std::size_t>(p_ - b));
    ++p_;
    return true;
  }
  /// A string of ASCII characters, with the escapes dump() writes for them.
  bool string(std::string& out) {
    if (!lit('"')) return false;
    out.clear();
    for (;;) {
      const char* b = p_;
      while (p_ < end_ && *p_ != '"' && *p_ != '\\') {
        auto c = static_cast<unsigned char>(*p_);
        if (c < 0x20 || c >= 0x80) return false;
        ++p_;
      }
      out.append(b, p_);
      if (p_ == end_) return false;
      if (*p_++ == '"') return true;
      if (p_ == end_) return false;
      switch (*p_++) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = 0;
          if (end_ - p_ < 4) return false;
          auto [e, err] = std::from_chars(p_, p_ + 4, cp, 16);
          if (err != std::errc() || e != p_ + 4 || cp >= 0x80) return false;
          p_ += 4;
          out += static_cast<char>(cp);
          break;
        }
        default:
          return false;
      }
    }
  }
  /// -?(0|[1-9][0-9]*), not followed by a fraction or exponent, within int64.
  bool integer(std::int64_t& v) {
    ws();
    const char* b = p_;
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') return false;
    auto [e, err] = std::from_chars(b, end_, v);
    if (err != std::errc() || (e < end_ && (*e == '.' || *e == 'e' || *e == 'E'))) return false;
    p_ = e;
    return true;
  }
  bool int_value(int& out) {
    std::int64_t v = 0;
    if (!integer(v) || v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
      return false;
    out = static_cast<int>(v);
    return true;
  }
  /// Microseconds a duration holds (json_reader::get_us).
  bool micros(std::int64_t& v) {
    constexpr std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 1000;
    return integer(v) && v <= limit && v >= -limit;
  }
  bool time(time_point& out) {
    std::int64_t us = 0;
    if (!micros(us)) return false;
    out = us_time(us);
    return true;
  }
  bool opt_time(std::optional<time_point>& out) {
    if (word("null")) {
      out.reset();
      return true;
    }
    time_point t;
    if (!time(t)) return false;
    out = t;
    return true;
  }
  bool boolean(bool& out) {
    if (word("true"))
      out = true;
    else if (word("false"))
      out = false;
    else
      return false;
    return true;
  }
  /// A plain decimal number (what dump() writes for a double), correctly rounded as nlohmann's
  /// strtod rounds it; an integer form only while every integer of its size is exact.
  bool number(double& out) {
    ws();
    const char* b = p_;
    const char* q = p_;
    auto digits = [&] {
      const char* d = q;
      while (q < end_ && *q >= '0' && *q <= '9') ++q;
      return q - d;
    };
    if (q < end_ && *q == '-') ++q;
    const char* first = q;
    const auto whole = digits();
    if (whole == 0 || (*first == '0' && whole > 1)) return false;
    bool integral = true;
    if (q < end_ && *q == '.') {
      ++q;
      if (digits() == 0) return false;
      integral = false;
    }
    if (q < end_ && (*q == 'e' || *q == 'E')) {
      ++q;
      if (q < end_ && (*q == '+' || *q == '-')) ++q;
      if (digits() == 0) return false;
      integral = false;
    }
    if (integral && whole > 15) return false;
    auto [e, err] = std::from_chars(b, q, out);
    if (err != std::errc() || e != q) return false;
    p_ = q;
    return true;
  }
  /// Any JSON value, handed to nlohmann (the parts a user wrote); `null` directly.
  bool json_value(json& out) {
    if (word("null")) {
      out = nullptr;
      return true;
    }
    ws();
    const char* b = p_;
    if (!skip_value()) return false;
    out = json::parse(b, p_, nullptr, false);
    return !out.is_discarded();
  }
  /// Steps over one value, strings and nesting aware; refuses depth beyond the ceiling (the
  /// record's own object is level 1).
  bool skip_value() {
    std::size_t depth = 1;
    const std::size_t base = depth;
    do {
      ws();
      if (p_ == end_) return false;
      char c = *p_;
      if (c == '"') {
        for (++p_; p_ < end_ && *p_ != '"'; ++p_)
          if (*p_ == '\\' && ++p_ == end_) return false;
        if (p_ == end_) return false;
        ++p_;
      } else if (c == '{' || c == '[') {
        if (++depth > json_depth_ceiling) return false;
        ++p_;
      } else if (c == '}' || c == ']') {
        if (depth == base) return false;
        --depth;
        ++p_;
      } else if (c == ',' || c == ':') {
        if (depth == base) return false;
        ++p_;
      } else {
        while (p_ < end_ && *p_ != ',' && *p_ != '}' && *p_ != ']' && *p_ != ':' && *p_ != ' ' &&
               *p_ != '\n' && *p_ != '\r' && *p_ != '\t' && *p_ != '"')
          ++p_;
      }
    } while (depth > base);
    return true;
  }
  bool labels(label_map& out) {
    out.clear();
    if (!lit('{')) return false;
    if (lit('}')) return true;
    do {
      std::string k, v;
      if (!string(k) || !lit(':') || !string(v)) return false;
      if (!out.emplace(std::move(k), std::move(v)).second) return false;
    } while (lit(','));
    return lit('}');
  }
  bool log(std::vector<log_entry>& out) {
    out.clear();
    if (!lit('[')) return false;
    if (lit(']')) return true;
    do {
      log_entry e;
      bool at = false, message = false;
      if (!lit('{')) return false;
      do {
        std::string_view key;
        if (!plain_key(key) || !lit(':')) return false;
        if (key == "at" && !at) {
          if (!time(e.at)) return false;
          at = true;
        } else if (key == "message" && !message) {
          if (!string(e.message)) return false;
          message = true;
        } else {
          return false;
        }
      } while (lit(','));
      if (!lit('}') || !at || !message) return false;
      out.push_back(std::move(e));
    } while (lit(','));
    return lit(']');
  }
  bool retry(retry_policy& out) {
    if (!lit('{')) return false;
    unsigned seen = 0;
    do {
      std::string_view key;
      if (!plain_key(key) || !lit(':')) return false;
      std::int64_t us = 0;
      if (key == "initial_delay" && !(seen & 1)) {
        if (!micros(us)) return false;
        out.initial_delay = us_duration(us);
        seen |= 1;
      } else if (key == "jitter" && !(seen & 2)) {
        if (!number(out.jitter)) return false;
        seen |= 2;
      } else if (key == "max_delay" && !(seen & 4)) {
        if (!micros(us)) return false;
        out.max_delay = us_duration(us);
        seen |= 4;
      } else if (key == "multiplier" && !(seen & 8)) {
        if (!number(out.multiplier)) return false;
        seen |= 8;
      } else {
        return false;
      }
    } while (lit(','));
    return lit('}') && seen == 15;
  }

  const char* p_;
  const char* end_;
};

}  // namespace

bool detail::read_record_text(std::string_view text, task_record& out) {
  out = task_record{};
  return record_text_reader(text).read(out);
}

task_record record_from_json(const json& j) {
  error_code ec;
  std::string detail;
  auto r = record_from_json(j, ec, detail);
  if (!r) throw error(ec, detail);
  return std::move(*r);
}

}  // namespace taskq
