// The engine: run promises, task contexts, executors, metrics, the client and the worker.
#include <taskq/client.hpp>
#include <taskq/detail/outcome.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/executor.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>

#include <fmt/format.h>

#include <array>
#include <bit>
#include <list>
#include <random>
#include <unordered_map>
#include <unordered_set>

namespace taskq {

// --- blocking helper ------------------------------------------------------------------------

bool detail::running_in_this_thread(const asio::any_io_executor& ex) noexcept {
  if (!ex) return false;
  using io_ex = asio::io_context::executor_type;
  using pool_ex = asio::thread_pool::executor_type;
  if (auto* e = ex.target<io_ex>()) return e->running_in_this_thread();
  if (auto* e = ex.target<asio::strand<io_ex>>()) return e->running_in_this_thread();
  if (auto* e = ex.target<pool_ex>()) return e->running_in_this_thread();
  if (auto* e = ex.target<asio::strand<pool_ex>>()) return e->running_in_this_thread();
  return false;
}

// --- store: the default batch update ---------------------------------------------------------

namespace {
// Applies a batch one update at a time through do_update (for backends without a batch path).
struct sequential_updates : std::enable_shared_from_this<sequential_updates> {
  std::vector<task_update> updates;
  std::vector<update_result> results;
  asio::any_completion_handler<void(error_code, std::vector<update_result>)> handler;
  std::function<void(task_update, asio::any_completion_handler<void(error_code, task_record)>)> one;

  sequential_updates(
      std::vector<task_update> u,
      asio::any_completion_handler<void(error_code, std::vector<update_result>)> h,
      std::function<void(task_update, asio::any_completion_handler<void(error_code, task_record)>)>
          f)
      : updates(std::move(u)), handler(std::move(h)), one(std::move(f)) {
    results.reserve(updates.size());
  }

  void next() {
    if (updates.empty()) {  // nothing to do: still never complete inside the initiating call
      asio::post(asio::system_executor(),
                 asio::append(std::move(handler), error_code{}, std::move(results)));
      return;
    }
    if (results.size() == updates.size()) {
      asio::dispatch(asio::append(std::move(handler), error_code{}, std::move(results)));
      return;
    }
    one(updates[results.size()], [self = shared_from_this()](error_code ec, task_record r) {
      self->results.push_back({ec, std::move(r)});
      self->next();
    });
  }
};
}  // namespace

void store::do_update_batch(std::vector<task_update> u,
                            handler<void(error_code, std::vector<update_result>)> h) {
  auto st = std::make_shared<sequential_updates>(
      std::move(u), std::move(h),
      [this](task_update x, asio::any_completion_handler<void(error_code, task_record)> cb) {
        do_update(std::move(x), std::move(cb));
      });
  st->next();
}

// --- run_promise ----------------------------------------------------------------------------

struct detail::run_state {
  queued_run run;
  asio::any_io_executor io_ex;
  mutable std::mutex mutex;
  std::condition_variable cv;
  std::optional<run_result> result;
  bool cancelled = false;
  error_code cancel_reason;
  std::function<void(error_code)> cancel_hook;
  std::vector<std::function<void(const run_result&)>> done_hooks;
  struct waiter {
    std::uint64_t id;
    asio::any_completion_handler<void(error_code, run_result)> handler;
  };
  std::list<waiter> waiters;  // a list: erasing never move-assigns a handler (see memory.cpp)
  std::uint64_t next_waiter = 0;

  bool complete(run_result r, bool by_cancel) {
    std::list<waiter> ws;
    std::vector<std::function<void(const run_result&)>> hooks;
    std::function<void(error_code)> hook;
    {
      std::lock_guard lock(mutex);
      if (result) return false;
      result = std::move(r);
      ws = std::move(waiters);
      hooks = std::move(done_hooks);
      if (by_cancel) {
        cancelled = true;
        cancel_reason = result->error;
        hook = std::move(cancel_hook);
      }
      cancel_hook = nullptr;
    }
    cv.notify_all();
    // The waiters' cancellation handlers stay installed: clearing a slot here could race
    // with its owner emitting it; the handlers look their waiter up and find nothing.
    for (auto& w : ws) detail::post_completion(std::move(w.handler), io_ex, result->error, *result);
    if (hook) hook(cancel_reason);
    for (auto& h : hooks) h(*result);
    return true;
  }

