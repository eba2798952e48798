// Prometheus metrics: the registry (counters and histograms fed on the hot path, collectors
// read at scrape time) and the text exposition format 0.0.4.
#include <taskq/backends/file/store.hpp>
#if TASKQ_PROMETHEUS_POSTGRES
#include <taskq/backends/postgres/backend.hpp>
#endif
#include <taskq/client.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/scheduler.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace taskq {

// --- exposition ---------------------------------------------------------------------------

namespace {

void append_escaped(std::string& out, std::string_view v, bool quote) {
  for (char ch : v) {
    switch (ch) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '"':
        if (quote) {
          out += "\\\"";
          break;
        }
        [[fallthrough]];
      default:
        out += ch;
    }
  }
}

void append_number(std::string& out, double v) {
  if (std::isnan(v))
    out += "NaN";
  else if (std::isinf(v))
    out += v > 0 ? "+Inf" : "-Inf";
  else
    fmt::format_to(std::back_inserter(out), "{}", v);
}

void append_labels(std::string& out, const metric_labels& labels, const char* le = nullptr,
                   double le_value = 0) {
  if (labels.empty() && !le) return;
  out += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    append_escaped(out, v, true);
    out += '"';
  }
  if (le) {
    if (!first) out += ',';
    out += "le=\"";
    if (std::string_view(le) == "+Inf")
      out += "+Inf";
    else
      append_number(out, le_value);
    out += '"';
  }
  out += '}';
}

std::string_view type_name(metric_type t) {
  switch (t) {
    case metric_type::counter:
      return "counter";
    case metric_type::histogram:
      return "histogram";
    case metric_type::gauge:
      break;
  }
  return "gauge";
}

}  // namespace

std::string render_prometheus(const std::vector<metric_family>& families) {
  // Merge families of one name, keeping first-appearance order.
  std::vector<const metric_family*> order;
  std::map<std::string_view, std::vector<const metric_family*>> by_name;
  for (const auto& f : families) {
    auto& v = by_name[f.name];
    if (v.empty()) order.push_back(&f);
    v.push_back(&f);
  }
  std::string out;
  for (const auto* head : order) {
    const auto& parts = by_name[head->name];
    std::size_t n = 0;
    for (const auto* p : parts) n += p->series.size();
    if (n == 0) continue;
    out += "# HELP ";
    out += head->name;
    out += ' ';
    append_escaped(out, head->help, false);
    out += "\n# TYPE ";
    out += head->name;
    out += ' ';
    out += type_name(head->type);
    out += '\n';
    for (const auto* p : parts) {
      for (const auto& s : p->series) {
        if (head->type != metric_type::histogram) {
          out += head->name;
          append_labels(out, s.labels);
          out += ' ';
          append_number(out, s.value);
          out += '\n';
          continue;
        }
        for (std::size_t i = 0; i < head->bounds.size(); ++i) {
          out += head->name;
          out += "_bucket";
          append_labels(out, s.labels, "", head->bounds[i]);
          fmt::format_to(std::back_inserter(out), " {}\n", i < s.buckets.size() ? s.buckets[i] : 0);
        }
        out += head->name;
        out += "_bucket";
        append_labels(out, s.labels, "+Inf");
        fmt::format_to(std::back_inserter(out), " {}\n", s.count);
        out += head->name;
        out += "_sum";
        append_labels(out, s.labels);
        out += ' ';
        append_number(out, s.value);
        out += '\n';
        out += head->name;
        out += "_count";
        append_labels(out, s.labels);
        fmt::format_to(std::back_inserter(out), " {}\n", s.count);
      }
    }
  }
  return out;
}

// --- histograms ---------------------------------------------------------------------------

bucket_histogram::bucket_histogram(const std::vector<double>& bounds_seconds)
    : counts_(new std::atomic<std::uint64_t>[bounds_seconds.size() + 1]) {
  bounds_ns_.reserve(bounds_seconds.size());
  for (double b : bounds_seconds)
    bounds_ns_.push_back(static_cast<std::int64_t>(std::llround(b * 1e9)));
  for (std::size_t i = 0; i <= bounds_seconds.size(); ++i) counts_[i].store(0);
}

