// The client: enqueue, wait, cancel, retry, remove, metrics, subscriptions.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

namespace detail {

struct client_core : std::enable_shared_from_this<client_core> {
  asio::any_io_executor ex;
  std::unique_ptr<composed_backend> composed;  // when built from a separate queue and store
  taskq::backend& b;
  taskq::queue& q;
  taskq::store& s;
  clock& clk;
  client_options opts;

  std::mutex mutex;
  // Copy-on-write lists: an event takes a reference to the current list under the lock (no
  // copy, no allocation); subscribing replaces the list.
  using listener_list = std::vector<std::pair<std::uint64_t, client::subscriber>>;
  std::shared_ptr<const listener_list> subscribers = std::make_shared<listener_list>();
  std::atomic<bool> has_subscribers{false};
  // Told only of tasks that carry a scheduled_for (the scheduler tracks its runs so), so
  // attaching a scheduler does not switch the event path on for every task.
  std::shared_ptr<const listener_list> trackers = std::make_shared<listener_list>();
  std::atomic<bool> has_trackers{false};

  // Adds or removes a listener (under the mutex); returns whether the list is now non-empty.
  static bool add_listener(std::shared_ptr<const listener_list>& list, std::uint64_t id,
                           client::subscriber fn) {
    auto next = std::make_shared<listener_list>(*list);
    next->emplace_back(id, std::move(fn));
    list = std::move(next);
    return true;
  }
  static bool remove_listener(std::shared_ptr<const listener_list>& list, std::uint64_t id) {
    auto next = std::make_shared<listener_list>(*list);
    std::erase_if(*next, [&](auto& l) { return l.first == id; });
    list = std::move(next);
    return !list->empty();
  }
  std::uint64_t next_id = 0;
  struct waiter {
    std::uint64_t id;
    asio::any_completion_handler<void(error_code, task_record)> handler;
  };
  std::unordered_multimap<std::string, waiter> waiters;
  std::atomic<std::size_t> waiter_count{0};
  std::vector<std::weak_ptr<worker_core>> workers;

  std::array<std::atomic<std::uint64_t>, 8> event_counts{};  // by event_kind
  std::uint64_t count_of(event_kind k) const {
    return event_counts[static_cast<std::size_t>(k)].load(std::memory_order_relaxed);
  }
  histogram enqueue_to_start, run_duration;

  client_core(asio::any_io_executor e, std::unique_ptr<composed_backend> owned,
              taskq::backend& backend, client_options o)
      : ex(std::move(e)),
        composed(std::move(owned)),
        b(backend),
        q(b.get_queue()),
        s(b.get_store()),
        clk(o.time ? *o.time : default_clock()),
        opts(std::move(o)) {}

  /// The completion of a fire-and-forget operation: a failure goes to the host's log.
  auto log_failure(const char* what) {
    return [self = shared_from_this(), what](error_code ec, auto&&...) {
      if (ec) self->opts.log.error("{}: {}", what, ec.message());
    };
  }

  void count_event(event_kind k, std::uint64_t n = 1) {
    event_counts[static_cast<std::size_t>(k)].fetch_add(n, std::memory_order_relaxed);
  }

  // Counts the event and hands it to the subscribers, and to the trackers if it is about a
  // scheduled task.
  void emit(const event& e) {
    count_event(e.kind);
    const bool to_subscribers = has_subscribers.load(std::memory_order_acquire);
    const bool to_trackers = e.scheduled_for && has_trackers.load(std::memory_order_acquire);
    if (!to_subscribers && !to_trackers) return;
    std::shared_ptr<const listener_list> subs, tracks;
    {
      std::lock_guard lock(mutex);
      if (to_subscribers) subs = subscribers;
      if (to_trackers) tracks = trackers;
    }
    if (subs)
      for (auto& [id, fn] : *subs) fn(e);
    if (tracks)
      for (auto& [id, fn] : *tracks) fn(e);
  }

  bool wants_events() const noexcept { return has_subscribers.load(std::memory_order_acquire); }

