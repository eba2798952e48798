// The task model: statuses, transitions, validation (every bad-input error), ids, retry
// policy, JSON mapping and the record transition rules shared by every store.
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>
#include <taskq/task.hpp>

#include "nested_json.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <set>

using namespace taskq;
using namespace std::chrono_literals;

namespace {
const time_point t0 = time_point{} + 1'000'000h;
using test::nested_json;
}  // namespace

TEST_CASE("status names round-trip and unknown names are rejected", "[task]") {
  for (auto s : {task_status::pending, task_status::running, task_status::succeeded,
                 task_status::failed, task_status::cancelled, task_status::dropped}) {
    error_code ec;
    auto parsed = parse_status(to_string(s), ec);
    REQUIRE_FALSE(ec);
    REQUIRE(parsed == s);
  }
  error_code ec;
  CHECK_FALSE(parse_status("done", ec));
  CHECK(ec == errc::invalid_status);
  CHECK_THAT(ec.message(), Catch::Contains("'status'"));
  CHECK(ec.category().name() == std::string("taskq"));
}

TEST_CASE("legal transitions follow the life-cycle diagram", "[task]") {
  using enum task_status;
  CHECK(is_legal_transition(pending, running));
  CHECK(is_legal_transition(pending, cancelled));
  CHECK(is_legal_transition(running, succeeded));
  CHECK(is_legal_transition(running, failed));
  CHECK(is_legal_transition(running, pending));
  CHECK(is_legal_transition(running, dropped));
  CHECK(is_legal_transition(failed, pending));
  CHECK(is_legal_transition(cancelled, pending));
  CHECK(is_legal_transition(dropped, pending));
  CHECK_FALSE(is_legal_transition(succeeded, running));
  CHECK_FALSE(is_legal_transition(succeeded, pending));
  CHECK_FALSE(is_legal_transition(pending, succeeded));
  CHECK_FALSE(is_legal_transition(failed, succeeded));
  CHECK_FALSE(is_legal_transition(cancelled, running));
}

TEST_CASE("validation names the bad field", "[task][validation]") {
  task_spec ok{.type = "t"};
  REQUIRE_FALSE(validate(ok));

  struct row {
    task_spec spec;
    errc expected;
    const char* field;
  };
  std::vector<row> rows = {
      {{.type = ""}, errc::blank_type, "'type'"},
      {{.type = "   "}, errc::blank_type, "'type'"},
      {{.type = "t", .queue = ""}, errc::blank_queue, "'queue'"},
      {{.type = "t", .delay = -1s}, errc::negative_delay, "'delay'"},
      {{.type = "t", .max_attempts = 0}, errc::invalid_max_attempts, "'max_attempts'"},
      {{.type = "t", .max_attempts = -3}, errc::invalid_max_attempts, "'max_attempts'"},
      {{.type = "t", .timeout = -1ms}, errc::negative_timeout, "'timeout'"},
      {{.type = "t", .retry = {.initial_delay = -1s}}, errc::invalid_retry_policy, "'retry'"},
      {{.type = "t", .retry = {.initial_delay = 10s, .max_delay = 1s}},
       errc::invalid_retry_policy,
       "'retry'"},
      {{.type = "t", .retry = {.multiplier = 0.5}}, errc::invalid_retry_policy, "'retry'"},
      {{.type = "t", .retry = {.jitter = 1.5}}, errc::invalid_retry_policy, "'retry'"},
      {{.type = "t", .labels = {{"", "x"}}}, errc::invalid_label, "'labels'"},
  };
  for (const auto& r : rows) {
    auto ec = validate(r.spec);
    INFO(r.field);
    CHECK(ec == r.expected);
    CHECK_THAT(ec.message(), Catch::Contains(r.field));
  }

  task_spec big{.type = "t", .payload = std::string(2000, 'x')};
  CHECK(validate(big, {.max_payload_bytes = 1000}) == errc::payload_too_large);
  CHECK_THAT(validate(big, {.max_payload_bytes = 1000}).message(), Catch::Contains("'payload'"));
  CHECK_FALSE(validate(big, {.max_payload_bytes = 4000}));
}

