// taskq — the in-memory Queue: priority + FIFO order, delays, leases, pause/resume.
// O(log n) per push, reserve (per task handed out), ack, extend and release.
#pragma once

#include <taskq/clock.hpp>
#include <taskq/queue.hpp>

#include <memory>

namespace taskq::memory {

/// An in-memory taskq::queue. Thread-safe. Nothing survives the process.
class queue final : public taskq::queue {
 public:
  /// @param ex   fallback executor for completions whose token has none, and for the timer
  ///             that wakes waiting reservations when a delay or a lease runs out.
  /// @param clk  the time source (leases, delays); must outlive the queue.
  explicit queue(asio::any_io_executor ex, clock& clk = default_clock());
  ~queue() override;

  queue(const queue&) = delete;
  queue& operator=(const queue&) = delete;

  bool is_paused(const std::string& queue_name) const override;

 protected:
  void do_push(push_params p, handler<void(error_code)> h) override;
  void do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) override;
  void do_ack(std::vector<lease> l, handler<void(error_code, std::size_t)> h) override;
  void do_extend(std::vector<lease> l, duration lease_for,
                 handler<void(error_code, std::vector<bool>)> h) override;
  void do_release(release_params p, handler<void(error_code)> h) override;
  void do_remove(std::string id, handler<void(error_code, bool)> h) override;
  void do_set_paused(std::string queue_name, bool paused, handler<void(error_code)> h) override;
  void do_stats(std::string queue_name, handler<void(error_code, queue_stats)> h) override;

 private:
  friend class backend;  // fuses its operations with the store's
  struct impl;
  std::shared_ptr<impl> impl_;  // shared: cancellation handlers and timers hold weak refs
};

}  // namespace taskq::memory