  // Whether an event about `r` goes to anyone (else it is only counted).
  bool observed(const task_record& r) const noexcept {
    return wants_events() || (r.scheduled_for && has_trackers.load(std::memory_order_acquire));
  }

  static event make_event(event_kind k, const task_record& r, time_point at) {
    event e;
    e.kind = k;
    e.task_id = r.id;
    e.type = r.type;
    e.queue = r.queue;
    e.attempt = r.attempt;
    e.at = at;
    e.scheduled_for = r.scheduled_for;
    return e;
  }

  // Counts and (when someone listens) builds the event; cheap when nobody subscribed.
  void record_event(event_kind k, const task_record& r, std::string message = {},
                    std::optional<time_point> retry_at = {}, json progress = nullptr) {
    if (opts.metrics) opts.metrics->series(r.queue, r.type).count(k);
    if (!observed(r)) return count_event(k);
    auto e = make_event(k, r, clk.now());
    e.message = std::move(message);
    e.retry_at = retry_at;
    e.progress = std::move(progress);
    emit(e);
  }

  // A task reached a final status: complete everyone waiting for it.
  void finished(const task_record& r) {
    if (waiter_count.load(std::memory_order_acquire) == 0) return;
    std::vector<waiter> ws;
    {
      std::lock_guard lock(mutex);
      auto [b, e] = waiters.equal_range(r.id);
      for (auto it = b; it != e; ++it) ws.push_back(std::move(it->second));
      waiters.erase(b, e);
      waiter_count -= ws.size();
    }
    for (auto& w : ws) detail::post_completion(std::move(w.handler), ex, error_code{}, r);
  }

  std::vector<std::shared_ptr<worker_core>> live_workers() {
    std::lock_guard lock(mutex);
    std::vector<std::shared_ptr<worker_core>> out;
    std::erase_if(workers, [](auto& w) { return w.expired(); });
    for (auto& w : workers)
      if (auto s = w.lock()) out.push_back(std::move(s));
    return out;
  }
};

void notify_cancel_requested(worker_core& w, const std::string& id);

}  // namespace detail

client::client(asio::any_io_executor ex, taskq::queue& q, taskq::store& s, client_options opts) {
  auto composed = std::make_unique<composed_backend>(
      ex, q, s, composed_backend_options{.time = opts.time, .log = opts.log});
  auto& b = *composed;
  core_ =
      std::make_shared<detail::client_core>(std::move(ex), std::move(composed), b, std::move(opts));
}

client::client(asio::any_io_executor ex, taskq::backend& b, client_options opts)
    : core_(std::make_shared<detail::client_core>(std::move(ex), nullptr, b, std::move(opts))) {}

client::~client() = default;

client::executor_type client::get_executor() const noexcept {
  return core_->ex;
}
clock& client::time() const noexcept {
  return core_->clk;
}
const logger& client::log() const noexcept {
  return core_->opts.log;
}
taskq::queue& client::get_queue() const noexcept {
  return core_->q;
}
taskq::store& client::get_store() const noexcept {
  return core_->s;
}
taskq::backend& client::get_backend() const noexcept {
  return core_->b;
}

namespace {
/// `h` bound to its associated executor, else `fallback`: for forwarding a completion handler
/// to the queue or store so that it completes where the client's contract says.
template <class Handler>
auto on_executor_or(Handler h, const asio::any_io_executor& fallback) {
  auto ex = asio::get_associated_executor(h, fallback);
  return asio::bind_executor(std::move(ex), std::move(h));
}
}  // namespace

void client::do_get(std::string id, asio::any_completion_handler<void(error_code, task_record)> h) {
  core_->s.async_get(std::move(id), on_executor_or(std::move(h), core_->ex));
}

void client::do_list(task_filter f, asio::any_completion_handler<void(error_code, task_page)> h) {
  core_->s.async_list(std::move(f), on_executor_or(std::move(h), core_->ex));
}

void client::do_prune(duration older_than,
                      asio::any_completion_handler<void(error_code, std::size_t)> h) {
  core_->s.async_prune(detail::saturating_sub(core_->clk.now(), older_than),
                       on_executor_or(std::move(h), core_->ex));
}

