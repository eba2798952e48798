// The scheduler: schedule definitions and validation, the pure decision core, the in-memory
// schedule store, and the Asio shell (one clock wait for the earliest due schedule).
#include <taskq/detail/schedule_state.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/scheduler.hpp>

#include "json_fields.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <list>
#include <mutex>
#include <set>
#include <unordered_map>

namespace taskq {

namespace {
constexpr const char* schedule_label = "taskq.schedule";
}  // namespace

// --- definitions ----------------------------------------------------------------------------

std::string_view to_string(overlap_policy p) noexcept {
  switch (p) {
    case overlap_policy::allow:
      return "allow";
    case overlap_policy::skip_if_running:
      return "skip_if_running";
    case overlap_policy::queue_one:
      return "queue_one";
  }
  return "?";
}

std::string_view to_string(catch_up_policy p) noexcept {
  switch (p) {
    case catch_up_policy::skip:
      return "skip";
    case catch_up_policy::run_once:
      return "run_once";
    case catch_up_policy::run_all:
      return "run_all";
  }
  return "?";
}

namespace {

bool same_task(const task_spec& a, const task_spec& b) {
  return a.type == b.type && a.queue == b.queue && a.payload == b.payload &&
         a.metadata == b.metadata && a.priority == b.priority && a.delay == b.delay &&
         a.run_at == b.run_at && a.max_attempts == b.max_attempts && a.retry == b.retry &&
         a.timeout == b.timeout && a.labels == b.labels && a.concurrency_key == b.concurrency_key &&
         a.unique_key == b.unique_key && a.unique_for == b.unique_for && a.id == b.id &&
         a.scheduled_for == b.scheduled_for;
}

}  // namespace

bool same_timing(const schedule& a, const schedule& b) noexcept {
  return a.cron == b.cron && (a.cron.empty() || a.time_zone == b.time_zone) && a.every == b.every &&
         a.anchor == b.anchor && a.at == b.at;
}

bool operator==(const schedule& a, const schedule& b) {
  return a.name == b.name && same_task(a.task, b.task) && same_timing(a, b) &&
         a.time_zone == b.time_zone && a.overlap == b.overlap &&
         a.max_concurrency == b.max_concurrency && a.catch_up == b.catch_up &&
         a.max_catch_up == b.max_catch_up && a.misfire_grace == b.misfire_grace &&
         a.paused == b.paused;
}

error_code validate(const schedule& s, std::string& detail) {
  detail.clear();
  auto bad = [&](std::string_view field, std::string_view what) {
    detail = fmt::format("schedule '{}' field '{}' {}", s.name, field, what);
    return make_error_code(errc::invalid_schedule);
  };
  if (s.name.find_first_not_of(" \t\r\n") == std::string::npos)
    return bad("name", "must not be blank");
  if (auto ec = validate(s.task)) {
    detail = fmt::format("schedule '{}' field 'task': {}", s.name, ec.message());
    return ec;
  }
  if (!s.task.id.empty()) return bad("task.id", "must be empty (each run gets its own id)");
  if (s.task.scheduled_for) return bad("task.scheduled_for", "must be empty (set per occurrence)");
  if (!s.task.unique_key.empty())
    return bad("task.unique_key", "must be empty (it is the occurrence's dedupe key)");
  int rules = int(!s.cron.empty()) + int(s.every != duration::zero()) + int(s.at.has_value());
  if (rules != 1) return bad("cron", "or 'every' or 'at': exactly one timing rule must be set");
  if (s.every < duration::zero()) return bad("every", "must be positive");
  // Occurrences are anchor + k * every, compared with the clock: keep them in its range.
  if (s.every > max_duration) return bad("every", "must not exceed 36500 days (100 years)");
  auto out_of_range = [](time_point t) { return t < time_point{} || t > max_time_point; };
  if (out_of_range(s.anchor)) return bad("anchor", "must lie between 1970-01-01 and 2169");
  if (s.at && out_of_range(*s.at)) return bad("at", "must lie between 1970-01-01 and 2169");
  if (s.max_catch_up == 0) return bad("max_catch_up", "must be at least 1");
  if (s.misfire_grace < duration::zero()) return bad("misfire_grace", "must not be negative");
  if (!s.cron.empty()) {
    error_code ec;
    std::string why;
    auto c = cron_expression::parse(s.cron, s.time_zone, ec, why);
    if (!c) {
      detail = fmt::format("schedule '{}' field '{}': {}", s.name,
                           ec == errc::invalid_time_zone ? "time_zone" : "cron", why);
      return ec;
    }
    if (c->is_interval() && c->interval() > max_duration)
      return bad("cron", "@every interval must not exceed 36500 days (100 years)");
  }
  return {};
}

std::string occurrence_key(std::string_view schedule_name, time_point scheduled_for) {
  return fmt::format("schedule:{}:{}", schedule_name, format_time(scheduled_for));
}

// --- the pure core --------------------------------------------------------------------------

namespace detail {

schedule_timing::schedule_timing(const schedule& s) : anchor_(s.anchor), at_(s.at) {
  if (!s.cron.empty()) {
    auto c = cron_expression::parse(s.cron, s.time_zone);
    if (c.is_interval()) {
      // `@every d` as an anchored interval: every instance computes the same occurrences.
      every_ = std::chrono::duration_cast<duration>(c.interval());
    } else {
      cron_.emplace(std::move(c));
    }
  } else if (s.every > duration::zero()) {
    every_ = s.every;
  }
}

std::optional<time_point> schedule_timing::next_after(std::optional<time_point> t) const noexcept {
  if (at_) {
    if (!t || *t < *at_) return at_;
    return std::nullopt;
  }
  if (!t) return std::nullopt;
  if (cron_) return cron_->next_after(*t);
  if (every_ > duration::zero()) {
    auto since = *t - anchor_;
    auto k = since / every_;  // truncates toward zero
    if (since < duration::zero() && since % every_ != duration::zero()) --k;
    return anchor_ + (k + 1) * every_;
  }
  return std::nullopt;
}

decision decide(const schedule& def, const schedule_timing& timing,
                std::optional<time_point> cursor, occupancy occ, time_point now,
                std::size_t max_scan) {
  decision d;
  d.cursor = cursor;
  // 1. Due occurrences: count them and keep the tail the catch-up policy may need.
  const std::size_t keep = def.catch_up == catch_up_policy::run_once ? 1 : def.max_catch_up;
  std::deque<time_point> tail;
  std::uint64_t due = 0;
  std::optional<time_point> last;
  auto scan_from = cursor;
  std::size_t scanned = 0;
  for (auto t = timing.next_after(scan_from); t && *t <= now; t = timing.next_after(t)) {
    if (++scanned > max_scan && !d.scan_restarted) {
      // Pathological downtime: jump close to now rather than walk millions of occurrences.
      d.scan_restarted = true;
      auto restart = now - std::chrono::hours(24);
      if (restart > *t) {
        // Count what we jump over only approximately: as skipped (not exact).
        t = timing.next_after(restart);
        if (!t || *t > now) break;
      }
    }
    ++due;
    last = t;
    if (def.catch_up == catch_up_policy::skip && now - *t > def.misfire_grace) continue;
    tail.push_back(*t);
    if (tail.size() > keep) tail.pop_front();
  }
  if (due == 0) return d;
  d.skipped = due - tail.size();
  d.cursor = last;

  // 2. Overlap and concurrency, in order.
  for (std::size_t i = 0; i < tail.size(); ++i) {
    auto t = tail[i];
    if (def.max_concurrency > 0 && occ.active() >= def.max_concurrency) {
      d.held_back = true;
      d.cursor = t - duration(1);
      break;
    }
    if ((def.overlap == overlap_policy::skip_if_running && occ.active() > 0) ||
        (def.overlap == overlap_policy::queue_one && occ.pending > 0)) {
      ++d.skipped;
      continue;
    }
    d.fire.push_back(t);
    ++occ.pending;
  }
  // A held-back occurrence before the tail's start would re-count skipped ones; cursor never
  // moves backwards.
  if (cursor && d.cursor && *d.cursor < *cursor) d.cursor = cursor;
  return d;
}

std::vector<time_point> occurrences_in(const schedule_timing& timing, time_point from,
                                       time_point to, std::size_t max) {
  std::vector<time_point> out;
  if (to <= from) return out;
  for (auto t = timing.next_after(from - duration(1)); t && *t < to; t = timing.next_after(t)) {
    out.push_back(*t);
    if (out.size() > max) break;
  }
  return out;
}

}  // namespace detail

// --- schedule records: the save rule and the JSON mapping ----------------------------------

void detail::merge_on_save(const schedule_record& stored, schedule_record& incoming) {
  auto& in = incoming.state;
  const auto& old = stored.state;
  if (same_timing(stored.definition, incoming.definition) && old.cursor &&
      (!in.cursor || *in.cursor < *old.cursor))
    in.cursor = old.cursor;
  if (old.last_fired && (!in.last_fired || *in.last_fired < *old.last_fired)) {
    in.last_fired = old.last_fired;
    in.last_run_id = old.last_run_id;
  }
}

namespace {

using detail::json_reader;
using detail::put_opt;
using detail::retry_json;
using detail::to_us;
using detail::unique_for_text;

template <class Enum, std::size_t N>
bool parse_enum(std::string_view text, const std::array<Enum, N>& values, Enum& out) {
  for (auto v : values)
    if (to_string(v) == text) {
      out = v;
      return true;
    }
  return false;
}

json spec_to_json(const task_spec& t) {
  json j = {
      {"type", t.type},
      {"queue", t.queue},
      {"payload", t.payload},
      {"metadata", t.metadata},
      {"priority", t.priority},
      {"delay", to_us(t.delay)},
      {"max_attempts", t.max_attempts},
      {"retry", retry_json(t.retry)},
      {"timeout", to_us(t.timeout)},
      {"labels", t.labels},
      {"concurrency_key", t.concurrency_key},
      {"unique_key", t.unique_key},
      {"unique_for", unique_for_text(t.unique_for)},
      {"id", t.id},
  };
  put_opt(j, "run_at", t.run_at);
  put_opt(j, "scheduled_for", t.scheduled_for);
  return j;
}

// Reads a task template; returns the bad field's name ("" when all is well).
std::string spec_from_json(const json& j, task_spec& t) {
  if (!j.is_object()) return "task";
  json_reader rd{j, {}};
  rd.get("type", t.type);
  rd.get("queue", t.queue);
  rd.get_json("payload", t.payload);
  rd.get_json("metadata", t.metadata);
  rd.get("priority", t.priority);
  rd.get_duration("delay", t.delay);
  rd.get_opt_time("run_at", t.run_at);
  rd.get("max_attempts", t.max_attempts);
  rd.get_retry("retry", t.retry);
  rd.get_duration("timeout", t.timeout);
  rd.get("labels", t.labels, false);
  rd.get("concurrency_key", t.concurrency_key, false);
  rd.get("unique_key", t.unique_key, false);
  rd.get_unique_for("unique_for", t.unique_for);
  rd.get("id", t.id, false);
  rd.get_opt_time("scheduled_for", t.scheduled_for);
  return rd.bad.empty() ? std::string() : "task." + rd.bad;
}

}  // namespace

json to_json(const schedule_record& r) {
  const auto& d = r.definition;
  json j = {
      {"v", 1},
      {"name", d.name},
      {"task", spec_to_json(d.task)},
      {"cron", d.cron},
      {"time_zone", d.time_zone},
      {"every", to_us(d.every)},
      {"anchor", to_us(d.anchor)},
      {"overlap", to_string(d.overlap)},
      {"max_concurrency", d.max_concurrency},
      {"catch_up", to_string(d.catch_up)},
      {"max_catch_up", d.max_catch_up},
      {"misfire_grace", to_us(d.misfire_grace)},
      {"paused", d.paused},
      {"last_run_id", r.state.last_run_id},
  };
  put_opt(j, "at", d.at);
  put_opt(j, "cursor", r.state.cursor);
  put_opt(j, "last_fired", r.state.last_fired);
  return j;
}

std::optional<schedule_record> schedule_record_from_json(const json& j, error_code& ec,
                                                         std::string& detail) {
  if (!j.is_object()) {
    ec = errc::invalid_record;
    detail = "schedule record: expected a JSON object";
    return std::nullopt;
  }
  json_reader rd{j, {}};
  int version = 0;
  rd.get("v", version);
  if (rd.bad.empty() && version != 1) {
    ec = errc::unsupported_format_version;
    detail =
        fmt::format("schedule record: format version {} (this build reads version 1)", version);
    return std::nullopt;
  }
  schedule_record r;
  auto& d = r.definition;
  rd.get("name", d.name);
  if (const json* t = rd.field("task", true)) {
    auto bad = spec_from_json(*t, d.task);
    if (!bad.empty() && rd.bad.empty()) rd.bad = bad;
  }
  rd.get("cron", d.cron, false);
  rd.get("time_zone", d.time_zone, false);
  rd.get_duration("every", d.every);
  rd.get_time("anchor", d.anchor);
  rd.get_opt_time("at", d.at);
  std::string overlap, catch_up;
  rd.get("overlap", overlap);
  rd.get("catch_up", catch_up);
  if (rd.bad.empty() &&
      !parse_enum(overlap,
                  std::array{overlap_policy::allow, overlap_policy::skip_if_running,
                             overlap_policy::queue_one},
                  d.overlap))
    rd.bad = "overlap";
  if (rd.bad.empty() && !parse_enum(catch_up,
                                    std::array{catch_up_policy::skip, catch_up_policy::run_once,
                                               catch_up_policy::run_all},
                                    d.catch_up))
    rd.bad = "catch_up";
  rd.get("max_concurrency", d.max_concurrency);
  rd.get("max_catch_up", d.max_catch_up);
  rd.get_duration("misfire_grace", d.misfire_grace);
  rd.get("paused", d.paused);
  rd.get_opt_time("cursor", r.state.cursor);
  rd.get_opt_time("last_fired", r.state.last_fired);
  rd.get("last_run_id", r.state.last_run_id, false);
  if (!rd.bad.empty()) {
    ec = errc::invalid_record;
    detail = fmt::format("schedule record: field '{}' is missing or has the wrong type", rd.bad);
    return std::nullopt;
  }
  ec = {};
  return r;
}

// --- in-memory schedule store ---------------------------------------------------------------

struct memory::schedule_store::impl {
  asio::any_io_executor ex;
  mutable std::mutex mutex;
  std::map<std::string, schedule_record> records;
};

memory::schedule_store::schedule_store(asio::any_io_executor ex) : impl_(std::make_unique<impl>()) {
  impl_->ex = std::move(ex);
}

memory::schedule_store::~schedule_store() = default;

std::size_t memory::schedule_store::size() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->records.size();
}