TEST_CASE("the payload size limit counts exactly what the encoded JSON takes", "[task]") {
  // Measured without serialising: every kind of value, escapes, UTF-8, nesting.
  const std::vector<json> docs = {
      json::parse(R"({"a":[1,-2,3000000000,18446744073709551615,true,false,null],"b":{}})"),
      json::parse(
          R"(["tab\there","quote\"","back\\slash","\u0001\u001f","\u00e9\u4e2d\ud83d\ude00"])"),
      json::parse(R"({"nested":{"deeper":[[[]],{"x":1.5,"y":-0.25,"z":1e300}]},"":""})"),
      json(std::string(300, 'x')),
      json(42),
      json::array(),
  };
  for (const auto& doc : docs) {
    const auto size = doc.dump().size();
    INFO(doc.dump());
    task_spec spec{.type = "t", .payload = doc, .metadata = {{"k", "v"}}};
    const auto total = size + spec.metadata.dump().size();
    CHECK_FALSE(validate(spec, {.max_payload_bytes = total}));
    CHECK(validate(spec, {.max_payload_bytes = total - 1}) == errc::payload_too_large);
  }
}

TEST_CASE("a payload or metadata string that is not UTF-8 is refused, naming the fields",
          "[task]") {
  for (std::string bad : {std::string("\xff"), std::string("ab\xc3"), std::string("\xed\xa0\x80"),
                          std::string("\xc0\xaf"), std::string("\xf4\x90\x80\x80")}) {
    task_spec in_payload{.type = "t", .payload = {{"s", bad}}};
    CHECK(validate(in_payload) == errc::invalid_utf8);
    CHECK_THAT(validate(in_payload).message(), Catch::Contains("'payload'"));
    task_spec in_key{.type = "t", .metadata = {{bad, 1}}};
    CHECK(validate(in_key) == errc::invalid_utf8);
  }
  CHECK_FALSE(validate({.type = "t", .payload = "caf\xc3\xa9 \xf0\x9f\x98\x80"}));
}

TEST_CASE("make_record fills the record from the spec", "[task]") {
  auto r = make_record({.type = "mail",
                        .queue = "q",
                        .payload = {{"a", 1}},
                        .priority = 3,
                        .delay = 5s,
                        .max_attempts = 4,
                        .labels = {{"user", "7"}}},
                       t0);
  CHECK(r.id.size() == 36);
  CHECK(r.type == "mail");
  CHECK(r.queue == "q");
  CHECK(r.payload["a"] == 1);
  CHECK(r.priority == 3);
  CHECK(r.available_at == t0 + 5s);
  CHECK(r.max_attempts == 4);
  CHECK(r.status == task_status::pending);
  CHECK(r.attempt == 0);
  CHECK(r.created_at == t0);
  CHECK(r.labels.at("user") == "7");
  auto abs = make_record({.type = "x", .delay = 5s, .run_at = t0 + 1h}, t0);
  CHECK(abs.available_at == t0 + 1h);
  auto given = make_record({.type = "x", .id = "my-id"}, t0);
  CHECK(given.id == "my-id");
}

TEST_CASE("task ids are UUIDv7 and sort in creation order", "[task]") {
  std::vector<std::string> ids;
  for (int i = 0; i < 10000; ++i)
    ids.push_back(make_task_id(t0 + std::chrono::microseconds(i / 7)));
  CHECK(std::is_sorted(ids.begin(), ids.end()));
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
  CHECK(ids[0][14] == '7');                                          // version nibble
  CHECK(std::string("89ab").find(ids[0][19]) != std::string::npos);  // variant
}

TEST_CASE("retry policy grows exponentially, caps and jitters", "[task][retry]") {
  retry_policy p{.initial_delay = 1s, .max_delay = 60s, .multiplier = 2.0, .jitter = 0.0};
  CHECK(p.delay_after(1, 0.5) == 1s);
  CHECK(p.delay_after(2, 0.5) == 2s);
  CHECK(p.delay_after(3, 0.5) == 4s);
  CHECK(p.delay_after(7, 0.5) == 60s);
  CHECK(p.delay_after(1000, 0.5) == 60s);  // no overflow
  retry_policy j{.initial_delay = 10s, .max_delay = 1h, .multiplier = 2.0, .jitter = 0.2};
  CHECK(j.delay_after(1, 0.0) == 8s);
  CHECK(j.delay_after(1, 0.5) == 10s);
  CHECK(j.delay_after(1, 1.0) == 12s);
}