  void add_done_hook(std::function<void(const run_result&)> fn) {
    {
      std::lock_guard lock(mutex);
      if (!result) {
        done_hooks.push_back(std::move(fn));
        return;
      }
    }
    fn(*result);
  }
};

const queued_run& run_promise::run() const {
  return state_->run;
}

run_result run_promise::wait() const {
  std::unique_lock lock(state_->mutex);
  state_->cv.wait(lock, [&] { return state_->result.has_value(); });
  return *state_->result;
}

void run_promise::do_async_wait(std::shared_ptr<detail::run_state> s,
                                asio::any_completion_handler<void(error_code, run_result)> h) {
  std::unique_lock lock(s->mutex);
  if (s->result) {
    auto r = *s->result;
    lock.unlock();
    detail::post_completion(std::move(h), s->io_ex, r.error, std::move(r));
    return;
  }
  auto id = ++s->next_waiter;
  auto slot = asio::get_associated_cancellation_slot(h);
  s->waiters.push_back({id, std::move(h)});
  if (slot.is_connected()) {
    std::weak_ptr<detail::run_state> weak = s;
    slot.assign([weak, id](asio::cancellation_type) {
      auto st = weak.lock();
      if (!st) return;
      std::unique_lock lock(st->mutex);
      auto it =
          std::find_if(st->waiters.begin(), st->waiters.end(), [&](auto& w) { return w.id == id; });
      if (it == st->waiters.end()) return;
      auto handler = std::move(it->handler);
      st->waiters.erase(it);
      lock.unlock();
      detail::post_completion(std::move(handler), st->io_ex,
                              error_code(asio::error::operation_aborted), run_result{});
    });
  }
}

void run_promise::cancel(error_code reason) const {
  if (!state_) return;
  run_result r;
  r.error = reason;
  r.message = reason.message();
  r.retryable = false;
  state_->complete(std::move(r), true);
}

bool run_promise::done() const noexcept {
  if (!state_) return false;
  std::lock_guard lock(state_->mutex);
  return state_->result.has_value();
}

std::optional<run_result> run_promise::result() const {
  std::lock_guard lock(state_->mutex);
  return state_->result;
}

run_completion::run_completion(queued_run run, asio::any_io_executor io_ex)
    : state_(std::make_shared<detail::run_state>()) {
  state_->run = std::move(run);
  state_->io_ex = std::move(io_ex);
}

bool run_completion::complete(run_result r) const {
  return state_->complete(std::move(r), false);
}

void run_completion::on_cancel(std::function<void(error_code)> fn) const {
  error_code reason;
  {
    std::lock_guard lock(state_->mutex);
    if (!state_->cancelled) {
      if (!state_->result) state_->cancel_hook = std::move(fn);
      return;
    }
    reason = state_->cancel_reason;
  }
  fn(reason);
}

void run_completion::on_done(std::function<void(const run_result&)> fn) const {
  state_->add_done_hook(std::move(fn));
}

bool run_completion::done() const noexcept {
  std::lock_guard lock(state_->mutex);
  return state_->result.has_value();
}

// --- task_context ---------------------------------------------------------------------------

task_context::task_context(run_request req, time_point started_at, asio::any_io_executor io_ex)
    : req_(std::move(req)), started_at_(started_at), io_ex_(std::move(io_ex)) {}

error_code task_context::cancel_reason() const {
  int r = reason_.load(std::memory_order_acquire);
  return r ? error_code(static_cast<errc>(r)) : error_code();
}

void task_context::request_cancel(error_code reason) {
  if (reason.category() == category())
    reason_.store(reason.value(), std::memory_order_release);
  else
    reason_.store(static_cast<int>(errc::run_cancelled), std::memory_order_release);
  if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
  // A cancellation_signal is not thread-safe: emit it on the executor coroutine handlers use.
  if (auto self = weak_from_this().lock())
    asio::post(io_ex_, [self] { self->signal_.emit(asio::cancellation_type::terminal); });
}

bool task_context::heartbeat(json progress) {
  if (!req_.hooks) return !cancelled();
  std::promise<std::pair<error_code, bool>> p;
  auto f = p.get_future();
  do_heartbeat(std::move(progress), [&p](error_code ec, bool keep_going) {
    p.set_value({ec, keep_going});
  });
  auto [ec, keep_going] = f.get();
  return keep_going && !cancelled();
}

void task_context::do_heartbeat(json progress,
                                asio::any_completion_handler<void(error_code, bool)> h) {
  if (!req_.hooks) {
    detail::post_completion(std::move(h), io_ex_, error_code{}, !cancelled());
    return;
  }
  std::optional<json> p;
  if (!progress.is_null()) p = std::move(progress);
  // The adapter runs on the caller's executor, so calling `h` from it keeps the contract.
  auto ex = asio::get_associated_executor(h, io_ex_);
  req_.hooks->heartbeat(req_.task, std::move(p),
                        asio::bind_executor(ex, [this, h = std::move(h)](
                                                    error_code ec, bool cancel_requested) mutable {
                          // A cancel seen through the store counts as this run's cancellation, so
                          // cancelled() agrees with the answer. A heartbeat that cannot be
                          // recorded (the task moved on) also means: stop.
                          if (!ec && cancel_requested) request_cancel(errc::run_cancelled);
                          std::move(h)(ec, !ec && !cancel_requested && !cancelled());
                        }));
}

void task_context::log(std::string message) {
  if (!req_.hooks) return;
  std::promise<error_code> p;
  auto f = p.get_future();
  do_log(std::move(message), [&p](error_code ec) { p.set_value(ec); });
  f.get();
}

void task_context::do_log(std::string message, asio::any_completion_handler<void(error_code)> h) {
  if (!req_.hooks) {
    detail::post_completion(std::move(h), io_ex_, error_code{});
    return;
  }
  req_.hooks->log(req_.task, std::move(message), std::move(h));
}

// --- executor -------------------------------------------------------------------------------

run_promise executor::execute(run_request req) {
  {
    std::lock_guard lock(mutex_);
    ++outstanding_;
  }
  run_promise p = do_execute(std::move(req));
  p.state_->add_done_hook([this](const run_result&) { finished_one(); });
  return p;
}

std::size_t executor::outstanding() const {
  std::lock_guard lock(mutex_);
  return outstanding_;
}

void executor::wait_idle() {
  std::unique_lock lock(mutex_);
  idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
}

void executor::do_wait_idle(asio::any_completion_handler<void()> h) {
  {
    std::lock_guard lock(mutex_);
    if (outstanding_ != 0) {
      idle_waiters_.push_back(std::move(h));
      return;
    }
  }
  detail::post_completion(std::move(h), io_ex_);
}

void executor::finished_one() {
  std::vector<asio::any_completion_handler<void()>> ws;
  {
    std::lock_guard lock(mutex_);
    if (--outstanding_ != 0) return;
    ws = std::move(idle_waiters_);
  }
  idle_cv_.notify_all();
  for (auto& w : ws) detail::post_completion(std::move(w), io_ex_);
}

local_executor::local_executor(asio::any_io_executor io_ex, local_executor_options opts)
    : executor(std::move(io_ex)),
      clock_(opts.time ? *opts.time : default_clock()),
      threads_(opts.threads ? opts.threads : std::max(1u, std::thread::hardware_concurrency())),
      pool_(threads_) {}

local_executor::~local_executor() {
  pool_.join();
}

void local_executor::add(std::string type, std::variant<sync_handler, coro_handler> h) {
  std::unique_lock lock(handlers_mutex_);
  handlers_[std::move(type)] = std::move(h);
}

bool local_executor::has_handler(const std::string& type) const {
  std::shared_lock lock(handlers_mutex_);
  return handlers_.count(type) != 0;
}

namespace {

// Turns what a handler did into a run_result.
run_result finish_result(std::exception_ptr ep, json value, const task_context& ctx, clock& clk) {
  run_result r;
  if (ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const permanent_error& e) {
      r.error = errc::handler_failed;
      r.message = e.what();
      r.retryable = false;
    } catch (const std::exception& e) {
      r.error = errc::handler_failed;
      r.message = e.what();
      r.retryable = true;
    } catch (...) {
      r.error = errc::handler_failed;
      r.message = "unknown exception";
      r.retryable = true;
    }
  } else if (ctx.cancelled()) {
    // The handler returned early because it was told to stop: its result is discarded.
    r.error = ctx.cancel_reason() ? ctx.cancel_reason() : error_code(errc::run_cancelled);
    r.message = r.error.message();
  } else {
    r.result = std::move(value);
  }
  r.stats.started_at = ctx.started_at();
  r.stats.finished_at = clk.now();
  r.stats.run_time = r.stats.finished_at - r.stats.started_at;
  auto due = std::max(ctx.run().due_at, ctx.run().requested_at);
  r.stats.queue_wait = std::max(duration::zero(), r.stats.started_at - due);
  return r;
}

}  // namespace

