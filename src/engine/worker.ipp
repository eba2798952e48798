// The worker: reserve, claim, run, renew, record outcomes, drain.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

namespace detail {

struct worker_core : run_hooks, run_sink, std::enable_shared_from_this<worker_core> {
  std::shared_ptr<client_core> client;
  taskq::executor& exec;
  worker_options opts;
  asio::any_io_executor strand;

  struct slot {
    lease l;
    task_record task;
    run_promise promise;
    std::size_t deadline_index = deadline_heap<slot>::npos;  // its timeout, if it has one
    bool started = false;
    bool cancel_requested = false;
    bool interrupted = false;
    bool recording = false;  // the run is over; its outcome is on its way to the backend
  };
  // All state below is touched only on the strand. Keyed by a view of the slot's own id (no
  // second copy of it per run).
  std::unordered_map<std::string_view, slot> slots;
  // Nodes of finished slots, kept for the next runs: a slot's node, its stub's strings and the
  // lease's keep their memory (no allocation per run once the worker is warm).
  std::vector<decltype(slots)::node_type> spare_slots;
  worker_admission admission;     // limits, running counts and refill decisions (pure)
  bool reserving = false;         // a fetch is in flight
  reserve_filters reserved_with;  // the filters of the fetch in flight
  asio::cancellation_signal reserve_cancel;
  asio::cancellation_signal renew_cancel;
  asio::cancellation_signal drain_cancel;
  asio::cancellation_signal retry_cancel;
  bool run_started = false;
  worker_drain drain;  // stopping, the drain deadline and when the worker is done (pure)
  std::optional<asio::any_completion_handler<void(error_code)>> run_handler;
  std::size_t updates_in_flight = 0;
  std::vector<completion> pending_completions;
  // Fetched again while the outcome of their previous attempt was still being recorded (rare):
  // started when that slot goes.
  std::unordered_map<std::string, fetched_task> after_recording;
  std::vector<run_outcome> pending_outcomes;
  std::vector<slot*> pending_slots;  // whose outcome each pending update records
  bool flush_posted = false;
  bool retry_armed = false;
  // Runs that finished (on any thread), handed to the strand in batches: one post per batch,
  // not one handler per run. A slot stays in `slots` until its finished run is recorded, so
  // the pointers stay valid.
  std::mutex finished_mutex;
  std::vector<slot*> finished_runs;  // guarded by finished_mutex
  bool collect_posted = false;       // guarded by finished_mutex
  std::vector<slot*> collecting;     // the batch being processed (keeps its capacity)
  // Every running task's timeout, with one clock wait armed for the earliest.
  deadline_heap<slot> deadlines;
  std::optional<time_point> deadline_armed;
  std::uint64_t deadline_generation = 0;
  asio::cancellation_signal deadline_cancel;
  std::mt19937_64 rng;
  std::atomic<std::size_t> running_count{0};

  worker_core(std::shared_ptr<client_core> c, taskq::executor& e, worker_options o)
      : client(std::move(c)),
        exec(e),
        opts(std::move(o)),
        strand(asio::make_strand(client->ex)),
        admission(opts),
        rng(opts.jitter_seed ? opts.jitter_seed : std::random_device{}()) {}

  clock& clk() { return client->clk; }

  template <class F>
  auto on_strand(F&& f) {
    return asio::bind_executor(strand, std::forward<F>(f));
  }

  // --- the loop ---
  void pump() {
    if (drain.stopping() || !run_started) return;
    auto filters = admission.filters();
    if (reserving) {
      // A parked fetch with stale filters would hold back work a freed slot allows.
      if (filters != reserved_with) reserve_cancel.emit(asio::cancellation_type::terminal);
      return;
    }
    // Each outcome in flight is a slot's (it goes when the outcome is recorded).
    const auto recording = std::min(updates_in_flight, slots.size());
    const auto n = admission.refill(slots.size() - recording, recording, filters);
    if (n == 0) return;
    fetch_params p;
    p.queues = filters.queues;
    p.max = n;
    p.lease_for = opts.lease;
    p.wait = true;
    p.skip_types = filters.skip_types;
    p.skip_keys = filters.skip_keys;
    if (admission.limited()) {
      // The limits can fill up within one batch: the fetch admits against its own copy of
      // the counts (it runs off the strand), counting in what it admits.
      p.admit = [counts = admission](const lease& l) mutable {
        if (!counts.admits(l)) return false;
        counts.count(l, +1);
        return true;
      };
    }
    reserving = true;
    reserved_with = std::move(filters);
    client->b.async_fetch(std::move(p),
                          asio::bind_cancellation_slot(
                              reserve_cancel.slot(),
                              on_strand([self = shared_from_this()](error_code ec, fetch_result r) {
                                self->on_fetched(ec, std::move(r));
                              })));
  }

