// The durable file backend: a Queue and a Store over one journal (see
// include/taskq/backends/file/store.hpp and docs/file-format.md, "Record bodies").
#include <taskq/backends/file/directory_lock.hpp>
#include <taskq/backends/file/store.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/detail/blocking.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace taskq::file {

namespace {

namespace fs = std::filesystem;

// --- binary body codec ----------------------------------------------------------------------

/// A body that does not decode: the reason; the caller adds file and offset.
struct decode_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class op : std::uint8_t {
  insert = 1,            // seq, record
  claim = 2,             // id, now
  update = 3,            // new seq (0: keep), task_update
  heartbeat = 4,         // id, attempt, now, progress?
  log = 5,               // id, at, message
  cancel = 6,            // id, now
  remove = 7,            // count, ids
  pause = 8,             // queue, paused
  schedule_save = 9,     // schedule record as JSON text (the merged result of the save)
  schedule_remove = 10,  // name
};

class encoder {
 public:
  std::string out;

  void u8(std::uint8_t v) { out.push_back(static_cast<char>(v)); }
  void var(std::uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  }
  void i64(std::int64_t v) {
    var((static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
  }
  void str(std::string_view s) {
    var(s.size());
    out.append(s);
  }
  void f64(double d) {
    char b[8];
    std::memcpy(b, &d, 8);
    out.append(b, 8);
  }
  void dur(duration d) { i64(static_cast<std::int64_t>(d.count())); }
  void tp(time_point t) { dur(t.time_since_epoch()); }
  void opt_tp(const std::optional<time_point>& t) {
    u8(t ? 1 : 0);
    if (t) tp(*t);
  }
  void js(const json& j) {
    if (j.is_null()) {
      u8(0);
    } else {
      u8(1);
      str(j.dump());
    }
  }
  void opt_js(const std::optional<json>& j) {
    u8(j ? 1 : 0);
    if (j) js(*j);
  }
  void record(const task_record& r) {
    str(r.id);
    str(r.type);
    str(r.queue);
    js(r.payload);
    js(r.metadata);
    i64(r.priority);
    tp(r.available_at);
    i64(r.max_attempts);
    dur(r.retry.initial_delay);
    dur(r.retry.max_delay);
    f64(r.retry.multiplier);
    f64(r.retry.jitter);
    dur(r.timeout);
    var(r.labels.size());
    for (const auto& [k, v] : r.labels) {
      str(k);
      str(v);
    }
    str(r.concurrency_key);
    str(r.unique_key);
    u8(static_cast<std::uint8_t>(r.unique_for));
    opt_tp(r.scheduled_for);
    u8(static_cast<std::uint8_t>(r.status));
    i64(r.attempt);
    js(r.progress);
    js(r.result);
    str(r.last_error);
    var(r.log.size());
    for (const auto& e : r.log) {
      tp(e.at);
      str(e.message);
    }
    tp(r.created_at);
    tp(r.updated_at);
    opt_tp(r.started_at);
    opt_tp(r.finished_at);
    opt_tp(r.heartbeat_at);
    u8(r.cancel_requested ? 1 : 0);
  }
};

// --- stored JSON text ------------------------------------------------------------------------
// Recovery keeps a record's JSON values (payload, metadata, progress, result) as the text it
// was stored as and parses them only when the record is handed out. So that a store that opens
// never holds a value that later fails to parse, the text is checked on load by a scanner that
// accepts no more than nlohmann::json::parse does (RFC 8259 with UTF-8 checked as its lexer
// does, finite numbers, no comments or byte order mark) and measures the nesting on the way.

bool json_ws(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool json_digit(char c) noexcept {
  return c >= '0' && c <= '9';
}
int json_hex(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads 4 hex digits at p (p + 4 <= end checked by the caller); -1 if they are not.
int json_u16(const char* p) noexcept {
  int v = 0;
  for (int i = 0; i < 4; ++i) {
    int h = json_hex(p[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

// Scans the string whose opening quote is at p[-1]; returns the position after its closing
// quote, or nullptr. Escapes, surrogate pairs and UTF-8 sequences as nlohmann's lexer.
const char* json_string_end(const char* p, const char* end) noexcept {
  auto cont = [&](int n, unsigned char lo, unsigned char hi) {
    // the first continuation byte in [lo, hi], the others in [0x80, 0xBF]
    if (end - p < n) return false;
    for (int i = 0; i < n; ++i) {
      auto b = static_cast<unsigned char>(p[i]);
      if (b < (i == 0 ? lo : 0x80) || b > (i == 0 ? hi : 0xBF)) return false;
    }
    p += n;
    return true;
  };
  while (p < end) {
    auto c = static_cast<unsigned char>(*p++);
    if (c == '"') return p;
    if (c < 0x20) return nullptr;
    if (c == '\\') {
      if (p == end) return nullptr;
      switch (*p++) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
          break;
        case 'u': {
          if (end - p < 4) return nullptr;
          int u = json_u16(p);
          p += 4;
          if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return nullptr;
          if (u >= 0xD800 && u <= 0xDBFF) {  // a high surrogate: a low one must follow
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return nullptr;
            int lo = json_u16(p + 2);
            if (lo < 0xDC00 || lo > 0xDFFF) return nullptr;
            p += 6;
          }
          break;
        }
        default:
          return nullptr;
      }
      continue;
    }
    if (c < 0x80) continue;
    bool ok = false;
    if (c >= 0xC2 && c <= 0xDF)
      ok = cont(1, 0x80, 0xBF);
    else if (c == 0xE0)
      ok = cont(2, 0xA0, 0xBF);
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
      ok = cont(2, 0x80, 0xBF);
    else if (c == 0xED)
      ok = cont(2, 0x80, 0x9F);
    else if (c == 0xF0)
      ok = cont(3, 0x90, 0xBF);
    else if (c >= 0xF1 && c <= 0xF3)
      ok = cont(3, 0x80, 0xBF);
    else if (c == 0xF4)
      ok = cont(3, 0x80, 0x8F);
    if (!ok) return nullptr;
  }
  return nullptr;
}

// Scans the number starting at p; returns the position after it, or nullptr. A number the
// parser would turn into an infinite double (an exponent, or more than 308 integer digits,
// make that possible) is refused as the parser refuses it.
const char* json_number_end(const char* p, const char* end) noexcept {
  const char* start = p;
  if (p < end && *p == '-') ++p;
  if (p == end || !json_digit(*p)) return nullptr;
  const char* int_start = p;
  if (*p == '0')
    ++p;
  else
    while (p < end && json_digit(*p)) ++p;
  const auto int_digits = p - int_start;
  if (p < end && *p == '.') {
    ++p;
    if (p == end || !json_digit(*p)) return nullptr;
    while (p < end && json_digit(*p)) ++p;
  }
  bool exponent = false;
  if (p < end && (*p == 'e' || *p == 'E')) {
    exponent = true;
    ++p;
    if (p < end && (*p == '+' || *p == '-')) ++p;
    if (p == end || !json_digit(*p)) return nullptr;
    while (p < end && json_digit(*p)) ++p;
  }
  if (exponent || int_digits > 308) {
    double v = 0;
    auto [q, err] = std::from_chars(start, p, v);
    // out of range is an overflow (refused) or an underflow (a zero or subnormal, accepted)
    if (err == std::errc::result_out_of_range) {
      if (!exponent) return nullptr;  // more than 308 integer digits: too large
      const char* e = start;
      while (*e != 'e' && *e != 'E') ++e;
      if (e[1] != '-') return nullptr;  // a positive exponent out of range: too large
    } else if (err != std::errc() || q != p || !std::isfinite(v)) {
      return nullptr;
    }
  }
  return p;
}

}  // namespace

namespace detail {

json_text_check check_json_text(std::string_view text, std::size_t max_depth) noexcept {
  const char* p = text.data();
  const char* const end = p + text.size();
  // One bit per open container: set for an object. Depth is capped at json_depth_ceiling.
  std::array<std::uint64_t, json_depth_ceiling / 64 + 1> objects{};
  max_depth = std::min(max_depth, json_depth_ceiling);
  std::size_t depth = 0;
  auto in_object = [&] { return (objects[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1; };
  auto skip_ws = [&] {
    while (p < end && json_ws(*p)) ++p;
  };
  enum class want { value, key, after_value } next = want::value;
  for (;;) {
    skip_ws();
    switch (next) {
      case want::key:
        if (p == end || *p != '"' || !(p = json_string_end(p + 1, end)))
          return json_text_check::malformed;
        skip_ws();
        if (p == end || *p != ':') return json_text_check::malformed;
        ++p;
        next = want::value;
        continue;
      case want::after_value:
        if (depth == 0) return p == end ? json_text_check::ok : json_text_check::malformed;
        if (p == end) return json_text_check::malformed;
        if (*p == ',') {
          ++p;
          next = in_object() ? want::key : want::value;
          continue;
        }
        if (*p != (in_object() ? '}' : ']')) return json_text_check::malformed;
        ++p;
        --depth;
        continue;
      case want::value:
        break;
    }
    if (p == end) return json_text_check::malformed;
    const char c = *p;
    if (c == '{' || c == '[') {
      if (++depth > max_depth) return json_text_check::too_deep;
      auto& word = objects[(depth - 1) / 64];
      const auto bit = std::uint64_t{1} << ((depth - 1) % 64);
      word = c == '{' ? (word | bit) : (word & ~bit);
      ++p;
      skip_ws();
      if (p < end && *p == (c == '{' ? '}' : ']')) {
        ++p;
        --depth;
        next = want::after_value;
      } else {
        next = c == '{' ? want::key : want::value;
      }
      continue;
    }
    if (c == '"') {
      p = json_string_end(p + 1, end);
    } else if (c == 't' || c == 'f' || c == 'n') {
      std::string_view word = c == 't' ? "true" : c == 'f' ? "false" : "null";
      if (static_cast<std::size_t>(end - p) < word.size() ||
          std::string_view(p, word.size()) != word)
        return json_text_check::malformed;
      p += word.size();
    } else {
      p = json_number_end(p, end);
    }
    if (!p) return json_text_check::malformed;
    next = want::after_value;
  }
}

}  // namespace detail

namespace {

/// A stored JSON value as its text (or absent, for null), checked but not parsed.
struct json_text {
  std::string_view text;  // empty: null
};

/// A record's log, or its labels, left encoded: how many entries and where they start.
struct encoded_list {
  std::uint64_t count = 0;
  std::string_view bytes;
};

/// An insert's record read without building it: strings and JSON texts point into the body.
/// Reading one checks every field as strictly as building the task_record does, so a record
/// whose view reads cleanly always builds. Members mirror task_record's (read_record).
struct record_view {
  std::string_view id, type, queue;
  json_text payload, metadata;
  int priority = 0;
  time_point available_at{};
  int max_attempts = 1;
  retry_policy retry{};
  duration timeout{};
  encoded_list labels;
  std::string_view concurrency_key, unique_key;
  unique_scope unique_for = unique_scope::active;
  std::optional<time_point> scheduled_for;
  task_status status = task_status::pending;
  int attempt = 0;
  json_text progress, result;
  std::string_view last_error;
  encoded_list log;
  time_point created_at{}, updated_at{};
  std::optional<time_point> started_at, finished_at, heartbeat_at;
  bool cancel_requested = false;

  bool holds_unique_key() const noexcept {  // as taskq::detail::holds_unique_key
    return !unique_key.empty() && (unique_for == unique_scope::any || !is_terminal(status));
  }
  queue_entry entry() const {  // as entry_of
    return {std::string(id), std::string(queue), std::string(type), std::string(concurrency_key),
            priority,        available_at};
  }
};

class decoder {
 public:
  explicit decoder(std::string_view in) : in_(in) {}
  /// `trusted`: the JSON texts in `in` were checked before (a stored record read again).
  decoder(std::string_view in, bool trusted) : in_(in), trusted_(trusted) {}

  bool done() const noexcept { return pos_ == in_.size(); }
  std::size_t position() const noexcept { return pos_; }

  std::uint8_t u8() {
    need(1);
    return static_cast<std::uint8_t>(in_[pos_++]);
  }
  std::uint64_t var() {
    // Most values (lengths, counts, small numbers) are one byte.
    if (pos_ < in_.size()) {
      if (const auto b = static_cast<unsigned char>(in_[pos_]); b < 0x80) {
        ++pos_;
        return b;
      }
    }
    return long_var();
  }
  std::uint64_t long_var() {
    const auto* p = reinterpret_cast<const unsigned char*>(in_.data()) + pos_;
    const std::size_t room = in_.size() - pos_;
    if constexpr (std::endian::native == std::endian::little) {
      // Eight bytes at once (times are 9-byte varints): find the last byte by its clear top
      // bit, then pack the 7-bit groups of the bytes through it.
      if (room >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        auto pack = [](std::uint64_t x) {
          x &= 0x7f7f7f7f7f7f7f7full;
          x = ((x & 0x7f007f007f007f00ull) >> 1) | (x & 0x007f007f007f007full);
          x = ((x & 0x3fff00003fff0000ull) >> 2) | (x & 0x00003fff00003fffull);
          return ((x & 0x0fffffff00000000ull) >> 4) | (x & 0x000000000fffffffull);
        };
        if (const std::uint64_t stops = ~w & 0x8080808080808080ull) {
          const int bits = std::countr_zero(stops) + 1;  // through the last byte
          pos_ += static_cast<std::size_t>(bits / 8);
          return pack(bits == 64 ? w : w & ((std::uint64_t{1} << bits) - 1));
        }
        if (room >= 10) {
          std::uint64_t v = pack(w) | (static_cast<std::uint64_t>(p[8] & 0x7f) << 56);
          if (!(p[8] & 0x80)) {
            pos_ += 9;
            return v;
          }
          v |= static_cast<std::uint64_t>(p[9] & 0x7f) << 63;
          if (!(p[9] & 0x80)) {
            pos_ += 10;
            return v;
          }
          throw decode_error("varint too long");
        }
      }
    }
    std::uint64_t v = 0;
    const int max_bytes = room >= 10 ? 10 : static_cast<int>(room);
    for (int i = 0; i < max_bytes; ++i) {
      const std::uint64_t b = p[i];
      v |= (b & 0x7f) << (7 * i);
      if (!(b & 0x80)) {
        pos_ += static_cast<std::size_t>(i) + 1;
        return v;
      }
    }
    if (max_bytes < 10) throw decode_error("record body ends early");
    throw decode_error("varint too long");
  }
  std::int64_t i64() {
    auto u = var();
    return static_cast<std::int64_t>((u >> 1) ^ (~(u & 1) + 1));
  }
  int i32() {
    auto v = i64();
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
      throw decode_error("integer out of range");
    return static_cast<int>(v);
  }
  std::string_view view() {
    auto n = var();
    need(n);
    auto s = in_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string str() { return std::string(view()); }
  double f64() {
    need(8);
    double d;
    std::memcpy(&d, in_.data() + pos_, 8);
    pos_ += 8;
    return d;
  }
  duration dur() { return duration(static_cast<duration::rep>(i64())); }
  time_point tp() { return time_point(dur()); }
  std::optional<time_point> opt_tp() {
    if (flag()) return tp();
    return std::nullopt;
  }
  bool flag() {
    auto b = u8();
    if (b > 1) throw decode_error("bad flag byte");
    return b == 1;
  }
  json js() {
    if (!flag()) return json();
    return parse(view(), "JSON value");
  }
  /// The text of a stored JSON value, checked as parse() would check it (unless trusted).
  json_text js_text() {
    if (!flag()) return {};
    auto text = view();
    if (!trusted_) {
      switch (taskq::file::detail::check_json_text(text, json_depth_ceiling)) {
        case taskq::file::detail::json_text_check::ok:
          break;
        case taskq::file::detail::json_text_check::too_deep:
          throw decode_error("JSON value nested deeper than " + std::to_string(json_depth_ceiling) +
                             " levels");
        case taskq::file::detail::json_text_check::malformed:
          throw decode_error("malformed JSON value");
      }
    }
    return {text};
  }
  /// Parses stored JSON text, refusing a document nested deeper than json_depth_ceiling
  /// before anything recursive builds or copies it.
  static json parse(std::string_view text, const char* what) {
    taskq::detail::json_text_error err;
    auto j = taskq::detail::parse_json_text(text, json_depth_ceiling, err);
    if (err == taskq::detail::json_text_error::too_deep)
      throw decode_error(std::string(what) + " nested deeper than " +
                         std::to_string(json_depth_ceiling) + " levels");
    if (err != taskq::detail::json_text_error::none)
      throw decode_error(std::string("malformed ") + what);
    return j;
  }
  std::optional<json> opt_js() {
    if (flag()) return js();
    return std::nullopt;
  }
  task_status status() {
    auto s = u8();
    if (s >= task_status_count) throw decode_error("bad status");
    return static_cast<task_status>(s);
  }
  unique_scope scope() {
    auto uf = u8();
    if (uf > 1) throw decode_error("bad unique scope");
    return static_cast<unique_scope>(uf);
  }

  // One overload per field type of task_record and record_view (see read_record).
  void read(std::string& s) { s = str(); }
  void read(std::string_view& s) { s = view(); }
  void read(json& j) { j = js(); }
  void read(json_text& j) { j = js_text(); }
  void read(int& v) { v = i32(); }
  void read(duration& d) { d = dur(); }
  void read(time_point& t) { t = tp(); }
  void read(std::optional<time_point>& t) { t = opt_tp(); }
  void read(double& d) { d = f64(); }
  void read(bool& b) { b = flag(); }
  void read(task_status& s) { s = status(); }
  void read(unique_scope& u) { u = scope(); }
  void read(retry_policy& r) {
    r.initial_delay = dur();
    r.max_delay = dur();
    r.multiplier = f64();
    r.jitter = f64();
  }
  void read(label_map& labels) {
    auto n = var();
    for (std::uint64_t i = 0; i < n; ++i) {
      auto k = str();
      labels[std::move(k)] = str();
    }
  }
  void read(std::vector<log_entry>& log) {
    auto n = var();
    if (n > in_.size()) throw decode_error("bad log count");
    log.reserve(n);
    for (std::uint64_t i = 0; i < n; ++i) {
      log_entry e;
      e.at = tp();
      e.message = str();
      log.push_back(std::move(e));
    }
  }
  /// Labels or log entries left encoded: `pairs_of_strings` for labels, else (time, str).
  void read_list(encoded_list& l, bool pairs_of_strings) {
    l.count = var();
    if (!pairs_of_strings && l.count > in_.size()) throw decode_error("bad log count");
    const auto start = pos_;
    for (std::uint64_t i = 0; i < l.count; ++i) {
      if (pairs_of_strings)
        view();
      else
        tp();
      view();
    }
    l.bytes = in_.substr(start, pos_ - start);
  }

 private:
  void need(std::uint64_t n) const {
    if (n > in_.size() - pos_) throw decode_error("record body ends early");
  }
  std::string_view in_;
  std::size_t pos_ = 0;
  bool trusted_ = false;
};

/// Reads an insert's record, field by field in the stored order (docs/file-format.md), into a
/// task_record (building it) or a record_view (checking it and keeping views into the body).
/// `queue_fields_only`: stop after the fields the queue index needs (through concurrency_key;
/// a record_view of a stored record read again, whose status the entry keeps).
template <class R>
void read_record(decoder& d, R& r, bool queue_fields_only = false) {
  d.read(r.id);
  d.read(r.type);
  d.read(r.queue);
  d.read(r.payload);
  d.read(r.metadata);
  d.read(r.priority);
  d.read(r.available_at);
  d.read(r.max_attempts);
  d.read(r.retry);
  d.read(r.timeout);
  if constexpr (std::is_same_v<R, record_view>)
    d.read_list(r.labels, true);
  else
    d.read(r.labels);
  d.read(r.concurrency_key);
  if (queue_fields_only) return;
  d.read(r.unique_key);
  d.read(r.unique_for);
  d.read(r.scheduled_for);
  d.read(r.status);
  d.read(r.attempt);
  d.read(r.progress);
  d.read(r.result);
  d.read(r.last_error);
  if constexpr (std::is_same_v<R, record_view>)
    d.read_list(r.log, false);
  else
    d.read(r.log);
  d.read(r.created_at);
  d.read(r.updated_at);
  d.read(r.started_at);
  d.read(r.finished_at);
  d.read(r.heartbeat_at);
  d.read(r.cancel_requested);
}

std::string encode_insert(std::uint64_t seq, const task_record& r) {
  encoder e;
  e.out.reserve(256);
  e.u8(static_cast<std::uint8_t>(op::insert));
  e.var(seq);
  e.record(r);
  return std::move(e.out);
}

/// An insert of a record still in its stored form: the same bytes it was loaded from.
std::string encode_insert(std::uint64_t seq, std::string_view stored_record) {
  encoder e;
  e.out.reserve(stored_record.size() + 11);
  e.u8(static_cast<std::uint8_t>(op::insert));
  e.var(seq);
  e.out.append(stored_record);
  return std::move(e.out);
}

std::string encode_id_time(op o, const std::string& id, time_point now) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(o));
  e.str(id);
  e.tp(now);
  return std::move(e.out);
}

std::string encode_update(std::uint64_t new_seq, const task_update& u) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::update));
  e.var(new_seq);
  e.str(u.id);
  e.u8(static_cast<std::uint8_t>(u.expected));
  e.u8(u.expected_attempt ? 1 : 0);
  if (u.expected_attempt) e.i64(*u.expected_attempt);
  e.u8(static_cast<std::uint8_t>(u.to));
  e.tp(u.now);
  e.opt_js(u.result);
  e.opt_js(u.progress);
  e.u8(u.error ? 1 : 0);
  if (u.error) e.str(*u.error);
  e.opt_tp(u.available_at);
  e.u8(u.attempt ? 1 : 0);
  if (u.attempt) e.i64(*u.attempt);
  e.u8(u.log ? 1 : 0);
  if (u.log) {
    e.tp(u.log->at);
    e.str(u.log->message);
  }
  e.u8(u.clear_cancel_request ? 1 : 0);
  return std::move(e.out);
}

task_update decode_update(decoder& d) {
  task_update u;
  u.id = d.str();
  u.expected = d.status();
  if (d.flag()) u.expected_attempt = d.i32();
  u.to = d.status();
  u.now = d.tp();
  u.result = d.opt_js();
  u.progress = d.opt_js();
  if (d.flag()) u.error = d.str();
  u.available_at = d.opt_tp();
  if (d.flag()) u.attempt = d.i32();
  if (d.flag()) {
    log_entry e;
    e.at = d.tp();
    e.message = d.str();
    u.log = std::move(e);
  }
  u.clear_cancel_request = d.flag();
  return u;
}

std::string encode_heartbeat(const heartbeat_params& p) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::heartbeat));
  e.str(p.id);
  e.i64(p.attempt);
  e.tp(p.now);
  e.opt_js(p.progress);
  return std::move(e.out);
}

std::string encode_log(const std::string& id, const log_entry& l) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::log));
  e.str(id);
  e.tp(l.at);
  e.str(l.message);
  return std::move(e.out);
}