void memory::schedule_store::do_load(std::string name,
                                     handler<void(error_code, std::optional<schedule_record>)> h) {
  std::optional<schedule_record> out;
  {
    std::lock_guard lock(impl_->mutex);
    if (auto it = impl_->records.find(name); it != impl_->records.end()) out = it->second;
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(out));
}

void memory::schedule_store::do_load_all(
    handler<void(error_code, std::vector<schedule_record>)> h) {
  std::vector<schedule_record> out;
  {
    std::lock_guard lock(impl_->mutex);
    out.reserve(impl_->records.size());
    for (auto& [name, r] : impl_->records) out.push_back(r);
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(out));
}

void memory::schedule_store::do_save(schedule_record r, handler<void(error_code)> h) {
  {
    std::lock_guard lock(impl_->mutex);
    auto [it, fresh] = impl_->records.try_emplace(r.definition.name);
    if (!fresh) detail::merge_on_save(it->second, r);
    it->second = std::move(r);
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{});
}

void memory::schedule_store::do_remove(std::string name, handler<void(error_code, bool)> h) {
  bool removed;
  {
    std::lock_guard lock(impl_->mutex);
    removed = impl_->records.erase(name) > 0;
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, removed);
}

// --- in-memory leader election -------------------------------------------------------------

struct memory::leader_election::impl {
  asio::any_io_executor ex;
  clock* clk;
  mutable std::mutex mutex;
  struct lease {
    std::string holder;
    time_point expires;
  };
  std::map<std::string, lease> leases;
};

