// The task model: statuses, validation, ids, retry policy and the record transitions (the
// record's JSON mapping is record_json.cpp). No Asio here.
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

// --- record transitions (shared by every Store backend) ------------------------------------

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