std::string encode_pause(const std::string& q, bool paused) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::pause));
  e.str(q);
  e.u8(paused ? 1 : 0);
  return std::move(e.out);
}

std::string encode_schedule_save(const schedule_record& r) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::schedule_save));
  e.str(to_json(r).dump());
  return std::move(e.out);
}

std::string encode_schedule_remove(const std::string& name) {
  encoder e;
  e.u8(static_cast<std::uint8_t>(op::schedule_remove));
  e.str(name);
  return std::move(e.out);
}

// The pipeline's busy keys of non-task writes (a task id never starts with a control byte).
std::string queue_key(const std::string& name) {
  return "\x01queue:" + name;
}
std::string schedule_key(const std::string& name) {
  return "\x02schedule:" + name;
}

// Removes are chunked so one record stays far below max_record_size.
void encode_removes(const std::vector<std::string>& ids, std::vector<std::string>& out) {
  constexpr std::size_t chunk = 4096;
  for (std::size_t i = 0; i < ids.size(); i += chunk) {
    encoder e;
    e.u8(static_cast<std::uint8_t>(op::remove));
    auto end = std::min(ids.size(), i + chunk);
    e.var(end - i);
    for (auto k = i; k < end; ++k) e.str(ids[k]);
    out.push_back(std::move(e.out));
  }
}