memory::leader_election::leader_election(asio::any_io_executor ex, clock& time)
    : impl_(std::make_unique<impl>()) {
  impl_->ex = std::move(ex);
  impl_->clk = &time;
}

memory::leader_election::~leader_election() = default;

std::string memory::leader_election::holder(const std::string& name) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->leases.find(name);
  if (it == impl_->leases.end() || it->second.expires <= impl_->clk->now()) return {};
  return it->second.holder;
}

void memory::leader_election::do_acquire(std::string name, std::string holder, duration ttl,
                                         handler<void(error_code, bool)> h) {
  if (ttl <= duration::zero())
    return detail::post_completion(std::move(h), impl_->ex, error_code(errc::invalid_option),
                                   false);
  bool granted = false;
  {
    std::lock_guard lock(impl_->mutex);
    auto now = impl_->clk->now();
    auto [it, fresh] = impl_->leases.try_emplace(name);
    // The same rule as the PostgreSQL lease row: free, mine, or run out.
    if (fresh || it->second.holder == holder || it->second.expires <= now) {
      it->second = {std::move(holder), now + ttl};
      granted = true;
    }
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, granted);
}

void memory::leader_election::do_release(std::string name, std::string holder,
                                         handler<void(error_code)> h) {
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->leases.find(name);
    if (it != impl_->leases.end() && it->second.holder == holder) impl_->leases.erase(it);
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{});
}

// --- the scheduler --------------------------------------------------------------------------

namespace detail {

namespace {

std::optional<task_status> status_of(event_kind k) {
  switch (k) {
    case event_kind::started:
      return task_status::running;
    case event_kind::retry_scheduled:
      return task_status::pending;
    case event_kind::succeeded:
      return task_status::succeeded;
    case event_kind::failed:
      return task_status::failed;
    case event_kind::cancelled:
      return task_status::cancelled;
    case event_kind::dropped:
      return task_status::dropped;
    default:
      return std::nullopt;
  }
}

}  // namespace

struct scheduler_core : std::enable_shared_from_this<scheduler_core> {
  struct entry {
    schedule def;
    std::optional<schedule_timing> timing;
    schedule_state state;
    std::optional<time_point> next_due;  // key in `due` while set
    occupancy occ;
    bool held_back = false;
    std::optional<task_status> last_status;
    std::string last_error;
    schedule_counts counts;
  };
  struct active_run {
    std::string schedule;
    bool running = false;
    std::optional<time_point> enqueued_at{};
  };
  // One enqueue the shell must make.
  struct job {
    std::string schedule;
    time_point due;
    task_spec spec;
    bool manual = false;
    int retries = 0;  // failed enqueues of this occurrence so far
  };

  client& c;
  // A copy of the client's logger: write-behind completions may outlive the client.
  logger log_;
  const logger& log() const noexcept { return log_; }
  clock& clk;
  asio::any_io_executor io_ex;
  asio::strand<asio::any_io_executor> strand;
  std::unique_ptr<memory::schedule_store> own_store;
  schedule_store& store;
  scheduler_options opts;
  std::uint64_t subscription = 0;

  mutable std::mutex mutex;
  std::map<std::string, entry> entries;
  std::set<std::pair<time_point, const std::string*>> due;  // next due -> name
  std::unordered_map<std::string, active_run> active;       // task id -> its schedule
  histogram lateness;
  histogram queue_wait;    // a run's enqueued -> started
  schedule_counts totals;  // of removed schedules too

  // Strand-only state: the single clock wait.
  bool running = false;
  bool stopped = false;
  std::optional<asio::any_completion_handler<void(error_code)>> run_handler;
  std::optional<time_point> armed_at;
  std::uint64_t generation = 0;
  asio::cancellation_signal wait_cancel;
  std::atomic<bool> arm_posted{false};
  std::list<asio::cancellation_signal> retry_waits;  // occurrences waiting to be enqueued again

  // Leader election (opts.leader). Strand-only, except the atomics (read by metrics()).
  std::string holder_id;
  bool reloading = false;  // reloading progress after being granted the lease
  std::atomic<time_point> lease_until{time_point{}};
  std::uint64_t lead_gen = 0;    // voids answers and waits of an earlier run
  std::uint64_t reload_gen = 0;  // voids a reload begun before the lease was lost
  asio::cancellation_signal lead_cancel;
  std::atomic<bool> leading{false};  // holds the lease and has reloaded progress
  std::atomic<bool> live{false};     // mirrors `running`
  std::atomic<std::uint64_t> leadership_changes{0};

