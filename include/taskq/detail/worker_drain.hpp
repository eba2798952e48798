// Internal: the worker's stop and drain decisions — what a stop cancels, when the drain
// deadline is armed or brought forward, what its expiry means, and when a stopping worker has
// finished. State and decisions only, no I/O: unit-tested without an io_context, like
// decide_outcome and worker_admission.
#pragma once

#include <taskq/task.hpp>  // time_point, duration

#include <cstddef>
#include <cstdint>
#include <optional>

namespace taskq::detail {

/// What a worker has in flight, as the drain decisions see it.
struct worker_activity {
  /// A fetch is parked or in flight. What it claims after a stop is given straight back
  /// (it never starts), so it does not need the drain deadline, only to be waited for.
  bool reserving = false;
  std::size_t updates_in_flight = 0;  ///< outcomes sent to the store, not answered yet
  std::size_t slots = 0;              ///< tasks reserved or running, not yet recorded
  bool any_started = false;           ///< one of those slots started running
};

class worker_drain {
 public:
  /// What a stop asks the worker to do.
  struct stop_action {
    /// The first stop: cancel the parked reservation and the retry wait (no new work).
    bool cancel_waits = false;
    /// Arm the drain deadline at this time under `generation` (see `on_deadline`)...
    std::optional<time_point> arm_at;
    std::uint64_t generation = 0;
    /// ...after cancelling the deadline armed before (a later one).
    bool cancel_previous = false;
  };

  /// A stop at `now` that leaves `drain` for what runs to finish. Before `run()` started
  /// nothing runs, so nothing is armed. A second stop only brings the deadline forward (a
  /// second signal with a shorter drain), never back, and not after it expired.
  stop_action stop(time_point now, duration drain, bool run_started, const worker_activity& a) {
    stop_action out;
    const auto at = now + drain;
    if (stopping_) {
      if (run_started && !expired_ && deadline_ && at < *deadline_) arm(out, at);
      return out;
    }
    stopping_ = true;
    out.cancel_waits = true;
    if (run_started && a.any_started) arm(out, at);
    return out;
  }

  /// The deadline armed under `generation` fired. True when it is still the current one: the
  /// drain is over, runs still going are interrupted and a task claimed from now on is given
  /// straight back.
  bool on_deadline(std::uint64_t generation) {
    if (generation != generation_) return false;
    expired_ = true;
    return true;
  }

  /// Whether a stopping worker whose run() is pending may complete it: nothing is in flight.
  bool finished(bool run_pending, const worker_activity& a) const {
    return stopping_ && run_pending && !a.reserving && !a.updates_in_flight && a.slots == 0;
  }

  bool stopping() const { return stopping_; }
  /// The drain deadline passed while stopping.
  bool expired() const { return expired_; }

 private:
  void arm(stop_action& out, time_point at) {
    out.cancel_previous = deadline_.has_value();
    deadline_ = at;
    out.arm_at = at;
    out.generation = ++generation_;
  }

  bool stopping_ = false;
  bool expired_ = false;
  std::optional<time_point> deadline_;  // while a drain waits
  std::uint64_t generation_ = 0;
};

}  // namespace taskq::detail
