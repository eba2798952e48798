// The blocking helper: whether the calling thread runs an executor (detail/blocking.hpp).
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

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

}  // namespace taskq