TEST_CASE("records round-trip through JSON", "[task][json]") {
  auto r = make_record({.type = "t",
                        .queue = "q",
                        .payload = {{"k", "v"}},
                        .metadata = {1, 2},
                        .priority = -2,
                        .max_attempts = 3,
                        .timeout = 1500ms,
                        .labels = {{"a", "b"}},
                        .concurrency_key = "c",
                        .unique_key = "u",
                        .unique_for = unique_scope::any,
                        .scheduled_for = t0 - 1h},
                       t0);
  r.status = task_status::failed;
  r.attempt = 3;
  r.progress = {{"p", 0.5}};
  r.result = "res";
  r.last_error = "boom";
  r.log.push_back({t0 + 1s, "line"});
  r.started_at = t0 + 1s;
  r.finished_at = t0 + 2s;
  r.heartbeat_at = t0 + 1500ms;
  r.cancel_requested = true;
  auto j = to_json(r);
  CHECK(j["v"] == 1);
  auto back = record_from_json(j);
  CHECK(back == r);
}

/// A record with each optional present or not, numbers across their range, and strings from
/// an alphabet with every character class the JSON writer and readers treat differently
/// (only its ASCII part with `ascii`).
static task_record generated_record(std::mt19937& rng, bool ascii = false) {
  static const std::vector<std::string> pieces = {
      "a",  "Z",  "0",    " ",    "\"",     "\\",     "/",          "\n",
      "\t", "\b", "\x02", "\x7f", "\u00e9", "\u20ac", "\U0001f600", ""};
  auto str = [&] {
    std::string s;
    const std::size_t choices = ascii ? 12 : pieces.size();  // the first 12 are ASCII
    for (int n = static_cast<int>(rng() % 6); n > 0; --n) s += pieces[rng() % choices];
    return s;
  };
  auto opt = [&](time_point t) { return rng() % 2 ? std::optional<time_point>(t) : std::nullopt; };
  task_record r =
      make_record({.type = str(), .queue = str()}, t0 + std::chrono::microseconds(rng()));
  r.id = str();
  r.payload = rng() % 2 ? json(str()) : json::object({{str(), static_cast<int>(rng())}});
  if (rng() % 4 == 0) r.payload = json::array({1.5, nullptr, json::object({{"cancel", true}})});
  r.metadata = rng() % 3 ? json() : json(static_cast<double>(rng()) / 7.0);
  r.progress = rng() % 2 ? json() : json(-static_cast<std::int64_t>(rng()));
  r.result = rng() % 2 ? json() : json(str());
  r.priority = static_cast<int>(rng() % 2000001) - 1000000;
  r.max_attempts = static_cast<int>(rng() % 10);
  r.retry.initial_delay = std::chrono::microseconds(rng());
  r.retry.multiplier = static_cast<double>(rng() % 1000) / 100.0;
  r.retry.jitter = rng() % 5 ? static_cast<double>(rng() % 100) / 100.0 : 1e-7 * (rng() % 9);
  r.timeout = std::chrono::microseconds(rng() % 3 ? 0 : rng());
  for (int n = static_cast<int>(rng() % 3); n > 0; --n) r.labels[str()] = str();
  r.concurrency_key = str();
  r.unique_key = str();
  r.unique_for = rng() % 2 ? unique_scope::any : unique_scope::active;
  r.scheduled_for = opt(t0 - 1s);
  r.status = static_cast<task_status>(rng() % 6);
  r.attempt = static_cast<int>(rng() % 5);
  r.last_error = str();
  for (int n = static_cast<int>(rng() % 3); n > 0; --n) r.log.push_back({t0, str()});
  r.started_at = opt(t0 + 1s);
  r.finished_at = opt(t0 + 2s);
  r.heartbeat_at = opt(time_point{} - 3s);
  r.cancel_requested = rng() % 2;
  return r;
}

