// taskq — the embeddable operations server: Prometheus `/metrics`, the JSON admin API under
// `/api/` and the web dashboard, over Boost.Beast on the host's io_context (no threads of its
// own). The API is documented in the README ("HTTP admin API").
//
// @code
// taskq::metrics_registry metrics;
// taskq::client client(io.get_executor(), q, s, {.metrics = &metrics});
// metrics.attach(client);
// taskq::http_server ops(io.get_executor(), {.client = &client, .scheduler = &sched,
//                                             .metrics = &metrics},
//                        {.port = 8080});
// ops.start();   // listens on 127.0.0.1:8080
// @endcode
#pragma once

#include <taskq/error.hpp>
#include <taskq/task.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace taskq {

namespace asio = boost::asio;

class client;
class scheduler;
class metrics_registry;

/// What a host auth hook sees of a request.
struct http_auth_request {
  std::string_view method{};
  std::string_view target{};         ///< path and query
  std::string_view authorization{};  ///< the Authorization header, as sent
  std::string_view remote_address{};
  bool state_changing = false;  ///< POST, PUT, PATCH or DELETE
};

struct http_server_options {
  /// Listen address: a loopback address unless the host knows better. "127.0.0.1" default.
  std::string address = "127.0.0.1";
  /// 0: an ephemeral port (read it back with port()).
  std::uint16_t port = 0;
  /// When set, every /api/ and /metrics request must carry `Authorization: Bearer <token>`
  /// (the dashboard asks for it once per browser tab). The static dashboard files are served
  /// without it.
  std::string bearer_token{};
  /// When set, called for every /api/ and /metrics request after the token check; false
  /// answers 403.
  std::function<bool(const http_auth_request&)> authorize{};
  /// Refuse every state-changing request (403).
  bool read_only = false;
  /// Host header values accepted besides the listen address and localhost at the bound port
  /// (a DNS-rebinding guard). E.g. "tasks.internal:8080".
  std::vector<std::string> allowed_hosts{};
  std::size_t max_body_bytes = 1 << 20;     ///< 413 beyond
  std::size_t max_header_bytes = 16 << 10;  ///< 431 beyond
  /// Time to read one request (headers and body; on a kept-alive connection, also the wait
  /// for it) and to write its response. 408 when a request started but did not finish.
  std::chrono::milliseconds request_timeout{30'000};
  std::size_t max_connections = 64;  ///< further connections are closed at once
  /// Serve the dashboard at `/`.
  bool dashboard = true;
  /// GET /api/tasks with `q=` examines at most this many records per page before it returns
  /// what it found with a cursor to continue.
  std::size_t search_scan_limit = 20'000;
  /// Throughput history: one point per interval (on the client's clock), this many kept.
  std::chrono::milliseconds history_interval{5'000};
  std::size_t history_points = 720;
  /// Bulk retry / delete by filter act on at most this many tasks per request.
  std::size_t max_bulk = 10'000;
};

/// What the server serves. `client` is required; the others are optional (their endpoints
/// answer 404 without them). All must outlive the server and its in-flight requests (stop()
/// it and let the io_context finish before destroying them).
struct http_server_sources {
  taskq::client* client = nullptr;
  taskq::scheduler* scheduler = nullptr;
  taskq::metrics_registry* metrics = nullptr;
};

/// Validates options and sources; the error names the field.
error_code validate(const http_server_options& o, const http_server_sources& s,
                    std::string* detail = nullptr);

/// The server. start() and stop() are thread-safe; requests are served on `ex` (the host's
/// io_context; several threads may run it).
class http_server {
 public:
  /// Throws taskq::error (errc::invalid_option, naming the field) on bad options.
  http_server(asio::any_io_executor ex, http_server_sources src, http_server_options opts = {});
  ~http_server();  ///< stops
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Binds and listens (blocking, returns at once after listen()). Errors: invalid_option
  /// (bad address), io_error (bind/listen failed: the detail says why), shutting_down (after
  /// stop()).
  void start(error_code& ec, std::string* detail = nullptr);
  void start();  ///< throwing form
  /// The bound port (after start()).
  std::uint16_t port() const noexcept;
  /// Closes the listener and every open connection; requests in flight are abandoned.
  void stop() noexcept;

  struct state;

 private:
  std::shared_ptr<state> state_;
};

namespace detail {
/// One embedded dashboard file (generated at build time from src/dashboard/).
struct embedded_file {
  std::string_view path;  ///< "/index.html", "/app.js", ...
  std::string_view content_type;
  std::string_view body;
};
extern const embedded_file dashboard_files[];
extern const std::size_t dashboard_file_count;
}  // namespace detail

}  // namespace taskq