// A new queue position for a task returning to pending: a retry or an explicit retry goes
// behind its peers; a give-back (the interrupted attempt is not counted) keeps its place.
bool takes_new_position(const task_record& before, const task_update& u, const task_record& after) {
  if (after.status != task_status::pending || before.status == task_status::pending) return false;
  if (before.status == task_status::running && u.attempt && *u.attempt < before.attempt)
    return false;
  return true;
}

// --- the write pipeline ---------------------------------------------------------------------

/// What one attempt at planning a write decided (made under the state mutex).
struct step {
  error_code ec;                       // complete now with this (when `bodies` is empty)
  std::optional<std::string> wait_on;  // another write of this id is in flight: wait for it
  std::vector<std::string> ids;        // marked busy while the write is in flight
  std::vector<std::string> keys;       // unique keys reserved while an insert is in flight
  std::vector<std::string> bodies;     // the journal records
  std::function<void()> commit;        // applies the change once the records are durable
};

struct op_state {
  std::function<step()> plan;              // under the mutex; may run again after a wait
  std::function<void(error_code)> finish;  // outside the mutex, once
};
using op_ptr = std::shared_ptr<op_state>;

template <class Sig>
using shared_handler = std::shared_ptr<asio::any_completion_handler<Sig>>;

template <class Sig>
shared_handler<Sig> share(asio::any_completion_handler<Sig> h) {
  return std::make_shared<asio::any_completion_handler<Sig>>(std::move(h));
}

class file_queue;
class file_store;
class file_schedule_store;

}  // namespace

// --- shared state -----------------------------------------------------------------------------

struct backend::state : std::enable_shared_from_this<backend::state> {
  asio::any_io_executor ex;
  clock* clk = nullptr;
  backend_options opts;
  fs::path dir;
  directory_lock lock;
  journal_writer writer;
  bool ro = false;
  bool closed = false;  // under `mutex`
  backend_recovery recovery;

  mutable std::mutex mutex;
  // A record recovered from disk that nothing has asked for yet stays in its stored form
  // (the insert's encoded record, checked when it was loaded, in a block shared by records
  // recovered with it) and is built on first use: recovery neither builds records nor parses
  // JSON it only carries. The block is freed once every record in it is built or removed.
  struct stored_record {
    std::shared_ptr<const std::string> block;
    std::string_view bytes;
    task_status status = task_status::pending;  // of the stored form (prune looks at it)
  };

  // Records are shared with a compaction encoding them outside the mutex: a record is
  // changed in place only while nobody else holds it (use_count() read under the mutex; the
  // compaction drops its references under the mutex too), else it is copied first. A stored
  // record is built under the mutex too (every caller of rec() holds it).
  struct entry {
    mutable std::shared_ptr<task_record> ptr;  // null while the record is stored
    mutable stored_record stored;
    std::uint64_t seq = 0;

    const task_record& rec() const {
      if (!ptr) build();
      return *ptr;
    }
    bool is_stored() const noexcept { return !ptr; }
    task_status status() const noexcept { return ptr ? ptr->status : stored.status; }
    /// The stored form read again (it was checked on load); only while is_stored().
    record_view view() const {
      decoder d(stored.bytes, true);
      record_view v;
      read_record(d, v);
      return v;
    }
    /// Its queue index entry, read from the stored form; only while is_stored().
    queue_entry stored_queue_entry() const {
      decoder d(stored.bytes, true);
      record_view v;
      read_record(d, v, true);
      return v.entry();
    }
    task_record& mut() {
      rec();
      if (ptr.use_count() > 1) ptr = std::make_shared<task_record>(*ptr);
      return *ptr;
    }
    void set(task_record next) {
      if (!ptr || ptr.use_count() > 1) {
        ptr = std::make_shared<task_record>(std::move(next));
        stored = {};
      } else {
        *ptr = std::move(next);
      }
    }

   private:
    void build() const {
      decoder d(stored.bytes, true);
      auto r = std::make_shared<task_record>();
      read_record(d, *r);
      ptr = std::move(r);
      stored = {};
    }
  };
  std::map<std::string, entry, std::less<>> records;
  std::unordered_map<std::string, std::string> unique_holders;
  task_counts counts;
  std::uint64_t next_seq = 1;
  std::set<std::string> paused;
  std::map<std::string, schedule_record, std::less<>> schedules;
  // Recovery only: the block stored records are being copied into, and the last rows count()
  // used (rows of `counts` are never erased, so the pointers stay valid).
  std::shared_ptr<std::string> load_block;
  struct {
    task_counts::by_status* type = nullptr;
    const std::string* type_key = nullptr;
    task_counts::by_status* queue = nullptr;
    const std::string* queue_key = nullptr;
  } count_rows;

  // Pipeline: ids with a write in flight (and the operations waiting for them), unique keys
  // of inserts in flight, the compaction gate.
  std::unordered_map<std::string, std::vector<op_ptr>> busy;
  std::unordered_map<std::string, std::string> pending_keys;
  bool gate = false;
  std::vector<op_ptr> gated;
  std::size_t in_flight = 0;
  std::condition_variable idle_cv;