run_promise local_executor::do_execute(run_request req) {
  req.run.run_id = ++next_run_id_;
  run_completion comp(req.run, get_executor());
  auto promise = comp.get_promise();
  std::variant<sync_handler, coro_handler> fn;
  {
    std::shared_lock lock(handlers_mutex_);
    auto it = handlers_.find(req.task.type);
    if (it == handlers_.end()) {
      run_result r;
      r.error = errc::handler_not_found;
      r.message = fmt::format("no handler is registered for task type '{}'", req.task.type);
      comp.complete(std::move(r));
      return promise;
    }
    fn = it->second;
  }
  auto ctx = std::make_shared<task_context>(std::move(req), clock_.now(), get_executor());
  comp.on_cancel([ctx](error_code reason) { ctx->request_cancel(reason); });
  clock* clk = &clock_;
  if (auto* sync = std::get_if<sync_handler>(&fn)) {
    asio::post(pool_, [f = std::move(*sync), ctx, comp, clk]() mutable {
      if (comp.done()) return;  // cancelled before it started
      json value;
      std::exception_ptr ep;
      try {
        value = f(*ctx);
      } catch (...) {
        ep = std::current_exception();
      }
      comp.complete(finish_result(ep, std::move(value), *ctx, *clk));
    });
  } else {
    auto& coro = std::get<coro_handler>(fn);
    asio::co_spawn(
        get_executor(),
        [f = std::move(coro), ctx]() mutable -> asio::awaitable<json> {
          co_return co_await f(*ctx);
        },
        asio::bind_cancellation_slot(
            ctx->cancellation_slot(), [ctx, comp, clk](std::exception_ptr ep, json value) {
              comp.complete(finish_result(ep, std::move(value), *ctx, *clk));
            }));
  }
  return promise;
}

// --- metrics --------------------------------------------------------------------------------

std::string_view to_string(event_kind k) noexcept {
  switch (k) {
    case event_kind::enqueued:
      return "enqueued";
    case event_kind::started:
      return "started";
    case event_kind::progress:
      return "progress";
    case event_kind::succeeded:
      return "succeeded";
    case event_kind::failed:
      return "failed";
    case event_kind::retry_scheduled:
      return "retry_scheduled";
    case event_kind::cancelled:
      return "cancelled";
    case event_kind::dropped:
      return "dropped";
  }
  return "unknown";
}

std::size_t histogram::bucket_of(std::uint64_t ns) noexcept {
  constexpr std::uint64_t sub = 1u << sub_bits;
  if (ns < sub) return static_cast<std::size_t>(ns);
  int msb = 63 - std::countl_zero(ns);
  int shift = msb - sub_bits;
  auto s = (ns >> shift) & (sub - 1);
  return static_cast<std::size_t>((msb - sub_bits + 1) * sub + s);
}

std::uint64_t histogram::upper_edge(std::size_t b) noexcept {
  constexpr std::size_t sub = 1u << sub_bits;
  if (b < sub) return b;
  int msb = static_cast<int>(b / sub) - 1 + sub_bits;
  std::uint64_t s = b % sub;
  int shift = msb - sub_bits;
  std::uint64_t lower = (sub + s) << shift;
  return lower + ((std::uint64_t{1} << shift) - 1);
}

