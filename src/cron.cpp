// Cron parsing and next-fire computation (see include/taskq/cron.hpp).
//
// next_after works in two steps: find the next matching *local* wall-clock second by
// jumping field by field over per-field bitsets (month, then day, hour, minute, second),
// then map that local time to UTC with the DST rule documented in the header. The rule
// makes the local->UTC map monotonic, which is what lets the search run on local time.
#include <taskq/cron.hpp>
#include <taskq/duration.hpp>

#include <date/tz.h>
#include <fmt/format.h>

#include <array>
#include <bit>
#include <cctype>
#include <charconv>
#include <exception>
#include <vector>

namespace taskq {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::int64_t seconds_per_day = 86'400;

// ---- civil calendar arithmetic (Howard Hinnant's public-domain algorithms) --------------

constexpr std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct civil_date {
  std::int64_t year;
  unsigned month;
  unsigned day;
};

constexpr civil_date civil_from_days(std::int64_t z) noexcept {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {y + (m <= 2), m, d};
}

constexpr bool is_leap(std::int64_t y) noexcept {
  return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
}

constexpr unsigned days_in_month(std::int64_t y, unsigned m) noexcept {
  constexpr std::array<unsigned char, 13> days{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : days[m];
}

// 0 = Sunday.
constexpr unsigned weekday_from_days(std::int64_t z) noexcept {
  return static_cast<unsigned>(z >= -4 ? (z + 4) % 7 : (z + 5) % 7 + 6);
}

constexpr std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

// The lowest set bit of `mask` at position >= from, or -1.
inline int next_bit(std::uint64_t mask, unsigned from) noexcept {
  if (from >= 64) return -1;
  const std::uint64_t m = mask >> from;
  return m == 0 ? -1 : static_cast<int>(from) + std::countr_zero(m);
}

// system_clock::time_point counts nanoseconds in 64 bits: it ends in April 2262.
constexpr std::int64_t last_year = 2261;

}  // namespace

namespace detail {

// Builds a cron_expression from text, or explains precisely what is wrong with it.
struct cron_parser {
  struct field_spec {
    const char* name;
    unsigned min;
    unsigned max;
    const std::array<const char*, 13>* names;  // index = value, nullptr when no names
  };

  static constexpr std::array<const char*, 13> month_names{
      nullptr, "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
  static constexpr std::array<const char*, 13> weekday_names{
      "SUN",   "MON",   "TUE",   "WED",   "THU",   "FRI",  "SAT",
      nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};

  static constexpr std::array<field_spec, 6> specs{{
      {"second", 0, 59, nullptr},
      {"minute", 0, 59, nullptr},
      {"hour", 0, 23, nullptr},
      {"day-of-month", 1, 31, nullptr},
      {"month", 1, 12, &month_names},
      {"day-of-week", 0, 7, &weekday_names},
  }};
  enum field_index { second, minute, hour, day_of_month, month, day_of_week };

  std::string_view expr;  // the whole expression, quoted in every error
  std::string& detail;

  // Context of the field being parsed, for error messages.
  const field_spec* spec = nullptr;
  std::size_t position = 0;
  std::size_t field_count = 0;

  bool fail(const std::string& what) {
    detail = fmt::format("cron field '{}' (field {} of {}): {} in '{}'", spec->name, position,
                         field_count, what, expr);
    return false;
  }

  static bool iequals(std::string_view a, const char* b) {
    std::string_view bv(b);
    if (a.size() != bv.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::toupper(static_cast<unsigned char>(a[i])) != bv[i]) return false;
    }
    return true;
  }

  // Quartz-style specials (L, W, LW, L-3, 5L, 15W, 5#3) get their own message so users
  // know the syntax was recognised but is not supported, rather than just "invalid".
  static bool looks_like_quartz_special(std::string_view tok) {
    if (tok.find('#') != std::string_view::npos) return true;
    if (tok.empty()) return false;
    std::string up;
    for (char c : tok) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (up == "L" || up == "LW" || up.starts_with("L-")) return true;
    const char last = up.back();
    if (last != 'L' && last != 'W') return false;
    for (std::size_t i = 0; i + 1 < up.size(); ++i) {
      if (up[i] < '0' || up[i] > '9') return false;
    }
    return true;
  }

