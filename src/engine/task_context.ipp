// task_context: what a handler sees of its run (heartbeat, log, cancellation).
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

task_context::task_context(run_request&& req, time_point started_at, asio::any_io_executor io_ex)
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

}  // namespace taskq
