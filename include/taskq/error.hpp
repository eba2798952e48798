// taskq — error codes and the exception type.
//
// Every failure taskq reports is a boost::system::error_code in taskq's own category, so
// callers can compare against taskq::errc values. Validation errors name the offending
// field in their message ("task field 'type' must not be blank"). Throwing overloads throw
// taskq::error, which carries the code plus an optional detail (a file offset, a cron
// position, an exception text from a handler).
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <string>
#include <type_traits>

namespace taskq {

using boost::system::error_code;

/// taskq's error conditions. The numeric values are stable: they may be persisted.
enum class errc {
  // --- bad input: the message names the field -------------------------------------------
  blank_type = 1,        ///< task field 'type' is blank
  blank_queue,           ///< task field 'queue' is blank
  blank_id,              ///< an id argument is blank
  invalid_status,        ///< a status string is not one of taskq's statuses
  payload_too_large,     ///< task field 'payload' is larger than the configured limit
  negative_delay,        ///< task field 'delay' is negative
  negative_timeout,      ///< task field 'timeout' is negative
  invalid_max_attempts,  ///< task field 'max_attempts' is below 1
  invalid_retry_policy,  ///< task field 'retry' has a negative or inconsistent value
  invalid_label,         ///< a label has a blank key
  invalid_option,        ///< an options aggregate has an out-of-range value
  invalid_record,        ///< a stored record could not be decoded (field named in detail)
  invalid_utf8,          ///< task field 'payload' or 'metadata' has a string that is not UTF-8
  invalid_request,       ///< an admin or control request is malformed (detail names the field)
  payload_too_deep,      ///< task field 'payload' nests deeper than max_json_depth
  metadata_too_deep,     ///< task field 'metadata' nests deeper than max_json_depth
  progress_too_deep,     ///< a heartbeat's 'progress' nests deeper than max_json_depth
  result_too_deep,       ///< a handler's 'result' nests deeper than max_json_depth
  delay_too_long,        ///< task field 'delay' exceeds max_duration
  timeout_too_long,      ///< task field 'timeout' exceeds max_duration
  run_at_out_of_range,   ///< task field 'run_at' is before the epoch or after max_time_point
  // --- state ------------------------------------------------------------------------------
  not_found = 100,     ///< no task with that id
  illegal_transition,  ///< the requested status change is never allowed (e.g. succeeded -> running)
  status_conflict,     ///< compare-and-set lost: the task is not in the expected status
  duplicate_id,        ///< a task with that id already exists
  duplicate_unique_key,  ///< a pending or running task already holds that unique key
  handler_not_found,     ///< no handler is registered for the task's type
  not_leased,            ///< the lease was not found or has expired (ack/extend after expiry)
  // --- runs -------------------------------------------------------------------------------
  run_cancelled = 200,    ///< the run was cancelled
  run_timed_out,          ///< the run exceeded its timeout
  shutting_down,          ///< the component is stopping and refuses new work
  handler_failed,         ///< the handler threw or returned an error (detail has the text)
  blocking_on_io_thread,  ///< a blocking call was made on a thread running the io_context it needs
  // --- schedules --------------------------------------------------------------------------
  invalid_cron = 300,  ///< a cron expression is malformed (detail names field and position)
  invalid_time_zone,   ///< an IANA time zone name is unknown
  invalid_schedule,    ///< a schedule definition is inconsistent (detail names the field)
  schedule_not_found,  ///< no schedule with that name
  // --- storage ----------------------------------------------------------------------------
  corrupt_journal = 400,       ///< a record before the tail fails its length or CRC check
  unsupported_format_version,  ///< a file was written by an incompatible format version
  store_locked,                ///< another process holds the store's lock
  io_error,                    ///< an I/O call failed (detail names the call and file)
  disk_full,                   ///< the device has no space left
  store_closed,                ///< the store was closed
  backend_unavailable,         ///< the backend cannot be reached (detail says why)
  access_denied,               ///< a control channel peer or socket is not the store owner's
};

/// The error category of taskq::errc. Its name is "taskq".
const boost::system::error_category& category() noexcept;

/// Makes an error_code in taskq's category.
inline error_code make_error_code(errc e) noexcept {
  return error_code(static_cast<int>(e), category());
}

/// The exception thrown by taskq's throwing overloads. what() is "detail: message" when a
/// detail is present, else the message of the code.
class error : public boost::system::system_error {
 public:
  explicit error(error_code ec) : boost::system::system_error(ec) {}
  error(error_code ec, const std::string& detail) : boost::system::system_error(ec, detail) {}
  error(errc e, const std::string& detail) : error(make_error_code(e), detail) {}
};

/// Throws taskq::error if `ec` is set.
inline void throw_if(const error_code& ec, const std::string& detail = {}) {
  if (ec) throw error(ec, detail);
}

}  // namespace taskq

namespace boost::system {
template <>
struct is_error_code_enum<taskq::errc> : std::true_type {};
}  // namespace boost::system