void client::do_set_paused(std::string queue_name, bool paused,
                           asio::any_completion_handler<void(error_code)> h) {
  core_->q.async_set_paused(std::move(queue_name), paused, on_executor_or(std::move(h), core_->ex));
}

void client::do_enqueue(task_spec spec,
                        asio::any_completion_handler<void(error_code, std::string)> h) {
  std::vector<task_spec> one;
  one.push_back(std::move(spec));
  // The adapter runs on the caller's executor, so calling `h` from it keeps the contract.
  auto ex = asio::get_associated_executor(h, core_->ex);
  do_enqueue_batch(
      std::move(one),
      asio::bind_executor(ex,
                          [h = std::move(h)](error_code ec, std::vector<std::string> ids) mutable {
                            std::move(h)(ec, ec ? std::string() : std::move(ids.front()));
                          }),
      nullptr);
}

namespace {

/// Tells subscribers (or counts) and completes an enqueue whose tasks are stored and queued.
void enqueued(const std::shared_ptr<detail::client_core>& core, std::vector<std::string> ids,
              std::vector<event>& for_events, const std::vector<task_series*>& series,
              asio::any_completion_handler<void(error_code, std::vector<std::string>)> h) {
  for (auto* m : series) m->count(event_kind::enqueued);
  core->count_event(event_kind::enqueued, ids.size() - for_events.size());
  for (auto& e : for_events) core->emit(e);
  detail::dispatch_completion(std::move(h), core->ex, error_code{}, std::move(ids));
}

}  // namespace

void client::do_enqueue_batch(
    std::vector<task_spec> specs,
    asio::any_completion_handler<void(error_code, std::vector<std::string>)> h,
    std::size_t* bad_index) {
  auto core = core_;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (auto ec = validate(specs[i], core->opts.limits)) {
      if (bad_index) *bad_index = i;
      detail::post_completion(std::move(h), core->ex, ec, std::vector<std::string>{});
      return;
    }
  }
  auto now = core->clk.now();
  enqueue_params p;
  auto& records = p.records;
  records.reserve(specs.size());
  std::vector<std::string> ids;
  ids.reserve(specs.size());
  for (auto& s : specs) {
    auto& r = detail::emplace_back_result(records, [&] { return make_record(std::move(s), now); });
    ids.push_back(r.id);
  }
  // The events go out after the backend has the tasks; build them (small) only for tasks
  // someone listens to.
  std::vector<event> for_events;
  for (const auto& r : records)
    if (core->observed(r))
      for_events.push_back(detail::client_core::make_event(event_kind::enqueued, r, now));
  std::vector<task_series*> series;  // the metrics series of each task, when metrics are on
  if (auto* m = core->opts.metrics)
    for (const auto& r : records) series.push_back(&m->series(r.queue, r.type));
  core->b.async_enqueue(std::move(p),
                        [core, ids = std::move(ids), for_events = std::move(for_events),
                         series = std::move(series), h = std::move(h)](error_code ec) mutable {
                          if (ec)
                            return detail::dispatch_completion(std::move(h), core->ex, ec,
                                                               std::vector<std::string>{});
                          enqueued(core, std::move(ids), for_events, series, std::move(h));
                        });
}