  void on_fetched(error_code ec, fetch_result r) {
    reserving = false;
    if (ec) {
      if (ec != asio::error::operation_aborted)
        retry_later();
      else
        pump();
      maybe_finish();
      return;
    }
    for (auto& id : r.skipped) {
      // A skipped task may have just become cancelled by this claim (a cancel requested while
      // its worker was lost, or before its retry): tell waiters and subscribers.
      client->s.async_get(id, [c = client](error_code ec, task_record rec) {
        // Only the claim's own cancellation (its log line) is news; a task cancelled while
        // pending was already announced by the client.
        if (ec || rec.status != task_status::cancelled || rec.log.empty() ||
            rec.log.back().message.rfind("cancelled: ", 0) != 0)
          return;
        c->record_event(event_kind::cancelled, rec, rec.log.empty() ? "" : rec.log.back().message);
        c->finished(rec);
      });
    }
    for (auto& rec : r.dropped) {
      // Our own run of it may still be going (its lease lapsed): its outcome will find the
      // task dropped and be refused, so stop it.
      if (auto it = slots.find(rec.id); it != slots.end() && it->second.promise.valid())
        it->second.promise.cancel(errc::run_cancelled);
      client->record_event(event_kind::dropped, rec, rec.last_error);
      client->finished(rec);
    }
    for (auto& f : r.claimed) {
      auto held = slots.find(f.record.id);
      if (held == slots.end()) {
        start_fetched(std::move(f));
        continue;
      }
      if (held->second.recording) {
        // Its previous attempt's outcome (a retry) is being recorded and the backend requeued
        // it before we heard back: start this attempt once that slot is gone.
        auto id = f.record.id;
        after_recording.insert_or_assign(std::move(id), std::move(f));
        continue;
      }
      // Our own lease on it lapsed (a stalled strand, a failed extend) and we fetched it
      // again: the store counted a new attempt; keep running it under the new lease and
      // record its outcome as that attempt, rather than run it twice.
      admission.count(held->second.l, -1);
      admission.count(f.held, +1);
      held->second.l = std::move(f.held);
      held->second.task.attempt = f.record.attempt;
    }
    running_count = slots.size();
    pump();
    maybe_finish();
  }

  void start_fetched(fetched_task&& f) {
    // The key views the fetched record's id until the slot has its own copy, then the slot's
    // (a node re-insert: no allocation).
    decltype(slots)::node_type node;
    if (spare_slots.empty()) {
      node = slots.extract(slots.try_emplace(std::string_view(f.record.id)).first);
    } else {
      node = std::move(spare_slots.back());
      spare_slots.pop_back();
    }
    slot& s = node.mapped();
    copy_stub(s.task, f.record);
    node.key() = s.task.id;
    slots.insert(std::move(node));
    admission.count(f.held, +1);
    s.l = std::move(f.held);
    running_count = slots.size();
    // Claimed while stopping: a drain lets what runs finish, and gives this straight back.
    start(s, std::move(f.record), drain.stopping());
  }

  // Takes a finished slot out, keeping its node for a later run (up to one per run in flight).
  void retire(decltype(slots)::iterator it) {
    deadlines.erase(it->second);  // (finish_run took it out already)
    auto node = slots.extract(it);
    if (spare_slots.size() >= opts.max_in_flight) return;
    slot& s = node.mapped();
    s.promise = {};  // the run's shared state goes now, not at the node's next use
    s.started = s.cancel_requested = s.interrupted = s.recording = false;
    spare_slots.push_back(std::move(node));
  }