  scheduler_core(client& cl, scheduler_options o)
      : c(cl),
        log_(cl.log()),
        clk(cl.time()),
        io_ex(cl.get_executor()),
        strand(asio::make_strand(cl.get_executor())),
        own_store(o.store ? nullptr : std::make_unique<memory::schedule_store>(cl.get_executor())),
        store(o.store ? *o.store : *own_store),
        opts(std::move(o)),
        holder_id(opts.instance_id.empty() ? make_task_id(clk.now()) : opts.instance_id) {}

  // Fires occurrences: runs and, with an election, leads under a lease that has not run out
  // (a renewal answered late must not let an expired leader fire). Strand.
  bool firing() const {
    return running && (!opts.leader || (leading && clk.now() < lease_until.load()));
  }

  // --- due set (mutex held) ---------------------------------------------------------------

  void set_due(std::map<std::string, entry>::iterator it, std::optional<time_point> at) {
    auto& e = it->second;
    if (e.next_due) due.erase({*e.next_due, &it->first});
    e.next_due = at;
    if (at) due.insert({*at, &it->first});
  }

  void reschedule(std::map<std::string, entry>::iterator it) {
    auto& e = it->second;
    if (e.def.paused || e.held_back) return set_due(it, std::nullopt);
    set_due(it, e.timing->next_after(e.state.cursor));
  }

  // --- the clock wait (strand) ------------------------------------------------------------

  void request_arm() {
    if (arm_posted.exchange(true)) return;
    asio::post(strand, [self = shared_from_this()] {
      self->arm_posted = false;
      self->arm();
    });
  }

  void arm() {
    if (!firing()) return;
    std::optional<time_point> earliest;
    {
      std::lock_guard lock(mutex);
      if (!due.empty()) earliest = due.begin()->first;
    }
    if (!earliest || (armed_at && *armed_at <= *earliest)) return;  // armed early enough
    if (armed_at) wait_cancel.emit(asio::cancellation_type::terminal);
    armed_at = earliest;
    auto gen = ++generation;
    clk.async_wait_until(
        io_ex, *earliest,
        asio::bind_cancellation_slot(
            wait_cancel.slot(),
            asio::bind_executor(strand, [self = shared_from_this(), gen](error_code) {
              if (gen != self->generation) return;  // superseded by an earlier wait
              self->armed_at.reset();
              if (!self->firing()) return;
              self->fire_due();
              self->arm();
            })));
  }

  void disarm() {
    disarm_wait();
    for (auto& w : retry_waits) w.emit(asio::cancellation_type::terminal);
  }

  void disarm_wait() {
    if (armed_at) {
      ++generation;
      armed_at.reset();
      wait_cancel.emit(asio::cancellation_type::terminal);
    }
  }

  // A scheduled occurrence whose enqueue failed for a reason that may pass (an I/O error, the
  // backend unreachable): enqueue it again after a backoff (1 s doubling to 1 min) while the
  // scheduler runs, so a transient store failure does not lose the occurrence. Strand only.
  // Goes on after leadership is lost: the occurrence was decided while leading and the stored
  // cursor may already be past it; the dedupe key covers the new leader enqueueing it too.
  void retry_later(job j) {
    if (!running) return;
    auto delay = std::min<duration>(std::chrono::seconds(1) * (1 << std::min(j.retries, 6)),
                                    std::chrono::minutes(1));
    ++j.retries;
    auto sig = retry_waits.emplace(retry_waits.end());
    clk.async_wait_until(
        io_ex, clk.now() + delay,
        asio::bind_cancellation_slot(
            sig->slot(), asio::bind_executor(strand, [self = shared_from_this(), sig,
                                                      j = std::move(j)](error_code ec) mutable {
              self->retry_waits.erase(sig);
              if (ec || !self->running) return;
              {
                std::lock_guard lock(self->mutex);
                auto it = self->entries.find(j.schedule);
                if (it == self->entries.end()) return;  // removed meanwhile
                self->active.emplace(j.spec.id, active_run{j.schedule, false});
                ++it->second.occ.pending;
              }
              self->enqueue_one(std::move(j), {});
            })));
  }

  // --- firing -----------------------------------------------------------------------------

  job make_job(entry& e, const std::string& name, time_point now, time_point scheduled_for,
               bool keyed) {
    job j;
    j.schedule = name;
    j.due = scheduled_for;
    j.spec = e.def.task;
    j.spec.id = make_task_id(now);
    j.spec.scheduled_for = scheduled_for;
    if (keyed) {
      j.spec.unique_key = occurrence_key(name, scheduled_for);
      j.spec.unique_for = unique_scope::any;
    }
    j.spec.labels[schedule_label] = name;
    // Track it before it exists: its events may arrive before the enqueue completes.
    active.emplace(j.spec.id, active_run{name, false});
    ++e.occ.pending;
    return j;
  }

  void fire_due() {
    auto now = clk.now();
    std::vector<job> jobs;
    {
      std::lock_guard lock(mutex);
      while (!due.empty() && due.begin()->first <= now) {
        auto it = entries.find(*due.begin()->second);
        auto& e = it->second;
        auto d = decide(e.def, *e.timing, e.state.cursor, e.occ, now);
        e.state.cursor = d.cursor;
        e.held_back = d.held_back;
        e.counts.skipped += d.skipped;
        totals.skipped += d.skipped;
        for (auto t : d.fire) jobs.push_back(make_job(e, it->first, now, t, true));
        reschedule(it);
      }
    }
    if (!jobs.empty()) enqueue(std::move(jobs));
  }

  // Enqueues jobs: one batch (the fast path); if that fails (a duplicate), one by one.
  void enqueue(std::vector<job> jobs) {
    auto self = shared_from_this();
    if (jobs.size() == 1) return enqueue_one(std::move(jobs.front()), {});
    std::vector<task_spec> specs;
    specs.reserve(jobs.size());
    for (auto& j : jobs) specs.push_back(j.spec);
    c.async_enqueue_batch(std::move(specs), [self, jobs = std::move(jobs)](
                                                error_code ec, std::vector<std::string>) mutable {
      if (ec) {
        for (auto& j : jobs) self->enqueue_one(std::move(j), {});
        return;
      }
      for (auto& j : jobs) self->enqueued(j, {});
    });
  }

  using id_handler = std::function<void(error_code, std::string)>;

  void enqueue_one(job j, id_handler done) {
    auto self = shared_from_this();
    auto spec = j.spec;
    c.async_enqueue(std::move(spec), [self, j = std::move(j), done = std::move(done)](
                                         error_code ec, std::string id) mutable {
      self->enqueued(j, ec);
      if (done) done(ec, ec ? std::string() : std::move(id));
    });
  }

