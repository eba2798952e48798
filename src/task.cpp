// The task model: statuses, validation, ids, retry policy and the JSON mapping. No Asio here.
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>
#include <taskq/queue.hpp>
#include <taskq/task.hpp>

#include "json_fields.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

namespace taskq {

namespace {
constexpr std::array<std::string_view, task_status_count> status_names = {
    "pending", "running", "succeeded", "failed", "cancelled", "dropped"};
}  // namespace

std::string_view to_string(task_status s) noexcept {
  auto i = static_cast<std::size_t>(s);
  return i < status_names.size() ? status_names[i] : std::string_view("unknown");
}

std::optional<task_status> parse_status(std::string_view text, error_code& ec) {
  for (std::size_t i = 0; i < status_names.size(); ++i) {
    if (status_names[i] == text) {
      ec = {};
      return static_cast<task_status>(i);
    }
  }
  ec = errc::invalid_status;
  return std::nullopt;
}

bool is_legal_transition(task_status from, task_status to) noexcept {
  using enum task_status;
  switch (from) {
    case pending:
      return to == running || to == cancelled || to == dropped;
    case running:
      return to == succeeded || to == failed || to == cancelled || to == dropped || to == pending ||
             to == running /* re-leased after its lease expired */;
    case failed:
    case cancelled:
    case dropped:
      return to == pending;
    case succeeded:
      return false;
  }
  return false;
}

duration retry_policy::delay_after(int attempt, double random01) const noexcept {
  using fsec = std::chrono::duration<double>;
  double base = std::chrono::duration_cast<fsec>(initial_delay).count();
  double cap = std::chrono::duration_cast<fsec>(max_delay).count();
  double exponent = std::max(0, attempt - 1);
  // pow() overflows to inf for large exponents; min() against the cap keeps it finite.
  double d = std::min(cap, base * std::pow(std::max(1.0, multiplier), exponent));
  d += d * jitter * (2.0 * random01 - 1.0);
  d = std::clamp(d, 0.0, cap);
  return std::chrono::duration_cast<duration>(fsec(d));
}

namespace {

// The length of j.dump() without building the string (it is on the enqueue hot path, and a
// payload was otherwise serialised only to be measured). Iterative, so a deep document cannot
// exhaust the stack here. Exact but for floating-point numbers, which are measured by
// formatting that one number. Empty when a string is not valid UTF-8 (dump() would throw).
std::optional<std::size_t> encoded_size(const json& root) {
  std::size_t size = 0;
  auto string_size = [](const std::string& str) -> std::optional<std::size_t> {
    std::size_t n = 2;  // the quotes
    for (std::size_t i = 0; i < str.size(); ++i) {
      auto c = static_cast<unsigned char>(str[i]);
      if (c >= 0x80) {  // a multi-byte sequence: its lead byte says how long
        std::size_t len = (c & 0xe0) == 0xc0   ? 2
                          : (c & 0xf0) == 0xe0 ? 3
                          : (c & 0xf8) == 0xf0 ? 4
                                               : 0;
        if (len == 0 || c == 0xc0 || c == 0xc1 || c > 0xf4 || i + len > str.size()) return {};
        std::uint32_t cp = c & (0x7f >> len);
        for (std::size_t k = 1; k < len; ++k) {
          auto b = static_cast<unsigned char>(str[i + k]);
          if ((b & 0xc0) != 0x80) return {};
          cp = (cp << 6) | (b & 0x3f);
        }
        static constexpr std::uint32_t min_of[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_of[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {};
        n += len;
        i += len - 1;
      } else if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' ||
                 c == '\t') {
        n += 2;
      } else if (c < 0x20) {
        n += 6;  // \u00XX
      } else {
        n += 1;
      }
    }
    return n;
  };
  std::vector<const json*> todo{&root};
  while (!todo.empty()) {
    const json* j = todo.back();
    todo.pop_back();
    switch (j->type()) {
      case json::value_t::object:
        // {} plus "key": per member and a comma between members.
        size += 2 + (j->empty() ? 0 : j->size() - 1);
        for (auto it = j->begin(); it != j->end(); ++it) {
          auto key = string_size(it.key());
          if (!key) return {};
          size += *key + 1;
          todo.push_back(&it.value());
        }
        break;
      case json::value_t::array:
        size += 2 + (j->empty() ? 0 : j->size() - 1);
        for (const auto& v : *j) todo.push_back(&v);
        break;
      case json::value_t::string: {
        auto n = string_size(j->get_ref<const std::string&>());
        if (!n) return {};
        size += *n;
        break;
      }
      case json::value_t::boolean:
        size += j->get<bool>() ? 4 : 5;
        break;
      case json::value_t::number_integer:
        size += fmt::formatted_size("{}", j->get<std::int64_t>());
        break;
      case json::value_t::number_unsigned:
        size += fmt::formatted_size("{}", j->get<std::uint64_t>());
        break;
      case json::value_t::number_float:
      case json::value_t::binary:
        size += j->dump().size();
        break;
      case json::value_t::null:
      case json::value_t::discarded:
        size += 4;
        break;
    }
  }
  return size;
}

}  // namespace

namespace detail {

std::size_t json_text_depth(std::string_view text, std::size_t limit) noexcept {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > deepest && (deepest = depth) > limit) return deepest;
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return deepest;
}

std::size_t json_depth(const json& j, std::size_t limit) {
  if (!j.is_structured()) return 0;
  std::size_t deepest = 0;
  std::vector<std::pair<const json*, std::size_t>> todo{{&j, 1}};
  while (!todo.empty()) {
    auto [node, depth] = todo.back();
    todo.pop_back();
    if (depth > deepest && (deepest = depth) > limit) return deepest;
    for (const auto& child : *node)
      if (child.is_structured()) todo.emplace_back(&child, depth + 1);
  }
  return deepest;
}

json parse_json_text(std::string_view text, std::size_t max_depth, json_text_error& err) {
  err = json_text_error::none;
  if (json_text_depth(text, max_depth) > max_depth) {
    err = json_text_error::too_deep;
    return nullptr;
  }
  auto j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded()) {
    err = json_text_error::malformed;
    return nullptr;
  }
  return j;
}

}  // namespace detail