  void retry_later() {
    // The backend failed (a durable backend's I/O error, say): try again shortly, not spin.
    if (retry_armed) return;  // one wait at a time: stop() cancels it through one slot
    retry_armed = true;
    client->clk.async_wait_until(
        strand, clk().now() + std::chrono::milliseconds(100),
        asio::bind_cancellation_slot(retry_cancel.slot(),
                                     on_strand([self = shared_from_this()](error_code ec) {
                                       self->retry_armed = false;
                                       if (!ec) self->pump();
                                     })));
  }

  // The fields of a record the worker itself needs after handing the record to the executor
  // (assigned in place: the slot's record keeps its buffers).
  static void copy_stub(task_record& t, const task_record& r) {
    t.id = r.id;
    t.type = r.type;
    t.queue = r.queue;
    t.attempt = r.attempt;
    t.max_attempts = r.max_attempts;
    t.retry = r.retry;
    t.timeout = r.timeout;
    t.created_at = r.created_at;
    t.available_at = r.available_at;
    t.scheduled_for = r.scheduled_for;
    t.status = r.status;
  }

  // Runs a claimed task, or (`give_back`, or after the drain deadline) hands it straight
  // back: that attempt does not count.
  // The slot's stub is already copied from `rec` (start_fetched).
  void start(slot& s, task_record&& rec, bool give_back) {
    auto now = clk().now();
    const auto& t = s.task;
    if (give_back || drain.expired()) {
      s.interrupted = true;
      run_result r;
      r.error = errc::shutting_down;
      finish_run(s, std::move(r));
      return;
    }
    s.started = true;
    client->enqueue_to_start.record(now - std::max(t.available_at, t.created_at));
    if (auto* m = client->opts.metrics)
      m->series(t.queue, t.type).wait.observe(now - std::max(t.available_at, t.created_at));
    client->record_event(event_kind::started, t);
    queued_run run;
    run.task_id = t.id;
    run.attempt = t.attempt;
    run.requested_at = t.created_at;
    run.due_at = t.available_at;
    run.scheduled_for = t.scheduled_for;
    s.promise = exec.execute({std::move(run), std::move(rec), shared_from_this()});
    if (t.timeout > duration::zero()) {
      deadlines.push(s, detail::saturating_add(now, t.timeout));
      arm_deadline();
    }
    attach_run_sink(s.promise, weak_from_this(), reinterpret_cast<std::uintptr_t>(&s));
  }

  // --- finished runs (any thread) ---
  void run_done(std::uintptr_t cookie) noexcept override {
    bool post_collect;
    {
      std::lock_guard lock(finished_mutex);
      finished_runs.push_back(reinterpret_cast<slot*>(cookie));
      post_collect = !std::exchange(collect_posted, true);
    }
    if (post_collect) asio::post(strand, [self = shared_from_this()] { self->collect_finished(); });
  }

  void collect_finished() {
    {
      std::lock_guard lock(finished_mutex);
      collecting.swap(finished_runs);
      collect_posted = false;
    }
    // Each finished run adds one outcome to the pending batch: grow its vectors once.
    const auto batch = pending_completions.size() + collecting.size();
    pending_completions.reserve(batch);
    pending_outcomes.reserve(batch);
    pending_slots.reserve(batch);
    for (slot* s : collecting) finish_run(*s, *s->promise.result());
    collecting.clear();
  }

  // --- timeouts ---
  // Keeps one clock wait armed at the earliest deadline. A wait that fires after its run
  // finished finds nothing due and re-arms for the next one.
  void arm_deadline() {
    if (deadlines.empty() || (deadline_armed && *deadline_armed <= deadlines.next())) return;
    if (deadline_armed) deadline_cancel.emit(asio::cancellation_type::terminal);
    deadline_armed = deadlines.next();
    auto generation = ++deadline_generation;
    client->clk.async_wait_until(
        strand, *deadline_armed,
        asio::bind_cancellation_slot(deadline_cancel.slot(), on_strand([self = shared_from_this(),
                                                                        generation](error_code ec) {
                                       if (generation != self->deadline_generation)
                                         return;  // superseded
                                       self->deadline_armed.reset();
                                       if (!ec) self->expire_deadlines();
                                     })));
  }

  void expire_deadlines() {
    const auto now = clk().now();
    while (!deadlines.empty() && deadlines.next() <= now) {
      slot& s = deadlines.top();
      deadlines.pop();
      if (s.promise.valid()) s.promise.cancel(errc::run_timed_out);
    }
    arm_deadline();
  }