TEST_CASE("the direct record writer gives exactly dump()'s text", "[task][json]") {
  auto text = [](const task_record& r) {
    std::string out = "prefix";  // appends, keeping what was there
    detail::append_record_json(out, r);
    REQUIRE(out.rfind("prefix", 0) == 0);
    return out.substr(6);
  };
  task_record plain = make_record({.type = "noop"}, t0);
  CHECK(text(plain) == to_json(plain).dump());

  // Every field set, strings that need escaping or are not ASCII, doubles, negative times.
  task_record full = make_record({.type = "t\"q\\",
                                  .queue = "q\n\t\x01",
                                  .payload = {{"k", "v"}, {"n", 1.5}, {"u", "\u00e9\u4e2d"}},
                                  .metadata = {1, 2, nullptr, true},
                                  .priority = -2,
                                  .max_attempts = 3,
                                  .retry = {.multiplier = 1.1, .jitter = 0.0},
                                  .timeout = 1500ms,
                                  .labels = {{"a", "b"}, {"\u00fc", "\x7f"}, {"", ""}},
                                  .concurrency_key = "c/\"k\"",
                                  .unique_key = "u",
                                  .unique_for = unique_scope::any,
                                  .scheduled_for = time_point{} - 1h},
                                 t0);
  full.status = task_status::failed;
  full.attempt = 3;
  full.progress = {{"p", 0.5}};
  full.result = "res";
  full.last_error = "boom \"quoted\" \\ \r\n";
  full.log.push_back({t0 + 1s, "line"});
  full.log.push_back({t0 + 2s, "\x1f second"});
  full.started_at = t0 + 1s;
  full.finished_at = t0 + 2s;
  full.heartbeat_at = t0 + 1500ms;
  full.cancel_requested = true;
  CHECK(text(full) == to_json(full).dump());

  // The writer keeps the texts of the last few doubles it wrote: more distinct values than it
  // keeps, in turn and again (0.0 and -0.0 differ in sign only), each as dump() writes it.
  for (int round = 0; round < 3; ++round)
    for (double d : {0.1, 2.0, 0.25, 1e-7, 3.5, -0.0, 0.0, 0.1}) {
      task_record r = plain;
      r.retry.multiplier = d;
      r.retry.jitter = d / 3;
      REQUIRE(text(r) == to_json(r).dump());
    }

  // Generated records: each optional present or not, strings from an alphabet with every
  // character class the escaping treats differently.
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    task_record r = generated_record(rng);
    INFO(to_json(r).dump());
    REQUIRE(text(r) == to_json(r).dump());
  }

  // A string that is not UTF-8 fails as dump() fails, and the labels writer matches too.
  task_record bad = plain;
  bad.last_error = "\xff";
  CHECK_THROWS_AS(to_json(bad).dump(), json::type_error);
  std::string out;
  CHECK_THROWS_AS(detail::append_record_json(out, bad), json::type_error);
  std::string labels;
  detail::append_labels_json(labels, full.labels);
  CHECK(labels == json(full.labels).dump());
}

TEST_CASE("the direct record reader gives what record_from_json gives, or leaves it to it",
          "[task][json]") {
  auto general = [](const std::string& text) {
    detail::json_text_error err;
    json j = detail::parse_json_text(text, json_depth_ceiling, err);
    REQUIRE(err == detail::json_text_error::none);
    return record_from_json(j);
  };
  auto ascii = [](const task_record& r) {
    auto plain = [](const std::string& s) {
      return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x80; });
    };
    bool ok = plain(r.id) && plain(r.type) && plain(r.queue) && plain(r.concurrency_key) &&
              plain(r.unique_key) && plain(r.last_error);
    for (const auto& e : r.log) ok = ok && plain(e.message);
    for (const auto& [k, v] : r.labels) ok = ok && plain(k) && plain(v);
    return ok;
  };
  std::mt19937 rng(11);
  int direct = 0;
  for (int i = 0; i < 3000; ++i) {
    task_record r = generated_record(rng, i % 2 == 0);
    std::string text;
    detail::append_record_json(text, r);
    INFO(text);
    task_record got;
    const bool read = detail::read_record_text(text, got);
    // Every record whose own strings are ASCII is read directly; the others may be.
    if (ascii(r)) CHECK(read);
    if (read) {
      ++direct;
      REQUIRE(got == r);
      REQUIRE(got == general(text));
    }
    // Another writer's layout (jsonb: spaces, keys by length) reads the same.
    const std::string spaced = json::parse(text).dump(1);
    task_record again;
    if (detail::read_record_text(spaced, again)) REQUIRE(again == r);
  }
  CHECK(direct >= 1500);  // the ASCII half, and the others that happen to be

  // Left to the general path: it names what is wrong, or reads what the reader does not take.
  task_record plain = make_record({.type = "noop"}, t0);
  std::string text;
  detail::append_record_json(text, plain);
  auto with = [&](const std::string& from, const std::string& to) {
    auto t = text;
    auto at = t.find(from);
    REQUIRE(at != std::string::npos);
    return t.replace(at, from.size(), to);
  };
  task_record out;
  for (const auto& other :
       {with("\"v\":1", "\"v\":2"),                          // a newer format
        with("\"attempt\":0", "\"attempt\":0.0"),            // not an integer
        with("\"attempt\":0", "\"attempt\":01"),             // not JSON
        with("\"attempt\":0", "\"attempt\":4294967296"),     // beyond int
        with("\"priority\":0", "\"priority\":true"),         // not a number
        with("\"status\":\"pending\"", "\"status\":\"x\""),  // unknown status
        with("\"v\":1", "\"v\":1,\"extra\":0"),              // unknown key
        with("\"v\":1", "\"v\":1,\"v\":1"),                  // repeated key
        with("\"type\":\"noop\",", ""),                      // missing
        with("\"type\":\"noop\"", "\"type\":\"n\\u00e9\""),  // escaped non-ASCII
        with("\"jitter\":0.2", "\"jitter\":.2"),             // not JSON
        with("\"jitter\":0.2", "\"jitter\":2."),             // not JSON
        with("\"payload\":null", "\"payload\":[1,]"),        // malformed payload
        with("\"payload\":null", "\"payload\":" + std::string(600, '[') + std::string(600, ']')),
        text + "x", text.substr(0, text.size() - 1), std::string("[]"), std::string()}) {
    INFO(other);
    CHECK_FALSE(detail::read_record_text(other, out));
  }
  // What it does take: a payload of any depth within the ceiling, and a record's own strings
  // with the escapes dump() writes.
  task_record deep = plain;
  deep.payload = json::parse(std::string(510, '[') + std::string(510, ']'));
  deep.last_error = "a \"b\" \\ \n\t\x01";
  text.clear();
  detail::append_record_json(text, deep);
  REQUIRE(detail::read_record_text(text, out));
  CHECK(out == deep);
}

