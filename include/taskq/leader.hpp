// taskq — the leader election seam: which of several instances (schedulers) acts, one at a
// time, for a named role.
//
// Leadership is a lease: async_acquire asks "may holder `h` lead `name` until now + ttl?". It
// is granted when nobody holds the role, when `h` already holds it (a renewal), or when the
// previous holder's lease ran out. A holder that stops renewing loses the role when its lease
// expires; one that gives it up (async_release) lets another take it at once. Leases are read
// against the implementation's injected clock, so every participant must share one time source.
//
// A lease does not fence: a paused holder may act briefly after its lease ran out. The
// scheduler therefore also keeps the occurrence dedupe key; leadership only keeps the other
// instances from doing the same work.
#pragma once

#include <taskq/clock.hpp>
#include <taskq/detail/initiate.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>

namespace taskq {

/// The Leader Election interface. Thread-safe; completions on the token's associated executor,
/// never inline.
class leader_election {
 public:
  virtual ~leader_election() = default;

  /// Acquires or renews leadership of `name` for `holder` until now + `ttl` (`ttl` > 0).
  ///
  /// - Completion: `void(error_code, bool leader)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: none when another holder's lease is still running (leader is false);
  ///   the backend's I/O errors. On an error the caller must consider itself not the leader.
  /// - Lifetimes: arguments are moved into the operation; the election must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code, bool)> CompletionToken = asio::deferred_t>
  auto async_acquire(std::string name, std::string holder, duration ttl,
                     CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code, bool)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name), h = std::move(holder), ttl](auto handler) mutable {
          do_acquire(std::move(n), std::move(h), ttl, std::move(handler));
        });
  }

  /// Gives leadership of `name` up if `holder` has it (else does nothing).
  ///
  /// - Completion: `void(error_code)`.
  /// - Executor: the token's associated executor, else the backend's; never inline.
  /// - Cancellation: none.
  /// - Errors: the backend's I/O errors.
  /// - Lifetimes: arguments are moved into the operation; the election must outlive it.
  /// - Thread safety: any thread.
  template <asio::completion_token_for<void(error_code)> CompletionToken = asio::deferred_t>
  auto async_release(std::string name, std::string holder, CompletionToken&& token = {}) {
    return detail::initiate_erased<void(error_code)>(
        std::forward<CompletionToken>(token),
        [this, n = std::move(name), h = std::move(holder)](auto handler) mutable {
          do_release(std::move(n), std::move(h), std::move(handler));
        });
  }

 protected:
  template <class Sig>
  using handler = asio::any_completion_handler<Sig>;

  virtual void do_acquire(std::string name, std::string holder, duration ttl,
                          handler<void(error_code, bool)> h) = 0;
  virtual void do_release(std::string name, std::string holder, handler<void(error_code)> h) = 0;
};

namespace memory {

/// Leases in memory: for several instances in one process (and tests). Thread-safe.
class leader_election final : public taskq::leader_election {
 public:
  /// `time` must outlive the election.
  explicit leader_election(asio::any_io_executor ex, clock& time = default_clock());
  ~leader_election() override;

  /// The holder of `name` whose lease has not run out, or "" if none.
  std::string holder(const std::string& name) const;

 protected:
  void do_acquire(std::string name, std::string holder, duration ttl,
                  handler<void(error_code, bool)> h) override;
  void do_release(std::string name, std::string holder, handler<void(error_code)> h) override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace memory

}  // namespace taskq
