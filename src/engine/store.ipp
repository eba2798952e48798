// The Store seam's default batch update, for backends without one of their own.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

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
    if (updates.empty()) {
      // Nothing to do: still never complete inside the initiating call. Posted straight to
      // the handler's associated executor when it is an io_context, thread_pool or strand of
      // one (the seam has no executor of its own); otherwise through asio's system executor,
      // which then dispatches to the handler's associated executor.
      auto assoc = asio::get_associated_executor(handler);
      auto done = asio::append(std::move(handler), error_code{}, std::move(results));
      using io_ex = asio::io_context::executor_type;
      using pool_ex = asio::thread_pool::executor_type;
      if (auto* e = assoc.target<io_ex>()) return asio::post(*e, std::move(done));
      if (auto* e = assoc.target<asio::strand<io_ex>>()) return asio::post(*e, std::move(done));
      if (auto* e = assoc.target<pool_ex>()) return asio::post(*e, std::move(done));
      if (auto* e = assoc.target<asio::strand<pool_ex>>()) return asio::post(*e, std::move(done));
      if (auto* e = assoc.target<asio::any_io_executor>()) return asio::post(*e, std::move(done));
      return asio::post(asio::system_executor(), std::move(done));
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

}  // namespace taskq