  // An enqueue completed (any thread).
  void enqueued(const job& j, error_code ec) {
    auto now = clk.now();
    std::optional<schedule_record> save;
    {
      std::lock_guard lock(mutex);
      auto it = entries.find(j.schedule);
      if (ec) forget_run(j.spec.id);
      if (!ec) {
        if (!j.manual) lateness.record(std::max(now - j.due, duration::zero()));
        if (!j.manual && opts.metrics)
          opts.metrics->observe_lateness(j.schedule, std::max(now - j.due, duration::zero()));
        ++(j.manual ? totals.manual : totals.fired);
      } else if (ec == errc::duplicate_unique_key) {
        ++totals.deduplicated;
      } else {
        ++totals.errors;
      }
      if (it == entries.end()) return;
      auto& e = it->second;
      if (!ec) {
        ++(j.manual ? e.counts.manual : e.counts.fired);
        if (!e.state.last_fired || *e.state.last_fired <= j.due || j.manual) {
          e.state.last_fired = j.due;
          e.state.last_run_id = j.spec.id;
          auto a = active.find(j.spec.id);
          e.last_status = a == active.end()
                              ? e.last_status
                              : (a->second.running ? task_status::running : task_status::pending);
        }
      } else if (ec == errc::duplicate_unique_key) {
        ++e.counts.deduplicated;
      } else {
        ++e.counts.errors;
        e.last_error = ec.message();
      }
      save = schedule_record{e.def, e.state};
    }
    // Write-behind: the occurrence is already enqueued (dedupe makes a lost save harmless).
    auto name = save->definition.name;
    store.async_save(std::move(*save),
                     [self = shared_from_this(), name = std::move(name)](error_code ec) {
                       if (ec)
                         self->log().error("schedule {}: saving progress: {}", name, ec.message());
                     });
    // Validation errors (taskq's codes below 100) would fail again; anything else may pass.
    const bool permanent = ec.category() == taskq::category() && ec.value() < 100;
    if (ec && ec != errc::duplicate_unique_key && !j.manual && !permanent)
      asio::post(strand,
                 [self = shared_from_this(), j]() mutable { self->retry_later(std::move(j)); });
  }

  // Drops a run from tracking (mutex held); returns its entry's iterator (or end).
  std::map<std::string, entry>::iterator forget_run(const std::string& id) {
    auto a = active.find(id);
    if (a == active.end()) return entries.end();
    auto it = entries.find(a->second.schedule);
    if (it != entries.end()) {
      auto& occ = it->second.occ;
      if (a->second.running) {
        --occ.running;
      } else {
        --occ.pending;
      }
    }
    active.erase(a);
    return it;
  }

  void on_event(const event& ev) {
    if (ev.kind == event_kind::enqueued) {
      std::lock_guard lock(mutex);
      if (auto a = active.find(ev.task_id); a != active.end()) a->second.enqueued_at = ev.at;
      return;
    }
    auto st = status_of(ev.kind);
    if (!st) return;
    bool kick = false;
    {
      std::lock_guard lock(mutex);
      auto a = active.find(ev.task_id);
      if (a == active.end()) return;
      if (ev.kind == event_kind::started && a->second.enqueued_at) {
        queue_wait.record(std::max(ev.at - *a->second.enqueued_at, duration::zero()));
        a->second.enqueued_at.reset();  // a retry's wait is measured from its own enqueue
      }
      auto it = entries.find(a->second.schedule);
      if (is_terminal(*st)) {
        it = forget_run(ev.task_id);
        if (it != entries.end() && it->second.held_back) {
          // A slot freed: the held-back occurrences are due again.
          it->second.held_back = false;
          reschedule(it);
          kick = true;
        }
      } else if (it != entries.end()) {
        bool now_running = *st == task_status::running;
        if (now_running != a->second.running) {
          a->second.running = now_running;
          auto& occ = it->second.occ;
          if (now_running) {
            --occ.pending, ++occ.running;
          } else {
            ++occ.pending, --occ.running;
          }
        }
      }
      if (it != entries.end() && it->second.state.last_run_id == ev.task_id)
        it->second.last_status = *st;
    }
    if (kick) request_arm();
  }

  // --- taking a schedule on -----------------------------------------------------------------

  // Finds this schedule's runs still pending or running in the task store, then calls `done`.
  template <class Done>
  void find_active_runs(const std::string& name, Done done) {
    if (!opts.track_existing_runs) return done({});
    task_filter f;
    f.labels[schedule_label] = name;
    f.statuses = {task_status::pending, task_status::running};
    f.limit = 100'000;
    c.async_list(std::move(f), [done = std::move(done)](error_code ec, task_page page) mutable {
      done(ec ? std::vector<task_record>{} : std::move(page.records));
    });
  }

  // Tracks runs found in the task store that are not tracked yet. Mutex held.
  void track(std::map<std::string, entry>::iterator it, const std::vector<task_record>& runs) {
    for (auto& r : runs) {
      if (active.count(r.id)) continue;
      bool is_running = r.status == task_status::running;
      active.emplace(r.id, active_run{it->first, is_running});
      ++(is_running ? it->second.occ.running : it->second.occ.pending);
    }
  }

  // Installs (or updates) a schedule. Mutex held. Returns what happened.
  ensure_result install(schedule def, std::optional<schedule_state> stored, time_point now,
                        const std::vector<task_record>& runs, bool& changed) {
    changed = false;
    auto it = entries.find(def.name);
    if (it != entries.end()) {
      auto& e = it->second;
      if (e.def == def) return ensure_result::unchanged;
      bool timing_changed = !same_timing(e.def, def);
      bool resumed = e.def.paused && !def.paused;
      e.def = std::move(def);
      if (timing_changed) {
        e.timing.emplace(e.def);
        e.state.cursor = e.timing->is_one_shot() ? std::nullopt : std::optional(now);
        e.held_back = false;
      } else if (resumed && !e.timing->is_one_shot()) {
        e.state.cursor = std::max(e.state.cursor.value_or(now), now);
      }
      reschedule(it);
      changed = true;
      return ensure_result::updated;
    }
    entry e;
    e.timing.emplace(def);
    ensure_result result = ensure_result::created;
    if (stored) {
      e.state = *stored;
      result = ensure_result::unchanged;
    } else if (!e.timing->is_one_shot()) {
      e.state.cursor = now;
    }
    e.def = std::move(def);
    it = entries.emplace(e.def.name, std::move(e)).first;
    track(it, runs);
    reschedule(it);
    changed = !stored;
    return result;
  }