  void finish_run(slot& s, run_result r) {
    deadlines.erase(s);
    const auto& id = s.task.id;
    const int attempt = s.task.attempt;
    auto now = clk().now();
    refuse_deep_result(r, detail::effective_json_depth(client->opts.limits));
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    auto o = decide_outcome(s.task, r, {s.cancel_requested, s.interrupted}, now, uni(rng));
    if (r.stats.finished_at != time_point{}) {
      client->run_duration.record(r.stats.run_time);
      if (auto* m = client->opts.metrics)
        m->series(s.task.queue, s.task.type).run.observe(r.stats.run_time);
    }
    completion c;
    auto& u = c.update;
    u.id = id;
    u.expected = task_status::running;
    u.expected_attempt = attempt;
    u.to = o.to;
    u.now = now;
    if (r.ok()) u.result = std::move(r.result);
    if (!o.error.empty()) u.error = o.error;
    u.available_at = o.retry_at;
    u.attempt = o.attempt;
    if (!o.log.empty()) u.log = log_entry{now, o.log};  // failures, retries, cancels only
    // The record after the update is needed only by waiters (events are made from the slot's
    // own copy of the fields they carry).
    u.return_record = client->waiter_count.load() > 0;
    c.keep_position = o.keep_position;
    // The slot keeps renewing its lease until the outcome is recorded (a lease lapsing
    // meanwhile would let the task be claimed again before its outcome lands).
    // The lease's id goes to the completion (moved, not copied); the slot keeps the rest for
    // its admission count and renews under its stub's id meanwhile (renew()).
    c.held = {std::move(s.l.id), s.l.queue,      s.l.type, s.l.concurrency_key,
              s.l.priority,      s.l.expires_at, s.l.token};
    s.recording = true;
    ++updates_in_flight;
    // Outcomes are recorded in batches: everything that finished during one turn of the
    // strand goes to the backend in one call.
    pending_completions.push_back(std::move(c));
    pending_outcomes.push_back(std::move(o));
    pending_slots.push_back(&s);
    if (!flush_posted) {
      flush_posted = true;
      asio::post(strand, [self = shared_from_this()] { self->flush_updates(); });
    }
  }

  void flush_updates() {
    flush_posted = false;
    if (pending_completions.empty()) return;
    complete_params p;
    p.completions = std::exchange(pending_completions, {});
    client->b.async_complete(
        std::move(p),
        on_strand([self = shared_from_this(), recorded = std::exchange(pending_slots, {}),
                   outcomes = std::exchange(pending_outcomes, {})](
                      error_code ec, std::vector<update_result> results) mutable {
          self->on_recorded(recorded, ec, std::move(results), std::move(outcomes));
        }));
    // Their runs are over: the next batch is fetched while these outcomes are recorded (a
    // fetch already parked will hand out work as it comes; its filters are unchanged).
    if (!reserving) pump();
  }

  // `recorded` are slots whose run finished: they stay in `slots` until this erases them. The
  // backend has acked or requeued their leases (or given them back on an error).
  void on_recorded(const std::vector<slot*>& recorded, error_code batch_ec,
                   std::vector<update_result> results, std::vector<run_outcome> outcomes) {
    for (std::size_t i = 0; i < recorded.size(); ++i) {
      --updates_in_flight;
      auto it = slots.find(recorded[i]->task.id);
      if (it == slots.end() || &it->second != recorded[i]) continue;
      const error_code ec =
          batch_ec ? batch_ec : (i < results.size() ? results[i].error : errc::io_error);
      const auto& o = outcomes[i];
      if (!ec) {
        // The record after the update, when the backend returned one (only waiters need it).
        const task_record* after =
            results[i].record && !results[i].record->id.empty() ? &*results[i].record : nullptr;
        if (!after && o.attempt) it->second.task.attempt = *o.attempt;  // as recorded
        client->record_event(
            o.event, after ? *after : it->second.task, o.error,
            o.to == task_status::pending ? o.retry_at : std::optional<time_point>{});
        if (is_terminal(o.to)) {
          if (after) {
            client->finished(*after);
          } else if (client->waiter_count.load() > 0) {
            // A waiter arrived after the update was sent without its record: fetch it.
            client->s.async_get(std::string(it->first),
                                [c = client](error_code e, task_record rec) {
                                  if (!e) c->finished(rec);
                                });
          }
        }
      }
      // On an error the backend gave the lease back (an I/O error: the task runs again) or
      // left it to whoever holds the task now (status_conflict, not_found).
      admission.count(it->second.l, -1);
      auto next = after_recording.empty() ? after_recording.end()
                                          : after_recording.find(std::string(it->first));
      retire(it);
      if (next != after_recording.end()) {
        auto f = std::move(next->second);
        after_recording.erase(next);
        start_fetched(std::move(f));
      }
    }
    running_count = slots.size();
    pump();
    maybe_finish();
  }