  // Sizes, for compaction.
  std::uint64_t journal_bytes = 0;   // since the last snapshot
  std::uint64_t snapshot_bytes = 0;  // of the last snapshot
  double avg_record_bytes = 256;     // running average of an insert's size
  std::uint64_t compactions = 0;
  std::mutex compact_mutex;  // one compaction at a time

  // Maintenance thread.
  std::thread maint;
  std::mutex maint_mutex;
  std::condition_variable maint_cv;
  bool stopping = false;

  std::unique_ptr<memory::queue> mq;
  std::unique_ptr<taskq::queue> fq;
  std::unique_ptr<taskq::store> fs;
  std::unique_ptr<taskq::schedule_store> fss;

  // --- bookkeeping (mutex held) -------------------------------------------------------------

  void count(const task_record& r, int delta) { counts.add(r, delta); }
  void commit(entry& slot, task_record next) {
    count(slot.rec(), -1);
    if (taskq::detail::holds_unique_key(slot.rec())) unique_holders.erase(slot.rec().unique_key);
    slot.set(std::move(next));
    count(slot.rec(), +1);
    if (taskq::detail::holds_unique_key(slot.rec()))
      unique_holders[slot.rec().unique_key] = slot.rec().id;
  }
  /// Adds a record whose id is new; returns false (and leaves `r` alone) if the id is taken.
  /// Ids are time-ordered, so records mostly arrive in key order (always on replay): comparing
  /// with the last key spares the O(log n) search for them.
  bool add(std::uint64_t seq, task_record&& r) {
    auto pos = insert_position(r.id);
    if (!pos) return false;
    auto id = r.id;
    auto it = records.emplace_hint(*pos, std::move(id),
                                   entry{std::make_shared<task_record>(std::move(r)), {}, seq});
    count(it->second.rec(), +1);
    if (taskq::detail::holds_unique_key(it->second.rec()))
      unique_holders[it->second.rec().unique_key] = it->second.rec().id;
    next_seq = std::max(next_seq, seq + 1);
    return true;
  }
  /// Where a new id goes in `records` (see add), or nothing if the id is taken.
  std::optional<std::map<std::string, entry, std::less<>>::iterator> insert_position(
      std::string_view id) {
    auto pos = records.end();
    if (!records.empty() && !(records.rbegin()->first < id)) {
      pos = records.lower_bound(id);
      if (pos != records.end() && pos->first == id) return std::nullopt;
    }
    return pos;
  }
  /// Adds a recovered record in its stored form (`bytes`, read into `v`); as add().
  bool add_stored(std::uint64_t seq, const record_view& v, std::string_view bytes) {
    auto pos = insert_position(v.id);
    if (!pos) return false;
    records.emplace_hint(*pos, std::string(v.id), entry{nullptr, keep(bytes, v.status), seq});
    count(v, +1);
    if (v.holds_unique_key()) unique_holders[std::string(v.unique_key)] = std::string(v.id);
    next_seq = std::max(next_seq, seq + 1);
    return true;
  }
  /// task_counts::add for a stored record. The rows of the last type and queue counted are
  /// remembered: recovered records mostly share them, and a lookup builds a key string.
  void count(const record_view& v, int delta) {
    auto i = static_cast<std::size_t>(v.status);
    auto row = [&](std::map<std::string, task_counts::by_status> & rows, std::string_view key,
                   task_counts::by_status * &last, const std::string*& last_key) -> auto& {
      if (!last || *last_key != key) {
        auto it = rows.try_emplace(std::string(key)).first;
        last = &it->second;
        last_key = &it->first;
      }
      return *last;
    };
    auto apply = [&](std::size_t& n) {
      n = static_cast<std::size_t>(static_cast<long long>(n) + delta);
    };
    apply(counts.total[i]);
    apply(row(counts.by_type, v.type, count_rows.type, count_rows.type_key)[i]);
    apply(row(counts.by_queue, v.queue, count_rows.queue, count_rows.queue_key)[i]);
  }
  void erase(std::map<std::string, entry, std::less<>>::iterator it) {
    if (it->second.is_stored()) {
      auto v = it->second.view();
      count(v, -1);
      if (v.holds_unique_key()) unique_holders.erase(std::string(v.unique_key));
    } else {
      count(it->second.rec(), -1);
      if (taskq::detail::holds_unique_key(it->second.rec()))
        unique_holders.erase(it->second.rec().unique_key);
    }
    records.erase(it);
  }
  /// Copies a recovered record's bytes into the current block of the load (blocks of about
  /// 1 MiB, never reallocated, so the views into them stay valid).
  stored_record keep(std::string_view bytes, task_status status) {
    constexpr std::size_t block_size = 1u << 20;
    if (!load_block || load_block->capacity() - load_block->size() < bytes.size()) {
      load_block = std::make_shared<std::string>();
      load_block->reserve(std::max(block_size, bytes.size()));
    }
    const auto at = load_block->size();
    load_block->append(bytes);
    return {load_block, std::string_view(load_block->data() + at, bytes.size()), status};
  }
  bool is_busy(const std::string& id) const { return busy.count(id) != 0; }

  // --- replay ---------------------------------------------------------------------------------

  entry& must_find(const std::string& id) {
    auto it = records.find(id);
    if (it == records.end()) throw decode_error("record for unknown task " + id);
    return it->second;
  }

  /// Applies one journal or snapshot body (recovery). Throws decode_error.
  void apply_body(std::string_view body) {
    decoder d(body);
    auto o = static_cast<op>(d.u8());
    switch (o) {
      case op::insert: {
        // Kept in its stored form, checked but not built (entry::stored_record).
        auto seq = d.var();
        const auto start = d.position();
        record_view v;
        read_record(d, v);
        if (!add_stored(seq, v, body.substr(start)))
          throw decode_error("second insert of task " + std::string(v.id));
        break;
      }
      case op::claim: {
        auto id = d.str();
        auto now = d.tp();
        auto& e = must_find(id);
        task_record next = e.rec();
        taskq::detail::apply_claim(next, now);
        commit(e, std::move(next));
        break;
      }
      case op::update: {
        auto seq = d.var();
        auto u = decode_update(d);
        auto& e = must_find(u.id);
        task_record next = e.rec();
        if (auto ec = taskq::detail::apply_update(next, u))
          throw decode_error("update of task " + u.id + " does not apply: " + ec.message());
        commit(e, std::move(next));
        if (seq) {
          e.seq = seq;
          next_seq = std::max(next_seq, seq + 1);
        }
        break;
      }
      case op::heartbeat: {
        heartbeat_params p;
        p.id = d.str();
        p.attempt = d.i32();
        p.now = d.tp();
        p.progress = d.opt_js();
        auto& e = must_find(p.id);
        bool cancel = false;
        if (auto ec = taskq::detail::apply_heartbeat(e.mut(), p, cancel))
          throw decode_error("heartbeat of task " + p.id + " does not apply: " + ec.message());
        break;
      }
      case op::log: {
        auto id = d.str();
        log_entry l;
        l.at = d.tp();
        l.message = d.str();
        must_find(id).mut().log.push_back(std::move(l));
        break;
      }
      case op::cancel: {
        auto id = d.str();
        auto now = d.tp();
        auto& e = must_find(id);
        task_record next = e.rec();
        if (auto ec = taskq::detail::apply_cancel_request(next, now))
          throw decode_error("cancel of task " + id + " does not apply: " + ec.message());
        commit(e, std::move(next));
        break;
      }
      case op::remove: {
        auto n = d.var();
        if (n > body.size()) throw decode_error("bad id count");
        for (std::uint64_t i = 0; i < n; ++i) {
          auto id = d.str();
          auto it = records.find(id);
          if (it == records.end()) throw decode_error("removal of unknown task " + id);
          erase(it);
        }
        break;
      }
      case op::pause: {
        auto q = d.str();
        if (d.flag())
          paused.insert(std::move(q));
        else
          paused.erase(q);
        break;
      }
      case op::schedule_save: {
        auto j = decoder::parse(d.view(), "JSON in a schedule record");
        error_code ec;
        std::string why;
        auto r = schedule_record_from_json(j, ec, why);
        if (!r) throw decode_error(why);
        auto name = r->definition.name;
        schedules.insert_or_assign(std::move(name), std::move(*r));
        break;
      }
      case op::schedule_remove: {
        auto name = d.str();
        if (!schedules.erase(name)) throw decode_error("removal of unknown schedule " + name);
        break;
      }
      default:
        throw decode_error("unknown record type " + std::to_string(static_cast<int>(o)));
    }
    if (!d.done()) throw decode_error("trailing bytes after the record");
  }

  void reset() {
    count_rows = {};
    load_block.reset();
    records.clear();
    unique_holders.clear();
    counts = task_counts{};
    next_seq = 1;
    paused.clear();
    schedules.clear();
  }

