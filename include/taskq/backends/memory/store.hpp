// taskq — the in-memory Store: records in id (creation) order, O(log n) per operation.
#pragma once

#include <taskq/store.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <memory>

namespace taskq::memory {

/// An in-memory taskq::store. Thread-safe. Nothing survives the process.
class store final : public taskq::store {
 public:
  /// @param ex  fallback executor for completions whose token has none.
  explicit store(asio::any_io_executor ex);
  ~store() override;

  store(const store&) = delete;
  store& operator=(const store&) = delete;

  bool durable() const noexcept override { return false; }

 protected:
  void do_insert(std::vector<task_record> r, handler<void(error_code)> h) override;
  void do_get(std::string id, handler<void(error_code, task_record)> h) override;
  void do_claim(claim_params p, handler<void(error_code, claim_result)> h) override;
  void do_update(task_update u, handler<void(error_code, task_record)> h) override;
  void do_update_batch(std::vector<task_update> u,
                       handler<void(error_code, std::vector<update_result>)> h) override;
  void do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) override;
  void do_append_log(std::string id, log_entry e, handler<void(error_code)> h) override;
  void do_request_cancel(std::string id, time_point now,
                         handler<void(error_code, task_record)> h) override;
  void do_list(task_filter f, handler<void(error_code, task_page)> h) override;
  void do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) override;
  void do_prune(time_point finished_before, handler<void(error_code, std::size_t)> h) override;
  void do_counts(handler<void(error_code, task_counts)> h) override;

 private:
  friend class backend;  // fuses its operations with the queue's
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace taskq::memory