  // --- lease renewal ---
  void arm_renewal() {
    auto period = std::max<duration>(opts.lease / 3, std::chrono::milliseconds(1));
    client->clk.async_wait_until(
        strand, clk().now() + period,
        asio::bind_cancellation_slot(renew_cancel.slot(),
                                     on_strand([self = shared_from_this()](error_code ec) {
                                       if (ec) return;
                                       self->renew();
                                     })));
  }
  void renew() {
    std::vector<lease> ls;
    for (auto& [id, s] : slots) {
      ls.push_back(s.l);
      if (s.recording) ls.back().id = s.task.id;  // its lease's id went to the completion
    }
    if (!ls.empty())
      client->q.async_extend(std::move(ls), opts.lease, client->log_failure("lease renewal"));
    if (!finished_run()) arm_renewal();
  }

  // --- cancellation from a client ---
  void cancel_requested(const std::string& id) {
    auto it = slots.find(id);
    if (it == slots.end() || !it->second.started) return;
    it->second.cancel_requested = true;
    if (it->second.promise.valid()) it->second.promise.cancel(errc::run_cancelled);
  }

  // --- run hooks (any thread) ---
  void heartbeat(const task_record& task, std::optional<json> progress,
                 asio::any_completion_handler<void(error_code, bool)> h) override {
    const auto depth = detail::effective_json_depth(client->opts.limits);
    if (progress && detail::json_depth(*progress, depth) > depth)
      return detail::post_completion(std::move(h), client->ex, error_code(errc::progress_too_deep),
                                     false);
    heartbeat_params p;
    p.id = task.id;
    p.attempt = task.attempt;
    bool has_progress = progress.has_value();
    json progress_copy = has_progress && client->wants_events() ? *progress : json();
    p.progress = std::move(progress);
    p.now = clk().now();
    auto self = shared_from_this();
    client->s.async_heartbeat(std::move(p), [self, task_id = task.id, attempt = task.attempt,
                                             has_progress, progress_copy = std::move(progress_copy),
                                             h = std::move(h)](error_code ec, bool cancel) mutable {
      if (!ec && has_progress) {
        task_record stub;
        stub.id = task_id;
        stub.attempt = attempt;
        self->client->record_event(event_kind::progress, stub, {}, {}, std::move(progress_copy));
      }
      // Extend this task's lease, and act on a cancel requested elsewhere.
      asio::post(self->strand, [self, task_id, cancel] {
        auto it = self->slots.find(task_id);
        if (it == self->slots.end()) return;
        if (!it->second.recording)  // else renew() keeps it until the outcome is recorded
          self->client->q.async_extend({it->second.l}, self->opts.lease,
                                       self->client->log_failure("heartbeat: lease extension"));
        if (cancel) self->cancel_requested(task_id);
      });
      detail::dispatch_completion(std::move(h), self->client->ex, ec, cancel);
    });
  }

  void log(const task_record& task, std::string message,
           asio::any_completion_handler<void(error_code)> h) override {
    client->s.async_append_log(task.id, log_entry{clk().now(), std::move(message)}, std::move(h));
  }

  // --- stopping ---
  bool finished_run() const { return drain.stopping() && !run_handler; }

  // What is in flight; `any_started` (a walk over the slots) only when asked.
  worker_activity activity(bool with_started = false) const {
    worker_activity a;
    a.reserving = reserving;
    a.updates_in_flight = updates_in_flight;
    a.slots = slots.size() + after_recording.size();
    if (with_started)
      a.any_started =
          std::any_of(slots.begin(), slots.end(), [](auto& kv) { return kv.second.started; });
    return a;
  }

