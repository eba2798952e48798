// run_promise / run_completion: the shared state of one run.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

struct detail::run_state {
  queued_run run;
  // The run as the promise reports it: `run`, or the same run kept by the context this state
  // shares an allocation with (local_executor's plain-function runs: no second copy).
  const queued_run* shown_run = &run;
  asio::any_io_executor io_ex;
  mutable std::mutex mutex;
  std::condition_variable cv;
  std::optional<run_result> result;
  bool cancelled = false;
  error_code cancel_reason;
  std::function<void(error_code)> cancel_hook;
  std::shared_ptr<task_context> cancel_context;  // the allocation-free form of cancel_hook
  std::vector<std::function<void(const run_result&)>> done_hooks;
  // The fast paths, without a handler or hook allocated per run: the executor that counts
  // this run as outstanding, and the worker collecting it.
  executor* owner = nullptr;
  std::weak_ptr<run_sink> sink;
  std::uintptr_t sink_cookie = 0;
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
    std::shared_ptr<task_context> context;
    executor* counted_by;
    std::weak_ptr<run_sink> collector;
    {
      std::lock_guard lock(mutex);
      if (result) return false;
      result = std::move(r);
      ws = std::move(waiters);
      hooks = std::move(done_hooks);
      counted_by = std::exchange(owner, nullptr);
      collector = std::move(sink);
      if (by_cancel) {
        cancelled = true;
        cancel_reason = result->error;
        hook = std::move(cancel_hook);
        context = std::move(cancel_context);
      }
      cancel_hook = nullptr;
      cancel_context.reset();
    }
    cv.notify_all();
    // The waiters' cancellation handlers stay installed: clearing a slot here could race
    // with its owner emitting it; the handlers look their waiter up and find nothing.
    for (auto& w : ws) detail::post_completion(std::move(w.handler), io_ex, result->error, *result);
    if (hook) hook(cancel_reason);
    if (context) context->request_cancel(cancel_reason);
    for (auto& h : hooks) h(*result);
    if (auto s = collector.lock()) s->run_done(sink_cookie);
    if (counted_by) counted_by->finished_one();  // last: wait_idle() means "all of the above ran"
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

void detail::attach_run_sink(const run_promise& p, std::weak_ptr<run_sink> sink,
                             std::uintptr_t cookie) {
  auto& st = *p.state_;
  {
    std::lock_guard lock(st.mutex);
    if (!st.result) {
      st.sink = std::move(sink);
      st.sink_cookie = cookie;
      return;
    }
  }
  if (auto s = sink.lock()) s->run_done(cookie);
}

const queued_run& run_promise::run() const {
  return *state_->shown_run;
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

namespace {
// A handler's result nested deeper than `limit` fails the run (not retryable: the same
// handler would return it again), before anything copies it.
void refuse_deep_result(run_result& r, std::size_t limit) {
  if (!r.ok() || detail::json_depth(r.result, limit) <= limit) return;
  r.result = nullptr;  // destruction is not recursive (nlohmann 3.10+)
  r.error = errc::result_too_deep;
  r.message = r.error.message();
  r.retryable = false;
}
}  // namespace

bool run_completion::complete(run_result r) const {
  // Any executor's result passes here before the promise copies it to its waiters.
  refuse_deep_result(r, json_depth_ceiling);
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

void run_completion::on_cancel(std::shared_ptr<task_context> ctx) const {
  error_code reason;
  {
    std::lock_guard lock(state_->mutex);
    if (!state_->cancelled) {
      if (!state_->result) state_->cancel_context = std::move(ctx);
      return;
    }
    reason = state_->cancel_reason;
  }
  ctx->request_cancel(reason);
}

void run_completion::on_done(std::function<void(const run_result&)> fn) const {
  state_->add_done_hook(std::move(fn));
}

bool run_completion::done() const noexcept {
  std::lock_guard lock(state_->mutex);
  return state_->result.has_value();
}

}  // namespace taskq
