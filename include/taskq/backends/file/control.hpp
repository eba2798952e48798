// taskq — the file backend's control channel: how a process other than the store's owner
// (the taskq CLI, `taskq serve`) gets writes into a store that a running application holds.
//
// The owner (the process holding DIR/LOCK) listens on a Unix domain socket DIR/control.sock,
// created mode 0600 inside the 0700 store directory and served on the owner's io_context
// (Asio local stream sockets; no thread is started). A peer whose effective uid (SO_PEERCRED)
// differs from the owner's is refused (errc::access_denied) before anything is read.
//
// Protocol: newline-delimited JSON, one request per line and one response line per request,
// in order, any number per connection. Requests and responses are the admin requests of
// taskq/admin.hpp (enqueue, cancel, retry, delete, prune, queue pause/resume, schedule
// pause/resume/remove/run), executed on the owner's backend exactly as the CLI executes them
// on a store it has locked. A request line longer than control_options::max_request_bytes
// gets an invalid_request response and the connection is closed; at most
// control_options::max_connections connections are served at once (more are closed at accept).
//
// Lifetime: the socket is created by backend::open() (after the lock is taken; a leftover
// socket file from a crashed owner is replaced) and removed by close(). A client that finds a
// socket file nobody listens on (connection refused: a crashed owner's) treats the store as
// unowned and takes the lock itself.
#pragma once

#include <taskq/admin.hpp>
#include <taskq/error.hpp>
#include <taskq/task.hpp>

#include <cstddef>
#include <filesystem>
#include <string>

namespace taskq {
class client;
class scheduler;
}  // namespace taskq

namespace taskq::file {

/// The control socket's file name inside a store directory.
inline constexpr const char* control_socket_name = "control.sock";

/// The control channel of an owning backend (backend_options::control).
struct control_options {
  /// Serve the channel. Off by default: its pending accept is outstanding work on the host's
  /// io_context, so io.run() would no longer return by itself while the backend is open (as
  /// with the PostgreSQL backend's listener), which would change existing hosts' shutdown.
  /// Turn it on where operators need `taskq cancel/retry/queue pause/...` against the live
  /// application; only the store owner's uid can connect.
  bool enabled = false;
  /// Longest request line accepted (bytes, without the newline).
  std::size_t max_request_bytes = 1024 * 1024;
  /// Connections served at once.
  std::size_t max_connections = 16;
};

/// A blocking client of a store's control channel (for tools; not for an io_context thread).
/// Not thread-safe.
class control_client {
 public:
  control_client() = default;
  ~control_client();
  control_client(const control_client&) = delete;
  control_client& operator=(const control_client&) = delete;

  /// Connects to the owner of the store in `dir`. Returns true when connected. Returns false
  /// with `ec` clear when no owner serves a channel: no socket file, or nobody listening on it
  /// (a stale socket of a crashed owner). Sets `ec` to errc::access_denied when the socket is
  /// not a socket owned by this user with mode 0600 (`detail` says which), errc::io_error for
  /// other failures.
  bool connect(const std::filesystem::path& dir, error_code& ec, std::string& detail);

  /// Sends one request, waits for its response. Errors: io_error (connection lost; detail),
  /// invalid_request (an unreadable response).
  json call(const json& request, error_code& ec, std::string& detail);

  bool connected() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
  std::string buffer_;
};

namespace detail {
class control_server;
/// The owner side (called by backend::open/close): serves DIR/control.sock on `target.ex`,
/// replacing a leftover socket file. Returns null and sets `detail` when it cannot (the path
/// is longer than a socket address holds, bind fails): the store still works, without the
/// channel.
std::shared_ptr<control_server> start_control(const std::filesystem::path& dir,
                                              const control_options& opts, admin_target target,
                                              std::string& detail);
/// Stops accepting, closes the connections (on the server's executor) and removes the socket
/// file (at once). Idempotent.
void stop_control(control_server& s) noexcept;
/// Requests arriving later go through `c` and `sched` (see backend::attach).
void attach_control(control_server& s, taskq::client* c, taskq::scheduler* sched) noexcept;
}  // namespace detail

}  // namespace taskq::file