void histogram::record(duration d) noexcept {
  auto ns = static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  counts_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
  total_.fetch_add(1, std::memory_order_relaxed);
  auto m = max_.load(std::memory_order_relaxed);
  while (ns > m && !max_.compare_exchange_weak(m, ns, std::memory_order_relaxed)) {
  }
}

std::uint64_t histogram::count() const noexcept {
  return total_.load(std::memory_order_relaxed);
}

duration histogram::quantile(double q) const noexcept {
  auto total = count();
  if (total == 0) return duration::zero();
  auto target = static_cast<std::uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * double(total)));
  target = std::max<std::uint64_t>(target, 1);
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < buckets; ++b) {
    seen += counts_[b].load(std::memory_order_relaxed);
    if (seen >= target) {
      auto edge = std::min(upper_edge(b), max_.load(std::memory_order_relaxed));
      return std::chrono::duration_cast<duration>(std::chrono::nanoseconds(edge));
    }
  }
  return max();
}

duration histogram::max() const noexcept {
  return std::chrono::duration_cast<duration>(
      std::chrono::nanoseconds(max_.load(std::memory_order_relaxed)));
}

latency_summary histogram::summary() const noexcept {
  return {count(), quantile(0.5), quantile(0.9), quantile(0.99), max()};
}

// --- outcome rules --------------------------------------------------------------------------

detail::run_outcome detail::decide_outcome(const task_record& task, const run_result& r,
                                           run_flags flags, time_point now, double random01) {
  run_outcome o;
  if (r.ok()) {
    o.to = task_status::succeeded;
    o.event = event_kind::succeeded;
    return o;
  }
  if (flags.interrupted && r.error == errc::shutting_down) {
    // Given back at shutdown: the interrupted attempt does not count.
    o.to = task_status::pending;
    o.event = event_kind::retry_scheduled;
    o.attempt = std::max(0, task.attempt - 1);
    o.keep_position = true;
    o.retry_at = now;
    o.error = "interrupted by worker shutdown";
    o.log =
        fmt::format("attempt {} interrupted by worker shutdown; returned to pending", task.attempt);
    return o;
  }
  std::string what = r.message.empty() ? r.error.message() : r.message;
  if (flags.cancel_requested || r.error == errc::run_cancelled) {
    o.to = task_status::cancelled;
    o.event = event_kind::cancelled;
    o.error = what;
    o.log = fmt::format("attempt {} cancelled", task.attempt);
    return o;
  }
  bool retryable = r.retryable || r.error == errc::run_timed_out;
  if (retryable && task.attempt < task.max_attempts) {
    auto delay = task.retry.delay_after(task.attempt, random01);
    o.to = task_status::pending;
    o.event = event_kind::retry_scheduled;
    o.retry_at = now + delay;
    o.error = what;
    o.log = fmt::format("attempt {} failed: {}; retry in {} ms", task.attempt, what,
                        std::chrono::duration_cast<std::chrono::milliseconds>(delay).count());
    return o;
  }
  o.to = task_status::failed;
  o.event = event_kind::failed;
  o.error = what;
  o.log = retryable ? fmt::format("attempt {} failed: {}; no attempts left", task.attempt, what)
                    : fmt::format("attempt {} failed permanently: {}", task.attempt, what);
  return o;
}

// --- client ---------------------------------------------------------------------------------

namespace detail {

struct client_core : std::enable_shared_from_this<client_core> {
  asio::any_io_executor ex;
  taskq::queue& q;
  taskq::store& s;
  clock& clk;
  client_options opts;

  std::mutex mutex;
  std::vector<std::pair<std::uint64_t, std::shared_ptr<client::subscriber>>> subscribers;
  std::atomic<bool> has_subscribers{false};
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

  client_core(asio::any_io_executor e, taskq::queue& qq, taskq::store& ss, client_options o)
      : ex(std::move(e)), q(qq), s(ss), clk(o.time ? *o.time : default_clock()), opts(o) {}

  void emit(const event& e) {
    event_counts[static_cast<std::size_t>(e.kind)].fetch_add(1, std::memory_order_relaxed);
    if (!has_subscribers.load(std::memory_order_acquire)) return;
    std::vector<std::shared_ptr<client::subscriber>> subs;
    {
      std::lock_guard lock(mutex);
      for (auto& [id, fn] : subscribers) subs.push_back(fn);
    }
    for (auto& fn : subs) (*fn)(e);
  }

  bool wants_events() const noexcept { return has_subscribers.load(std::memory_order_acquire); }

  static event make_event(event_kind k, const task_record& r, time_point at) {
    event e;
    e.kind = k;
    e.task_id = r.id;
    e.type = r.type;
    e.queue = r.queue;
    e.attempt = r.attempt;
    e.at = at;
    return e;
  }

