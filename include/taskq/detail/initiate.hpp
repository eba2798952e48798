// Internal: the bridge from a templated async member (any completion token) to a virtual or
// compiled function taking an asio::any_completion_handler.
//
// Every public async member of taskq has the same shape:
//
//   template <asio::completion_token_for<Signature> CompletionToken = asio::deferred_t>
//   auto async_x(args..., CompletionToken&& token = {});
//
// so `co_await obj.async_x(args...)` works in a coroutine with no token, and a token that
// cannot take the completion signature is rejected where it is passed.
#pragma once

#include <taskq/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

#include <utility>

namespace taskq {
namespace asio = boost::asio;
}  // namespace taskq

namespace taskq::detail {

/// async_initiate over `fn(any_completion_handler<Sig>)`. `fn` must own its arguments.
template <class Sig, class Token, class Fn>
auto initiate_erased(Token&& token, Fn&& fn) {
  return asio::async_initiate<Token, Sig>(
      [](auto handler, auto f) {
        std::move(f)(asio::any_completion_handler<Sig>(std::move(handler)));
      },
      token, std::forward<Fn>(fn));
}

/// Completes `handler` with `args`: posted through the I/O executor `io_ex` (so it never
/// runs inside the initiating call), then run on the handler's associated executor.
template <class Handler, class Executor, class... Args>
void post_completion(Handler&& handler, const Executor& io_ex, Args&&... args) {
  asio::post(io_ex, asio::append(std::forward<Handler>(handler), std::forward<Args>(args)...));
}

/// Completes `handler` from a continuation (code already running after the initiating call
/// returned): dispatched through `io_ex` to the handler's associated executor, so it runs at
/// once when the continuation is already there.
template <class Handler, class Executor, class... Args>
void dispatch_completion(Handler&& handler, const Executor& io_ex, Args&&... args) {
  asio::dispatch(io_ex, asio::append(std::forward<Handler>(handler), std::forward<Args>(args)...));
}

}  // namespace taskq::detail
