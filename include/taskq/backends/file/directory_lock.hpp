// taskq — exclusive ownership of a file-backend directory.
#pragma once

#include <taskq/error.hpp>

#include <filesystem>
#include <string>

namespace taskq::file {

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist. The mode is set
/// explicitly after creation, so the umask can neither widen nor narrow it. An existing
/// directory is left as it is. Errors: io_error with a detail naming the call and path.
void create_private_directory(const std::filesystem::path& dir, error_code& ec,
                              std::string* detail = nullptr);

/// An exclusive advisory lock on `DIR/LOCK`, held for the lifetime of the object.
///
/// Uses flock(LOCK_EX | LOCK_NB) on a file opened with O_CLOEXEC, so the lock is released
/// when the object is destroyed or the process dies, never leaks into exec'd programs, and
/// also excludes a second opener within the same process. The holder's pid is written into
/// the file (informational only: the lock, not the pid, is authoritative). Caveat of flock:
/// a child created by fork() inherits the descriptor and with it the lock until it exits
/// or execs.
///
/// Thread safety: distinct objects are independent; one object is not for concurrent use.
class directory_lock {
 public:
  /// Not holding anything.
  directory_lock() noexcept = default;
  directory_lock(directory_lock&& other) noexcept;
  directory_lock& operator=(directory_lock&& other) noexcept;
  directory_lock(const directory_lock&) = delete;
  directory_lock& operator=(const directory_lock&) = delete;
  /// Releases the lock.
  ~directory_lock();

  /// Creates `dir` if missing (mode 0700), creates `dir/LOCK` if missing (mode 0600) and
  /// takes the lock without blocking. Errors: store_locked if another holder has it (detail
  /// names the directory and the holder's pid when known), io_error otherwise.
  static directory_lock acquire(const std::filesystem::path& dir, error_code& ec,
                                std::string* detail = nullptr);
  /// Throwing form: throws taskq::error with the detail.
  static directory_lock acquire(const std::filesystem::path& dir);

  bool owns_lock() const noexcept { return fd_ >= 0; }
  const std::filesystem::path& directory() const noexcept { return dir_; }

  /// Releases the lock now (the LOCK file is left in place). Idempotent.
  void release() noexcept;

 private:
  int fd_ = -1;
  std::filesystem::path dir_;
};

}  // namespace taskq::file