error_code validate(const task_spec& spec, const validation_limits& limits) {
  auto blank = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
  };
  if (blank(spec.type)) return errc::blank_type;
  if (blank(spec.queue)) return errc::blank_queue;
  if (spec.delay < duration::zero()) return errc::negative_delay;
  if (spec.delay > max_duration) return errc::delay_too_long;
  if (spec.run_at && (*spec.run_at < time_point{} || *spec.run_at > max_time_point))
    return errc::run_at_out_of_range;
  if (spec.timeout < duration::zero()) return errc::negative_timeout;
  if (spec.timeout > max_duration) return errc::timeout_too_long;
  if (spec.max_attempts < 1) return errc::invalid_max_attempts;
  const auto& r = spec.retry;
  if (r.initial_delay < duration::zero() || r.max_delay < r.initial_delay ||
      r.max_delay > max_duration || !(r.multiplier >= 1.0) || !(r.jitter >= 0.0 && r.jitter <= 1.0))
    return errc::invalid_retry_policy;
  for (const auto& [k, v] : spec.labels)
    if (blank(k)) return errc::invalid_label;
  // Depth first: whatever copies or serializes the value later recurses once per level.
  const std::size_t depth = detail::effective_json_depth(limits);
  if (detail::json_depth(spec.payload, depth) > depth) return errc::payload_too_deep;
  if (detail::json_depth(spec.metadata, depth) > depth) return errc::metadata_too_deep;
  std::size_t size = 0;
  for (const json* j : {&spec.payload, &spec.metadata}) {
    if (j->is_null()) continue;
    auto n = encoded_size(*j);
    if (!n) return errc::invalid_utf8;
    size += *n;
  }
  if (size > limits.max_payload_bytes) return errc::payload_too_large;
  return {};
}

queue_entry entry_of(const task_record& r) {
  return {r.id, r.queue, r.type, r.concurrency_key, r.priority, r.available_at};
}

task_record make_record(task_spec&& spec, time_point now) {
  task_record r;
  r.id = spec.id.empty() ? make_task_id(now) : std::move(spec.id);
  r.type = std::move(spec.type);
  r.queue = std::move(spec.queue);
  r.payload = std::move(spec.payload);
  r.metadata = std::move(spec.metadata);
  r.priority = spec.priority;
  r.available_at = spec.run_at ? *spec.run_at : detail::saturating_add(now, spec.delay);
  r.max_attempts = spec.max_attempts;
  r.retry = spec.retry;
  r.timeout = spec.timeout;
  r.labels = std::move(spec.labels);
  r.concurrency_key = std::move(spec.concurrency_key);
  r.unique_key = std::move(spec.unique_key);
  r.unique_for = spec.unique_for;
  r.scheduled_for = spec.scheduled_for;
  r.status = task_status::pending;
  r.created_at = now;
  r.updated_at = now;
  return r;
}

