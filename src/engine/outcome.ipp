// The outcome rules: what a finished run does to its task (pure).
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

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
    o.retry_at = detail::saturating_add(now, delay);
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

}  // namespace taskq