  /// Loads snapshot + journal. Writable: through journal_writer::open (repairs the tail).
  error_code load(std::string& detail) {
    std::uint64_t first_segment = 1;
    const fs::path snap = dir / snapshot_file_name;
    auto visit = [&](const journal_record& jr) {
      try {
        apply_body(jr.body);
      } catch (const std::exception& e) {
        throw decode_error(std::to_string(jr.segment) + "\x1f" + std::to_string(jr.offset) +
                           "\x1f" + e.what());
      }
    };
    // Turns a decode failure thrown from the visitor into invalid_record naming file+offset.
    auto describe = [&](const decode_error& e, bool in_snapshot) {
      std::string s = e.what();
      auto a = s.find('\x1f');
      auto b = a == std::string::npos ? a : s.find('\x1f', a + 1);
      if (b == std::string::npos) return s;
      auto seg = s.substr(0, a);
      auto off = s.substr(a + 1, b - a - 1);
      auto file = in_snapshot ? snap : dir / segment_file_name(std::stoull(seg));
      return (in_snapshot ? "snapshot " : "journal segment ") + file.string() + ", byte offset " +
             off + ": " + s.substr(b + 1);
    };
    try {
      std::error_code fe;
      if (fs::exists(snap, fe)) {
        auto r = read_snapshot(snap, visit);
        if (r.error) {
          detail = r.detail;
          return r.error;
        }
        first_segment = std::max<std::uint64_t>(1, r.id);
        recovery.snapshot_records = r.records;
        snapshot_bytes = r.file_size;
      }
    } catch (const decode_error& e) {
      detail = describe(e, true);
      return errc::invalid_record;
    }
    try {
      if (ro) {
        auto r = read_journal(dir, first_segment, visit);
        if (r.error) {
          detail = r.detail;
          return r.error;
        }
        recovery.journal_records = r.records;
        recovery.warning = r.warning;
      } else {
        journal_options jo;
        jo.mode = opts.mode;
        jo.batch_interval = opts.batch_interval;
        jo.fault_injector = opts.fault_injector;
        journal_recovery jr;
        error_code ec;
        writer =
            journal_writer::open(ex, dir, std::move(jo), first_segment, visit, jr, ec, &detail);
        if (ec) return ec;
        recovery.journal_records = jr.records;
        recovery.warning = jr.warning;
      }
    } catch (const decode_error& e) {
      detail = describe(e, false);
      return errc::invalid_record;
    }
    load_block.reset();  // the records hold what they use
    journal_bytes = segments_bytes();
    recovery.tasks = records.size();
    return {};
  }

  std::uint64_t segments_bytes() const {
    std::uint64_t n = 0;
    std::error_code fe;
    for (auto& de : fs::directory_iterator(dir, fe)) {
      auto name = de.path().filename().string();
      if (name.rfind("journal-", 0) == 0 && name.size() > 4 &&
          name.compare(name.size() - 4, 4, ".log") == 0) {
        std::error_code se;
        auto s = de.file_size(se);
        if (!se) n += s;
      }
    }
    return n;
  }

  /// Builds the queue index from the records: pending and running tasks in persisted order.
  void rebuild_queue() {
    // The seq is copied next to the pointer so sorting does not chase a pointer per
    // comparison; ids and seqs are both in creation order, so this is usually sorted already.
    std::vector<std::pair<std::uint64_t, const entry*>> live;
    live.reserve(records.size());
    for (auto& [id, e] : records)
      if (e.status() == task_status::pending || e.status() == task_status::running)
        live.emplace_back(e.seq, &e);
    auto by_seq = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (!std::is_sorted(live.begin(), live.end(), by_seq))
      std::sort(live.begin(), live.end(), by_seq);
    push_params p;
    p.entries.reserve(live.size());
    for (const auto& [seq, e] : live) {
      p.entries.push_back(e->is_stored() ? e->stored_queue_entry() : entry_of(e->rec()));
      if (e->status() == task_status::running) ++recovery.requeued_running;
    }
    if (!p.entries.empty()) mq->async_push(std::move(p), [](error_code) {});
    for (auto& q : paused) mq->async_set_paused(q, true, [](error_code) {});
  }

  // --- write pipeline -----------------------------------------------------------------------

  void submit(op_ptr o) {
    std::unique_lock lk(mutex);
    if (ro || closed) {
      lk.unlock();
      o->finish(errc::store_closed);
      return;
    }
    if (gate) {
      gated.push_back(std::move(o));
      return;
    }
    step s = o->plan();
    if (s.wait_on) {
      busy[*s.wait_on].push_back(std::move(o));
      return;
    }
    if (s.bodies.empty()) {
      lk.unlock();
      o->finish(s.ec);
      return;
    }
    for (auto& id : s.ids) busy.try_emplace(id);
    for (std::size_t i = 0; i < s.keys.size(); ++i) pending_keys[s.keys[i]] = s.ids.front();
    ++in_flight;
    std::uint64_t bytes = 0;
    for (auto& b : s.bodies) bytes += b.size() + record_frame_size;
    writer.async_append(std::move(s.bodies),
                        [self = shared_from_this(), o = std::move(o), ids = std::move(s.ids),
                         keys = std::move(s.keys), commit = std::move(s.commit),
                         bytes](error_code ec, std::uint64_t) mutable {
                          std::vector<op_ptr> wake;
                          {
                            std::lock_guard lk(self->mutex);
                            if (!ec) {
                              commit();
                              self->journal_bytes += bytes;
                            }
                            for (auto& id : ids) {
                              auto it = self->busy.find(id);
                              if (it == self->busy.end()) continue;
                              for (auto& w : it->second) wake.push_back(std::move(w));
                              self->busy.erase(it);
                            }
                            for (auto& k : keys) self->pending_keys.erase(k);
                            --self->in_flight;
                          }
                          self->idle_cv.notify_all();
                          o->finish(ec);
                          for (auto& w : wake) self->submit(std::move(w));
                        });
  }

  template <class Plan, class Finish>
  void run(Plan plan, Finish finish) {
    auto o = std::make_shared<op_state>();
    o->plan = std::move(plan);
    o->finish = std::move(finish);
    submit(std::move(o));
  }

  // --- prune (maintenance and store) ----------------------------------------------------------

  /// Whether the task finished before `before` (what retention and prune remove). Reads a
  /// stored record's finish time from its stored form only when it is finished at all.
  static bool finished_before(const entry& e, time_point before) {
    if (!is_terminal(e.status())) return false;
    auto at = e.is_stored() ? e.view().finished_at : e.rec().finished_at;
    return at && *at < before;
  }

  /// Removes the records for which pred(entry) holds.
  template <class Pred, class Done>
  void remove_where(Pred pred, Done done) {
    auto removed = std::make_shared<std::vector<std::string>>();
    run(
        [this, pred, removed]() -> step {
          step s;
          removed->clear();
          for (auto& [id, e] : records) {
            if (!pred(e)) continue;
            if (is_busy(id)) {
              s.wait_on = id;
              return s;
            }
            removed->push_back(id);
          }
          if (removed->empty()) return s;
          encode_removes(*removed, s.bodies);
          s.ids = *removed;
          s.commit = [this, removed] {
            for (auto& id : *removed)
              if (auto it = records.find(id); it != records.end()) erase(it);
          };
          return s;
        },
        [done, removed](error_code ec) mutable {
          done(ec, ec ? std::vector<std::string>{} : std::move(*removed));
        });
  }

  void prune_expired() {
    if (opts.retention <= duration::zero() || ro) return;
    auto before = clk->now() - opts.retention;
    remove_where([before](const entry& e) { return finished_before(e, before); },
                 [warn = opts.on_warning](error_code ec, std::vector<std::string>) {
                   if (ec && warn) warn("retention prune failed: " + ec.message());
                 });
  }

  // --- compaction -----------------------------------------------------------------------------

  bool wants_compaction() const {
    if (opts.compact_min_bytes == 0 || ro) return false;
    std::lock_guard lk(mutex);
    double live = avg_record_bytes * static_cast<double>(records.size());
    return journal_bytes > opts.compact_min_bytes &&
           static_cast<double>(journal_bytes) > opts.compact_ratio * live;
  }

  void compact(error_code& ec, std::string* detail) {
    std::lock_guard one(compact_mutex);
    ec = {};
    if (ro) {
      ec = errc::store_closed;
      return;
    }
    struct live_record {
      std::uint64_t seq;
      std::shared_ptr<task_record> ptr;  // or, while it is still stored:
      stored_record stored;
    };
    std::vector<live_record> live;
    std::vector<std::string> rest;  // queue pauses and schedules (few)
    std::uint64_t n = 0;
    std::vector<op_ptr> resume;
    // The references to live records are dropped under the mutex, so that entry::mut() and
    // entry::set() see use_count() == 1 only once this thread is done reading the record.
    // In chunks, so that writes are not held up while a million references go.
    auto drop_live = [&] {
      constexpr std::size_t chunk = 4096;
      while (!live.empty()) {
        std::lock_guard lk(mutex);
        live.resize(live.size() - std::min(chunk, live.size()));
      }
    };
    {
      std::unique_lock lk(mutex);
      if (closed) {
        ec = errc::store_closed;
        return;
      }
      gate = true;
      idle_cv.wait(lk, [&] { return in_flight == 0 || closed; });
      if (closed) {
        gate = false;
        resume.swap(gated);
        lk.unlock();
        for (auto& o : resume) submit(std::move(o));  // they fail with store_closed
        ec = errc::store_closed;
        return;
      }
      // Nothing is in flight and nothing new starts: the journal holds exactly the state.
      // Writes are held only while references are taken and the journal rotates; the records
      // are encoded after the gate opens (copy-on-write keeps what is taken here unchanged).
      live.reserve(records.size());
      for (auto& [id, e] : records) live.push_back({e.seq, e.ptr, e.stored});
      for (auto& q : paused) rest.push_back(encode_pause(q, true));
      for (auto& [name, r] : schedules) rest.push_back(encode_schedule_save(r));
      std::string d;
      n = writer.rotate(ec, &d);
      if (!ec) journal_bytes = 0;
      gate = false;
      resume.swap(gated);
      if (ec && detail) *detail = d;
    }
    for (auto& o : resume) submit(std::move(o));
    if (ec) return drop_live();
    std::vector<std::string> bodies;
    bodies.reserve(live.size() + rest.size());
    std::uint64_t bytes = 0;
    for (auto& [seq, rec, stored] : live) {
      bodies.push_back(rec ? encode_insert(seq, *rec) : encode_insert(seq, stored.bytes));
      bytes += bodies.back().size();
    }
    for (auto& b : rest) bodies.push_back(std::move(b));
    if (!live.empty()) {
      std::lock_guard lk(mutex);
      avg_record_bytes = double(bytes) / double(live.size());
    }
    drop_live();
    auto snap = dir / snapshot_file_name;
    write_snapshot(snap, n, bodies, ec, detail);
    if (ec) return;
    writer.remove_segments_before(n, ec, detail);
    std::error_code fe;
    auto size = fs::file_size(snap, fe);
    std::lock_guard lk(mutex);
    snapshot_bytes = fe ? 0 : size;
    ++compactions;
  }

