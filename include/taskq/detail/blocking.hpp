// Internal: the thin blocking wrappers over async operations.
#pragma once

#include <taskq/error.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <future>
#include <tuple>

namespace taskq::detail {

/// True if the calling thread is running the execution context of `ex` (a blocking wait
/// there would deadlock, since the completion needs that thread).
bool running_in_this_thread(const boost::asio::any_io_executor& ex) noexcept;

/// Starts an async operation with a callback and blocks until it completes. The
/// io_context of `io_ex` must be run by another thread.
template <class... Ts, class Initiate>
std::tuple<error_code, Ts...> blocking_call(const boost::asio::any_io_executor& io_ex,
                                            Initiate&& initiate) {
  if (running_in_this_thread(io_ex)) return {error_code(errc::blocking_on_io_thread), Ts{}...};
  std::promise<std::tuple<error_code, Ts...>> p;
  auto f = p.get_future();
  initiate([&p](error_code ec, Ts... ts) { p.set_value({ec, std::move(ts)...}); });
  return f.get();
}

/// blocking_call for an operation with one result value: sets `ec`, returns the value.
template <class T, class Initiate>
T blocking_value(const boost::asio::any_io_executor& io_ex, error_code& ec, Initiate&& initiate) {
  auto [e, v] = blocking_call<T>(io_ex, std::forward<Initiate>(initiate));
  ec = e;
  return std::move(v);
}

}  // namespace taskq::detail
