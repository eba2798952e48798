// taskq — the in-memory Backend: the memory Queue and Store behind the fused operations.
#pragma once

#include <taskq/backend.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>

namespace taskq::memory {

/// An in-memory queue and store whose hot-path operations are fused: an enqueue, a fetch
/// (when something is ready) and a complete each take both locks once, do their whole work
/// and complete once, with no Queue or Store operation in between. A fetch with nothing ready
/// waits through the queue's own reservation and claims when it is served. Thread-safe;
/// nothing survives the process.
///
/// @code
/// taskq::memory::backend b(io.get_executor());
/// taskq::client client(io.get_executor(), b);
/// @endcode
class backend final : public taskq::backend {
 public:
  /// @param ex   fallback executor for completions whose token has none, and for the queue's
  ///             timer (see memory::queue).
  /// @param clk  the time source (leases, delays, claims); must outlive the backend.
  explicit backend(asio::any_io_executor ex, clock& clk = default_clock());
  ~backend() override;

  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;

  taskq::queue& get_queue() noexcept override { return queue_; }
  taskq::store& get_store() noexcept override { return store_; }

 protected:
  void do_enqueue(enqueue_params p, handler<void(error_code)> h) override;
  void do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) override;
  void do_complete(complete_params p,
                   handler<void(error_code, std::vector<update_result>)> h) override;

 private:
  // Admits and claims what a reservation handed out, and completes the fetch.
  void claim_reserved(std::vector<lease> leases, const std::function<bool(const lease&)>& admit,
                      handler<void(error_code, fetch_result)> h);

  asio::any_io_executor ex_;
  clock& clk_;
  memory::queue queue_;
  memory::store store_;
};

}  // namespace taskq::memory