  // Takes a schedule on from a store record (ensure or adoption) and persists it if needed.
  void take_on(schedule def, std::optional<schedule_record> stored,
               std::function<void(error_code, ensure_result)> done) {
    auto self = shared_from_this();
    auto name = def.name;
    find_active_runs(name, [self, def = std::move(def), stored = std::move(stored),
                            done = std::move(done)](std::vector<task_record> runs) mutable {
      ensure_result result;
      std::optional<schedule_record> save;
      {
        std::lock_guard lock(self->mutex);
        auto now = self->clk.now();
        bool changed = false;
        if (stored && !self->entries.count(def.name)) {
          // Adopt the stored progress first, then apply the (possibly changed) definition.
          auto stored_def = stored->definition;
          bool same = stored_def == def;
          self->install(std::move(stored_def), stored->state, now, runs, changed);
          if (same) {
            result = ensure_result::unchanged;
          } else {
            result = self->install(def, std::nullopt, now, runs, changed);
          }
        } else {
          result = self->install(def, std::nullopt, now, runs, changed);
        }
        if (changed || result != ensure_result::unchanged) {
          auto& e = self->entries.at(def.name);
          save = schedule_record{e.def, e.state};
        }
      }
      self->request_arm();
      if (!save) return done({}, result);
      self->store.async_save(std::move(*save),
                             [done = std::move(done), result](error_code ec) { done(ec, result); });
    });
  }

  void adopt_stored() {
    auto self = shared_from_this();
    store.async_load_all([self](error_code ec, std::vector<schedule_record> all) {
      if (ec) self->log().error("adopting stored schedules: {}", ec.message());
      if (!ec) self->adopt(std::move(all));
    });
  }

  // Takes on the stored schedules this instance does not know yet.
  void adopt(std::vector<schedule_record> all) {
    for (auto& r : all) {
      {
        std::lock_guard lock(mutex);
        if (entries.count(r.definition.name)) continue;
      }
      std::string detail;
      if (validate(r.definition, detail)) {
        log().error("stored schedule {} is not adopted: {}", r.definition.name, detail);
        continue;
      }
      auto def = r.definition;
      auto name = def.name;
      take_on(std::move(def), std::move(r),
              [self = shared_from_this(), name](error_code ec, ensure_result) {
                if (ec) self->log().error("adopting schedule {}: {}", name, ec.message());
              });
    }
  }

  // --- leader election (strand) -------------------------------------------------------------

  // Asks for leadership (or renews it), then again every leader_renew while running.
  void lead_tick() {
    if (!running || !opts.leader) return;
    auto gen = lead_gen;
    auto asked = clk.now();
    opts.leader->async_acquire(opts.leader_name, holder_id, opts.leader_ttl,
                               asio::bind_executor(strand, [self = shared_from_this(), gen, asked](
                                                               error_code ec, bool granted) {
                                 if (gen != self->lead_gen || !self->running) return;
                                 if (!ec && granted) {
                                   self->lease_until = asked + self->opts.leader_ttl;
                                   if (!self->leading && !self->reloading)
                                     self->take_lead();
                                   else
                                     self->arm();
                                 } else {
                                   self->lose_lead();
                                 }
                                 self->lead_wait();
                               }));
  }

  void lead_wait() {
    auto gen = lead_gen;
    clk.async_wait_until(
        io_ex, clk.now() + opts.leader_renew,
        asio::bind_cancellation_slot(
            lead_cancel.slot(),
            asio::bind_executor(strand, [self = shared_from_this(), gen](error_code ec) {
              if (!ec && gen == self->lead_gen) self->lead_tick();
            })));
  }

  // Granted the lease: reloads every schedule's progress from the store (what the previous
  // leader did), counts the runs it enqueued that are still active, adopts the stored
  // schedules not known here, and only then fires. A failed reload is tried again at the next
  // renewal.
  void take_lead() {
    reloading = true;
    auto rgen = ++reload_gen;
    auto self = shared_from_this();
    store.async_load_all(asio::bind_executor(
        strand, [self, rgen](error_code ec, std::vector<schedule_record> all) mutable {
          if (rgen != self->reload_gen) return;
          if (ec) {
            self->reloading = false;
            return;
          }
          std::vector<schedule_record> unknown;
          auto names = std::make_shared<std::vector<std::string>>();
          {
            std::lock_guard lock(self->mutex);
            for (auto& r : all) {
              auto it = self->entries.find(r.definition.name);
              if (it == self->entries.end()) {
                if (self->opts.adopt_stored) unknown.push_back(std::move(r));
              } else {
                self->reload_progress(it, std::move(r));
              }
            }
            for (auto& [name, e] : self->entries) names->push_back(name);
          }
          auto finish = [self, rgen, unknown = std::move(unknown)]() mutable {
            asio::post(self->strand, [self, rgen, unknown = std::move(unknown)]() mutable {
              if (rgen != self->reload_gen) return;
              self->reloading = false;
              self->leading = true;
              ++self->leadership_changes;
              self->adopt(std::move(unknown));
              self->arm();
            });
          };
          if (names->empty()) return finish();
          struct join {
            // A constructor, not aggregate init: clang 14 (the fuzz build) lacks P0960.
            join(std::size_t n, decltype(finish) f) : left(n), done(std::move(f)) {}
            std::atomic<std::size_t> left;
            decltype(finish) done;
          };
          auto j = std::make_shared<join>(names->size(), std::move(finish));
          for (auto& name : *names) {
            self->find_active_runs(name, [self, j, name](std::vector<task_record> runs) {
              {
                std::lock_guard lock(self->mutex);
                if (auto it = self->entries.find(name); it != self->entries.end())
                  self->track(it, runs);
              }
              if (--j->left == 0) j->done();
            });
          }
        }));
  }

  // Replaces an entry's progress with the stored one, unless this instance's is later (as the
  // store's save rule would). Mutex held.
  void reload_progress(std::map<std::string, entry>::iterator it, schedule_record stored) {
    auto& e = it->second;
    if (!same_timing(e.def, stored.definition)) return;  // redefined here since: keep ours
    schedule_record mine{e.def, e.state};
    stored.definition = e.def;
    detail::merge_on_save(mine, stored);
    e.state = std::move(stored.state);
    e.held_back = false;  // decided again when due
    reschedule(it);
  }

  // Stops firing (a renewal failed or was refused, or the scheduler stops).
  void lose_lead() {
    reloading = false;
    ++reload_gen;
    if (leading.exchange(false)) {
      ++leadership_changes;
      disarm_wait();
    }
  }

  // Gives leadership up (harmless when not held). Any thread.
  void release_lead() {
    if (opts.leader)
      opts.leader->async_release(opts.leader_name, holder_id,
                                 [self = shared_from_this()](error_code ec) {
                                   if (ec) self->log().error("leader release: {}", ec.message());
                                 });
  }

  // The scheduler stops: no more renewals.
  void end_lead() {
    if (!opts.leader) return;
    ++lead_gen;
    lead_cancel.emit(asio::cancellation_type::terminal);
    lose_lead();
  }

  schedule_info info_of(const std::string& name, const entry& e) const {
    schedule_info i;
    i.definition = e.def;
    i.next_due = e.next_due;
    i.last_fired = e.state.last_fired;
    i.last_run_id = e.state.last_run_id;
    i.last_run_status = e.last_status;
    i.last_error = e.last_error;
    i.active_runs = e.occ.active();
    i.held_back = e.held_back;
    i.counts = e.counts;
    (void)name;
    return i;
  }
};

}  // namespace detail