void bucket_histogram::observe(duration d) noexcept {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  std::size_t i = 0;
  while (i < bounds_ns_.size() && ns > bounds_ns_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
}

void bucket_histogram::read(metric_series& out) const {
  out.buckets.assign(bounds_ns_.size(), 0);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_ns_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    out.buckets[i] = cumulative;
  }
  cumulative += counts_[bounds_ns_.size()].load(std::memory_order_relaxed);
  out.count = cumulative;  // consistent with the buckets (count_ may run ahead)
  out.value = double(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
}

// --- registry -----------------------------------------------------------------------------

error_code validate(const metrics_registry_options& o, std::string* detail) {
  auto bad = [&](const char* field, const char* why) {
    if (detail) *detail = fmt::format("metrics_registry_options.{} {}", field, why);
    return error_code(errc::invalid_option);
  };
  auto check = [&](const std::vector<double>& b, const char* field) -> bool {
    for (std::size_t i = 0; i < b.size(); ++i) {
      if (!std::isfinite(b[i]) || b[i] <= 0) return false;
      if (i && b[i] <= b[i - 1]) return false;
    }
    (void)field;
    return true;
  };
  if (!check(o.wait_buckets, "wait_buckets"))
    return bad("wait_buckets", "must be positive, finite and strictly ascending");
  if (!check(o.duration_buckets, "duration_buckets"))
    return bad("duration_buckets", "must be positive, finite and strictly ascending");
  if (!check(o.lateness_buckets, "lateness_buckets"))
    return bad("lateness_buckets", "must be positive, finite and strictly ascending");
  if (o.max_task_series == 0) return bad("max_task_series", "must be at least 1");
  if (o.max_schedule_series == 0) return bad("max_schedule_series", "must be at least 1");
  return {};
}

task_series::task_series(std::string q, std::string t, const metrics_registry_options& o)
    : queue(std::move(q)), type(std::move(t)), wait(o.wait_buckets), run(o.duration_buckets) {}

namespace {

struct sv_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
template <class V>
using sv_map = std::unordered_map<std::string, V, sv_hash, std::equal_to<>>;

std::atomic<std::uint64_t> next_registry_id{1};

// The per-thread cache of recently used series: most threads see a handful of (queue, type)
// pairs, so a hit costs two short string compares.
struct cached_series {
  std::uint64_t registry = 0;
  std::string queue, type;
  task_series* series = nullptr;
};
constexpr std::size_t cache_size = 8;
thread_local std::array<cached_series, cache_size> series_cache;
thread_local std::size_t series_cache_next = 0;

double seconds_of(duration d) {
  return std::chrono::duration<double>(d).count();
}
double unix_seconds(time_point t) {
  return seconds_of(t.time_since_epoch());
}

}  // namespace

struct metrics_registry::impl {
  std::uint64_t id = next_registry_id.fetch_add(1);
  mutable std::shared_mutex mutex;
  sv_map<sv_map<std::unique_ptr<task_series>>> series;  // queue -> type -> series
  std::vector<task_series*> order;                      // creation order, for rendering
  std::unique_ptr<task_series> other;                   // past max_task_series
  std::mutex lateness_mutex;
  std::map<std::string, std::unique_ptr<bucket_histogram>, std::less<>> lateness;
  std::mutex collectors_mutex;
  std::vector<metrics_collector> collectors;
};

metrics_registry::metrics_registry(metrics_registry_options opts)
    : opts_(std::move(opts)), impl_(std::make_unique<impl>()) {
  std::string detail;
  if (auto ec = validate(opts_, &detail)) throw error(ec, detail);
}

metrics_registry::~metrics_registry() = default;

task_series& metrics_registry::series(std::string_view queue, std::string_view type) {
  for (auto& c : series_cache)
    if (c.registry == impl_->id && c.queue == queue && c.type == type) return *c.series;
  task_series* found = nullptr;
  {
    std::shared_lock lock(impl_->mutex);
    if (auto q = impl_->series.find(queue); q != impl_->series.end())
      if (auto t = q->second.find(type); t != q->second.end()) found = t->second.get();
  }
  if (!found) {
    std::unique_lock lock(impl_->mutex);
    auto q = impl_->series.find(queue);
    if (q != impl_->series.end())
      if (auto t = q->second.find(type); t != q->second.end()) found = t->second.get();
    if (!found && impl_->order.size() >= opts_.max_task_series) {
      if (!impl_->other) impl_->other = std::make_unique<task_series>("_other", "_other", opts_);
      found = impl_->other.get();
    }
    if (!found) {
      if (q == impl_->series.end())
        q = impl_->series.emplace(std::string(queue), sv_map<std::unique_ptr<task_series>>{}).first;
      auto s = std::make_unique<task_series>(std::string(queue), std::string(type), opts_);
      found = s.get();
      q->second.emplace(std::string(type), std::move(s));
      impl_->order.push_back(found);
    }
  }
  auto& slot = series_cache[series_cache_next++ % cache_size];
  slot.registry = impl_->id;
  slot.queue.assign(queue);
  slot.type.assign(type);
  slot.series = found;
  return *found;
}

void metrics_registry::observe_lateness(std::string_view schedule, duration late) {
  std::lock_guard lock(impl_->lateness_mutex);
  auto it = impl_->lateness.find(schedule);
  if (it == impl_->lateness.end()) {
    std::string name(schedule);
    if (impl_->lateness.size() >= opts_.max_schedule_series) name = "_other";
    it = impl_->lateness.find(name);
    if (it == impl_->lateness.end())
      it = impl_->lateness.emplace(name, std::make_unique<bucket_histogram>(opts_.lateness_buckets))
               .first;
  }
  it->second->observe(late);
}

std::vector<metric_family> metrics_registry::collect_fed() const {
  struct counter_def {
    event_kind kind;
    const char* name;
    const char* help;
  };
  static constexpr counter_def counters[] = {
      {event_kind::enqueued, "taskq_tasks_enqueued_total",
       "Tasks enqueued (a retry by request counts again), by queue and type."},
      {event_kind::started, "taskq_tasks_started_total", "Attempts started, by queue and type."},
      {event_kind::succeeded, "taskq_tasks_succeeded_total", "Tasks that succeeded."},
      {event_kind::failed, "taskq_tasks_failed_total", "Tasks that failed permanently."},
      {event_kind::retry_scheduled, "taskq_tasks_retried_total",
       "Failed attempts that were scheduled to run again."},
      {event_kind::cancelled, "taskq_tasks_cancelled_total", "Tasks cancelled."},
      {event_kind::dropped, "taskq_tasks_dropped_total",
       "Tasks dropped (their worker vanished with no attempts left)."},
      {event_kind::progress, "taskq_task_progress_reports_total",
       "Progress reports (heartbeats with progress) from running tasks."},
  };
  std::vector<task_series*> all;
  {
    std::shared_lock lock(impl_->mutex);
    all = impl_->order;
    if (impl_->other) all.push_back(impl_->other.get());
  }
  std::vector<metric_family> out;
  for (const auto& c : counters) {
    metric_family f{c.name, c.help, metric_type::counter, {}, {}};
    for (auto* s : all)
      f.series.push_back(
          {{{"queue", s->queue}, {"type", s->type}},
           double(s->events[static_cast<std::size_t>(c.kind)].load(std::memory_order_relaxed)),
           {},
           0});
    out.push_back(std::move(f));
  }
  metric_family wait{"taskq_task_wait_seconds",
                     "Time from when a task was due (created or available) to its start.",
                     metric_type::histogram,
                     opts_.wait_buckets,
                     {}};
  metric_family run{"taskq_task_duration_seconds",
                    "Run time of an attempt (started -> finished).",
                    metric_type::histogram,
                    opts_.duration_buckets,
                    {}};
  for (auto* s : all) {
    metric_series w{{{"queue", s->queue}, {"type", s->type}}, 0, {}, 0};
    s->wait.read(w);
    if (w.count) wait.series.push_back(std::move(w));
    metric_series r{{{"queue", s->queue}, {"type", s->type}}, 0, {}, 0};
    s->run.read(r);
    if (r.count) run.series.push_back(std::move(r));
  }
  out.push_back(std::move(wait));
  out.push_back(std::move(run));
  metric_family late{"taskq_schedule_lateness_seconds",
                     "Time from a schedule's occurrence being due to its run being enqueued.",
                     metric_type::histogram,
                     opts_.lateness_buckets,
                     {}};
  {
    std::lock_guard lock(impl_->lateness_mutex);
    for (auto& [name, h] : impl_->lateness) {
      metric_series s{{{"schedule", name}}, 0, {}, 0};
      h->read(s);
      late.series.push_back(std::move(s));
    }
  }
  out.push_back(std::move(late));
  return out;
}

void metrics_registry::add_collector(metrics_collector c) {
  std::lock_guard lock(impl_->collectors_mutex);
  impl_->collectors.push_back(std::move(c));
}

void metrics_registry::async_collect(
    asio::any_io_executor ex,
    asio::any_completion_handler<void(error_code, std::vector<metric_family>)> h) {
  std::vector<metrics_collector> cs;
  {
    std::lock_guard lock(impl_->collectors_mutex);
    cs = impl_->collectors;
  }
  // (Handlers are moved in by construction: Boost 1.81's any_completion_handler move
  // assignment recurses.)
  struct gather {
    gather(asio::any_completion_handler<void(error_code, std::vector<metric_family>)> hh,
           asio::any_io_executor e)
        : h(std::move(hh)), ex(std::move(e)) {}
    std::mutex mutex;
    std::vector<std::vector<metric_family>> parts;
    std::size_t left = 0;
    asio::any_completion_handler<void(error_code, std::vector<metric_family>)> h;
    asio::any_io_executor ex;
  };
  auto g = std::make_shared<gather>(std::move(h), std::move(ex));
  g->parts.resize(cs.size() + 1);
  g->parts[0] = collect_fed();
  g->left = cs.size();
  auto finish = [](const std::shared_ptr<gather>& g) {
    std::vector<metric_family> all;
    for (auto& p : g->parts)
      for (auto& f : p) all.push_back(std::move(f));
    asio::post(g->ex, [g, all = std::move(all)]() mutable {
      std::move(g->h)(error_code{}, std::move(all));
    });
  };
  if (cs.empty()) return finish(g);
  for (std::size_t i = 0; i < cs.size(); ++i) {
    cs[i](asio::any_completion_handler<void(std::vector<metric_family>)>(
        [g, i, finish](std::vector<metric_family> f) {
          bool last;
          {
            std::lock_guard lock(g->mutex);
            g->parts[i + 1] = std::move(f);
            last = --g->left == 0;
          }
          if (last) finish(g);
        }));
  }
}

// --- collectors ---------------------------------------------------------------------------

void metrics_registry::attach(client& c) {
  add_collector([&c](asio::any_completion_handler<void(std::vector<metric_family>)> h) {
    auto& s = c.get_store();
    s.async_counts([&c, h = std::move(h)](error_code ec, task_counts counts) mutable {
      std::vector<metric_family> out;
      out.push_back({"taskq_store_up",
                     "1 when the last read of the task store succeeded.",
                     metric_type::gauge,
                     {},
                     {{{}, ec ? 0.0 : 1.0, {}, 0}}});
      if (ec) return std::move(h)(std::move(out));
      metric_family by_queue{
          "taskq_tasks", "Tasks in the store, by queue and status.", metric_type::gauge, {}, {}};
      metric_family by_type{"taskq_type_tasks",
                            "Tasks in the store, by type and status.",
                            metric_type::gauge,
                            {},
                            {}};
      for (auto& [q, row] : counts.by_queue)
        for (std::size_t i = 0; i < task_status_count; ++i)
          by_queue.series.push_back(
              {{{"queue", q}, {"status", std::string(to_string(static_cast<task_status>(i)))}},
               double(row[i]),
               {},
               0});
      for (auto& [t, row] : counts.by_type)
        for (std::size_t i = 0; i < task_status_count; ++i)
          by_type.series.push_back(
              {{{"type", t}, {"status", std::string(to_string(static_cast<task_status>(i)))}},
               double(row[i]),
               {},
               0});
      out.push_back(std::move(by_queue));
      out.push_back(std::move(by_type));
      std::vector<std::string> queues;
      for (auto& [q, row] : counts.by_queue) queues.push_back(q);
      // Per queue: depth (queue stats), paused, oldest pending task (store list, limit 1).
      struct per_queue {
        explicit per_queue(asio::any_completion_handler<void(std::vector<metric_family>)> hh)
            : h(std::move(hh)) {}
        std::mutex mutex;
        std::size_t left = 0;
        std::vector<metric_family> out;
        asio::any_completion_handler<void(std::vector<metric_family>)> h;
      };
      auto pq = std::make_shared<per_queue>(std::move(h));
      pq->left = queues.size() * 2;
      pq->out = std::move(out);
      pq->out.push_back(
          {"taskq_queue_tasks",
           "Entries in a queue: ready (visible now), delayed, leased (held by a worker).",
           metric_type::gauge,
           {},
           {}});
      pq->out.push_back(
          {"taskq_queue_paused", "1 when the queue is paused.", metric_type::gauge, {}, {}});
      pq->out.push_back({"taskq_queue_oldest_pending_age_seconds",
                         "Age of the queue's oldest pending task (since it was created).",
                         metric_type::gauge,
                         {},
                         {}});
      const std::size_t depth = pq->out.size() - 3, paused = depth + 1, oldest = depth + 2;
      if (queues.empty()) return std::move(pq->h)(std::move(pq->out));
      auto done = [pq] {
        if (--pq->left == 0) std::move(pq->h)(std::move(pq->out));
      };
      for (auto& q : queues) {
        {
          std::lock_guard lock(pq->mutex);
          pq->out[paused].series.push_back(
              {{{"queue", q}}, c.get_queue().is_paused(q) ? 1.0 : 0.0, {}, 0});
        }
        c.get_queue().async_stats(q, [pq, q, depth, done](error_code ec, queue_stats st) {
          std::lock_guard lock(pq->mutex);
          if (!ec) {
            auto& f = pq->out[depth];
            f.series.push_back({{{"queue", q}, {"state", "ready"}}, double(st.ready), {}, 0});
            f.series.push_back({{{"queue", q}, {"state", "delayed"}}, double(st.delayed), {}, 0});
            f.series.push_back({{{"queue", q}, {"state", "leased"}}, double(st.leased), {}, 0});
          }
          done();
        });
        task_filter f;
        f.queues = {q};
        f.statuses = {task_status::pending};
        f.limit = 1;
        c.get_store().async_list(f, [&c, pq, q, oldest, done](error_code ec, task_page page) {
          std::lock_guard lock(pq->mutex);
          double age = 0;
          if (!ec && !page.records.empty())
            age = std::max(0.0, seconds_of(c.time().now() - page.records.front().created_at));
          if (!ec) pq->out[oldest].series.push_back({{{"queue", q}}, age, {}, 0});
          done();
        });
      }
    });
  });
}

void metrics_registry::attach(scheduler& s) {
  add_collector([&s](asio::any_completion_handler<void(std::vector<metric_family>)> h) {
    auto list = s.list();
    auto m = s.metrics();
    std::vector<metric_family> out;
    metric_family count{"taskq_schedules",
                        "Schedules this scheduler knows, by state (active, paused).",
                        metric_type::gauge,
                        {},
                        {}};
    std::size_t paused_n = 0;
    for (auto& i : list) paused_n += i.definition.paused;
    count.series.push_back({{{"state", "active"}}, double(list.size() - paused_n), {}, 0});
    count.series.push_back({{{"state", "paused"}}, double(paused_n), {}, 0});
    out.push_back(std::move(count));
    out.push_back({"taskq_scheduler_leader",
                   "1 when this scheduler instance fires occurrences.",
                   metric_type::gauge,
                   {},
                   {{{}, m.leader ? 1.0 : 0.0, {}, 0}}});
    metric_family next{"taskq_schedule_next_due_timestamp_seconds",
                       "When the schedule fires next (Unix time); absent when paused or finished.",
                       metric_type::gauge,
                       {},
                       {}};
    metric_family last{"taskq_schedule_last_fired_timestamp_seconds",
                       "The occurrence the schedule's latest run was enqueued for (Unix time).",
                       metric_type::gauge,
                       {},
                       {}};
    metric_family paused{
        "taskq_schedule_paused", "1 when the schedule is paused.", metric_type::gauge, {}, {}};
    metric_family active{"taskq_schedule_active_runs",
                         "Runs of the schedule pending or running.",
                         metric_type::gauge,
                         {},
                         {}};
    struct counter_def {
      const char* name;
      const char* help;
      std::uint64_t schedule_counts::*field;
    };
    static constexpr counter_def defs[] = {
        {"taskq_schedule_fired_total", "Occurrences this instance enqueued.",
         &schedule_counts::fired},
        {"taskq_schedule_deduplicated_total", "Occurrences another instance already enqueued.",
         &schedule_counts::deduplicated},
        {"taskq_schedule_skipped_total", "Occurrences dropped by the overlap or catch-up policy.",
         &schedule_counts::skipped},
        {"taskq_schedule_manual_runs_total", "Runs enqueued by run-now and backfill.",
         &schedule_counts::manual},
        {"taskq_schedule_errors_total", "Enqueues of occurrences that failed.",
         &schedule_counts::errors},
    };
    std::vector<metric_family> counters;
    for (auto& d : defs) counters.push_back({d.name, d.help, metric_type::counter, {}, {}});
    for (auto& i : list) {
      metric_labels l{{"schedule", i.definition.name}};
      if (i.next_due) next.series.push_back({l, unix_seconds(*i.next_due), {}, 0});
      if (i.last_fired) last.series.push_back({l, unix_seconds(*i.last_fired), {}, 0});
      paused.series.push_back({l, i.definition.paused ? 1.0 : 0.0, {}, 0});
      active.series.push_back({l, double(i.active_runs), {}, 0});
      for (std::size_t k = 0; k < std::size(defs); ++k)
        counters[k].series.push_back({l, double(i.counts.*(defs[k].field)), {}, 0});
    }
    out.push_back(std::move(next));
    out.push_back(std::move(last));
    out.push_back(std::move(paused));
    out.push_back(std::move(active));
    for (auto& f : counters) out.push_back(std::move(f));
    std::move(h)(std::move(out));
  });
}

metrics_collector file_backend_collector(file::backend& b) {
  return [&b](asio::any_completion_handler<void(std::vector<metric_family>)> h) {
    auto info = b.info();
    auto g = [](const char* name, const char* help, double v) {
      return metric_family{name, help, metric_type::gauge, {}, {{{}, v, {}, 0}}};
    };
    auto c = [](const char* name, const char* help, double v) {
      return metric_family{name, help, metric_type::counter, {}, {{{}, v, {}, 0}}};
    };
    std::vector<metric_family> out;
    out.push_back(c("taskq_file_journal_syncs_total", "fdatasync calls of the journal writer.",
                    double(info.journal.syncs)));
    out.push_back(c("taskq_file_journal_writes_total", "Write batches (group commits) issued.",
                    double(info.journal.writes)));
    out.push_back(c("taskq_file_journal_records_total", "Journal records written.",
                    double(info.journal.records)));
    out.push_back(c("taskq_file_journal_written_bytes_total", "Bytes written to the journal.",
                    double(info.journal.bytes)));
    out.push_back(c("taskq_file_journal_failed_appends_total", "Journal appends that failed.",
                    double(info.journal.failed_appends)));
    out.push_back(
        g("taskq_file_journal_records_per_sync",
          "Mean journal records covered by one fdatasync since open (group commit).",
          info.journal.syncs ? double(info.journal.records) / double(info.journal.syncs) : 0.0));
    out.push_back(g("taskq_file_journal_queued_appends", "Appends waiting for the committer now.",
                    double(info.journal.queued_appends)));
    out.push_back(g("taskq_file_journal_bytes", "Bytes of the journal segments on disk.",
                    double(info.journal_bytes)));
    out.push_back(g("taskq_file_snapshot_bytes", "Bytes of the snapshot on disk.",
                    double(info.snapshot_bytes)));
    out.push_back(
        g("taskq_file_live_bytes", "Encoded size of the live records.", double(info.live_bytes)));
    out.push_back(
        c("taskq_file_compactions_total", "Compactions since open.", double(info.compactions)));
    out.push_back(g("taskq_file_read_only", "1 when the store was opened read-only.",
                    b.read_only() ? 1.0 : 0.0));
    std::move(h)(std::move(out));
  };
}

#if TASKQ_PROMETHEUS_POSTGRES
metrics_collector postgres_backend_collector(postgres::backend& b) {
  return [&b](asio::any_completion_handler<void(std::vector<metric_family>)> h) {
    auto st = b.stats();
    auto g = [](const char* name, const char* help, double v) {
      return metric_family{name, help, metric_type::gauge, {}, {{{}, v, {}, 0}}};
    };
    auto c = [](const char* name, const char* help, double v) {
      return metric_family{name, help, metric_type::counter, {}, {{{}, v, {}, 0}}};
    };
    std::vector<metric_family> out;
    out.push_back(g("taskq_postgres_pool_size", "Configured size of the connection pool.",
                    double(st.pool_size)));
    out.push_back({"taskq_postgres_pool_connections",
                   "Pooled connections: open (in use, idle or being opened) and idle.",
                   metric_type::gauge,
                   {},
                   {{{{"state", "open"}}, double(st.open_connections), {}, 0},
                    {{{"state", "idle"}}, double(st.idle_connections), {}, 0}}});
    out.push_back(c("taskq_postgres_connections_opened_total",
                    "Pool connections established (reconnects included).", double(st.connects)));
    out.push_back(c("taskq_postgres_connection_failures_total",
                    "Pool connection attempts that failed.", double(st.connect_failures)));
    out.push_back(c("taskq_postgres_errors_total",
                    "Backend errors noted (failed statements, lost connections).",
                    double(st.errors)));
    std::move(h)(std::move(out));
  };
}
#endif

}  // namespace taskq
