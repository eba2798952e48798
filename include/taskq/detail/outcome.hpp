// Internal: what a finished run means for its task — a pure function, so retry, timeout,
// cancellation and shutdown rules are unit-tested without an io_context.
#pragma once

#include <taskq/metrics.hpp>
#include <taskq/run_promise.hpp>

namespace taskq::detail {

/// Why the worker itself interrupted a run, if it did.
struct run_flags {
  bool cancel_requested = false;  ///< the task was cancelled by a client
  bool interrupted = false;       ///< the worker gave it back at shutdown
};

struct run_outcome {
  task_status to = task_status::succeeded;
  event_kind event = event_kind::succeeded;
  std::optional<time_point> retry_at{};  ///< to == pending: when it may run again
  std::optional<int> attempt{};          ///< overrides the attempt counter (not counting it)
  bool keep_position = false;            ///< to == pending: back in its original place
  std::string error{};                   ///< last_error / event message
  std::string log{};                     ///< run-log line
};

/// Decides the task's next state after attempt `task.attempt` ended with `r`.
/// `random01` is a uniform draw in [0, 1) for the retry jitter.
run_outcome decide_outcome(const task_record& task, const run_result& r, run_flags flags,
                           time_point now, double random01);

}  // namespace taskq::detail
