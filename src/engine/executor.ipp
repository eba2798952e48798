// The executor seam's bookkeeping, and local_executor.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

// The outstanding count is an atomic (no lock per run); the mutex only orders a run's last
// decrement against idle waiters registering.
run_promise executor::execute(run_request req) {
  outstanding_.fetch_add(1, std::memory_order_relaxed);
  run_promise p = do_execute(std::move(req));
  auto& st = *p.state_;
  {
    std::lock_guard lock(st.mutex);
    if (!st.result) {
      st.owner = this;
      return p;
    }
  }
  finished_one();  // completed inside do_execute (no handler for the type, say)
  return p;
}

std::size_t executor::outstanding() const {
  return outstanding_.load(std::memory_order_acquire);
}

void executor::wait_idle() {
  std::unique_lock lock(mutex_);
  idle_cv_.wait(lock, [&] { return outstanding_.load(std::memory_order_acquire) == 0; });
}

void executor::do_wait_idle(asio::any_completion_handler<void()> h) {
  {
    std::lock_guard lock(mutex_);
    if (outstanding_.load(std::memory_order_acquire) != 0) {
      idle_waiters_.push_back(std::move(h));
      return;
    }
  }
  detail::post_completion(std::move(h), io_ex_);
}

void executor::finished_one() {
  if (outstanding_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  std::vector<asio::any_completion_handler<void()>> ws;
  {
    std::lock_guard lock(mutex_);
    if (outstanding_.load(std::memory_order_acquire) != 0) return;  // a new run started
    ws = std::move(idle_waiters_);
  }
  idle_cv_.notify_all();
  for (auto& w : ws) detail::post_completion(std::move(w), io_ex_);
}

local_executor::local_executor(asio::any_io_executor io_ex, local_executor_options opts)
    : executor(std::move(io_ex)),
      clock_(opts.time ? *opts.time : default_clock()),
      threads_(opts.threads ? opts.threads : std::max(2u, std::thread::hardware_concurrency()) - 1),
      pool_(threads_) {}

local_executor::~local_executor() {
  pool_.join();
}

void local_executor::add(std::string type, std::variant<sync_handler, coro_handler> h) {
  std::unique_lock lock(handlers_mutex_);
  handlers_[std::move(type)] =
      std::make_shared<const std::variant<sync_handler, coro_handler>>(std::move(h));
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

// A pool thread runs queued calls until none is left. A drain leaves only with the queue
// empty, under the lock a new call is queued under, so no call waits without a drain.
void local_executor::drain_runs() {
  for (;;) {
    std::unique_lock lock(calls_mutex_);
    if (calls_.empty()) {
      --draining_;
      return;
    }
    queued_call call = std::move(calls_.front());
    calls_.pop_front();
    lock.unlock();
    if (!call.completion.done()) {  // else cancelled before it started
      json value;
      std::exception_ptr ep;
      try {
        value = std::get<sync_handler>(*call.fn)(*call.ctx);
      } catch (...) {
        ep = std::current_exception();
      }
      call.completion.complete(finish_result(ep, std::move(value), *call.ctx, clock_));
    }
    // The context shares its allocation with the promise's state, which its holder (a worker's
    // slot) keeps until the outcome is recorded: let go of the hooks (the worker) now, or the
    // worker and the run would keep each other alive.
    call.ctx->req_.hooks.reset();
  }
}

namespace {
// A plain-function run's context and its promise's state, in one allocation. (Not for
// coroutine runs: the state refers to the context until the run completes, and a coroutine
// whose io_context is destroyed never completes.)
struct sync_run : task_context {
  using task_context::task_context;
  detail::run_state state;
};
}  // namespace

run_promise local_executor::do_execute(run_request&& req) {
  req.run.run_id = ++next_run_id_;
  handler_ptr fn;
  {
    std::shared_lock lock(handlers_mutex_);
    if (auto it = handlers_.find(req.task.type); it != handlers_.end()) fn = it->second;
  }
  if (!fn) {
    run_completion comp(req.run, get_executor());
    run_result r;
    r.error = errc::handler_not_found;
    r.message = fmt::format("no handler is registered for task type '{}'", req.task.type);
    comp.complete(std::move(r));
    return comp.get_promise();
  }
  if (std::holds_alternative<sync_handler>(*fn)) {
    auto block = std::make_shared<sync_run>(std::move(req), clock_.now(), get_executor());
    block->state.shown_run = &block->run();
    block->state.io_ex = get_executor();
    run_completion comp(std::shared_ptr<detail::run_state>(block, &block->state));
    auto promise = comp.get_promise();
    std::shared_ptr<task_context> ctx = std::move(block);
    comp.on_cancel(ctx);
    bool post_drain;
    {
      std::lock_guard lock(calls_mutex_);
      calls_.push_back({std::move(fn), std::move(ctx), std::move(comp)});
      post_drain = draining_ < threads_;
      if (post_drain) ++draining_;
    }
    if (post_drain) asio::post(pool_, [this] { drain_runs(); });
    return promise;
  }
  run_completion comp(req.run, get_executor());
  auto promise = comp.get_promise();
  auto ctx = std::make_shared<task_context>(std::move(req), clock_.now(), get_executor());
  comp.on_cancel(ctx);
  clock* clk = &clock_;
  asio::co_spawn(
      get_executor(),
      [fn, ctx]() -> asio::awaitable<json> {
        co_return co_await std::get<coro_handler> (*fn)(*ctx);
      },
      asio::bind_cancellation_slot(ctx->cancellation_slot(),
                                   [ctx, comp, clk](std::exception_ptr ep, json value) {
                                     comp.complete(finish_result(ep, std::move(value), *ctx, *clk));
                                   }));
  return promise;
}

}  // namespace taskq