  // One value: a number or (month/day-of-week only) a name.
  bool parse_value(std::string_view tok, unsigned& out) {
    if (tok.empty()) return fail("missing value");
    if (tok.front() >= '0' && tok.front() <= '9') {
      unsigned v = 0;
      auto [ptr, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (ec == std::errc::result_out_of_range) {
        return fail(fmt::format("value {} out of range {}-{}", tok, spec->min, spec->max));
      }
      if (ec != std::errc() || ptr != tok.data() + tok.size()) {
        if (looks_like_quartz_special(tok)) return fail_special(tok);
        return fail(fmt::format("invalid token '{}'", tok));
      }
      if (v < spec->min || v > spec->max) {
        return fail(fmt::format("value {} out of range {}-{}", tok, spec->min, spec->max));
      }
      out = v;
      return true;
    }
    if (spec->names != nullptr) {
      for (unsigned i = 0; i < spec->names->size(); ++i) {
        const char* n = (*spec->names)[i];
        if (n != nullptr && iequals(tok, n)) {
          out = i;
          return true;
        }
      }
    }
    if (looks_like_quartz_special(tok)) return fail_special(tok);
    if (spec->names != nullptr) {
      return fail(fmt::format("invalid token '{}' (expected a number or a name such as {})", tok,
                              spec == &specs[month] ? "JAN" : "MON"));
    }
    return fail(fmt::format("invalid token '{}'", tok));
  }

  bool fail_special(std::string_view tok) {
    return fail(fmt::format("'{}' uses the L, W or # special, which is not supported", tok));
  }

  // One comma-separated element: `*`, `?`, N, A-B, with an optional /STEP.
  bool parse_element(std::string_view el, std::uint64_t& mask) {
    if (el.empty()) return fail("empty list element");
    std::string_view range = el;
    std::string_view step_text;
    bool has_step = false;
    if (auto slash = el.find('/'); slash != std::string_view::npos) {
      range = el.substr(0, slash);
      step_text = el.substr(slash + 1);
      has_step = true;
    }
    unsigned lo = spec->min;
    unsigned hi = spec->max;
    if (spec == &specs[day_of_week]) hi = 6;  // '*' is Sunday..Saturday; 7 only as a value
    if (range == "*" || range == "?") {
      if (range == "?" && spec != &specs[day_of_month] && spec != &specs[day_of_week]) {
        return fail("'?' is only allowed in day-of-month and day-of-week");
      }
    } else if (auto dash = range.find('-'); dash != std::string_view::npos && dash != 0) {
      if (looks_like_quartz_special(range)) return fail_special(range);
      if (!parse_value(range.substr(0, dash), lo)) return false;
      if (!parse_value(range.substr(dash + 1), hi)) return false;
      if (lo > hi) {
        return fail(fmt::format("range '{}' runs backwards (start after end)", range));
      }
    } else {
      if (!parse_value(range, lo)) return false;
      // "N/S" means "from N to the field's maximum, every S"; plain "N" is just N.
      hi = has_step ? spec->max : lo;
    }
    unsigned step = 1;
    if (has_step) {
      auto [ptr, ec] = std::from_chars(step_text.data(), step_text.data() + step_text.size(), step);
      if (step_text.empty() || ec != std::errc() || ptr != step_text.data() + step_text.size()) {
        return fail(fmt::format("invalid step '{}' in '{}'", step_text, el));
      }
      if (step == 0) return fail(fmt::format("step 0 in '{}' (must be at least 1)", el));
      if (step > spec->max) {
        return fail(fmt::format("step {} in '{}' is larger than the field's maximum {}", step_text,
                                el, spec->max));
      }
    }
    for (unsigned v = lo; v <= hi; v += step) {
      // Day-of-week 7 is another spelling of Sunday (0).
      mask |= std::uint64_t{1} << (spec == &specs[day_of_week] && v == 7 ? 0 : v);
    }
    return true;
  }

  bool parse_field(std::string_view text, std::size_t index, std::uint64_t& mask) {
    spec = &specs[index];
    mask = 0;
    std::size_t start = 0;
    while (true) {
      const std::size_t comma = text.find(',', start);
      const std::string_view el = text.substr(
          start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
      if (!parse_element(el, mask)) return false;
      if (comma == std::string_view::npos) return true;
      start = comma + 1;
    }
  }

  static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

  // Parses `expr` (already trimmed) into `out`'s fields. Returns false with `detail` set.
  bool parse_into(cron_expression& out) {
    if (expr.empty()) {
      detail = "cron expression is empty";
      return false;
    }
    std::string_view body = expr;
    if (body.front() == '@') {
      std::string_view name = body;
      std::string_view rest;
      if (auto blank = body.find_first_of(" \t"); blank != std::string_view::npos) {
        name = body.substr(0, blank);
        rest = body.substr(blank);
        while (!rest.empty() && is_blank(rest.front())) rest.remove_prefix(1);
      }
      if (iequals(name, "@EVERY")) return parse_every(rest, out);
      static constexpr std::array<std::pair<const char*, const char*>, 7> macros{{
          {"@YEARLY", "0 0 1 1 *"},
          {"@ANNUALLY", "0 0 1 1 *"},
          {"@MONTHLY", "0 0 1 * *"},
          {"@WEEKLY", "0 0 * * 0"},
          {"@DAILY", "0 0 * * *"},
          {"@MIDNIGHT", "0 0 * * *"},
          {"@HOURLY", "0 * * * *"},
      }};
      const char* expansion = nullptr;
      for (const auto& [macro, fields] : macros) {
        if (iequals(name, macro)) expansion = fields;
      }
      if (expansion == nullptr) {
        detail = fmt::format(
            "unknown cron macro '{}' (expected @yearly, @annually, @monthly, @weekly, @daily, "
            "@midnight, @hourly or @every <duration>) in '{}'",
            name, expr);
        return false;
      }
      if (!rest.empty()) {
        detail = fmt::format("cron macro {} takes no arguments in '{}'", name, expr);
        return false;
      }
      body = expansion;
    }

    std::array<std::string_view, 7> fields;
    std::size_t n = 0;
    for (std::size_t i = 0; i < body.size();) {
      while (i < body.size() && is_blank(body[i])) ++i;
      if (i == body.size()) break;
      std::size_t j = i;
      while (j < body.size() && !is_blank(body[j])) ++j;
      if (n < fields.size()) fields[n] = body.substr(i, j - i);
      ++n;
      i = j;
    }
    if (n != 5 && n != 6) {
      detail = fmt::format(
          "cron expression must have 5 fields (minute hour day-of-month month day-of-week) "
          "or 6 (with a leading second), got {} in '{}'",
          n, expr);
      return false;
    }
    field_count = n;
    const std::size_t first = n == 6 ? second : minute;  // spec index of fields[0]
    std::array<std::uint64_t, 6> masks{};
    masks[second] = 1;  // 5-field form fires at second 0
    for (std::size_t i = 0; i < n; ++i) {
      position = i + 1;
      if (!parse_field(fields[i], first + i, masks[first + i])) return false;
    }
    out.seconds_ = masks[second];
    out.minutes_ = masks[minute];
    out.hours_ = static_cast<std::uint32_t>(masks[hour]);
    out.days_of_month_ = static_cast<std::uint32_t>(masks[day_of_month]);
    out.months_ = static_cast<std::uint16_t>(masks[month]);
    out.days_of_week_ = static_cast<std::uint8_t>(masks[day_of_week]);
    const auto dom_text = fields[day_of_month - first];
    const auto dow_text = fields[day_of_week - first];
    out.dom_any_ = dom_text == "*" || dom_text == "?";
    out.dow_any_ = dow_text == "*" || dow_text == "?";
    return true;
  }

  bool parse_every(std::string_view rest, cron_expression& out) {
    if (rest.empty()) {
      detail = fmt::format("@every needs a duration such as '@every 1h30m' in '{}'", expr);
      return false;
    }
    error_code ec;
    const milliseconds d = parse_duration(rest, ec);
    if (ec) {
      detail =
          fmt::format("@every: invalid duration '{}' (expected e.g. 10s, 1h30m, 250ms, 7d) in '{}'",
                      rest, expr);
      return false;
    }
    if (d <= milliseconds::zero()) {
      detail = fmt::format("@every: duration '{}' must be at least 1ms in '{}'", rest, expr);
      return false;
    }
    out.interval_ = d;
    return true;
  }
};

}  // namespace detail

std::optional<cron_expression> cron_expression::parse(std::string_view expr,
                                                      std::string_view time_zone, error_code& ec,
                                                      std::string& detail) {
  ec.clear();
  detail.clear();
  while (!expr.empty() && detail::cron_parser::is_blank(expr.front())) expr.remove_prefix(1);
  while (!expr.empty() && detail::cron_parser::is_blank(expr.back())) expr.remove_suffix(1);

  cron_expression out;
  detail::cron_parser parser{expr, detail};
  if (!parser.parse_into(out)) {
    ec = make_error_code(errc::invalid_cron);
    return std::nullopt;
  }
  out.text_ = std::string(expr);

  // "UTC" needs no tz database, so the default works even where none is installed.
  if (time_zone != "UTC") {
    try {
      if (time_zone.empty()) throw std::runtime_error("empty name");
      out.zone_ = date::locate_zone(time_zone);
    } catch (const std::exception& e) {
      ec = make_error_code(errc::invalid_time_zone);
      detail = fmt::format("unknown time zone '{}' ({})", time_zone, e.what());
      return std::nullopt;
    }
  }
  return out;
}

cron_expression cron_expression::parse(std::string_view expr, std::string_view time_zone) {
  error_code ec;
  std::string detail;
  auto parsed = parse(expr, time_zone, ec, detail);
  if (!parsed) throw error(ec, detail);
  return std::move(*parsed);
}

std::string_view cron_expression::time_zone_name() const noexcept {
  if (zone_ == nullptr) return "UTC";
  return zone_->name();
}

// Days of `month` in `year` that match the day-of-month/day-of-week fields: bit d = day d.
std::uint64_t cron_expression::day_mask(int year, unsigned month) const noexcept {
  const unsigned last = days_in_month(year, month);
  const std::uint64_t valid = ((std::uint64_t{1} << (last + 1)) - 1) & ~std::uint64_t{1};
  if (dom_any_ && dow_any_) return valid;
  const std::uint64_t dom = std::uint64_t{days_of_month_} & valid;
  if (dow_any_) return dom;
  // Rotate the weekday set so bit i says whether day i+1 matches, then repeat it weekly.
  const unsigned wd1 = weekday_from_days(days_from_civil(year, month, 1));
  const std::uint64_t dow = days_of_week_;
  const std::uint64_t week = ((dow >> wd1) | (dow << (7 - wd1))) & 0x7f;
  const std::uint64_t dow_days =
      ((week | week << 7 | week << 14 | week << 21 | week << 28) << 1) & valid;
  return dom_any_ ? dow_days : (dom | dow_days);
}

// The first local wall-clock second >= `start` (seconds since 1970-01-01 in local time)
// whose fields all match, searching at most search_years ahead.
std::optional<std::int64_t> cron_expression::next_local_match(std::int64_t start) const noexcept {
  const std::int64_t start_day = floor_div(start, seconds_per_day);
  const auto sod = static_cast<unsigned>(start - start_day * seconds_per_day);
  const civil_date cd = civil_from_days(start_day);
  std::int64_t y = cd.year;
  unsigned mo = cd.month;
  unsigned d = cd.day;
  unsigned h = sod / 3600;
  unsigned mi = sod / 60 % 60;
  unsigned s = sod % 60;
  const std::int64_t limit = std::min(y + search_years, last_year);

  std::uint64_t days = 0;
  std::int64_t days_year = -1;  // (days_year, days_month) identify the month `days` is for
  unsigned days_month = 0;
  auto next_month = [&] {
    if (++mo > 12) {
      mo = 1;
      ++y;
    }
    d = 1;
    h = mi = s = 0;
  };

  while (y <= limit) {
    if ((months_ >> mo & 1) == 0) {
      const int nm = next_bit(months_, mo + 1);
      if (nm < 0) {
        ++y;
        mo = static_cast<unsigned>(std::countr_zero(months_));
      } else {
        mo = static_cast<unsigned>(nm);
      }
      d = 1;
      h = mi = s = 0;
      continue;
    }
    if (days_year != y || days_month != mo) {
      days = day_mask(static_cast<int>(y), mo);
      days_year = y;
      days_month = mo;
    }
    const int nd = next_bit(days, d);
    if (nd < 0) {
      next_month();
      continue;
    }
    if (static_cast<unsigned>(nd) != d) {
      d = static_cast<unsigned>(nd);
      h = mi = s = 0;
    }
    const int nh = next_bit(hours_, h);
    if (nh < 0) {
      ++d;
      h = mi = s = 0;
      continue;
    }
    if (static_cast<unsigned>(nh) != h) {
      h = static_cast<unsigned>(nh);
      mi = s = 0;
    }
    const int nmi = next_bit(minutes_, mi);
    if (nmi < 0) {
      ++h;
      mi = s = 0;
      continue;
    }
    if (static_cast<unsigned>(nmi) != mi) {
      mi = static_cast<unsigned>(nmi);
      s = 0;
    }
    const int ns = next_bit(seconds_, s);
    if (ns < 0) {
      ++mi;
      s = 0;
      continue;
    }
    return days_from_civil(y, mo, d) * seconds_per_day + h * 3600 + mi * 60 + ns;
  }
  return std::nullopt;
}

std::optional<cron_expression::time_point> cron_expression::next_after(time_point t) const {
  using std::chrono::floor;
  if (interval_.count() > 0) {
    const auto base = floor<milliseconds>(t);
    if (base > floor<milliseconds>(time_point::max()) - interval_) return std::nullopt;
    return time_point(base + interval_);
  }

  // Cron fire times are whole seconds, so the first candidate is the next whole second.
  const std::int64_t u = floor<seconds>(t).time_since_epoch().count() + 1;

  if (zone_ == nullptr) {
    const auto local = next_local_match(u);
    if (!local) return std::nullopt;
    return time_point(seconds(*local));
  }

  // Find the smallest local time whose UTC image (under the DST rule) is >= u. Usually that
  // is u's own local time; near a transition it can be earlier (u is the first instant
  // after a gap: the gap's local times all map to u) or later (u is in the second pass
  // of a repeated hour: those local times already fired on the first pass).
  const date::sys_seconds us{seconds(u)};
  const auto info = zone_->get_info(us);
  std::int64_t start = u + info.offset.count();
  if (us - info.begin < std::chrono::hours(24)) {
    const auto before = zone_->get_info(info.begin - seconds(1));
    const auto shift = before.offset - info.offset;
    const bool second_pass = shift > seconds(0) && us < info.begin + shift;
    const bool gap_end = shift < seconds(0) && us == info.begin;
    if (second_pass || gap_end) {
      start = (info.begin + before.offset).time_since_epoch().count();
    }
  }

  const auto local = next_local_match(start);
  if (!local) return std::nullopt;
  const auto li = zone_->get_info(date::local_seconds(seconds(*local)));
  std::int64_t utc = 0;
  switch (li.result) {
    case date::local_info::unique:
    case date::local_info::ambiguous:  // first occurrence: the earlier offset
      utc = *local - li.first.offset.count();
      break;
    case date::local_info::nonexistent:  // skipped by spring-forward: right after the gap
      utc = li.second.begin.time_since_epoch().count();
      break;
  }
  return time_point(seconds(utc));
}

}  // namespace taskq