TEST_CASE("decoding a bad record names the field", "[task][json]") {
  auto j = to_json(make_record({.type = "t"}, t0));
  error_code ec;
  std::string detail;

  auto bad = j;
  bad["status"] = "sleeping";
  CHECK_FALSE(record_from_json(bad, ec, detail));
  CHECK(ec == errc::invalid_record);
  CHECK_THAT(detail, Catch::Contains("'status'"));

  bad = j;
  bad.erase("type");
  CHECK_FALSE(record_from_json(bad, ec, detail));
  CHECK_THAT(detail, Catch::Contains("'type'"));

  bad = j;
  bad["retry"]["jitter"] = "much";
  CHECK_FALSE(record_from_json(bad, ec, detail));
  CHECK_THAT(detail, Catch::Contains("'retry.jitter'"));

  bad = j;
  bad["v"] = 99;
  CHECK_FALSE(record_from_json(bad, ec, detail));
  CHECK(ec == errc::unsupported_format_version);

  // A number beyond the field's type (found by the record-text fuzzer: the conversion was
  // undefined behaviour); within range, a double still converts.
  for (const char* field : {"available_at", "priority", "attempt"}) {
    bad = j;
    bad[field] = 1.8e21;
    CHECK_FALSE(record_from_json(bad, ec, detail));
    CHECK_THAT(detail, Catch::Contains(std::string("'") + field + "'"));
    bad[field] = std::nan("");
    CHECK_FALSE(record_from_json(bad, ec, detail));
  }
  bad = j;
  bad["priority"] = 3.0;
  auto three = record_from_json(bad, ec, detail);
  REQUIRE(three);
  CHECK(three->priority == 3);

  CHECK_FALSE(record_from_json(json::array(), ec, detail));
  CHECK(ec == errc::invalid_record);
  CHECK_THROWS_AS(record_from_json(json("x")), taskq::error);
}

TEST_CASE("update is a compare-and-set that refuses illegal changes", "[task][store-rules]") {
  auto r = make_record({.type = "t"}, t0);
  task_update u{
      .id = r.id, .expected = task_status::running, .to = task_status::succeeded, .now = t0};
  CHECK(detail::apply_update(r, u) == errc::status_conflict);
  CHECK(r.status == task_status::pending);

  REQUIRE(detail::apply_claim(r, t0) == detail::claim_outcome::claimed);
  CHECK(r.status == task_status::running);
  CHECK(r.attempt == 1);

  u.expected_attempt = 2;
  CHECK(detail::apply_update(r, u) == errc::status_conflict);
  u.expected_attempt = 1;
  u.result = json{{"ok", true}};
  REQUIRE_FALSE(detail::apply_update(r, u));
  CHECK(r.status == task_status::succeeded);
  CHECK(r.finished_at == t0);
  CHECK(r.result["ok"] == true);

  task_update back{
      .id = r.id, .expected = task_status::succeeded, .to = task_status::pending, .now = t0};
  auto before = r;
  CHECK(detail::apply_update(r, back) == errc::illegal_transition);
  CHECK(r == before);
}