  void maintenance() {
    std::unique_lock lk(maint_mutex);
    while (!stopping) {
      maint_cv.wait_for(lk, opts.maintenance_interval, [&] { return stopping; });
      if (stopping) break;
      lk.unlock();
      prune_expired();
      if (wants_compaction()) {
        error_code ec;
        std::string d;
        compact(ec, &d);
        if (ec && opts.on_warning) opts.on_warning("compaction failed: " + d);
      }
      lk.lock();
    }
  }

  void close() noexcept {
    {
      std::lock_guard lk(maint_mutex);
      stopping = true;
    }
    maint_cv.notify_all();
    if (maint.joinable() && maint.get_id() != std::this_thread::get_id()) maint.join();
    {
      std::lock_guard lk(mutex);
      closed = true;
      writer.close();
    }
    idle_cv.notify_all();
    lock.release();
  }
};

namespace {

using state = backend::state;

// --- the Store ------------------------------------------------------------------------------

class file_store final : public taskq::store {
 public:
  explicit file_store(state& s) : s_(s) {}
  bool durable() const noexcept override { return true; }

 protected:
  void do_insert(std::vector<task_record> recs, handler<void(error_code)> h) override {
    auto hp = share(std::move(h));
    auto in = std::make_shared<std::vector<task_record>>(std::move(recs));
    auto self = s_.shared_from_this();
    s_.run(
        [st = self.get(), in]() -> step {
          step s;
          std::unordered_set<std::string_view> ids, keys;
          for (const auto& r : *in) {
            if (r.id.empty()) {
              s.ec = errc::blank_id;
              return s;
            }
            if (st->records.count(r.id) || !ids.insert(r.id).second) {
              s.ec = errc::duplicate_id;
              return s;
            }
            if (st->is_busy(r.id)) {
              s.wait_on = r.id;
              return s;
            }
            if (taskq::detail::holds_unique_key(r)) {
              if (st->unique_holders.count(r.unique_key) || !keys.insert(r.unique_key).second) {
                s.ec = errc::duplicate_unique_key;
                return s;
              }
              if (auto p = st->pending_keys.find(r.unique_key); p != st->pending_keys.end()) {
                s.wait_on = p->second;
                return s;
              }
            }
          }
          if (in->empty()) return s;
          auto seq = st->next_seq;
          st->next_seq += in->size();
          s.bodies.reserve(in->size());
          s.ids.reserve(in->size());
          for (std::size_t i = 0; i < in->size(); ++i) {
            const auto& r = (*in)[i];
            s.bodies.push_back(encode_insert(seq + i, r));
            s.ids.push_back(r.id);
            if (taskq::detail::holds_unique_key(r)) s.keys.push_back(r.unique_key);
          }
          s.commit = [st, in, seq] {
            for (std::size_t i = 0; i < in->size(); ++i) st->add(seq + i, std::move((*in)[i]));
          };
          return s;
        },
        [self, hp](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec);
        });
  }

  void do_get(std::string id, handler<void(error_code, task_record)> h) override {
    error_code ec;
    task_record r;
    {
      std::lock_guard lock(s_.mutex);
      auto it = s_.records.find(id);
      if (it == s_.records.end())
        ec = errc::not_found;
      else
        r = it->second.rec();
    }
    taskq::detail::post_completion(std::move(h), s_.ex, ec, std::move(r));
  }

  void do_claim(claim_params p, handler<void(error_code, claim_result)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto out = std::make_shared<claim_result>();
    auto in = std::make_shared<claim_params>(std::move(p));
    s_.run(
        [st = self.get(), in, out]() -> step {
          step s;
          *out = claim_result{};
          for (const auto& id : in->ids) {
            if (st->is_busy(id)) {
              s.wait_on = id;
              return s;
            }
          }
          struct change {
            std::string id;
            taskq::detail::claim_outcome outcome;
            task_record next;
          };
          auto changes = std::make_shared<std::vector<change>>();
          std::unordered_set<std::string_view> seen;
          for (const auto& id : in->ids) {
            auto it = st->records.find(id);
            if (it == st->records.end() || !seen.insert(id).second) {
              out->skipped.push_back(id);
              continue;
            }
            task_record next = it->second.rec();
            auto outcome = taskq::detail::apply_claim(next, in->now);
            if (outcome == taskq::detail::claim_outcome::skipped &&
                next.status == it->second.rec().status) {
              out->skipped.push_back(id);
              continue;
            }
            s.bodies.push_back(encode_id_time(op::claim, id, in->now));
            s.ids.push_back(id);
            changes->push_back({id, outcome, std::move(next)});
          }
          if (s.bodies.empty()) return s;
          s.commit = [st, changes, out] {
            for (auto& c : *changes) {
              auto it = st->records.find(c.id);
              if (it == st->records.end()) continue;
              st->commit(it->second, std::move(c.next));
              switch (c.outcome) {
                case taskq::detail::claim_outcome::claimed:
                  out->claimed.push_back(it->second.rec());
                  break;
                case taskq::detail::claim_outcome::dropped:
                  out->dropped.push_back(it->second.rec());
                  break;
                case taskq::detail::claim_outcome::skipped:
                  out->skipped.push_back(c.id);
                  break;
              }
            }
          };
          return s;
        },
        [self, hp, out](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec,
                                         ec ? claim_result{} : std::move(*out));
        });
  }

  void do_update(task_update u, handler<void(error_code, task_record)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto in = std::make_shared<task_update>(std::move(u));
    auto after = std::make_shared<task_record>();
    s_.run(
        [st = self.get(), in, after]() -> step {
          step s;
          if (st->is_busy(in->id)) {
            s.wait_on = in->id;
            return s;
          }
          auto it = st->records.find(in->id);
          if (it == st->records.end()) {
            s.ec = errc::not_found;
            return s;
          }
          task_record next = it->second.rec();
          s.ec = taskq::detail::apply_update(next, *in);
          if (!s.ec && taskq::detail::holds_unique_key(next) &&
              !taskq::detail::holds_unique_key(it->second.rec())) {
            auto holder = st->unique_holders.find(next.unique_key);
            if ((holder != st->unique_holders.end() && holder->second != next.id) ||
                st->pending_keys.count(next.unique_key))
              s.ec = errc::duplicate_unique_key;
          }
          if (s.ec) return s;
          std::uint64_t seq = 0;
          if (takes_new_position(it->second.rec(), *in, next)) seq = st->next_seq++;
          s.bodies.push_back(encode_update(seq, *in));
          s.ids.push_back(in->id);
          auto shared_next = std::make_shared<task_record>(std::move(next));
          s.commit = [st, id = in->id, shared_next, seq, after] {
            auto it = st->records.find(id);
            if (it == st->records.end()) return;
            st->commit(it->second, std::move(*shared_next));
            if (seq) it->second.seq = seq;
            *after = it->second.rec();
          };
          return s;
        },
        [self, hp, after](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec,
                                         ec ? task_record{} : std::move(*after));
        });
  }

  void do_update_batch(std::vector<task_update> us,
                       handler<void(error_code, std::vector<update_result>)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto in = std::make_shared<std::vector<task_update>>(std::move(us));
    auto out = std::make_shared<std::vector<update_result>>();
    s_.run(
        [st = self.get(), in, out]() -> step {
          step s;
          for (const auto& u : *in) {
            if (st->is_busy(u.id)) {
              s.wait_on = u.id;
              return s;
            }
          }
          out->assign(in->size(), update_result{});
          // Updates of one id in the batch apply in turn, each to the result of the last.
          struct change {
            std::size_t index;
            std::uint64_t seq;
          };
          auto nexts = std::make_shared<std::unordered_map<std::string, task_record>>();
          auto changes = std::make_shared<std::vector<change>>();
          for (std::size_t i = 0; i < in->size(); ++i) {
            const auto& u = (*in)[i];
            auto it = st->records.find(u.id);
            if (it == st->records.end()) {
              (*out)[i].error = errc::not_found;
              continue;
            }
            auto [n, fresh] = nexts->try_emplace(u.id);
            if (fresh) n->second = it->second.rec();
            task_record next = n->second;
            auto ec = taskq::detail::apply_update(next, u);
            if (!ec && taskq::detail::holds_unique_key(next) &&
                !taskq::detail::holds_unique_key(n->second)) {
              auto holder = st->unique_holders.find(next.unique_key);
              if ((holder != st->unique_holders.end() && holder->second != next.id) ||
                  st->pending_keys.count(next.unique_key))
                ec = errc::duplicate_unique_key;
            }
            if (ec) {
              (*out)[i].error = ec;
              continue;
            }
            std::uint64_t seq = takes_new_position(n->second, u, next) ? st->next_seq++ : 0;
            n->second = std::move(next);
            s.bodies.push_back(encode_update(seq, u));
            if (std::find(s.ids.begin(), s.ids.end(), u.id) == s.ids.end()) s.ids.push_back(u.id);
            changes->push_back({i, seq});
          }
          if (s.bodies.empty()) return s;
          s.commit = [st, in, out, nexts, changes] {
            for (auto& [id, next] : *nexts) {
              auto it = st->records.find(id);
              if (it != st->records.end() && next.id == id) st->commit(it->second, std::move(next));
            }
            for (auto& c : *changes) {
              auto it = st->records.find((*in)[c.index].id);
              if (it == st->records.end()) continue;
              if (c.seq) it->second.seq = c.seq;
              if ((*in)[c.index].return_record) (*out)[c.index].record = it->second.rec();
            }
          };
          return s;
        },
        [self, hp, out](error_code ec) {
          if (ec) out->clear();
          taskq::detail::post_completion(std::move(*hp), self->ex, ec, std::move(*out));
        });
  }

  void do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto in = std::make_shared<heartbeat_params>(std::move(p));
    auto cancel = std::make_shared<bool>(false);
    s_.run(
        [st = self.get(), in, cancel]() -> step {
          step s;
          if (st->is_busy(in->id)) {
            s.wait_on = in->id;
            return s;
          }
          auto it = st->records.find(in->id);
          if (it == st->records.end()) {
            s.ec = errc::not_found;
            return s;
          }
          task_record next = it->second.rec();
          s.ec = taskq::detail::apply_heartbeat(next, *in, *cancel);
          if (s.ec) return s;
          s.bodies.push_back(encode_heartbeat(*in));
          s.ids.push_back(in->id);
          auto shared_next = std::make_shared<task_record>(std::move(next));
          s.commit = [st, id = in->id, shared_next] {
            auto it = st->records.find(id);
            if (it != st->records.end()) it->second.set(std::move(*shared_next));
          };
          return s;
        },
        [self, hp, cancel](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec, !ec && *cancel);
        });
  }

  void do_append_log(std::string id, log_entry e, handler<void(error_code)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto in = std::make_shared<std::pair<std::string, log_entry>>(std::move(id), std::move(e));
    s_.run(
        [st = self.get(), in]() -> step {
          step s;
          if (st->is_busy(in->first)) {
            s.wait_on = in->first;
            return s;
          }
          if (!st->records.count(in->first)) {
            s.ec = errc::not_found;
            return s;
          }
          s.bodies.push_back(encode_log(in->first, in->second));
          s.ids.push_back(in->first);
          s.commit = [st, in] {
            auto it = st->records.find(in->first);
            if (it != st->records.end()) it->second.mut().log.push_back(std::move(in->second));
          };
          return s;
        },
        [self, hp](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec);
        });
  }

  void do_request_cancel(std::string id, time_point now,
                         handler<void(error_code, task_record)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto after = std::make_shared<task_record>();
    s_.run(
        [st = self.get(), id, now, after]() -> step {
          step s;
          if (st->is_busy(id)) {
            s.wait_on = id;
            return s;
          }
          auto it = st->records.find(id);
          if (it == st->records.end()) {
            s.ec = errc::not_found;
            return s;
          }
          task_record next = it->second.rec();
          s.ec = taskq::detail::apply_cancel_request(next, now);
          if (s.ec) {
            *after = it->second.rec();
            return s;
          }
          s.bodies.push_back(encode_id_time(op::cancel, id, now));
          s.ids.push_back(id);
          auto shared_next = std::make_shared<task_record>(std::move(next));
          s.commit = [st, id, shared_next, after] {
            auto it = st->records.find(id);
            if (it == st->records.end()) return;
            st->commit(it->second, std::move(*shared_next));
            *after = it->second.rec();
          };
          return s;
        },
        [self, hp, after](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec, std::move(*after));
        });
  }

  void do_list(task_filter f, handler<void(error_code, task_page)> h) override {
    task_page page;
    {
      std::lock_guard lock(s_.mutex);
      auto it = f.after_id.empty() ? s_.records.begin() : s_.records.upper_bound(f.after_id);
      for (; it != s_.records.end(); ++it) {
        if (!matches(it->second.rec(), f)) continue;
        if (page.records.size() == f.limit) {
          page.next_cursor = page.records.back().id;
          break;
        }
        page.records.push_back(it->second.rec());
      }
    }
    taskq::detail::post_completion(std::move(h), s_.ex, error_code{}, std::move(page));
  }

  void do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    s_.remove_where(
        [f = std::move(f)](const state::entry& e) {
          return e.status() != task_status::running && matches(e.rec(), f);
        },
        [self, hp](error_code ec, std::vector<std::string> ids) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec, std::move(ids));
        });
  }

  void do_prune(time_point before, handler<void(error_code, std::size_t)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    s_.remove_where([before](const state::entry& e) { return state::finished_before(e, before); },
                    [self, hp](error_code ec, std::vector<std::string> ids) {
                      taskq::detail::post_completion(std::move(*hp), self->ex, ec, ids.size());
                    });
  }

  void do_counts(handler<void(error_code, task_counts)> h) override {
    task_counts c;
    {
      std::lock_guard lock(s_.mutex);
      c = s_.counts;
    }
    c.drop_empty_rows();
    taskq::detail::post_completion(std::move(h), s_.ex, error_code{}, std::move(c));
  }

 private:
  state& s_;
};

