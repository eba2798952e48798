#include <taskq/error.hpp>

namespace taskq {
namespace {

class category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "taskq"; }

  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::blank_type:
        return "task field 'type' must not be blank";
      case errc::blank_queue:
        return "task field 'queue' must not be blank";
      case errc::blank_id:
        return "field 'id' must not be blank";
      case errc::invalid_status:
        return "field 'status' must be one of pending, running, succeeded, failed, cancelled, "
               "dropped";
      case errc::payload_too_large:
        return "task field 'payload' exceeds the configured maximum payload size";
      case errc::invalid_utf8:
        return "task field 'payload' or 'metadata' has a string that is not valid UTF-8";
      case errc::negative_delay:
        return "task field 'delay' must not be negative";
      case errc::negative_timeout:
        return "task field 'timeout' must not be negative";
      case errc::invalid_max_attempts:
        return "task field 'max_attempts' must be at least 1";
      case errc::invalid_retry_policy:
        return "task field 'retry' must have non-negative delays of at most 36500 days, "
               "max_delay >= initial_delay, multiplier >= 1 and jitter in [0, 1]";
      case errc::invalid_label:
        return "task field 'labels' must not contain a blank key";
      case errc::invalid_option:
        return "an option is out of range";
      case errc::invalid_record:
        return "a stored task record could not be decoded";
      case errc::invalid_request:
        return "the request is malformed";
      case errc::payload_too_deep:
        return "task field 'payload' is nested deeper than the configured maximum JSON depth "
               "(validation_limits::max_json_depth)";
      case errc::metadata_too_deep:
        return "task field 'metadata' is nested deeper than the configured maximum JSON depth "
               "(validation_limits::max_json_depth)";
      case errc::progress_too_deep:
        return "heartbeat field 'progress' is nested deeper than the configured maximum JSON "
               "depth (validation_limits::max_json_depth)";
      case errc::result_too_deep:
        return "the handler's 'result' is nested deeper than the configured maximum JSON depth "
               "(validation_limits::max_json_depth)";
      case errc::delay_too_long:
        return "task field 'delay' must not exceed 36500 days (100 years)";
      case errc::timeout_too_long:
        return "task field 'timeout' must not exceed 36500 days (100 years)";
      case errc::run_at_out_of_range:
        return "task field 'run_at' must lie between 1970-01-01 and 2169 (taskq::max_time_point)";
      case errc::not_found:
        return "no task with that id";
      case errc::illegal_transition:
        return "that status change is not allowed";
      case errc::status_conflict:
        return "the task is not in the expected status";
      case errc::duplicate_id:
        return "a task with that id already exists";
      case errc::duplicate_unique_key:
        return "a pending or running task already holds that unique key";
      case errc::handler_not_found:
        return "no handler is registered for the task's type";
      case errc::not_leased:
        return "the task is not leased (the lease expired or was released)";
      case errc::run_cancelled:
        return "run cancelled";
      case errc::run_timed_out:
        return "run timed out";
      case errc::shutting_down:
        return "shutting down";
      case errc::handler_failed:
        return "the handler failed";
      case errc::blocking_on_io_thread:
        return "a blocking call was made on a thread running the io_context it needs; use the "
               "async_ form there";
      case errc::invalid_cron:
        return "invalid cron expression";
      case errc::invalid_time_zone:
        return "unknown time zone";
      case errc::invalid_schedule:
        return "invalid schedule definition";
      case errc::schedule_not_found:
        return "no schedule with that name";
      case errc::corrupt_journal:
        return "journal record is corrupt";
      case errc::unsupported_format_version:
        return "unsupported file format version";
      case errc::store_locked:
        return "the store is locked by another process";
      case errc::io_error:
        return "I/O error";
      case errc::disk_full:
        return "no space left on device";
      case errc::store_closed:
        return "the store is closed";
      case errc::backend_unavailable:
        return "the backend is unavailable";
      case errc::access_denied:
        return "access denied: the peer or socket does not belong to the store's owner";
    }
    return "unknown taskq error";
  }
};

}  // namespace

const boost::system::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

}  // namespace taskq