TEST_CASE("claiming a task whose worker was lost retries or drops it", "[task][store-rules]") {
  auto r = make_record({.type = "t", .max_attempts = 2}, t0);
  REQUIRE(detail::apply_claim(r, t0) == detail::claim_outcome::claimed);
  // Lease expired while running: rescued into attempt 2.
  REQUIRE(detail::apply_claim(r, t0 + 1min) == detail::claim_outcome::claimed);
  CHECK(r.attempt == 2);
  CHECK(r.log.back().message.find("rescued") != std::string::npos);
  // Lost again with no attempts left: dropped.
  CHECK(detail::apply_claim(r, t0 + 2min) == detail::claim_outcome::dropped);
  CHECK(r.status == task_status::dropped);
  CHECK(r.finished_at == t0 + 2min);
  // Finished tasks are not claimable.
  CHECK(detail::apply_claim(r, t0 + 3min) == detail::claim_outcome::skipped);
}

TEST_CASE("cancel requests and heartbeats", "[task][store-rules]") {
  auto pending = make_record({.type = "t"}, t0);
  REQUIRE_FALSE(detail::apply_cancel_request(pending, t0));
  CHECK(pending.status == task_status::cancelled);
  CHECK(detail::apply_cancel_request(pending, t0) == errc::illegal_transition);

  auto running = make_record({.type = "t"}, t0);
  detail::apply_claim(running, t0);
  bool cancel = true;
  REQUIRE_FALSE(detail::apply_heartbeat(running, {running.id, 1, json{{"n", 1}}, t0 + 1s}, cancel));
  CHECK_FALSE(cancel);
  CHECK(running.progress["n"] == 1);
  CHECK(detail::apply_heartbeat(running, {running.id, 2, {}, t0}, cancel) == errc::status_conflict);
  REQUIRE_FALSE(detail::apply_cancel_request(running, t0));
  CHECK(running.status == task_status::running);
  REQUIRE_FALSE(detail::apply_heartbeat(running, {running.id, 1, {}, t0 + 2s}, cancel));
  CHECK(cancel);
}

TEST_CASE("a cancel requested during an attempt that ends in a retry wins at the next claim",
          "[task][store-rules]") {
  auto r = make_record({.type = "t", .max_attempts = 3}, t0);
  REQUIRE(detail::apply_claim(r, t0) == detail::claim_outcome::claimed);
  REQUIRE_FALSE(detail::apply_cancel_request(r, t0 + 1s));  // running: flagged
  task_update retry{.id = r.id,
                    .expected = task_status::running,
                    .to = task_status::pending,
                    .now = t0 + 2s,
                    .available_at = t0 + 10s};
  REQUIRE_FALSE(detail::apply_update(r, retry));
  CHECK(r.cancel_requested);
  CHECK(detail::apply_claim(r, t0 + 10s) == detail::claim_outcome::skipped);
  CHECK(r.status == task_status::cancelled);
  CHECK(r.attempt == 1);
}