// --- the Queue: the in-memory queue, rebuilt on open; pauses are journaled --------------------

class file_queue final : public taskq::queue {
 public:
  explicit file_queue(state& s) : s_(s) {}

  bool is_paused(const std::string& queue_name) const override {
    return s_.mq->is_paused(queue_name);
  }

 protected:
  void do_push(push_params p, handler<void(error_code)> h) override {
    if (s_.ro)
      return taskq::detail::post_completion(std::move(h), s_.ex, error_code(errc::store_closed));
    s_.mq->async_push(std::move(p), std::move(h));
  }
  void do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) override {
    s_.mq->async_reserve(std::move(p), std::move(h));
  }
  void do_ack(std::vector<lease> l, handler<void(error_code, std::size_t)> h) override {
    s_.mq->async_ack(std::move(l), std::move(h));
  }
  void do_extend(std::vector<lease> l, duration lease_for,
                 handler<void(error_code, std::vector<bool>)> h) override {
    s_.mq->async_extend(std::move(l), lease_for, std::move(h));
  }
  void do_release(release_params p, handler<void(error_code)> h) override {
    s_.mq->async_release(std::move(p), std::move(h));
  }
  void do_remove(std::string id, handler<void(error_code, bool)> h) override {
    s_.mq->async_remove(std::move(id), std::move(h));
  }
  void do_set_paused(std::string queue_name, bool paused, handler<void(error_code)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto key = std::make_shared<std::string>(queue_key(queue_name));
    s_.run(
        [st = self.get(), key, queue_name, paused]() -> step {
          step s;
          if (st->is_busy(*key)) {
            s.wait_on = *key;
            return s;
          }
          if (st->paused.count(queue_name) == (paused ? 1u : 0u)) return s;  // unchanged
          s.bodies.push_back(encode_pause(queue_name, paused));
          s.ids.push_back(*key);
          s.commit = [st, queue_name, paused] {
            if (paused)
              st->paused.insert(queue_name);
            else
              st->paused.erase(queue_name);
          };
          return s;
        },
        [self, hp, queue_name, paused](error_code ec) {
          if (ec) return taskq::detail::post_completion(std::move(*hp), self->ex, ec);
          self->mq->async_set_paused(queue_name, paused, std::move(*hp));
        });
  }
  void do_stats(std::string queue_name, handler<void(error_code, queue_stats)> h) override {
    s_.mq->async_stats(std::move(queue_name), std::move(h));
  }

 private:
  state& s_;
};

// --- the Schedule Store: schedule records in the same journal -----------------------------------

class file_schedule_store final : public taskq::schedule_store {
 public:
  explicit file_schedule_store(state& s) : s_(s) {}

 protected:
  void do_load(std::string name,
               handler<void(error_code, std::optional<schedule_record>)> h) override {
    std::optional<schedule_record> out;
    {
      std::lock_guard lock(s_.mutex);
      if (auto it = s_.schedules.find(name); it != s_.schedules.end()) out = it->second;
    }
    taskq::detail::post_completion(std::move(h), s_.ex, error_code{}, std::move(out));
  }

  void do_load_all(handler<void(error_code, std::vector<schedule_record>)> h) override {
    std::vector<schedule_record> out;
    {
      std::lock_guard lock(s_.mutex);
      out.reserve(s_.schedules.size());
      for (auto& [name, r] : s_.schedules) out.push_back(r);
    }
    taskq::detail::post_completion(std::move(h), s_.ex, error_code{}, std::move(out));
  }

  void do_save(schedule_record r, handler<void(error_code)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    if (r.definition.name.empty())
      return taskq::detail::post_completion(std::move(*hp), self->ex,
                                            error_code(errc::invalid_schedule));
    auto in = std::make_shared<schedule_record>(std::move(r));
    s_.run(
        [st = self.get(), in]() -> step {
          step s;
          auto key = schedule_key(in->definition.name);
          if (st->is_busy(key)) {
            s.wait_on = key;
            return s;
          }
          auto merged = std::make_shared<schedule_record>(*in);
          if (auto it = st->schedules.find(in->definition.name); it != st->schedules.end())
            taskq::detail::merge_on_save(it->second, *merged);
          s.bodies.push_back(encode_schedule_save(*merged));
          s.ids.push_back(std::move(key));
          s.commit = [st, merged] {
            auto name = merged->definition.name;
            st->schedules.insert_or_assign(std::move(name), std::move(*merged));
          };
          return s;
        },
        [self, hp](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec);
        });
  }

  void do_remove(std::string name, handler<void(error_code, bool)> h) override {
    auto hp = share(std::move(h));
    auto self = s_.shared_from_this();
    auto removed = std::make_shared<bool>(false);
    s_.run(
        [st = self.get(), name, removed]() -> step {
          step s;
          *removed = false;
          auto key = schedule_key(name);
          if (st->is_busy(key)) {
            s.wait_on = key;
            return s;
          }
          if (!st->schedules.count(name)) return s;  // nothing to remove
          s.bodies.push_back(encode_schedule_remove(name));
          s.ids.push_back(std::move(key));
          s.commit = [st, name, removed] { *removed = st->schedules.erase(name) > 0; };
          return s;
        },
        [self, hp, removed](error_code ec) {
          taskq::detail::post_completion(std::move(*hp), self->ex, ec, !ec && *removed);
        });
  }

 private:
  state& s_;
};