namespace {
scheduler_options checked(scheduler_options o) {
  if (o.leader && (o.leader_renew <= duration::zero() || o.leader_ttl <= o.leader_renew))
    throw error(errc::invalid_option,
                "scheduler_options fields 'leader_ttl'/'leader_renew': need leader_ttl > "
                "leader_renew > 0");
  return o;
}
}  // namespace

scheduler::scheduler(client& c, scheduler_options opts)
    : core_(std::make_shared<detail::scheduler_core>(c, checked(std::move(opts)))) {
  std::weak_ptr<detail::scheduler_core> weak = core_;
  core_->subscription = detail::track_scheduled(c, [weak](const event& e) {
    if (auto self = weak.lock()) self->on_event(e);
  });
}

scheduler::~scheduler() {
  detail::untrack_scheduled(core_->c, core_->subscription);
  stop();
}

scheduler::executor_type scheduler::get_executor() const noexcept {
  return core_->strand;
}

void scheduler::do_ensure(schedule def,
                          asio::any_completion_handler<void(error_code, ensure_result)> h) {
  auto core = core_;
  std::string detail;
  if (auto ec = validate(def, detail)) {
    return detail::post_completion(std::move(h), core->io_ex, ec, ensure_result::unchanged);
  }
  auto shared_h = std::make_shared<decltype(h)>(std::move(h));
  auto done = [core, shared_h](error_code ec, ensure_result r) {
    detail::post_completion(std::move(*shared_h), core->io_ex, ec, r);
  };
  {
    std::lock_guard lock(core->mutex);
    if (core->entries.count(def.name)) {
      // Known here: update in place without a store round trip.
      auto& e = core->entries.at(def.name);
      if (e.def == def) return done({}, ensure_result::unchanged);
    }
  }
  auto name = def.name;
  core->store.async_load(
      std::move(name),
      [core, def = std::move(def), done](error_code ec, std::optional<schedule_record> r) mutable {
        if (ec) return done(ec, ensure_result::unchanged);
        core->take_on(std::move(def), std::move(r), done);
      });
}

ensure_result scheduler::ensure_schedule(schedule def, error_code& ec) {
  auto [e, r] = detail::blocking_call<ensure_result>(
      core_->io_ex, [&](auto h) { async_ensure_schedule(std::move(def), std::move(h)); });
  ec = e;
  return r;
}

ensure_result scheduler::ensure_schedule(schedule def) {
  std::string detail;
  if (auto ec = validate(def, detail)) throw error(ec, detail);
  error_code ec;
  auto r = ensure_schedule(std::move(def), ec);
  throw_if(ec);
  return r;
}

void scheduler::do_set_paused(std::string name, bool paused,
                              asio::any_completion_handler<void(error_code)> h) {
  auto core = core_;
  std::optional<schedule_record> save;
  {
    std::lock_guard lock(core->mutex);
    auto it = core->entries.find(name);
    if (it == core->entries.end())
      return detail::post_completion(std::move(h), core->io_ex,
                                     error_code(errc::schedule_not_found));
    auto def = it->second.def;
    def.paused = paused;
    bool changed = false;
    core->install(std::move(def), std::nullopt, core->clk.now(), {}, changed);
    if (changed) save = schedule_record{it->second.def, it->second.state};
  }
  core->request_arm();
  if (!save) return detail::post_completion(std::move(h), core->io_ex, error_code{});
  // Bound here so that it completes on the scheduler's side, not the schedule store's.
  auto ex = asio::get_associated_executor(h, core->io_ex);
  core->store.async_save(std::move(*save), asio::bind_executor(std::move(ex), std::move(h)));
}

void scheduler::pause(const std::string& name, error_code& ec) {
  std::tie(ec) =
      detail::blocking_call<>(core_->io_ex, [&](auto h) { async_pause(name, std::move(h)); });
}

void scheduler::pause(const std::string& name) {
  error_code ec;
  pause(name, ec);
  throw_if(ec, name);
}

void scheduler::resume(const std::string& name, error_code& ec) {
  std::tie(ec) =
      detail::blocking_call<>(core_->io_ex, [&](auto h) { async_resume(name, std::move(h)); });
}

void scheduler::resume(const std::string& name) {
  error_code ec;
  resume(name, ec);
  throw_if(ec, name);
}

void scheduler::do_remove(std::string name, bool cancel_runs,
                          asio::any_completion_handler<void(error_code, std::size_t)> h) {
  auto core = core_;
  std::vector<std::string> tracked;
  {
    std::lock_guard lock(core->mutex);
    auto it = core->entries.find(name);
    if (it == core->entries.end())
      return detail::post_completion(std::move(h), core->io_ex,
                                     error_code(errc::schedule_not_found), std::size_t{0});
    core->set_due(it, std::nullopt);
    for (auto a = core->active.begin(); a != core->active.end();) {
      if (a->second.schedule == name) {
        tracked.push_back(a->first);
        a = core->active.erase(a);
      } else {
        ++a;
      }
    }
    core->entries.erase(it);
  }
  core->store.async_remove(name, [core, name, cancel_runs, tracked = std::move(tracked),
                                  h = std::move(h)](error_code ec, bool) mutable {
    if (ec || !cancel_runs)
      return detail::dispatch_completion(std::move(h), core->io_ex, ec, std::size_t{0});
    // Cancel what is tracked plus whatever the task store still has under the label (runs
    // enqueued by another instance).
    core->find_active_runs(name, [core, tracked = std::move(tracked),
                                  h = std::move(h)](std::vector<task_record> runs) mutable {
      std::set<std::string> ids(tracked.begin(), tracked.end());
      for (auto& r : runs) ids.insert(r.id);
      if (ids.empty())
        return detail::dispatch_completion(std::move(h), core->io_ex, error_code{}, std::size_t{0});
      struct join {
        std::mutex m;
        std::size_t left, cancelled = 0;
        std::optional<asio::any_completion_handler<void(error_code, std::size_t)>> h;
      };
      auto j = std::make_shared<join>();
      j->left = ids.size();
      j->h.emplace(std::move(h));
      for (auto& id : ids) {
        core->c.async_cancel(id, [core, j](error_code ec, task_record) {
          std::lock_guard lock(j->m);
          if (!ec) ++j->cancelled;
          if (--j->left == 0)
            detail::dispatch_completion(std::move(*j->h), core->io_ex, error_code{}, j->cancelled);
        });
      }
    });
  });
}

std::size_t scheduler::remove(const std::string& name, bool cancel_runs, error_code& ec) {
  return detail::blocking_value<std::size_t>(
      core_->io_ex, ec, [&](auto h) { async_remove(name, cancel_runs, std::move(h)); });
}

std::size_t scheduler::remove(const std::string& name, bool cancel_runs) {
  error_code ec;
  auto n = remove(name, cancel_runs, ec);
  throw_if(ec, name);
  return n;
}