  void stop(duration drain_for) {
    const bool first = !drain.stopping();
    auto act = drain.stop(clk().now(), drain_for, run_started, activity(first));
    if (act.cancel_waits) {
      reserve_cancel.emit(asio::cancellation_type::terminal);
      retry_cancel.emit(asio::cancellation_type::terminal);
    }
    if (act.cancel_previous) drain_cancel.emit(asio::cancellation_type::terminal);
    if (act.arm_at) {
      client->clk.async_wait_until(
          strand, *act.arm_at,
          asio::bind_cancellation_slot(
              drain_cancel.slot(),
              on_strand([self = shared_from_this(), generation = act.generation](error_code ec) {
                if (!ec && self->drain.on_deadline(generation)) self->expire_drain();
              })));
    }
    if (first && run_started) maybe_finish();
  }

  // The drain deadline passed: interrupt what still runs.
  void expire_drain() {
    for (auto& [id, s] : slots) {
      if (!s.started || !s.promise.valid()) continue;
      s.interrupted = true;
      s.promise.cancel(errc::shutting_down);
    }
  }

  void maybe_finish() {
    if (!drain.finished(run_handler.has_value(), activity())) return;
    drain_cancel.emit(asio::cancellation_type::terminal);
    renew_cancel.emit(asio::cancellation_type::terminal);
    ++deadline_generation;
    deadline_armed.reset();
    deadline_cancel.emit(asio::cancellation_type::terminal);
    auto h = std::move(*run_handler);
    run_handler.reset();
    auto slot = asio::get_associated_cancellation_slot(h);
    if (slot.is_connected()) slot.clear();
    detail::post_completion(std::move(h), strand, error_code{});
  }

  void run(asio::any_completion_handler<void(error_code)> h) {
    if (run_started) {
      detail::post_completion(std::move(h), strand, error_code(errc::shutting_down));
      return;
    }
    run_started = true;
    auto slot = asio::get_associated_cancellation_slot(h);
    run_handler.emplace(std::move(h));
    if (slot.is_connected()) {
      std::weak_ptr<worker_core> weak = shared_from_this();
      slot.assign([weak](asio::cancellation_type) {
        if (auto self = weak.lock())
          asio::post(self->strand, [self] { self->stop(self->opts.drain_timeout); });
      });
    }
    if (drain.stopping()) {  // stop() came first
      maybe_finish();
      return;
    }
    arm_renewal();
    pump();
  }
};

void notify_cancel_requested(worker_core& w, const std::string& id) {
  asio::post(w.strand, [self = w.shared_from_this(), id] { self->cancel_requested(id); });
}

}  // namespace detail

worker::worker(client& c, executor& ex, worker_options opts) {
  if (opts.queues.empty()) throw error(errc::invalid_option, "worker_options.queues is empty");
  for (const auto& q : opts.queues)
    if (q.empty()) throw error(errc::invalid_option, "worker_options.queues has a blank name");
  if (opts.max_in_flight == 0)
    throw error(errc::invalid_option, "worker_options.max_in_flight is 0");
  if (opts.reserve_batch == 0)
    throw error(errc::invalid_option, "worker_options.reserve_batch is 0");
  if (opts.lease <= duration::zero())
    throw error(errc::invalid_option, "worker_options.lease must be positive");
  if (opts.drain_timeout < duration::zero())
    throw error(errc::invalid_option, "worker_options.drain_timeout must not be negative");
  core_ = std::make_shared<detail::worker_core>(c.core(), ex, std::move(opts));
  std::lock_guard lock(c.core()->mutex);
  c.core()->workers.push_back(core_);
}

worker::~worker() {
  asio::post(core_->strand, [self = core_] { self->stop(duration::zero()); });
}

worker::executor_type worker::get_executor() const noexcept {
  return core_->strand;
}

void worker::do_run(asio::any_completion_handler<void(error_code)> h) {
  asio::post(core_->strand,
             [self = core_, h = std::move(h)]() mutable { self->run(std::move(h)); });
}

void worker::stop() {
  stop(core_->opts.drain_timeout);
}

void worker::stop(duration drain_timeout) {
  asio::post(core_->strand, [self = core_, drain_timeout] { self->stop(drain_timeout); });
}

std::size_t worker::running() const {
  return core_->running_count.load();
}

}  // namespace taskq