std::shared_ptr<state> make_state(asio::any_io_executor ex, const fs::path& dir,
                                  backend_options opts, bool ro) {
  auto s = std::make_shared<state>();
  s->ex = std::move(ex);
  s->clk = opts.time ? opts.time : &default_clock();
  s->opts = std::move(opts);
  s->dir = dir;
  s->ro = ro;
  s->mq = std::make_unique<memory::queue>(s->ex, *s->clk);
  s->fq = std::make_unique<file_queue>(*s);
  s->fs = std::make_unique<file_store>(*s);
  s->fss = std::make_unique<file_schedule_store>(*s);
  return s;
}

}  // namespace

// --- backend ----------------------------------------------------------------------------------

backend::backend(std::shared_ptr<state> s) noexcept : state_(std::move(s)) {}

backend::~backend() {
  close();
}

std::unique_ptr<backend> backend::open(asio::any_io_executor ex, const fs::path& dir,
                                       backend_options opts, error_code& ec, std::string* detail) {
  ec = {};
  std::string d;
  auto fail = [&](error_code e) -> std::unique_ptr<backend> {
    ec = e;
    if (detail) *detail = d;
    return nullptr;
  };
  if (opts.compact_ratio <= 0 || opts.maintenance_interval.count() <= 0 ||
      opts.retention < duration::zero()) {
    d = "file backend option 'compact_ratio', 'maintenance_interval' or 'retention' is out of "
        "range";
    return fail(errc::invalid_option);
  }
  auto s = make_state(std::move(ex), dir, std::move(opts), false);
  s->lock = directory_lock::acquire(dir, ec, &d);
  if (ec) return fail(ec);
  // A snapshot being written when the process died; the complete one, if any, is in place.
  std::error_code fe;
  fs::remove(dir / (std::string(snapshot_file_name) + ".tmp"), fe);
  if (auto e = s->load(d)) {
    s->lock.release();
    return fail(e);
  }
  if (!s->recovery.warning.empty() && s->opts.on_warning) s->opts.on_warning(s->recovery.warning);
  s->rebuild_queue();
  s->maint = std::thread([st = s.get()] { st->maintenance(); });
  std::unique_ptr<backend> b(new backend(s));
  if (s->opts.control.enabled) {  // the control channel (src/file_control.cpp)
    std::string why;
    b->control_ = detail::start_control(dir, s->opts.control,
                                        {.ex = s->ex,
                                         .queue = s->fq.get(),
                                         .store = s->fs.get(),
                                         .schedules = s->fss.get(),
                                         .time = s->opts.time,
                                         .keep_alive = s},
                                        why);
    if (!b->control_ && s->opts.on_warning) s->opts.on_warning(why);
  }
  return b;
}

std::unique_ptr<backend> backend::open(asio::any_io_executor ex, const fs::path& dir,
                                       backend_options opts) {
  error_code ec;
  std::string d;
  auto b = open(std::move(ex), dir, std::move(opts), ec, &d);
  throw_if(ec, d);
  return b;
}

namespace {

/// The id in the header of the snapshot at `path`; 0 when there is none (or it is unreadable).
std::uint64_t current_snapshot_id(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char header[journal_header_size];
  if (!in.read(header, sizeof header)) return 0;
  auto r = scan_journal(std::string_view(header, sizeof header), file_kind::snapshot, path.string(),
                        [](const journal_record&) {});
  return r.header_valid ? r.id : 0;
}

/// Loads the store in `dir` without the lock, as one consistent cut of it.
///
/// The owner may compact meanwhile: between reading the snapshot and reading the segments
/// after it, a compaction can replace the snapshot and remove those segments. The journal
/// reader refuses a journal that does not start at the snapshot's segment, so such a load
/// fails (missing segment, vanished file, or a record that does not apply) instead of showing
/// a subset. A failure is retried when the snapshot changed while the load ran (the store
/// moved on, it is not damaged); otherwise it is reported as it is.
std::shared_ptr<state> load_read_only(asio::any_io_executor ex, const fs::path& dir, error_code& ec,
                                      std::string& detail) {
  ec = {};
  std::error_code fe;
  if (!fs::is_directory(dir, fe)) {
    ec = errc::io_error;
    detail = dir.string() + ": no such store directory";
    return nullptr;
  }
  const fs::path snap = dir / snapshot_file_name;
  if (!fs::exists(snap, fe)) {
    auto segments = list_segments(dir, ec, &detail);
    if (ec) return nullptr;
    if (segments.empty()) {
      ec = errc::io_error;
      detail = dir.string() + ": not a taskq store (it has no " + snapshot_file_name +
               " and no journal segment)";
      return nullptr;
    }
  }
  constexpr int max_attempts = 100;
  for (int attempt = 1;; ++attempt) {
    auto s = make_state(ex, dir, {}, true);
    detail.clear();
    const auto before = current_snapshot_id(snap);
    if (!(ec = s->load(detail))) return s;
    if (current_snapshot_id(snap) == before) return nullptr;  // no compaction: real damage
    if (attempt == max_attempts) {
      detail =
          dir.string() + ": the store was compacted " + std::to_string(max_attempts) +
          " times while being read, so no consistent view was seen; try again (last: " + detail +
          ")";
      ec = errc::backend_unavailable;
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(attempt, 20)));
  }
}

}  // namespace

std::unique_ptr<backend> backend::open_read_only(asio::any_io_executor ex, const fs::path& dir,
                                                 error_code& ec, std::string* detail) {
  std::string d;
  auto s = load_read_only(std::move(ex), dir, ec, d);
  if (!s) {
    if (detail) *detail = d;
    return nullptr;
  }
  s->rebuild_queue();
  return std::unique_ptr<backend>(new backend(std::move(s)));
}

taskq::queue& backend::queue() noexcept {
  return *state_->fq;
}
taskq::store& backend::store() noexcept {
  return *state_->fs;
}
taskq::schedule_store& backend::schedules() noexcept {
  return *state_->fss;
}
const backend_recovery& backend::recovery() const noexcept {
  return state_->recovery;
}
bool backend::read_only() const noexcept {
  return state_->ro;
}

backend_info backend::info() const {
  backend_info i;
  i.journal_bytes = state_->segments_bytes();
  std::error_code fe;
  auto snap = fs::file_size(state_->dir / snapshot_file_name, fe);
  i.snapshot_bytes = fe ? 0 : snap;
  {
    std::lock_guard lk(state_->mutex);
    i.live_bytes = static_cast<std::uint64_t>(state_->avg_record_bytes *
                                              static_cast<double>(state_->records.size()));
    i.compactions = state_->compactions;
  }
  std::lock_guard lk(state_->mutex);
  if (!state_->ro && !state_->closed) i.journal = state_->writer.stats();
  return i;
}

void backend::compact(error_code& ec, std::string* detail) {
  // It waits for the writes in flight, whose completions may need this very thread.
  if (taskq::detail::running_in_this_thread(state_->ex)) {
    ec = errc::blocking_on_io_thread;
    if (detail) *detail = "backend::compact called from a thread running its io_context";
    return;
  }
  state_->compact(ec, detail);
}
void backend::prune_expired() {
  state_->prune_expired();
}
void backend::close() noexcept {
  if (control_) detail::stop_control(*control_);
  state_->close();
}

std::uint64_t verify_store(const fs::path& dir, error_code& ec, std::string& detail,
                           std::string& warning) {
  asio::io_context io;
  auto s = load_read_only(io.get_executor(), dir, ec, detail);
  if (!s) return 0;
  warning = s->recovery.warning;
  return s->recovery.snapshot_records + s->recovery.journal_records;
}

namespace detail {

error_code replay_bodies(const std::vector<std::string_view>& bodies, std::string& detail,
                         bool& consistent) {
  consistent = true;
  asio::io_context io;
  auto s = make_state(io.get_executor(), {}, {}, true);
  for (std::size_t i = 0; i < bodies.size(); ++i) {
    try {
      s->apply_body(bodies[i]);
    } catch (const std::exception& e) {
      detail = "body " + std::to_string(i) + ": " + e.what();
      return errc::invalid_record;
    }
  }
  // Recovery's queue index comes from the stored forms; then every stored record must build,
  // into what its stored form said.
  try {
    s->rebuild_queue();
    for (auto& [id, e] : s->records) {
      if (!e.is_stored()) continue;
      const auto v = e.view();
      const auto stored = v.entry();
      const auto status = e.status();
      const bool holds = v.holds_unique_key();
      const auto finished = v.finished_at;
      const auto& r = e.rec();
      const auto built = entry_of(r);
      if (r.status != status || holds != taskq::detail::holds_unique_key(r) ||
          finished != r.finished_at || built.id != stored.id || built.queue != stored.queue ||
          built.type != stored.type || built.concurrency_key != stored.concurrency_key ||
          built.priority != stored.priority || built.available_at != stored.available_at)
        consistent = false;
    }
  } catch (const std::exception&) {
    consistent = false;
    return {};
  }
  // The bookkeeping replay keeps incrementally must match a recount from the records.
  task_counts recount;
  std::size_t holders = 0;
  for (auto& [id, e] : s->records) {
    recount.add(e.rec(), +1);
    if (id != e.rec().id) consistent = false;
    if (taskq::detail::holds_unique_key(e.rec())) {
      ++holders;
      auto it = s->unique_holders.find(e.rec().unique_key);
      if (it == s->unique_holders.end() || it->second != id) consistent = false;
    }
  }
  auto kept = s->counts;
  kept.drop_empty_rows();
  if (recount.total != kept.total || recount.by_type != kept.by_type ||
      recount.by_queue != kept.by_queue || holders != s->unique_holders.size())
    consistent = false;
  io.run();
  return {};
}

}  // namespace detail

}  // namespace taskq::file
