// Internal: the state-transition rules every Store backend applies to a record. Pure
// functions (no I/O, no clock reads), so each backend enforces the same rules and the rules
// are unit-tested once.
#pragma once

#include <taskq/store.hpp>

namespace taskq::detail {

/// Applies a compare-and-set update. On error `r` is unchanged.
error_code apply_update(task_record& r, const task_update& u);

enum class claim_outcome { claimed, dropped, skipped };

/// Claims a leased task for a new attempt (see claim_result). On `skipped`, `r` is unchanged.
claim_outcome apply_claim(task_record& r, time_point now);

/// Records a heartbeat; sets `cancel_requested` from the record. On error `r` is unchanged.
error_code apply_heartbeat(task_record& r, const heartbeat_params& p, bool& cancel_requested);

/// Requests cancellation (pending: cancelled at once; running: flag). On error `r` is unchanged.
error_code apply_cancel_request(task_record& r, time_point now);

/// Whether a record holds its unique key (see task_spec::unique_for).
inline bool holds_unique_key(const task_record& r) noexcept {
  return !r.unique_key.empty() && (r.unique_for == unique_scope::any || !is_terminal(r.status));
}

}  // namespace taskq::detail