void client::do_wait(std::string id,
                     asio::any_completion_handler<void(error_code, task_record)> h) {
  auto core = core_;
  auto slot = asio::get_associated_cancellation_slot(h);
  std::uint64_t wid;
  {
    std::lock_guard lock(core->mutex);
    wid = ++core->next_id;
  }
  // Take the waiter back out (if still there): whoever removes it completes it.
  auto take =
      [core, id,
       wid]() -> std::optional<asio::any_completion_handler<void(error_code, task_record)>> {
    std::lock_guard lock(core->mutex);
    auto [b, e] = core->waiters.equal_range(id);
    for (auto it = b; it != e; ++it) {
      if (it->second.id == wid) {
        auto handler = std::move(it->second.handler);
        core->waiters.erase(it);
        --core->waiter_count;
        return handler;
      }
    }
    return std::nullopt;
  };
  {
    // Register and install the cancellation handler under one lock, so finished() cannot
    // complete the waiter between the two. The handler stays installed after completion
    // (clearing could race with the owner's emit); it then finds nothing to take.
    std::lock_guard lock(core->mutex);
    core->waiters.emplace(id, detail::client_core::waiter{wid, std::move(h)});
    ++core->waiter_count;
    if (slot.is_connected()) {
      slot.assign([take, core](asio::cancellation_type) {
        if (auto handler = take())
          detail::post_completion(std::move(*handler), core->ex,
                                  error_code(asio::error::operation_aborted), task_record{});
      });
    }
  }
  core->s.async_get(id, [core, take](error_code ec, task_record r) {
    if (!ec && !is_terminal(r.status)) return;  // finished() will complete it
    if (auto handler = take())
      detail::dispatch_completion(std::move(*handler), core->ex, ec, std::move(r));
  });
}

void client::do_cancel(std::string id,
                       asio::any_completion_handler<void(error_code, task_record)> h) {
  auto core = core_;
  core->s.async_request_cancel(
      id, core->clk.now(), [core, h = std::move(h)](error_code ec, task_record r) mutable {
        if (ec) return detail::dispatch_completion(std::move(h), core->ex, ec, std::move(r));
        if (r.status == task_status::cancelled) {
          // Was pending: take it out of the queue (if a worker holds a lease on it, its claim
          // will find it cancelled and drop the lease).
          core->q.async_remove(r.id, [core, r, h = std::move(h)](error_code, bool) mutable {
            core->record_event(event_kind::cancelled, r, "cancelled while pending");
            core->finished(r);
            detail::dispatch_completion(std::move(h), core->ex, error_code{}, std::move(r));
          });
          return;
        }
        // Running: tell the workers of this process at once; others see it at their next
        // heartbeat.
        for (auto& w : core->live_workers()) detail::notify_cancel_requested(*w, r.id);
        detail::dispatch_completion(std::move(h), core->ex, error_code{}, std::move(r));
      });
}

void client::do_retry(std::string id,
                      asio::any_completion_handler<void(error_code, task_record)> h) {
  auto core = core_;
  core->s.async_get(id, [core, h = std::move(h)](error_code ec, task_record r) mutable {
    if (ec) return detail::dispatch_completion(std::move(h), core->ex, ec, std::move(r));
    if (!is_legal_transition(r.status, task_status::pending) || r.status == task_status::running)
      return detail::dispatch_completion(std::move(h), core->ex,
                                         error_code(errc::illegal_transition), std::move(r));
    auto now = core->clk.now();
    task_update u;
    u.id = r.id;
    u.expected = r.status;
    u.expected_attempt = r.attempt;
    u.to = task_status::pending;
    u.now = now;
    u.attempt = 0;
    u.available_at = now;
    u.clear_cancel_request = true;
    u.log = log_entry{now, fmt::format("retried by request after {}", to_string(r.status))};
    core->s.async_update(
        std::move(u), [core, h = std::move(h)](error_code ec, task_record after) mutable {
          if (ec) return detail::dispatch_completion(std::move(h), core->ex, ec, std::move(after));
          push_params p;
          p.entries.push_back(entry_of(after));
          core->q.async_push(std::move(p), [core, after, h = std::move(h)](error_code ec) mutable {
            // duplicate_id: a stale queue entry (leased when it was cancelled) still holds it and
            // will be served; the task is pending either way.
            if (ec == errc::duplicate_id) ec = {};
            if (!ec) core->record_event(event_kind::enqueued, after, "retried");
            detail::dispatch_completion(std::move(h), core->ex, ec, std::move(after));
          });
        });
  });
}

