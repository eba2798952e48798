// taskq — the injected logger: where taskq reports what no caller is waiting for (a
// background push, release, ack or lease extension that failed, a schedule's write-behind
// save that failed). The host passes one in the options (client_options::log, used by the
// client and by every worker and scheduler on it; file::backend_options::log); there is no
// global logger, and an empty logger costs one branch.
//
// @code
// taskq::client client(io.get_executor(), q, s,
//                      {.log = taskq::logger([](taskq::log_level l, std::string_view m) {
//                        std::clog << taskq::to_string(l) << ": " << m << "\n";
//                      })});
// @endcode
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>

namespace taskq {

enum class log_level : std::uint8_t { debug, info, warning, error };

/// "debug", "info", "warning", "error".
constexpr std::string_view to_string(log_level l) noexcept {
  switch (l) {
    case log_level::debug:
      return "debug";
    case log_level::info:
      return "info";
    case log_level::warning:
      return "warning";
    case log_level::error:
      return "error";
  }
  return "?";
}

/// A level + message callback with a minimum level. Copyable; the callback must be
/// thread-safe (taskq calls it from whichever thread saw the event: an io_context thread, the
/// file backend's threads) and should not block.
class logger {
 public:
  using sink = std::function<void(log_level, std::string_view message)>;

  /// Logs nothing.
  logger() = default;
  /// Calls `s` for every message at `min` or above.
  explicit logger(sink s, log_level min = log_level::info) : sink_(std::move(s)), min_(min) {}

  bool enabled(log_level l) const noexcept { return sink_ && l >= min_; }

  /// Formats with fmt (only when enabled) and hands the message to the sink.
  template <class... Args>
  void log(log_level l, fmt::format_string<Args...> f, Args&&... args) const {
    if (enabled(l)) sink_(l, fmt::vformat(f, fmt::make_format_args(args...)));
  }
  template <class... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) const {
    log(log_level::error, f, std::forward<Args>(args)...);
  }
  template <class... Args>
  void warning(fmt::format_string<Args...> f, Args&&... args) const {
    log(log_level::warning, f, std::forward<Args>(args)...);
  }
  template <class... Args>
  void info(fmt::format_string<Args...> f, Args&&... args) const {
    log(log_level::info, f, std::forward<Args>(args)...);
  }
  template <class... Args>
  void debug(fmt::format_string<Args...> f, Args&&... args) const {
    log(log_level::debug, f, std::forward<Args>(args)...);
  }

 private:
  sink sink_{};
  log_level min_ = log_level::info;
};

}  // namespace taskq
