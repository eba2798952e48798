// taskq — administrative writes as JSON requests: the one implementation behind the taskq
// CLI's writes (on any backend) and the file backend's control channel
// (backends/file/control.hpp), so that an operation does the same thing wherever it runs.
//
// A request is one JSON object with an "op" and its fields:
//   {"op":"enqueue", "task":{"type":T, "queue":Q, "payload":J, "priority":N, "delay_us":N}}
//                                                         -> {"id": ID}
//   {"op":"cancel", "id":ID}   {"op":"retry", "id":ID}    -> {"record": task record JSON}
//   {"op":"delete", "id":ID}                              -> {"deleted": [ID]}
//   {"op":"prune", "older_than_us":N}                     -> {"pruned": N}
//   {"op":"queue_pause"|"queue_resume", "queue":Q}        -> {}
//   {"op":"schedule_pause"|"schedule_resume", "name":S}   -> {}
//   {"op":"schedule_remove", "name":S, "cancel_runs":B}   -> {"cancelled": N}
//   {"op":"schedule_run", "name":S}                       -> {"id": ID}
// The response is {"ok":true, "result":{...}} or
// {"ok":false, "error":{"category":C, "code":N, "message":M, "detail":D}} (a bad request is
// errc::invalid_request, the detail naming the field).
#pragma once

#include <taskq/clock.hpp>
#include <taskq/detail/initiate.hpp>
#include <taskq/queue.hpp>
#include <taskq/schedule_store.hpp>
#include <taskq/store.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>

namespace taskq {

class client;
class scheduler;

/// What an admin request acts on. The references must stay valid until the completion;
/// `keep_alive` (optional) is held until then, for owners that can guarantee that by shared
/// ownership.
struct admin_target {
  asio::any_io_executor ex;                    ///< completes the request; runs its steps
  taskq::queue* queue = nullptr;               ///< required
  taskq::store* store = nullptr;               ///< required
  taskq::schedule_store* schedules = nullptr;  ///< for schedule_* ops (else invalid_request)
  /// The host's client over these stores: requests go through it, so its waiters, events and
  /// metrics see them (a task cancelled by request completes the host's async_wait). Null: a
  /// short-lived client of the request's own.
  taskq::client* client = nullptr;
  /// A running scheduler over these stores: schedule_* ops go through it, so it sees the
  /// change at once. Null: a short-lived scheduler over `schedules` applies them to the store.
  taskq::scheduler* scheduler = nullptr;
  clock* time = nullptr;  ///< default: the real clock
  std::shared_ptr<void> keep_alive{};
};

void do_admin(admin_target t, json request, asio::any_completion_handler<void(json)> h);

/// Executes one admin request against `t`.
///
/// - Completion: `void(json response)`.
/// - Executor: the token's associated executor, else t.ex; never inline.
/// - Cancellation: none.
/// - Errors: in the response (see admin_error_response), never thrown.
/// - Lifetimes: `t` is moved into the operation; what it points to must outlive it
///   (t.keep_alive may hold it).
/// - Thread safety: any thread.
template <asio::completion_token_for<void(json)> CompletionToken = asio::deferred_t>
auto async_admin(admin_target t, json request, CompletionToken&& token = {}) {
  return detail::initiate_erased<void(json)>(
      std::forward<CompletionToken>(token),
      [t = std::move(t), r = std::move(request)](auto h) mutable {
        do_admin(std::move(t), std::move(r), std::move(h));
      });
}

/// The response for an error (as async_admin sends it).
json admin_error_response(const error_code& ec, const std::string& detail = {});

/// Reads a response: the result object on success; else sets `ec` (in taskq's category when
/// the response says "taskq", else errc::invalid_request) and `detail`.
json admin_result(const json& response, error_code& ec, std::string& detail);

}  // namespace taskq