void client::do_remove(task_filter f,
                       asio::any_completion_handler<void(error_code, std::vector<std::string>)> h) {
  auto core = core_;
  core->s.async_remove(
      std::move(f), [core, h = std::move(h)](error_code ec, std::vector<std::string> ids) mutable {
        if (ec || ids.empty())
          return detail::dispatch_completion(std::move(h), core->ex, ec, std::move(ids));
        auto left = std::make_shared<std::atomic<std::size_t>>(ids.size());
        auto shared_h = std::make_shared<decltype(h)>(std::move(h));
        auto shared_ids = std::make_shared<std::vector<std::string>>(ids);
        for (auto& id : ids) {
          core->q.async_remove(id, [core, left, shared_h, shared_ids](error_code, bool) {
            if (--*left == 0)
              detail::dispatch_completion(std::move(*shared_h), core->ex, error_code{},
                                          std::move(*shared_ids));
          });
        }
      });
}

void client::do_metrics(asio::any_completion_handler<void(error_code, metrics_snapshot)> h) {
  auto core = core_;
  core->s.async_counts([core, h = std::move(h)](error_code ec, task_counts c) mutable {
    metrics_snapshot m;
    m.counts = std::move(c);
    m.enqueued = core->count_of(event_kind::enqueued);
    m.started = core->count_of(event_kind::started);
    m.succeeded = core->count_of(event_kind::succeeded);
    m.failed = core->count_of(event_kind::failed);
    m.retried = core->count_of(event_kind::retry_scheduled);
    m.cancelled = core->count_of(event_kind::cancelled);
    m.dropped = core->count_of(event_kind::dropped);
    m.enqueue_to_start = core->enqueue_to_start.summary();
    m.run_duration = core->run_duration.summary();
    detail::dispatch_completion(std::move(h), core->ex, ec, std::move(m));
  });
}

std::uint64_t client::subscribe(subscriber fn) {
  std::lock_guard lock(core_->mutex);
  auto id = ++core_->next_id;
  core_->has_subscribers = detail::client_core::add_listener(core_->subscribers, id, std::move(fn));
  return id;
}

void client::unsubscribe(std::uint64_t id) {
  std::lock_guard lock(core_->mutex);
  core_->has_subscribers = detail::client_core::remove_listener(core_->subscribers, id);
}

std::uint64_t detail::track_scheduled(client& c, client::subscriber fn) {
  auto& core = *c.core();
  std::lock_guard lock(core.mutex);
  auto id = ++core.next_id;
  core.has_trackers = detail::client_core::add_listener(core.trackers, id, std::move(fn));
  return id;
}

void detail::untrack_scheduled(client& c, std::uint64_t id) {
  auto& core = *c.core();
  std::lock_guard lock(core.mutex);
  core.has_trackers = detail::client_core::remove_listener(core.trackers, id);
}

// Blocking forms: thin wrappers over the async ones.
namespace {
template <class T>
T value_or_throw(std::tuple<error_code, T> t) {
  auto& [ec, v] = t;
  throw_if(ec);
  return std::move(v);
}
}  // namespace

#define TASKQ_BLOCKING(T, call) detail::blocking_call<T>(core_->ex, [&](auto cb) { call; })