  // Counts and (when someone listens) builds the event; cheap when nobody subscribed.
  void record_event(event_kind k, const task_record& r, std::string message = {},
                    std::optional<time_point> retry_at = {}, json progress = nullptr) {
    if (opts.metrics) opts.metrics->series(r.queue, r.type).count(k);  // [metrics hook]
    if (!wants_events()) {
      emit(event{k, {}, {}, {}, 0, {}, {}, nullptr, {}});
      return;
    }
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

client::client(asio::any_io_executor ex, taskq::queue& q, taskq::store& s, client_options opts)
    : core_(std::make_shared<detail::client_core>(std::move(ex), q, s, opts)) {}

client::~client() = default;

client::executor_type client::get_executor() const noexcept {
  return core_->ex;
}
clock& client::time() const noexcept {
  return core_->clk;
}
taskq::queue& client::get_queue() const noexcept {
  return core_->q;
}
taskq::store& client::get_store() const noexcept {
  return core_->s;
}

namespace {

queue_entry entry_of(const task_record& r) {
  return {r.id, r.queue, r.type, r.concurrency_key, r.priority, r.available_at};
}

}  // namespace

void client::do_enqueue(task_spec spec,
                        asio::any_completion_handler<void(error_code, std::string)> h) {
  std::vector<task_spec> one;
  one.push_back(std::move(spec));
  // The adapter runs on the caller's executor, so calling `h` from it keeps the contract.
  auto ex = asio::get_associated_executor(h, core_->ex);
  do_enqueue_batch(std::move(one),
                   asio::bind_executor(
                       ex, [h = std::move(h)](error_code ec, std::vector<std::string> ids) mutable {
                         std::move(h)(ec, ec ? std::string() : std::move(ids.front()));
                       }));
}

namespace {

/// Tells subscribers (or counts) and completes an enqueue whose tasks are stored and queued.
void enqueued(const std::shared_ptr<detail::client_core>& core, std::vector<std::string> ids,
              std::vector<event>& for_events, const std::vector<task_series*>& series,
              asio::any_completion_handler<void(error_code, std::vector<std::string>)> h) {
  for (auto* m : series) m->count(event_kind::enqueued);  // [metrics hook]
  if (for_events.empty()) {
    core->event_counts[static_cast<std::size_t>(event_kind::enqueued)] += ids.size();
  } else {
    for (auto& e : for_events) core->emit(e);
  }
  detail::dispatch_completion(std::move(h), core->ex, error_code{}, std::move(ids));
}

}  // namespace

void client::do_enqueue_batch(
    std::vector<task_spec> specs,
    asio::any_completion_handler<void(error_code, std::vector<std::string>)> h) {
  auto core = core_;
  for (const auto& s : specs) {
    if (auto ec = validate(s, core->opts.limits)) {
      detail::post_completion(std::move(h), core->ex, ec, std::vector<std::string>{});
      return;
    }
  }
  auto now = core->clk.now();
  std::vector<task_record> records;
  records.reserve(specs.size());
  // A store that queues what it inserts does both in one write (nothing to undo, nothing to
  // orphan if this process dies in between); otherwise insert, then push.
  const bool fed = core->q.fed_by(core->s);
  push_params push;
  if (!fed) push.entries.reserve(specs.size());
  std::vector<std::string> ids;
  ids.reserve(specs.size());
  for (auto& s : specs) {
    records.push_back(make_record(std::move(s), now));
    if (!fed) push.entries.push_back(entry_of(records.back()));
    ids.push_back(records.back().id);
  }
  // The events go out after the store and queue have the tasks; build them (small) only if
  // someone listens.
  std::vector<event> for_events;
  if (core->wants_events()) {
    for_events.reserve(records.size());
    for (const auto& r : records)
      for_events.push_back(detail::client_core::make_event(event_kind::enqueued, r, now));
  }
  std::vector<task_series*> series;  // [metrics hook]
  if (auto* m = core->opts.metrics)
    for (const auto& r : records) series.push_back(&m->series(r.queue, r.type));
  core->s.async_insert(std::move(records), [core, fed, push = std::move(push), ids = std::move(ids),
                                            for_events = std::move(for_events),
                                            series = std::move(series),  // [metrics hook]
                                            h = std::move(h)](error_code ec) mutable {
    if (ec)
      return detail::dispatch_completion(std::move(h), core->ex, ec, std::vector<std::string>{});
    if (fed) return enqueued(core, std::move(ids), for_events, series, std::move(h));
    core->q.async_push(
        std::move(push), [core, ids = std::move(ids), for_events = std::move(for_events),
                          series = std::move(series),  // [metrics hook]
                          h = std::move(h)](error_code ec) mutable {
          if (ec) {
            // Undo the insert so nothing is half-written.
            task_filter f;
            f.ids = ids;
            core->s.async_remove(std::move(f), [core, ec, h = std::move(h)](
                                                   error_code, std::vector<std::string>) mutable {
              detail::dispatch_completion(std::move(h), core->ex, ec, std::vector<std::string>{});
            });
            return;
          }
          enqueued(core, std::move(ids), for_events, series, std::move(h));
        });
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
  core_->subscribers.emplace_back(id, std::make_shared<subscriber>(std::move(fn)));
  core_->has_subscribers = true;
  return id;
}

void client::unsubscribe(std::uint64_t id) {
  std::lock_guard lock(core_->mutex);
  std::erase_if(core_->subscribers, [&](auto& s) { return s.first == id; });
  core_->has_subscribers = !core_->subscribers.empty();
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
  return value_or_throw(TASKQ_BLOCKING(std::vector<std::string>,
                                       async_enqueue_batch(std::move(specs), std::move(cb))));
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
void client::pause_queue(const std::string& queue_name) {
  auto [ec] = detail::blocking_call<>(
      core_->ex, [&](auto cb) { async_set_paused(queue_name, true, std::move(cb)); });
  throw_if(ec);
}
void client::resume_queue(const std::string& queue_name) {
  auto [ec] = detail::blocking_call<>(
      core_->ex, [&](auto cb) { async_set_paused(queue_name, false, std::move(cb)); });
  throw_if(ec);
}
metrics_snapshot client::metrics() {
  return value_or_throw(TASKQ_BLOCKING(metrics_snapshot, async_metrics(std::move(cb))));
}

#undef TASKQ_BLOCKING

// --- worker ---------------------------------------------------------------------------------

namespace detail {

struct worker_core : run_hooks, std::enable_shared_from_this<worker_core> {
  std::shared_ptr<client_core> client;
  taskq::executor& exec;
  worker_options opts;
  asio::any_io_executor strand;

  struct slot {
    lease l;
    task_record task;
    run_promise promise;
    std::unique_ptr<asio::cancellation_signal> timeout_cancel;
    bool started = false;
    bool cancel_requested = false;
    bool interrupted = false;
  };
  // All state below is touched only on the strand.
  std::unordered_map<std::string, slot> slots;
  std::unordered_map<std::string, std::size_t> by_type, by_queue, by_key;
  bool reserving = false;
  std::vector<std::string> reserve_skip_types, reserve_skip_keys, reserve_queues;
  asio::cancellation_signal reserve_cancel;
  asio::cancellation_signal renew_cancel;
  asio::cancellation_signal drain_cancel;
  asio::cancellation_signal retry_cancel;
  bool run_started = false;
  bool stopping = false;
  bool drain_expired = false;
  std::optional<asio::any_completion_handler<void(error_code)>> run_handler;
  std::size_t claims_in_flight = 0;
  std::size_t updates_in_flight = 0;
  std::vector<task_update> pending_updates;
  std::vector<run_outcome> pending_outcomes;
  bool flush_posted = false;
  bool retry_armed = false;
  std::mt19937_64 rng;
  std::atomic<std::size_t> running_count{0};

  worker_core(std::shared_ptr<client_core> c, taskq::executor& e, worker_options o)
      : client(std::move(c)),
        exec(e),
        opts(std::move(o)),
        strand(asio::make_strand(client->ex)),
        rng(opts.jitter_seed ? opts.jitter_seed : std::random_device{}()) {}

  clock& clk() { return client->clk; }

  template <class F>
  auto on_strand(F&& f) {
    return asio::bind_executor(strand, std::forward<F>(f));
  }

  // --- limits ---
  static bool at_limit(const std::unordered_map<std::string, std::size_t>& counts,
                       const std::string& key, std::size_t limit) {
    if (limit == 0) return false;
    auto it = counts.find(key);
    return it != counts.end() && it->second >= limit;
  }
  std::size_t type_limit(const std::string& t) const {
    auto it = opts.limits.per_type.find(t);
    return it == opts.limits.per_type.end() ? 0 : it->second;
  }
  std::size_t queue_limit(const std::string& q) const {
    auto it = opts.limits.per_queue.find(q);
    return it == opts.limits.per_queue.end() ? 0 : it->second;
  }
  bool admits(const lease& l) const {
    return !at_limit(by_type, l.type, type_limit(l.type)) &&
           !at_limit(by_queue, l.queue, queue_limit(l.queue)) &&
           (l.concurrency_key.empty() || !at_limit(by_key, l.concurrency_key, opts.limits.per_key));
  }
  void count(const lease& l, int delta) {
    auto add = [delta](std::unordered_map<std::string, std::size_t>& m, const std::string& k) {
      auto& n = m[k];
      n = static_cast<std::size_t>(static_cast<long long>(n) + delta);
      if (n == 0) m.erase(k);
    };
    add(by_type, l.type);
    add(by_queue, l.queue);
    if (!l.concurrency_key.empty()) add(by_key, l.concurrency_key);
    running_count = slots.size();
  }

  void current_skips(std::vector<std::string>& queues, std::vector<std::string>& types,
                     std::vector<std::string>& keys) const {
    for (const auto& q : opts.queues)
      if (!at_limit(by_queue, q, queue_limit(q))) queues.push_back(q);
    for (const auto& [t, n] : by_type)
      if (at_limit(by_type, t, type_limit(t))) types.push_back(t);
    if (opts.limits.per_key)
      for (const auto& [k, n] : by_key)
        if (n >= opts.limits.per_key) keys.push_back(k);
  }

  // --- the loop ---
  void pump() {
    if (stopping || !run_started) return;
    std::vector<std::string> queues, types, keys;
    current_skips(queues, types, keys);
    if (reserving) {
      // A parked reservation with stale filters would hold back work a freed slot allows.
      if (types != reserve_skip_types || keys != reserve_skip_keys || queues != reserve_queues)
        reserve_cancel.emit(asio::cancellation_type::terminal);
      return;
    }
    if (slots.size() >= opts.max_in_flight || queues.empty()) return;
    // Refill in batches: while work is running, wait until a quarter of a batch is free, so
    // a busy worker makes one reserve round trip per many tasks instead of one per task.
    const auto free_slots = opts.max_in_flight - slots.size();
    const auto refill_at =
        std::max<std::size_t>(1, std::min(opts.reserve_batch, opts.max_in_flight) / 4);
    if (!slots.empty() && free_slots < refill_at) return;
    reserve_params p;
    p.queues = queues;
    p.max = std::min(opts.max_in_flight - slots.size(), opts.reserve_batch);
    p.lease_for = opts.lease;
    p.wait = true;
    p.skip_types = types;
    p.skip_keys = keys;
    reserving = true;
    reserve_queues = std::move(queues);
    reserve_skip_types = std::move(types);
    reserve_skip_keys = std::move(keys);
    client->q.async_reserve(
        std::move(p),
        asio::bind_cancellation_slot(
            reserve_cancel.slot(),
            on_strand([self = shared_from_this()](error_code ec, std::vector<lease> leases) {
              self->on_reserved(ec, std::move(leases));
            })));
  }

  void on_reserved(error_code ec, std::vector<lease> leases) {
    reserving = false;
    if (ec && leases.empty()) {
      if (ec != asio::error::operation_aborted)
        retry_later();
      else
        pump();
      maybe_finish();
      return;
    }
    std::vector<std::string> ids;
    for (auto& l : leases) {
      if (auto held = slots.find(l.id); held != slots.end()) {
        // Our own lease on it lapsed (a stalled strand, a failed extend) and we reserved it
        // again: keep running it under the new lease rather than giving it back in a loop.
        held->second.l = l;
        continue;
      }
      if (stopping || slots.size() >= opts.max_in_flight || !admits(l)) {
        give_back(l);  // original position; another worker (or a later round) takes it
        continue;
      }
      ids.push_back(l.id);
      auto& s = slots[l.id];
      s.l = l;
      count(l, +1);
    }
    if (!ids.empty()) {
      ++claims_in_flight;
      client->s.async_claim({ids, clk().now()}, on_strand([self = shared_from_this(), ids](
                                                              error_code ec, claim_result r) {
                              self->on_claimed(ec, ids, std::move(r));
                            }));
    }
    pump();
  }

  // Puts a task whose attempt ended in a retry back with its backoff. If our lease lapsed
  // meanwhile (its entry went back to ready at the old time), take it out and push it again
  // with the retry time, so the backoff holds.
  void requeue(const lease& l, const run_outcome& o) {
    release_params rp;
    rp.id = l.id;
    rp.token = l.token;
    rp.keep_position = o.keep_position;
    rp.available_at = o.retry_at;
    client->q.async_release(std::move(rp), [c = client, l, o](error_code ec) {
      if (ec != errc::not_leased) return;
      c->q.async_remove(l.id, [c, l, o](error_code, bool removed) {
        if (!removed) return;  // leased by someone else: its claim decides
        push_params p;
        p.entries.push_back({l.id, l.queue, l.type, l.concurrency_key, l.priority,
                             o.retry_at.value_or(c->clk.now())});
        c->q.async_push(std::move(p), [](error_code) {});
      });
    });
  }

  void give_back(const lease& l) {
    release_params rp;
    rp.id = l.id;
    rp.token = l.token;
    rp.keep_position = true;
    client->q.async_release(std::move(rp), [](error_code) {});
  }

  void retry_later() {
    // The queue failed (a durable backend's I/O error, say): try again shortly rather than spin.
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

  void drop_slot(const std::string& id) {
    auto it = slots.find(id);
    if (it == slots.end()) return;
    auto l = it->second.l;
    slots.erase(it);
    count(l, -1);
  }

  void on_claimed(error_code ec, const std::vector<std::string>& ids, claim_result r) {
    --claims_in_flight;
    if (ec) {
      for (auto& id : ids) {
        if (auto it = slots.find(id); it != slots.end()) give_back(it->second.l);
        drop_slot(id);
      }
      retry_later();
      maybe_finish();
      return;
    }
    std::vector<lease> done;
    for (auto& id : r.skipped) {
      if (auto it = slots.find(id); it != slots.end()) done.push_back(it->second.l);
      drop_slot(id);
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
      if (auto it = slots.find(rec.id); it != slots.end()) done.push_back(it->second.l);
      drop_slot(rec.id);
      client->record_event(event_kind::dropped, rec, rec.last_error);
      client->finished(rec);
    }
    if (!done.empty()) client->q.async_ack(std::move(done), [](error_code, std::size_t) {});
    for (auto& rec : r.claimed) {
      auto it = slots.find(rec.id);
      if (it == slots.end()) continue;
      start(it->second, std::move(rec));
    }
    pump();
    maybe_finish();
  }

  // The fields of a record the worker itself needs after handing the record to the executor.
  static task_record stub_of(const task_record& r) {
    task_record t;
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
    return t;
  }

  void start(slot& s, task_record rec) {
    auto now = clk().now();
    s.task = stub_of(rec);
    s.started = true;
    const auto& t = s.task;
    client->enqueue_to_start.record(now - std::max(t.available_at, t.created_at));
    if (auto* m = client->opts.metrics)  // [metrics hook]
      m->series(t.queue, t.type).wait.observe(now - std::max(t.available_at, t.created_at));
    client->record_event(event_kind::started, t);
    queued_run run;
    run.task_id = t.id;
    run.attempt = t.attempt;
    run.requested_at = t.created_at;
    run.due_at = t.available_at;
    run.scheduled_for = t.scheduled_for;
    if (stopping && drain_expired) {
      // Claimed after the drain deadline: give it straight back.
      s.interrupted = true;
      run_result r;
      r.error = errc::shutting_down;
      finish_run(t.id, t.attempt, std::move(r));
      return;
    }
    s.promise = exec.execute({std::move(run), std::move(rec), shared_from_this()});
    if (t.timeout > duration::zero()) {
      s.timeout_cancel = std::make_unique<asio::cancellation_signal>();
      client->clk.async_wait_until(
          strand, now + t.timeout,
          asio::bind_cancellation_slot(
              s.timeout_cancel->slot(),
              on_strand([self = shared_from_this(), id = t.id, attempt = t.attempt](error_code ec) {
                if (ec) return;
                auto it = self->slots.find(id);
                if (it == self->slots.end() || it->second.task.attempt != attempt) return;
                it->second.promise.cancel(errc::run_timed_out);
              })));
    }
    s.promise.async_wait(
        on_strand([self = shared_from_this(), id = t.id, attempt = t.attempt](
                      error_code, run_result r) { self->finish_run(id, attempt, std::move(r)); }));
  }

  void finish_run(const std::string& id, int attempt, run_result r) {
    auto it = slots.find(id);
    if (it == slots.end() || it->second.task.attempt != attempt) return;
    slot& s = it->second;
    if (s.timeout_cancel) s.timeout_cancel->emit(asio::cancellation_type::terminal);
    auto now = clk().now();
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    auto o = decide_outcome(s.task, r, {s.cancel_requested, s.interrupted}, now, uni(rng));
    if (r.stats.finished_at != time_point{}) client->run_duration.record(r.stats.run_time);
    if (auto* m = client->opts.metrics; m && r.stats.finished_at != time_point{})  // [metrics hook]
      m->series(s.task.queue, s.task.type).run.observe(r.stats.run_time);
    task_update u;
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
    // The record after the update is needed only to tell waiters and subscribers.
    u.return_record = client->wants_events() || client->waiter_count.load() > 0;
    ++updates_in_flight;
    // Outcomes are recorded in batches: everything that finished during one turn of the
    // strand goes to the store in one call and to the queue in one ack.
    pending_updates.push_back(std::move(u));
    pending_outcomes.push_back(std::move(o));
    if (!flush_posted) {
      flush_posted = true;
      asio::post(strand, [self = shared_from_this()] { self->flush_updates(); });
    }
  }

  void flush_updates() {
    flush_posted = false;
    auto updates = std::move(pending_updates);
    auto outcomes = std::move(pending_outcomes);
    pending_updates.clear();
    pending_outcomes.clear();
    if (updates.empty()) return;
    std::vector<std::string> ids;
    ids.reserve(updates.size());
    for (auto& u : updates) ids.push_back(u.id);
    client->s.async_update_batch(
        std::move(updates),
        on_strand([self = shared_from_this(), ids = std::move(ids), outcomes = std::move(outcomes)](
                      error_code ec, std::vector<update_result> results) mutable {
          self->on_recorded(ids, ec, std::move(results), std::move(outcomes));
        }));
  }

  void on_recorded(const std::vector<std::string>& ids, error_code batch_ec,
                   std::vector<update_result> results, std::vector<run_outcome> outcomes) {
    std::vector<lease> acks;
    const bool store_removes_finished = client->q.fed_by(client->s);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      --updates_in_flight;
      auto it = slots.find(ids[i]);
      if (it == slots.end()) continue;
      error_code ec =
          batch_ec ? batch_ec : (i < results.size() ? results[i].error : errc::io_error);
      const auto& o = outcomes[i];
      auto l = it->second.l;
      if (!ec) {
        task_record& after = results[i].record;
        if (o.to == task_status::pending) {
          requeue(l, o);
        } else if (!is_terminal(o.to) || !store_removes_finished) {
          acks.push_back(l);  // else the store's write took the entry out already
        }
        client->record_event(
            o.event, after.id.empty() ? it->second.task : after, o.error,
            o.to == task_status::pending ? o.retry_at : std::optional<time_point>{});
        if (is_terminal(o.to)) {
          if (!after.id.empty()) {
            client->finished(after);
          } else if (client->waiter_count.load() > 0) {
            // A waiter arrived after the update was sent without its record: fetch it.
            client->s.async_get(ids[i], [c = client](error_code e, task_record rec) {
              if (!e) c->finished(rec);
            });
          }
        }
      } else if (ec != errc::status_conflict && ec != errc::not_found) {
        // The store could not record it (an I/O error): give the lease back so the task runs
        // again rather than hang as running; the store's own record still says running and
        // the next claim counts that as a lost attempt.
        give_back(l);
      }
      // On a per-task error (status_conflict: the task moved on — its lease was lost and
      // another worker re-claimed it, or it was deleted) the queue entry belongs to someone else.
      drop_slot(ids[i]);
    }
    if (!acks.empty()) client->q.async_ack(std::move(acks), [](error_code, std::size_t) {});
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
    for (auto& [id, s] : slots) ls.push_back(s.l);
    if (!ls.empty())
      client->q.async_extend(std::move(ls), opts.lease, [](error_code, std::vector<bool>) {});
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
        self->client->q.async_extend({it->second.l}, self->opts.lease,
                                     [](error_code, std::vector<bool>) {});
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
  bool finished_run() const { return stopping && !run_handler; }

  void stop(duration drain) {
    if (stopping) return;
    stopping = true;
    reserve_cancel.emit(asio::cancellation_type::terminal);
    retry_cancel.emit(asio::cancellation_type::terminal);
    if (!run_started) return;
    bool any_running =
        std::any_of(slots.begin(), slots.end(), [](auto& kv) { return kv.second.started; });
    if (any_running || claims_in_flight) {
      client->clk.async_wait_until(
          strand, clk().now() + drain,
          asio::bind_cancellation_slot(drain_cancel.slot(),
                                       on_strand([self = shared_from_this()](error_code ec) {
                                         if (!ec) self->expire_drain();
                                       })));
    }
    maybe_finish();
  }

  void expire_drain() {
    drain_expired = true;
    for (auto& [id, s] : slots) {
      if (!s.started || !s.promise.valid()) continue;
      s.interrupted = true;
      s.promise.cancel(errc::shutting_down);
    }
  }

  void maybe_finish() {
    if (!stopping || !run_handler || reserving || claims_in_flight || updates_in_flight ||
        !slots.empty())
      return;
    drain_cancel.emit(asio::cancellation_type::terminal);
    renew_cancel.emit(asio::cancellation_type::terminal);
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
    if (stopping) {  // stop() came first
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
