// taskq — injectable clocks.
//
// Every time-dependent decision in taskq (delays, leases, timeouts, retries, schedules) reads
// time from a taskq::clock and waits through it, so tests drive time with a manual_clock
// instead of sleeping.
#pragma once

#include <taskq/detail/initiate.hpp>
#include <taskq/task.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <map>
#include <memory>
#include <mutex>

namespace taskq {

namespace asio = boost::asio;

/// A source of time and of timed waits.
class clock {
 public:
  virtual ~clock() = default;

  /// The current time.
  virtual time_point now() const noexcept = 0;

  /// Waits until now() >= `at`. `ex`: an I/O executor the wait may use for its timer.
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else `ex`; never inline.
  /// - Cancellation: terminal, partial and total, through the token's cancellation slot.
  /// - Errors: asio::error::operation_aborted when cancelled.
  /// - Lifetimes: the clock must outlive the operation.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_wait_until(asio::any_io_executor ex, time_point at, CompletionToken&& token = {}) {
    return asio::async_initiate<CompletionToken, void(error_code)>(
        [this](auto handler, asio::any_io_executor ex, time_point at) {
          do_wait_until(std::move(ex), at,
                        asio::any_completion_handler<void(error_code)>(std::move(handler)));
        },
        token, std::move(ex), at);
  }

 protected:
  /// Implementations start the wait and complete `handler` as async_wait_until describes.
  virtual void do_wait_until(asio::any_io_executor ex, time_point at,
                             asio::any_completion_handler<void(error_code)> handler) = 0;
};

/// The real clock: std::chrono::system_clock for now(), Asio steady timers for waits.
class real_clock final : public clock {
 public:
  time_point now() const noexcept override { return std::chrono::system_clock::now(); }

 protected:
  void do_wait_until(asio::any_io_executor ex, time_point at,
                     asio::any_completion_handler<void(error_code)> handler) override;
};

/// The process-wide real clock, used when no clock is injected.
clock& default_clock() noexcept;

/// A clock that moves only when told to. Waits complete (posted to their executors) when
/// advance() or set() moves the time past their deadline. Thread-safe.
///
/// @code
/// taskq::manual_clock clk(taskq::time_point{} + 1000h);
/// clk.advance(5s);   // every wait due by now completes
/// @endcode
class manual_clock final : public clock {
 public:
  explicit manual_clock(time_point start = time_point{} + std::chrono::hours(24 * 365 * 56));
  ~manual_clock() override;

  time_point now() const noexcept override;

  /// Moves time forward by `d` and completes the waits that are due.
  void advance(duration d);

  /// Sets the time (never backwards) and completes the waits that are due.
  void set(time_point t);

  /// Number of waits not yet completed (tests use it to see that a component is idle).
  std::size_t pending_waits() const;

  /// The earliest pending deadline, if any.
  std::optional<time_point> next_deadline() const;

 protected:
  void do_wait_until(asio::any_io_executor ex, time_point at,
                     asio::any_completion_handler<void(error_code)> handler) override;

 private:
  struct waiter;
  void fire_due();
  void complete(std::unique_ptr<waiter> w, error_code ec);

  mutable std::mutex mutex_;
  time_point now_;
  std::uint64_t next_id_ = 0;
  std::multimap<time_point, std::pair<std::uint64_t, std::unique_ptr<waiter>>> waits_;
};

}  // namespace taskq