std::string client::enqueue(task_spec spec, error_code& ec) {
  return detail::blocking_value<std::string>(
      core_->ex, ec, [&](auto cb) { async_enqueue(std::move(spec), std::move(cb)); });
}
std::string client::enqueue(task_spec spec) {
  return value_or_throw(TASKQ_BLOCKING(std::string, async_enqueue(std::move(spec), std::move(cb))));
}
std::vector<std::string> client::enqueue_batch(std::vector<task_spec> specs, error_code& ec) {
  return detail::blocking_value<std::vector<std::string>>(
      core_->ex, ec, [&](auto cb) { async_enqueue_batch(std::move(specs), std::move(cb)); });
}
std::vector<std::string> client::enqueue_batch(std::vector<task_spec> specs) {
  // Validation runs inside the initiating call, so the index is set before this thread waits.
  constexpr auto none = static_cast<std::size_t>(-1);
  std::size_t bad = none;
  auto [ec, ids] = TASKQ_BLOCKING(std::vector<std::string>,
                                  do_enqueue_batch(std::move(specs), std::move(cb), &bad));
  if (ec && bad != none) throw error(ec, fmt::format("task_spec at batch index {}", bad));
  throw_if(ec);
  return std::move(ids);
}
task_record client::get(const std::string& id, error_code& ec) {
  return detail::blocking_value<task_record>(core_->ex, ec,
                                             [&](auto cb) { async_get(id, std::move(cb)); });
}
task_record client::get(const std::string& id) {
  return value_or_throw(TASKQ_BLOCKING(task_record, async_get(id, std::move(cb))));
}
task_page client::list(task_filter f, error_code& ec) {
  return detail::blocking_value<task_page>(
      core_->ex, ec, [&](auto cb) { async_list(std::move(f), std::move(cb)); });
}
task_page client::list(task_filter f) {
  return value_or_throw(TASKQ_BLOCKING(task_page, async_list(std::move(f), std::move(cb))));
}
task_record client::wait(const std::string& id, error_code& ec) {
  return detail::blocking_value<task_record>(core_->ex, ec,
                                             [&](auto cb) { async_wait(id, std::move(cb)); });
}
task_record client::wait(const std::string& id) {
  return value_or_throw(TASKQ_BLOCKING(task_record, async_wait(id, std::move(cb))));
}
task_record client::cancel(const std::string& id, error_code& ec) {
  return detail::blocking_value<task_record>(core_->ex, ec,
                                             [&](auto cb) { async_cancel(id, std::move(cb)); });
}
task_record client::cancel(const std::string& id) {
  return value_or_throw(TASKQ_BLOCKING(task_record, async_cancel(id, std::move(cb))));
}
task_record client::retry(const std::string& id, error_code& ec) {
  return detail::blocking_value<task_record>(core_->ex, ec,
                                             [&](auto cb) { async_retry(id, std::move(cb)); });
}
task_record client::retry(const std::string& id) {
  return value_or_throw(TASKQ_BLOCKING(task_record, async_retry(id, std::move(cb))));
}
std::vector<std::string> client::remove(task_filter f, error_code& ec) {
  return detail::blocking_value<std::vector<std::string>>(
      core_->ex, ec, [&](auto cb) { async_remove(std::move(f), std::move(cb)); });
}
std::vector<std::string> client::remove(task_filter f) {
  return value_or_throw(
      TASKQ_BLOCKING(std::vector<std::string>, async_remove(std::move(f), std::move(cb))));
}
std::size_t client::prune(duration older_than, error_code& ec) {
  return detail::blocking_value<std::size_t>(
      core_->ex, ec, [&](auto cb) { async_prune(older_than, std::move(cb)); });
}
std::size_t client::prune(duration older_than) {
  return value_or_throw(TASKQ_BLOCKING(std::size_t, async_prune(older_than, std::move(cb))));
}
void client::pause_queue(const std::string& queue_name, error_code& ec) {
  std::tie(ec) = detail::blocking_call<>(
      core_->ex, [&](auto cb) { async_set_paused(queue_name, true, std::move(cb)); });
}
void client::pause_queue(const std::string& queue_name) {
  error_code ec;
  pause_queue(queue_name, ec);
  throw_if(ec, queue_name);
}
void client::resume_queue(const std::string& queue_name, error_code& ec) {
  std::tie(ec) = detail::blocking_call<>(
      core_->ex, [&](auto cb) { async_set_paused(queue_name, false, std::move(cb)); });
}
void client::resume_queue(const std::string& queue_name) {
  error_code ec;
  resume_queue(queue_name, ec);
  throw_if(ec, queue_name);
}
metrics_snapshot client::metrics(error_code& ec) {
  return detail::blocking_value<metrics_snapshot>(core_->ex, ec,
                                                  [&](auto cb) { async_metrics(std::move(cb)); });
}
metrics_snapshot client::metrics() {
  return value_or_throw(TASKQ_BLOCKING(metrics_snapshot, async_metrics(std::move(cb))));
}

#undef TASKQ_BLOCKING

}  // namespace taskq