namespace {

/// xoshiro256** (Blackman and Vigna), seeded from std::random_device: the ids' random bits need
/// to be unpredictable enough not to collide across processes, not secret, and mt19937_64's
/// state refills made it most of an id's cost.
struct id_random {
  std::uint64_t s[4];
  id_random() {
    std::random_device dev;
    for (auto& w : s) w = (static_cast<std::uint64_t>(dev()) << 32) ^ dev();
    if ((s[0] | s[1] | s[2] | s[3]) == 0) s[0] = 1;  // the one state it must not start in
  }
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t operator()() {
    const std::uint64_t result = rotl(s[1] * 5, 7) * 9;
    const std::uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

}  // namespace

std::string make_task_id(time_point now) {
  // UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter seeded randomly per
  // millisecond (method 1 of the RFC) so ids made in one process sort in creation order,
  // then 62 random bits. The (millisecond, counter) pair is one process-wide atomic that only
  // grows (one compare-and-swap, no lock; a full counter carries into the next millisecond);
  // the random bits come from a generator per thread.
  static std::atomic<std::uint64_t> last{0};
  thread_local id_random rng;
  const auto now_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
  const std::uint64_t seed = rng();
  std::uint64_t prev = last.load(std::memory_order_relaxed), next;
  do {
    // A later millisecond starts its counter low (room to grow); the same or an earlier one
    // (the clock went back) counts on from the last id.
    next = now_ms > (prev >> 12) ? (now_ms << 12) | (seed & 0x3ff) : prev + 1;
  } while (!last.compare_exchange_weak(prev, next, std::memory_order_relaxed));
  const std::uint64_t ms = next >> 12;
  const std::uint64_t seq = next & 0xfff;
  const std::uint64_t rand_b = rng();
  const std::uint64_t hi = (ms << 16) | (0x7ull << 12) | (seq & 0xfff);
  const std::uint64_t lo = (rand_b & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  // 8-4-4-4-12 hex digits, a byte (two digits) at a time (this is on the enqueue hot path).
  static constexpr char digits[] = "0123456789abcdef";
  char text[36];
  char* out = text;
  auto put = [&](std::uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) {
      const auto b = static_cast<unsigned>(v >> (8 * i)) & 0xff;
      *out++ = digits[b >> 4];
      *out++ = digits[b & 0xf];
    }
  };
  put(hi >> 32, 4);
  *out++ = '-';
  put((hi >> 16) & 0xffff, 2);
  *out++ = '-';
  put(hi & 0xffff, 2);
  *out++ = '-';
  put(lo >> 48, 2);
  *out++ = '-';
  put(lo & 0xffffffffffffull, 6);
  return std::string(text, sizeof text);
}

std::string format_time(time_point t) {
  auto us = std::chrono::time_point_cast<std::chrono::microseconds>(t);
  auto secs = std::chrono::time_point_cast<std::chrono::seconds>(us);
  if (secs > us) secs -= std::chrono::seconds(1);
  auto frac = (us - secs).count();
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06d}Z", secs, frac);
}

// --- JSON -----------------------------------------------------------------------------------

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
/// jitter), so the last text made on this thread is kept.
void append_double(std::string& out, double d) {
  thread_local double last = 0.0;
  thread_local std::string text = json(0.0).dump();
  if (std::memcmp(&d, &last, sizeof d) != 0) {
    text = json(d).dump();
    last = d;
  }
  out += text;
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

// --- record transitions (shared by every Store backend) ------------------------------------

#include <taskq/detail/record_ops.hpp>

namespace taskq {

void task_counts::add(const task_record& r, int delta) {
  auto i = static_cast<std::size_t>(r.status);
  auto apply = [&](std::size_t& n) {
    n = static_cast<std::size_t>(static_cast<long long>(n) + delta);
  };
  apply(total[i]);
  apply(by_type[r.type][i]);
  apply(by_queue[r.queue][i]);
}

void task_counts::move(const task_record& r, task_status from) {
  if (from == r.status) return;
  auto f = static_cast<std::size_t>(from), t = static_cast<std::size_t>(r.status);
  auto shift = [&](by_status& row) {
    --row[f];
    ++row[t];
  };
  shift(total);
  shift(by_type[r.type]);
  shift(by_queue[r.queue]);
}

void task_counts::drop_empty_rows() {
  auto empty = [](const auto& row) {
    return std::all_of(row.second.begin(), row.second.end(), [](std::size_t n) { return n == 0; });
  };
  std::erase_if(by_type, empty);
  std::erase_if(by_queue, empty);
}

bool matches(const task_record& r, const task_filter& f) noexcept {
  auto in = [](const auto& v, const auto& x) {
    return v.empty() || std::find(v.begin(), v.end(), x) != v.end();
  };
  if (!in(f.ids, r.id) || !in(f.statuses, r.status) || !in(f.types, r.type) ||
      !in(f.queues, r.queue))
    return false;
  if (f.created_after && r.created_at < *f.created_after) return false;
  if (f.created_before && r.created_at >= *f.created_before) return false;
  for (const auto& [k, v] : f.labels) {
    auto it = r.labels.find(k);
    if (it == r.labels.end() || it->second != v) return false;
  }
  return true;
}

namespace detail {

error_code apply_update(task_record& r, const task_update& u) {
  if (r.status != u.expected) return errc::status_conflict;
  if (u.expected_attempt && *u.expected_attempt != r.attempt) return errc::status_conflict;
  if (u.to != u.expected && !is_legal_transition(u.expected, u.to)) return errc::illegal_transition;
  r.status = u.to;
  r.updated_at = u.now;
  if (u.result) r.result = *u.result;
  if (u.progress) r.progress = *u.progress;
  if (u.error) r.last_error = *u.error;
  if (u.available_at) r.available_at = *u.available_at;
  if (u.attempt) r.attempt = *u.attempt;
  if (u.log) r.log.push_back(*u.log);
  if (u.clear_cancel_request) r.cancel_requested = false;
  if (is_terminal(u.to)) {
    r.finished_at = u.now;
  } else if (u.to == task_status::pending) {
    r.finished_at.reset();
  }
  return {};
}

claim_outcome apply_claim(task_record& r, time_point now) {
  if (r.status == task_status::running) {
    // The previous holder's lease expired: its process died or stalled. Retry the task if
    // attempts remain, else drop it (CodeChecker's DROPPED). A cancel requested meanwhile wins.
    if (r.cancel_requested) {
      r.status = task_status::cancelled;
      r.updated_at = now;
      r.finished_at = now;
      r.log.push_back({now, "cancelled: its worker lost the lease while cancel was requested"});
      return claim_outcome::skipped;
    }
    if (r.attempt >= r.max_attempts) {
      r.status = task_status::dropped;
      r.updated_at = now;
      r.finished_at = now;
      r.last_error = fmt::format("worker lost during attempt {} and no attempts remain", r.attempt);
      r.log.push_back({now, r.last_error});
      return claim_outcome::dropped;
    }
    r.log.push_back({now, fmt::format("worker lost during attempt {}; rescued", r.attempt)});
  } else if (r.status != task_status::pending) {
    return claim_outcome::skipped;
  } else if (r.cancel_requested) {
    // Cancel was requested while its last attempt ran and that attempt ended in a retry: the
    // cancel wins over the retry. (An explicit retry clears the flag, so only this path gets
    // here.)
    r.status = task_status::cancelled;
    r.updated_at = now;
    r.finished_at = now;
    r.log.push_back({now, "cancelled: cancel was requested before the retry started"});
    return claim_outcome::skipped;
  }
  r.status = task_status::running;
  ++r.attempt;
  r.started_at = now;
  r.heartbeat_at = now;
  r.updated_at = now;
  r.finished_at.reset();
  return claim_outcome::claimed;
}

error_code apply_heartbeat(task_record& r, const heartbeat_params& p, bool& cancel_requested) {
  if (r.status != task_status::running || r.attempt != p.attempt) return errc::status_conflict;
  if (p.progress) r.progress = *p.progress;
  r.heartbeat_at = p.now;
  r.updated_at = p.now;
  cancel_requested = r.cancel_requested;
  return {};
}

error_code apply_cancel_request(task_record& r, time_point now) {
  switch (r.status) {
    case task_status::pending:
      r.status = task_status::cancelled;
      r.cancel_requested = true;
      r.updated_at = now;
      r.finished_at = now;
      return {};
    case task_status::running:
      r.cancel_requested = true;
      r.updated_at = now;
      return {};
    default:
      return errc::illegal_transition;
  }
}

}  // namespace detail
}  // namespace taskq