void scheduler::do_run_now(std::string name,
                           asio::any_completion_handler<void(error_code, std::string)> h) {
  auto core = core_;
  detail::scheduler_core::job j;
  {
    std::lock_guard lock(core->mutex);
    auto it = core->entries.find(name);
    if (it == core->entries.end())
      return detail::post_completion(std::move(h), core->io_ex,
                                     error_code(errc::schedule_not_found), std::string());
    auto now = core->clk.now();
    j = core->make_job(it->second, name, now, now, false);
    j.manual = true;
  }
  auto shared_h = std::make_shared<decltype(h)>(std::move(h));
  core->enqueue_one(std::move(j), [core, shared_h](error_code ec, std::string id) {
    detail::dispatch_completion(std::move(*shared_h), core->io_ex, ec, std::move(id));
  });
}

std::string scheduler::run_now(const std::string& name, error_code& ec) {
  return detail::blocking_value<std::string>(core_->io_ex, ec,
                                             [&](auto h) { async_run_now(name, std::move(h)); });
}

std::string scheduler::run_now(const std::string& name) {
  error_code ec;
  auto id = run_now(name, ec);
  throw_if(ec, name);
  return id;
}

void scheduler::do_backfill(std::string name, time_point from, time_point to,
                            asio::any_completion_handler<void(error_code, backfill_result)> h) {
  auto core = core_;
  std::vector<detail::scheduler_core::job> jobs;
  {
    std::lock_guard lock(core->mutex);
    auto it = core->entries.find(name);
    if (it == core->entries.end())
      return detail::post_completion(std::move(h), core->io_ex,
                                     error_code(errc::schedule_not_found), backfill_result{});
    auto times = detail::occurrences_in(*it->second.timing, from, to, core->opts.max_backfill);
    if (times.size() > core->opts.max_backfill)
      return detail::post_completion(std::move(h), core->io_ex, error_code(errc::invalid_schedule),
                                     backfill_result{});
    auto now = core->clk.now();
    for (auto t : times) {
      jobs.push_back(core->make_job(it->second, name, now, t, true));
      jobs.back().manual = true;
    }
  }
  if (jobs.empty())
    return detail::post_completion(std::move(h), core->io_ex, error_code{}, backfill_result{});
  struct join {
    std::mutex m;
    std::size_t left;
    std::vector<std::string> ids;  // by occurrence index; empty when deduplicated
    std::size_t already = 0;
    error_code first_error;
    std::optional<asio::any_completion_handler<void(error_code, backfill_result)>> h;
  };
  auto j = std::make_shared<join>();
  j->left = jobs.size();
  j->ids.resize(jobs.size());
  j->h.emplace(std::move(h));
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    core->enqueue_one(std::move(jobs[i]), [core, j, i](error_code ec, std::string id) {
      std::lock_guard lock(j->m);
      if (ec == errc::duplicate_unique_key) {
        ++j->already;
      } else if (ec) {
        if (!j->first_error) j->first_error = ec;
      } else {
        j->ids[i] = std::move(id);
      }
      if (--j->left > 0) return;
      backfill_result r;
      for (auto& s : j->ids)
        if (!s.empty()) r.ids.push_back(std::move(s));
      r.already_enqueued = j->already;
      detail::dispatch_completion(std::move(*j->h), core->io_ex, j->first_error, std::move(r));
    });
  }
}

backfill_result scheduler::backfill(const std::string& name, time_point from, time_point to,
                                    error_code& ec) {
  return detail::blocking_value<backfill_result>(
      core_->io_ex, ec, [&](auto h) { async_backfill(name, from, to, std::move(h)); });
}

backfill_result scheduler::backfill(const std::string& name, time_point from, time_point to) {
  error_code ec;
  auto r = backfill(name, from, to, ec);
  throw_if(ec, name);
  return r;
}

std::vector<schedule_info> scheduler::list() const {
  std::lock_guard lock(core_->mutex);
  std::vector<schedule_info> out;
  out.reserve(core_->entries.size());
  for (auto& [name, e] : core_->entries) out.push_back(core_->info_of(name, e));
  return out;
}

std::optional<schedule_info> scheduler::info(const std::string& name) const {
  std::lock_guard lock(core_->mutex);
  auto it = core_->entries.find(name);
  if (it == core_->entries.end()) return std::nullopt;
  return core_->info_of(name, it->second);
}

void scheduler::do_run(asio::any_completion_handler<void(error_code)> h) {
  auto core = core_;
  asio::post(core->strand, [core, h = std::move(h)]() mutable {
    if (core->run_handler || core->running)
      return detail::post_completion(std::move(h), core->io_ex, error_code(errc::shutting_down));
    if (core->stopped) return detail::post_completion(std::move(h), core->io_ex, error_code{});
    auto slot = asio::get_associated_cancellation_slot(h);
    if (slot.is_connected()) {
      std::weak_ptr<detail::scheduler_core> weak = core;
      slot.assign([weak](asio::cancellation_type) {
        if (auto self = weak.lock()) {
          asio::post(self->strand, [self] {
            self->stopped = true;
            self->running = false;
            self->live = false;
            self->end_lead();
            self->release_lead();
            self->disarm();
            if (self->run_handler) {
              auto handler = std::move(*self->run_handler);
              self->run_handler.reset();
              detail::post_completion(std::move(handler), self->io_ex, error_code{});
            }
          });
        }
      });
    }
    core->run_handler.emplace(std::move(h));
    core->running = true;
    core->live = true;
    if (core->opts.leader) return core->lead_tick();  // adopts and fires once leader
    if (core->opts.adopt_stored) core->adopt_stored();
    core->arm();
  });
}

void scheduler::stop() {
  auto core = core_;
  // Given up from here, not from the strand: the election may be gone once the scheduler is.
  core->release_lead();
  asio::post(core->strand, [core] {
    core->stopped = true;
    core->running = false;
    core->live = false;
    core->end_lead();
    core->disarm();
    if (core->run_handler) {
      auto h = std::move(*core->run_handler);
      core->run_handler.reset();
      auto slot = asio::get_associated_cancellation_slot(h);
      if (slot.is_connected()) slot.clear();
      detail::post_completion(std::move(h), core->io_ex, error_code{});
    }
  });
}

scheduler_metrics scheduler::metrics() const {
  std::lock_guard lock(core_->mutex);
  scheduler_metrics m;
  m.lateness = core_->lateness.summary();
  m.queue_wait = core_->queue_wait.summary();
  m.totals = core_->totals;
  m.schedules = core_->entries.size();
  m.active_runs = core_->active.size();
  for (auto& [name, e] : core_->entries) m.per_schedule.emplace(name, e.counts);
  m.leader = core_->opts.leader ? core_->leading && core_->clk.now() < core_->lease_until.load()
                                : core_->live.load();
  m.leadership_changes = core_->leadership_changes;
  return m;
}

}  // namespace taskq
