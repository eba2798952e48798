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

/// Appends the text of `to_json(r).dump()` to `out`, written directly rather than through a
/// json tree: the journal and the PostgreSQL backend store every record in this form, and
/// building the tree was most of their per-task CPU. Byte-for-byte the same text (keys sorted,
/// nlohmann's escaping and number formatting; a string that is not UTF-8 throws the same
/// json::type_error as dump()).
void append_record_json(std::string& out, const task_record& r);
/// The same for a record's labels (`json(labels).dump()`).
void append_labels_json(std::string& out, const label_map& labels);

/// Reads a stored record's JSON text in the layout append_record_json writes, without building
/// a json tree for anything but payload, metadata, progress and result. True: `out` is what
/// record_from_json of the parsed text gives. False (`out` unspecified): the text is laid out
/// otherwise, or is malformed or invalid, and the caller takes the general path
/// (parse_json_text, record_from_json), which decides it and names what is wrong.
bool read_record_text(std::string_view text, task_record& out);

/// Whether a record holds its unique key (see task_spec::unique_for).
inline bool holds_unique_key(const task_record& r) noexcept {
  return !r.unique_key.empty() && (r.unique_for == unique_scope::any || !is_terminal(r.status));
}

}  // namespace taskq::detail
