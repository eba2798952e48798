// Internal: the one clock wait a backend keeps armed for its parked reservations (a delay or a
// lease running out), re-armable from any thread. The memory queue and the PostgreSQL backend
// share it.
//
// Why a strand: arm() runs under the owner's mutex on whatever thread called the owner, while
// the clock clears the wait's cancellation slot on the wait handler's executor. A cancellation
// signal is not thread-safe, so the wait and every emit live on a strand of their own.
#pragma once

#include <taskq/clock.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

namespace taskq::detail {

class backend_alarm : public std::enable_shared_from_this<backend_alarm> {
 public:
  /// `on_fire` runs on the alarm's strand, outside the alarm's lock, when an armed time
  /// passes; it must not outlive what it refers to (capture the owner weakly).
  static std::shared_ptr<backend_alarm> make(asio::any_io_executor ex, clock& clk,
                                             std::function<void()> on_fire) {
    return std::shared_ptr<backend_alarm>(
        new backend_alarm(asio::make_strand(ex), clk, std::move(on_fire)));
  }

  /// Moves the wait to `at`, or cancels it (nullopt). Any thread.
  void arm(std::optional<time_point> at) {
    std::lock_guard lock(mutex_);
    move_to(at);
  }

  /// Arms at `at` unless a wait at or before it is armed already. Any thread.
  void arm_by(time_point at) {
    std::lock_guard lock(mutex_);
    if (!at_ || at < *at_) move_to(at);
  }

  /// Cancels for good: a wait that fires later calls nothing (an `on_fire` already running
  /// may finish). Any thread.
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    move_to(std::nullopt);
  }

 private:
  backend_alarm(asio::strand<asio::any_io_executor> strand, clock& clk,
                std::function<void()> on_fire)
      : strand_(std::move(strand)), clk_(clk), on_fire_(std::move(on_fire)) {}

  void move_to(std::optional<time_point> at) {  // mutex_ held
    if (at == at_ || (closed_ && at)) return;
    const bool cancel_previous = at_.has_value();
    at_ = at;
    const auto gen = ++generation_;
    // The posted function and the wait hold the alarm: its signal must outlive the wait,
    // whose completion clears the slot.
    asio::post(strand_, [self = shared_from_this(), gen, at, cancel_previous] {
      if (cancel_previous) self->cancel_.emit(asio::cancellation_type::terminal);
      {
        std::lock_guard lock(self->mutex_);
        if (!at || gen != self->generation_) return;  // superseded meanwhile
      }
      self->clk_.async_wait_until(
          self->strand_, *at,
          asio::bind_cancellation_slot(
              self->cancel_.slot(), asio::bind_executor(self->strand_, [self, gen](error_code ec) {
                if (ec) return;
                {
                  std::lock_guard lock(self->mutex_);
                  if (gen != self->generation_) return;
                  self->at_.reset();
                }
                self->on_fire_();
              })));
    });
  }

  asio::strand<asio::any_io_executor> strand_;
  clock& clk_;
  std::function<void()> on_fire_;
  std::mutex mutex_;
  std::optional<time_point> at_;      // the armed time, guarded by mutex_
  std::uint64_t generation_ = 0;      // guarded by mutex_
  bool closed_ = false;               // guarded by mutex_
  asio::cancellation_signal cancel_;  // on strand_ only
};

}  // namespace taskq::detail