TEST_CASE("JSON depth is measured without recursion, on text and on values", "[task][depth]") {
  using detail::json_depth;
  using detail::json_text_depth;
  CHECK(json_text_depth("1", 10) == 0);
  CHECK(json_text_depth("[1]", 10) == 1);
  CHECK(json_text_depth(R"({"a":[{"b":[]}],"c":{}})", 10) == 4);
  // Brackets inside strings, escaped quotes included, do not count.
  CHECK(json_text_depth(R"(["[[[{{", "\"[[[", "\\"])", 10) == 1);
  CHECK(json_depth(json(1), 10) == 0);
  CHECK(json_depth(json::parse(R"({"a":[{"b":[]}],"c":{}})"), 10) == 4);
  CHECK(json_depth(json::parse(R"([[1],[[2]],3])"), 10) == 3);
  // Both stop early: a million levels cost no more than the limit's worth.
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  CHECK(json_text_depth(deep, 64) == 65);
  CHECK(json_depth(nested_json(100'000), 64) == 65);

  detail::json_text_error err;
  CHECK(detail::parse_json_text("[[1]]", 2, err) == json::parse("[[1]]"));
  CHECK(err == detail::json_text_error::none);
  CHECK(detail::parse_json_text("[[1]]", 1, err).is_null());
  CHECK(err == detail::json_text_error::too_deep);
  CHECK(detail::parse_json_text(deep, 64, err).is_null());
  CHECK(err == detail::json_text_error::too_deep);
  CHECK(detail::parse_json_text("[1,", 64, err).is_null());
  CHECK(err == detail::json_text_error::malformed);
}

TEST_CASE("a payload or metadata nested too deep is refused before it is serialized",
          "[task][validation][depth]") {
  // 100,000 levels: before the check, validate() crashed in nlohmann's recursive dump().
  task_spec deep{.type = "t", .payload = nested_json(100'000)};
  auto ec = validate(deep);
  CHECK(ec == errc::payload_too_deep);
  CHECK_THAT(ec.message(), Catch::Contains("'payload'"));
  task_spec meta{.type = "t", .metadata = nested_json(100'000)};
  ec = validate(meta);
  CHECK(ec == errc::metadata_too_deep);
  CHECK_THAT(ec.message(), Catch::Contains("'metadata'"));

  // The default limit (64) and a configured one, both inclusive.
  CHECK(validation_limits{}.max_json_depth == 64);
  CHECK_FALSE(validate({.type = "t", .payload = nested_json(64)}));
  CHECK(validate({.type = "t", .payload = nested_json(65)}) == errc::payload_too_deep);
  CHECK_FALSE(validate({.type = "t", .payload = nested_json(3)}, {.max_json_depth = 3}));
  CHECK(validate({.type = "t", .payload = nested_json(4)}, {.max_json_depth = 3}) ==
        errc::payload_too_deep);
  // Above the ceiling the ceiling applies (what the store decoders accept).
  CHECK_FALSE(validate({.type = "t", .payload = nested_json(json_depth_ceiling)},
                       {.max_json_depth = 1u << 30}));
  CHECK(validate({.type = "t", .payload = nested_json(json_depth_ceiling + 1)},
                 {.max_json_depth = 1u << 30}) == errc::payload_too_deep);
}

TEST_CASE("durations and times from input stay in the clock's range", "[task][validation][time]") {
  // 100000 days: now + delay used to wrap into 1716 and the task ran at once.
  auto ec = validate({.type = "t", .delay = std::chrono::hours(24) * 100000});
  CHECK(ec == errc::delay_too_long);
  CHECK_THAT(ec.message(), Catch::Contains("'delay'"));
  CHECK_FALSE(validate({.type = "t", .delay = max_duration}));
  ec = validate({.type = "t", .timeout = std::chrono::hours(24) * 100000});
  CHECK(ec == errc::timeout_too_long);
  CHECK_THAT(ec.message(), Catch::Contains("'timeout'"));
  ec = validate(
      {.type = "t", .retry = {.initial_delay = 1s, .max_delay = std::chrono::hours(24) * 100000}});
  CHECK(ec == errc::invalid_retry_policy);
  CHECK_THAT(ec.message(), Catch::Contains("'retry'"));
  ec = validate({.type = "t", .run_at = time_point::max()});
  CHECK(ec == errc::run_at_out_of_range);
  CHECK_THAT(ec.message(), Catch::Contains("'run_at'"));
  CHECK(validate({.type = "t", .run_at = time_point::min()}) == errc::run_at_out_of_range);
  CHECK_FALSE(validate({.type = "t", .run_at = max_time_point}));

  // The largest accepted delay from the latest time the clock can hold saturates, no wrap.
  auto late = time_point::max() - std::chrono::hours(1);
  auto r = make_record({.type = "t", .delay = max_duration}, late);
  CHECK(r.available_at == time_point::max());
  CHECK(make_record({.type = "t", .delay = 5s}, t0).available_at == t0 + 5s);

  CHECK(detail::saturating_add(time_point::max(), 1ns) == time_point::max());
  CHECK(detail::saturating_add(time_point::min(), -1ns) == time_point::min());
  CHECK(detail::saturating_sub(time_point::min() + 1h, 2h) == time_point::min());
  CHECK(detail::saturating_sub(t0, duration::max()) == t0 - duration::max());
  CHECK(detail::saturating_sub(t0, duration::min()) == time_point::max());
  CHECK(detail::saturating_sub(t0, 1s) == t0 - 1s);
}
