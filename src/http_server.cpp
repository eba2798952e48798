// The operations server: Boost.Beast on the host's io_context, one coroutine per connection
// (on its own strand); the router, the JSON admin API, /metrics and the embedded dashboard.
#include <taskq/client.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/duration.hpp>
#include <taskq/http_server.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <list>
#include <mutex>
#include <sstream>
#include <string>

namespace taskq {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

error_code validate(const http_server_options& o, const http_server_sources& s,
                    std::string* detail) {
  auto bad = [&](std::string d) {
    if (detail) *detail = std::move(d);
    return error_code(errc::invalid_option);
  };
  if (!s.client) return bad("http_server_sources.client is required");
  boost::system::error_code ec;
  asio::ip::make_address(o.address, ec);
  if (ec)
    return bad(fmt::format("http_server_options.address '{}' is not an IP address", o.address));
  if (o.max_body_bytes == 0) return bad("http_server_options.max_body_bytes must be at least 1");
  if (o.max_header_bytes < 1024)
    return bad("http_server_options.max_header_bytes must be at least 1024");
  if (o.request_timeout <= std::chrono::milliseconds(0))
    return bad("http_server_options.request_timeout must be positive");
  if (o.max_connections == 0) return bad("http_server_options.max_connections must be at least 1");
  if (o.search_scan_limit == 0)
    return bad("http_server_options.search_scan_limit must be at least 1");
  if (o.history_interval < std::chrono::milliseconds(100))
    return bad("http_server_options.history_interval must be at least 100ms");
  if (o.history_points == 0) return bad("http_server_options.history_points must be at least 1");
  if (o.max_bulk == 0) return bad("http_server_options.max_bulk must be at least 1");
  return {};
}

namespace {

// --- small helpers ------------------------------------------------------------------------

/// An API error: HTTP status, the field at fault (may be empty) and a readable message.
struct api_error {
  int status = 400;
  std::string field{};
  std::string message{};
};

std::string iso(time_point t) {
  return format_time(t);
}
json opt_iso(const std::optional<time_point>& t) {
  return t ? json(iso(*t)) : json(nullptr);
}

std::string percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else if (s[i] == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    auto end = s.find(sep, start);
    if (end == std::string_view::npos) end = s.size();
    if (end > start) out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

using query_map = std::vector<std::pair<std::string, std::string>>;

query_map parse_query(std::string_view q) {
  query_map out;
  for (auto& part : split(q, '&')) {
    auto eq = part.find('=');
    if (eq == std::string::npos)
      out.emplace_back(percent_decode(part, true), "");
    else
      out.emplace_back(percent_decode(std::string_view(part).substr(0, eq), true),
                       percent_decode(std::string_view(part).substr(eq + 1), true));
  }
  return out;
}

/// ISO 8601 date or date-time (YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|+HH:MM|-HH:MM], UTC when no
/// offset) or Unix seconds.
std::optional<time_point> parse_time_arg(std::string_view s) {
  if (!s.empty() && s.size() <= 12 &&
      std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return time_point(std::chrono::seconds(std::stoll(std::string(s))));
  auto num = [&](std::size_t n, int& out) {
    if (s.size() < n) return false;
    out = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      out = out * 10 + (s[i] - '0');
    }
    s.remove_prefix(n);
    return true;
  };
  auto ch = [&](char c) {
    if (s.empty() || s.front() != c) return false;
    s.remove_prefix(1);
    return true;
  };
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (!num(4, y) || !ch('-') || !num(2, mo) || !ch('-') || !num(2, d)) return std::nullopt;
  std::chrono::microseconds frac{0};
  if (ch('T') || ch('t') || ch(' ')) {
    if (!num(2, h) || !ch(':') || !num(2, mi)) return std::nullopt;
    if (ch(':')) {
      if (!num(2, sec)) return std::nullopt;
      if (ch('.')) {
        std::int64_t scale = 100'000;
        if (s.empty() || s.front() < '0' || s.front() > '9') return std::nullopt;
        while (!s.empty() && s.front() >= '0' && s.front() <= '9') {
          frac += std::chrono::microseconds((s.front() - '0') * scale);
          scale /= 10;
          s.remove_prefix(1);
        }
      }
    }
  }
  std::chrono::minutes offset{0};
  if (ch('Z') || ch('z')) {
  } else if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    const int sign = s.front() == '-' ? -1 : 1;
    s.remove_prefix(1);
    int oh = 0, om = 0;
    if (!num(2, oh) || !ch(':') || !num(2, om)) return std::nullopt;
    offset = std::chrono::minutes(sign * (oh * 60 + om));
  }
  if (!s.empty() || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year(y), std::chrono::month(unsigned(mo)),
                                        std::chrono::day(unsigned(d))};
  if (!ymd.ok()) return std::nullopt;
  auto t = std::chrono::sys_days(ymd) + std::chrono::hours(h) + std::chrono::minutes(mi) +
           std::chrono::seconds(sec) + frac - offset;
  return std::chrono::time_point_cast<duration>(t);
}

bool icontains(std::string_view hay, std::string_view needle) {
  if (needle.empty()) return true;
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) ==
           std::tolower(static_cast<unsigned char>(b));
  });
  return it != hay.end();
}

json task_json(const task_record& r, bool full) {
  json j = {
      {"id", r.id},
      {"type", r.type},
      {"queue", r.queue},
      {"status", to_string(r.status)},
      {"priority", r.priority},
      {"attempt", r.attempt},
      {"max_attempts", r.max_attempts},
      {"progress", r.progress},
      {"last_error", r.last_error},
      {"labels", r.labels},
      {"cancel_requested", r.cancel_requested},
      {"created_at", iso(r.created_at)},
      {"updated_at", iso(r.updated_at)},
      {"available_at", iso(r.available_at)},
      {"started_at", opt_iso(r.started_at)},
      {"finished_at", opt_iso(r.finished_at)},
      {"heartbeat_at", opt_iso(r.heartbeat_at)},
      {"scheduled_for", opt_iso(r.scheduled_for)},
  };
  if (full) {
    j["payload"] = r.payload;
    j["metadata"] = r.metadata;
    j["result"] = r.result;
    j["concurrency_key"] = r.concurrency_key;
    j["unique_key"] = r.unique_key;
    j["timeout_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(r.timeout).count();
    json log = json::array();
    for (auto& e : r.log) log.push_back({{"at", iso(e.at)}, {"message", e.message}});
    j["log"] = std::move(log);
  }
  return j;
}

json counts_json(const task_counts::by_status& row) {
  json j = json::object();
  for (std::size_t i = 0; i < task_status_count; ++i)
    j[std::string(to_string(static_cast<task_status>(i)))] = row[i];
  return j;
}

double ms(duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

json schedule_json(const schedule_info& i) {
  const auto& d = i.definition;
  json j = {
      {"name", d.name},
      {"type", d.task.type},
      {"queue", d.task.queue},
      {"cron", d.cron},
      {"time_zone", d.time_zone},
      {"every_ms", std::chrono::duration_cast<std::chrono::milliseconds>(d.every).count()},
      {"at", opt_iso(d.at)},
      {"paused", d.paused},
      {"next_due", opt_iso(i.next_due)},
      {"last_fired", opt_iso(i.last_fired)},
      {"last_run_id", i.last_run_id},
      {"last_run_status",
       i.last_run_status ? json(std::string(to_string(*i.last_run_status))) : json(nullptr)},
      {"last_error", i.last_error},
      {"active_runs", i.active_runs},
      {"held_back", i.held_back},
      {"counts",
       {{"fired", i.counts.fired},
        {"deduplicated", i.counts.deduplicated},
        {"skipped", i.counts.skipped},
        {"manual", i.counts.manual},
        {"errors", i.counts.errors}}},
  };
  return j;
}

/// Maps a taskq error to an HTTP status.
int status_of(error_code ec) {
  if (ec.category() != category()) return 500;
  switch (static_cast<errc>(ec.value())) {
    case errc::not_found:
    case errc::schedule_not_found:
      return 404;
    case errc::illegal_transition:
    case errc::status_conflict:
    case errc::duplicate_id:
    case errc::duplicate_unique_key:
      return 409;
    case errc::store_closed:
    case errc::store_locked:
    case errc::backend_unavailable:
    case errc::shutting_down:
      return 503;
    case errc::io_error:
    case errc::disk_full:
    case errc::corrupt_journal:
      return 500;
    default:
      return ec.value() < 100 ? 400 : 500;
  }
}

// Security headers on every response: no sniffing, no framing, scripts and styles only from
// this server (the dashboard has no inline script), nothing cached.
void common_headers(response& res) {
  res.set(http::field::server, "taskq");
  res.set("X-Content-Type-Options", "nosniff");
  res.set("X-Frame-Options", "DENY");
  res.set("Referrer-Policy", "no-referrer");
  res.set("Content-Security-Policy",
          "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  res.set(http::field::cache_control, "no-store");
}

response json_response(const request& req, int status, const json& body) {
  response res{static_cast<http::status>(status), req.version()};
  common_headers(res);
  res.set(http::field::content_type, "application/json; charset=utf-8");
  // error_handler::replace: a payload with invalid UTF-8 still renders.
  res.body() = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return res;
}

response error_response(const request& req, const api_error& e) {
  json j = {{"error", {{"status", e.status}, {"message", e.message}}}};
  if (!e.field.empty()) j["error"]["field"] = e.field;
  return json_response(req, e.status, j);
}

api_error from_ec(error_code ec, std::string field = {}, std::string what = {}) {
  api_error e{status_of(ec), std::move(field), ec.message()};
  if (!what.empty()) e.message = what + ": " + e.message;
  return e;
}

}  // namespace

// --- state --------------------------------------------------------------------------------

struct http_server::state : std::enable_shared_from_this<http_server::state> {
  asio::any_io_executor ex;
  http_server_sources src;
  http_server_options opts;
  // The acceptor and the history timer live on this strand (the io_context may have several
  // threads); each connection has a strand of its own.
  asio::strand<asio::any_io_executor> strand;
  tcp::acceptor acceptor;
  std::uint16_t bound_port = 0;

  std::mutex mutex;
  bool started = false, stopped = false;
  std::list<std::pair<asio::strand<asio::any_io_executor>, std::weak_ptr<beast::tcp_stream>>> conns;
  std::size_t open = 0;

  // Throughput history: one point per interval (deltas of the client's counters).
  struct point {
    time_point at;
    std::uint64_t enqueued, succeeded, failed;
    std::size_t pending, running;
  };
  std::deque<point> history;
  std::optional<metrics_snapshot> last;
  asio::cancellation_signal history_cancel;

  state(asio::any_io_executor e, http_server_sources s, http_server_options o)
      : ex(std::move(e)), src(s), opts(std::move(o)), strand(ex), acceptor(strand) {}

  // --- history ---

  void sample() {
    src.client->async_metrics([self = shared_from_this()](error_code ec, metrics_snapshot m) {
      if (ec) return self->schedule_sample();
      std::lock_guard lock(self->mutex);
      if (self->stopped) return;
      if (self->last) {
        point p{self->src.client->time().now(),
                m.enqueued - self->last->enqueued,
                m.succeeded - self->last->succeeded,
                m.failed - self->last->failed,
                m.counts.total[static_cast<std::size_t>(task_status::pending)],
                m.counts.total[static_cast<std::size_t>(task_status::running)]};
        self->history.push_back(p);
        while (self->history.size() > self->opts.history_points) self->history.pop_front();
      }
      self->last = std::move(m);
      asio::post(self->strand, [self] { self->schedule_sample(); });
    });
  }

  void schedule_sample() {
    {
      std::lock_guard lock(mutex);
      if (stopped) return;
    }
    auto& clk = src.client->time();
    clk.async_wait_until(
        ex, clk.now() + opts.history_interval,
        asio::bind_cancellation_slot(
            history_cancel.slot(),
            asio::bind_executor(strand, [self = shared_from_this()](error_code ec) {
              if (!ec) self->sample();
            })));
  }

  // --- connections ---

  void accept_loop() {
    acceptor.async_accept(asio::make_strand(ex),
                          [self = shared_from_this()](boost::system::error_code ec, tcp::socket s) {
                            if (ec == asio::error::operation_aborted) return;
                            {
                              std::lock_guard lock(self->mutex);
                              if (self->stopped) return;
                            }
                            if (!ec) self->start_session(std::move(s));
                            self->accept_loop();
                          });
  }

  void start_session(tcp::socket s) {
    auto strand = asio::strand<asio::any_io_executor>(s.get_executor());
    auto stream = std::make_shared<beast::tcp_stream>(std::move(s));
    {
      std::lock_guard lock(mutex);
      if (open >= opts.max_connections) {
        boost::system::error_code ignored;
        stream->socket().close(ignored);
        return;
      }
      ++open;
      std::erase_if(conns, [](auto& c) { return c.second.expired(); });
      conns.emplace_back(strand, stream);
    }
    asio::co_spawn(strand, session(shared_from_this(), stream),
                   [self = shared_from_this()](std::exception_ptr) {
                     std::lock_guard lock(self->mutex);
                     --self->open;
                   });
  }

  static awaitable<void> session(std::shared_ptr<state> self,
                                 std::shared_ptr<beast::tcp_stream> stream) {
    beast::flat_buffer buffer;
    boost::system::error_code ignored;
    std::string remote;
    {
      auto ep = stream->socket().remote_endpoint(ignored);
      if (!ignored) remote = ep.address().to_string();
    }
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(self->opts.max_body_bytes);
      parser.header_limit(static_cast<std::uint32_t>(self->opts.max_header_bytes));
      stream->expires_after(self->opts.request_timeout);
      auto [ec, n] = co_await http::async_read(*stream, buffer, parser, use_tuple);
      (void)n;
      if (ec) {
        request dummy;
        dummy.version(11);
        std::optional<api_error> e;
        if (ec == http::error::body_limit)
          e = api_error{413, "body",
                        fmt::format("request body is larger than the limit of {} bytes",
                                    self->opts.max_body_bytes)};
        else if (ec == http::error::header_limit)
          e = api_error{431, "headers",
                        fmt::format("request headers are larger than the limit of {} bytes",
                                    self->opts.max_header_bytes)};
        else if (ec.category() == error_code(http::error::bad_target).category() &&
                 ec != http::error::end_of_stream && ec != http::error::partial_message)
          e = api_error{400, "request", "malformed HTTP request: " + ec.message()};
        else if (ec == beast::error::timeout && parser.got_some())
          e = api_error{408, "request", "request not received within the time limit"};
        if (e) {
          auto res = error_response(dummy, *e);
          res.keep_alive(false);
          res.prepare_payload();
          stream->expires_after(self->opts.request_timeout);
          co_await http::async_write(*stream, res, use_tuple);
        }
        break;
      }
      request req = parser.release();
      response res = co_await self->handle(req, remote);
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      stream->expires_after(self->opts.request_timeout);
      auto [wec, wn] = co_await http::async_write(*stream, res, use_tuple);
      (void)wn;
      if (wec || !req.keep_alive()) break;
    }
    stream->socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream->socket().close(ignored);
  }

  // --- checks ---

  bool host_allowed(std::string_view host) const {
    auto port = std::to_string(bound_port);
    std::vector<std::string> ok = {opts.address + ":" + port, "localhost:" + port,
                                   "127.0.0.1:" + port, "[::1]:" + port};
    if (opts.address.find(':') != std::string::npos) ok.push_back("[" + opts.address + "]:" + port);
    for (auto& h : opts.allowed_hosts) ok.push_back(h);
    return std::find(ok.begin(), ok.end(), host) != ok.end();
  }

  std::optional<api_error> check(const request& req, std::string_view path,
                                 const std::string& remote, bool state_changing) const {
    std::string_view host = req[http::field::host];
    if (!host_allowed(host))
      return api_error{421, "Host", fmt::format("Host '{}' is not served here", host)};
    const bool protected_path = path == "/metrics" || path.rfind("/api/", 0) == 0;
    if (!protected_path) return std::nullopt;
    if (!opts.bearer_token.empty()) {
      std::string_view auth = req[http::field::authorization];
      if (auth != "Bearer " + opts.bearer_token)
        return api_error{
            401, "Authorization",
            auth.empty() ? "a bearer token is required" : "the bearer token is not valid"};
    }
    if (opts.authorize) {
      http_auth_request a{std::string_view(req.method_string()), std::string_view(req.target()),
                          std::string_view(req[http::field::authorization]), remote,
                          state_changing};
      if (!opts.authorize(a)) return api_error{403, "", "refused by the host's auth hook"};
    }
    if (state_changing) {
      if (opts.read_only) return api_error{403, "", "this server is read-only"};
      // Same-origin: a page on another site must not be able to trigger actions.
      std::string_view site = req["Sec-Fetch-Site"];
      if (!site.empty() && site != "same-origin" && site != "none")
        return api_error{403, "Sec-Fetch-Site",
                         fmt::format("cross-site request refused (Sec-Fetch-Site: {})", site)};
      std::string_view origin = req[http::field::origin];
      if (!origin.empty() && origin != "http://" + std::string(host))
        return api_error{403, "Origin",
                         fmt::format("cross-origin request refused (Origin: {})", origin)};
    }
    return std::nullopt;
  }

  // --- routing ---

  awaitable<response> handle(const request& req, const std::string& remote) {
    std::string_view target = req.target();
    auto qpos = target.find('?');
    std::string path = percent_decode(target.substr(0, qpos), false);
    query_map query =
        qpos == std::string_view::npos ? query_map{} : parse_query(target.substr(qpos + 1));
    const auto m = req.method();
    const bool state_changing = m == http::verb::post || m == http::verb::put ||
                                m == http::verb::patch || m == http::verb::delete_;
    if (auto e = check(req, path, remote, state_changing)) co_return error_response(req, *e);
    try {
      co_return co_await route(req, path, query);
    } catch (const api_error& e) {
      co_return error_response(req, e);
    } catch (const std::exception& e) {
      co_return error_response(req, {500, "", std::string("internal error: ") + e.what()});
    }
  }

  static void require_method(const request& req, http::verb v) {
    if (req.method() != v)
      throw api_error{
          405, "method",
          fmt::format("method {} is not allowed here (use {})", std::string(req.method_string()),
                      std::string(http::to_string(v)))};
  }

  awaitable<response> route(const request& req, const std::string& path, const query_map& q) {
    auto seg = split(path, '/');
    if (path == "/metrics") {
      require_method(req, http::verb::get);
      if (!src.metrics) throw api_error{404, "", "no metrics registry is attached"};
      auto [ec, text] = co_await src.metrics->async_scrape(ex, use_tuple);
      response res{http::status::ok, req.version()};
      common_headers(res);
      res.set(http::field::content_type, prometheus_content_type);
      res.body() = std::move(text);
      co_return res;
    }
    if (seg.empty() || seg[0] != "api") co_return static_file(req, path);
    if (seg.size() == 2 && seg[1] == "overview") co_return co_await overview(req);
    if (seg.size() == 2 && seg[1] == "history") {
      require_method(req, http::verb::get);
      co_return history_json(req);
    }
    if (seg.size() >= 2 && seg[1] == "tasks") {
      if (seg.size() == 2) {
        if (req.method() == http::verb::post) co_return co_await enqueue(req);
        require_method(req, http::verb::get);
        co_return co_await list_tasks(req, q);
      }
      if (seg.size() == 3 && (seg[2] == "bulk-retry" || seg[2] == "bulk-delete")) {
        require_method(req, http::verb::post);
        co_return co_await bulk(req, q, seg[2] == "bulk-retry");
      }
      const auto& id = seg[2];
      if (seg.size() == 3) {
        if (req.method() == http::verb::delete_) co_return co_await delete_task(req, id);
        require_method(req, http::verb::get);
        auto [ec, r] = co_await src.client->async_get(id, use_tuple);
        if (ec) throw from_ec(ec, "id", fmt::format("task '{}'", id));
        co_return json_response(req, 200, task_json(r, true));
      }
      if (seg.size() == 4 && (seg[3] == "cancel" || seg[3] == "retry")) {
        require_method(req, http::verb::post);
        // (No co_await inside ?: — GCC 12 miscompiles it.)
        std::tuple<error_code, task_record> out;
        if (seg[3] == "cancel")
          out = co_await src.client->async_cancel(id, use_tuple);
        else
          out = co_await src.client->async_retry(id, use_tuple);
        auto& [ec, r] = out;
        if (ec) throw from_ec(ec, "id", fmt::format("{} task '{}'", seg[3], id));
        co_return json_response(req, 200, task_json(r, true));
      }
    }
    if (seg.size() >= 2 && seg[1] == "queues") {
      if (seg.size() == 2) {
        require_method(req, http::verb::get);
        co_return co_await queues(req);
      }
      if (seg.size() == 4 && (seg[3] == "pause" || seg[3] == "resume")) {
        require_method(req, http::verb::post);
        auto [ec] = co_await src.client->async_set_paused(seg[2], seg[3] == "pause", use_tuple);
        if (ec) throw from_ec(ec, "name", fmt::format("{} queue '{}'", seg[3], seg[2]));
        co_return json_response(req, 200, {{"name", seg[2]}, {"paused", seg[3] == "pause"}});
      }
    }
    if (seg.size() >= 2 && seg[1] == "schedules") {
      if (!src.scheduler) throw api_error{404, "", "no scheduler is attached"};
      if (seg.size() == 2) {
        require_method(req, http::verb::get);
        json out = json::array();
        for (auto& i : src.scheduler->list()) out.push_back(schedule_json(i));
        co_return json_response(req, 200, {{"schedules", out}});
      }
      if (seg.size() == 4 && (seg[3] == "pause" || seg[3] == "resume" || seg[3] == "run")) {
        require_method(req, http::verb::post);
        const auto& name = seg[2];
        if (seg[3] == "run") {
          auto [ec, id] = co_await src.scheduler->async_run_now(name, use_tuple);
          if (ec) throw from_ec(ec, "name", fmt::format("run schedule '{}'", name));
          co_return json_response(req, 200, {{"name", name}, {"id", id}});
        }
        std::tuple<error_code> out;
        if (seg[3] == "pause")
          out = co_await src.scheduler->async_pause(name, use_tuple);
        else
          out = co_await src.scheduler->async_resume(name, use_tuple);
        auto [ec] = out;
        if (ec) throw from_ec(ec, "name", fmt::format("{} schedule '{}'", seg[3], name));
        auto info = src.scheduler->info(name);
        co_return json_response(req, 200, info ? schedule_json(*info) : json{{"name", name}});
      }
    }
    throw api_error{404, "path",
                    fmt::format("no such resource: {} {}", std::string(req.method_string()), path)};
  }

  response static_file(const request& req, const std::string& path) {
    if (!opts.dashboard) throw api_error{404, "path", "the dashboard is disabled"};
    require_method(req, http::verb::get);
    std::string p = path == "/" ? "/index.html" : path;
    for (std::size_t i = 0; i < detail::dashboard_file_count; ++i) {
      const auto& f = detail::dashboard_files[i];
      if (f.path != p) continue;
      response res{http::status::ok, req.version()};
      common_headers(res);
      res.set(http::field::content_type, f.content_type);
      res.body() = std::string(f.body);
      return res;
    }
    throw api_error{404, "path", fmt::format("no such file: {}", path)};
  }

  // --- API ---

  awaitable<response> overview(const request& req) {
    require_method(req, http::verb::get);
    auto [ec, m] = co_await src.client->async_metrics(use_tuple);
    if (ec) throw from_ec(ec, "", "read counts");
    json by_queue = json::object(), by_type = json::object();
    for (auto& [k, row] : m.counts.by_queue) by_queue[k] = counts_json(row);
    for (auto& [k, row] : m.counts.by_type) by_type[k] = counts_json(row);
    json j = {
        {"now", iso(src.client->time().now())},
        {"read_only", opts.read_only},
        {"counts",
         {{"total", counts_json(m.counts.total)}, {"by_queue", by_queue}, {"by_type", by_type}}},
        {"counters",
         {{"enqueued", m.enqueued},
          {"started", m.started},
          {"succeeded", m.succeeded},
          {"failed", m.failed},
          {"retried", m.retried},
          {"cancelled", m.cancelled},
          {"dropped", m.dropped}}},
        {"latency_ms",
         {{"wait_p50", ms(m.enqueue_to_start.p50)},
          {"wait_p99", ms(m.enqueue_to_start.p99)},
          {"run_p50", ms(m.run_duration.p50)},
          {"run_p99", ms(m.run_duration.p99)}}},
        {"schedules", src.scheduler ? json(src.scheduler->list().size()) : json(nullptr)},
    };
    co_return json_response(req, 200, j);
  }

  response history_json(const request& req) {
    json pts = json::array();
    {
      std::lock_guard lock(mutex);
      for (auto& p : history)
        pts.push_back({{"at", iso(p.at)},
                       {"enqueued", p.enqueued},
                       {"succeeded", p.succeeded},
                       {"failed", p.failed},
                       {"pending", p.pending},
                       {"running", p.running}});
    }
    return json_response(req, 200,
                         {{"interval_ms", opts.history_interval.count()}, {"points", pts}});
  }

  struct parsed_filter {
    task_filter f;
    std::string text;
    bool any = false;  // some narrowing field given
  };

  static parsed_filter parse_filter(const query_map& q) {
    parsed_filter out;
    out.f.limit = 50;
    for (auto& [k, v] : q) {
      if (k == "status") {
        for (auto& s : split(v, ',')) {
          error_code ec;
          auto st = parse_status(s, ec);
          if (!st)
            throw api_error{400, "status",
                            fmt::format("status '{}' is not one of pending, running, succeeded, "
                                        "failed, cancelled, dropped",
                                        s)};
          out.f.statuses.push_back(*st);
        }
        out.any = true;
      } else if (k == "type") {
        for (auto& s : split(v, ',')) out.f.types.push_back(s);
        out.any = true;
      } else if (k == "queue") {
        for (auto& s : split(v, ',')) out.f.queues.push_back(s);
        out.any = true;
      } else if (k == "label") {
        auto eq = v.find('=');
        if (eq == std::string::npos || eq == 0)
          throw api_error{400, "label", fmt::format("label '{}' must be key=value", v)};
        out.f.labels[v.substr(0, eq)] = v.substr(eq + 1);
        out.any = true;
      } else if (k == "created_after" || k == "created_before") {
        auto t = parse_time_arg(v);
        if (!t)
          throw api_error{400, k,
                          fmt::format("{} '{}' is not an ISO 8601 time (2026-01-31T12:00:00Z) "
                                      "or Unix seconds",
                                      k, v)};
        (k == "created_after" ? out.f.created_after : out.f.created_before) = *t;
        out.any = true;
      } else if (k == "q") {
        out.text = v;
        out.any = out.any || !v.empty();
      } else if (k == "cursor") {
        out.f.after_id = v;
      } else if (k == "limit") {
        std::size_t n = 0;
        auto [p, e] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (e != std::errc() || p != v.data() + v.size() || n < 1 || n > 1000)
          throw api_error{400, "limit",
                          fmt::format("limit '{}' must be a number from 1 to 1000", v)};
        out.f.limit = n;
      } else if (k == "id") {
        for (auto& s : split(v, ',')) out.f.ids.push_back(s);
        out.any = true;
      } else {
        throw api_error{400, k,
                        fmt::format("unknown query parameter '{}' (known: status, type, queue, "
                                    "label, created_after, created_before, q, cursor, limit, id)",
                                    k)};
      }
    }
    return out;
  }

  static bool text_matches(const task_record& r, const std::string& text) {
    if (text.empty()) return true;
    auto dump = [](const json& j) {
      return j.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    return icontains(r.id, text) || icontains(dump(r.payload), text) ||
           icontains(dump(r.metadata), text);
  }

  /// Pages through the store with the filter, keeping records that match the text, until
  /// `want` are found, the store is exhausted or the scan limit is reached.
  awaitable<std::tuple<std::vector<task_record>, std::string, std::size_t>> scan(parsed_filter pf,
                                                                                 std::size_t want) {
    std::vector<task_record> found;
    std::size_t scanned = 0;
    std::string cursor = pf.f.after_id;
    for (;;) {
      task_filter f = pf.f;
      f.after_id = cursor;
      f.limit = pf.text.empty() ? want - found.size()
                                : std::min<std::size_t>(500, opts.search_scan_limit - scanned);
      auto [ec, page] = co_await src.client->async_list(f, use_tuple);
      if (ec) throw from_ec(ec, "", "list tasks");
      for (auto& r : page.records) {
        ++scanned;
        cursor = r.id;
        if (text_matches(r, pf.text)) found.push_back(std::move(r));
        if (found.size() >= want) break;
      }
      if (page.next_cursor.empty() && found.size() < want) cursor.clear();
      if (cursor.empty() || found.size() >= want || scanned >= opts.search_scan_limit) break;
    }
    co_return std::tuple{std::move(found), cursor, scanned};
  }

  awaitable<response> list_tasks(const request& req, const query_map& q) {
    auto pf = parse_filter(q);
    auto want = pf.f.limit;
    auto [found, cursor, scanned] = co_await scan(pf, want);
    json tasks = json::array();
    for (auto& r : found) tasks.push_back(task_json(r, false));
    co_return json_response(req, 200,
                            {{"tasks", tasks}, {"next_cursor", cursor}, {"scanned", scanned}});
  }

  awaitable<response> delete_task(const request& req, const std::string& id) {
    task_filter f;
    f.ids = {id};
    auto [ec, ids] = co_await src.client->async_remove(f, use_tuple);
    if (ec) throw from_ec(ec, "id", fmt::format("delete task '{}'", id));
    if (ids.empty()) {
      auto [gec, r] = co_await src.client->async_get(id, use_tuple);
      if (gec) throw from_ec(gec, "id", fmt::format("task '{}'", id));
      throw api_error{409, "id", fmt::format("task '{}' is running; cancel it first", id)};
    }
    co_return json_response(req, 200, {{"deleted", ids}});
  }

  awaitable<response> bulk(const request& req, const query_map& q, bool retry) {
    auto pf = parse_filter(q);
    if (!pf.any)
      throw api_error{400, "filter",
                      "a bulk action needs a filter: one of status, type, queue, label, "
                      "created_after, created_before, q, id"};
    pf.f.after_id.clear();
    auto [found, cursor, scanned] = co_await scan(pf, opts.max_bulk);
    json done = json::array(), failed = json::array();
    if (retry) {
      for (auto& r : found) {
        auto [ec, after] = co_await src.client->async_retry(r.id, use_tuple);
        if (ec)
          failed.push_back({{"id", r.id}, {"message", ec.message()}});
        else
          done.push_back(r.id);
      }
    } else {
      task_filter f;
      for (auto& r : found) f.ids.push_back(r.id);
      if (!f.ids.empty()) {
        auto [ec, ids] = co_await src.client->async_remove(f, use_tuple);
        if (ec) throw from_ec(ec, "", "delete tasks");
        for (auto& id : ids) done.push_back(id);
        for (auto& r : found)
          if (std::find(ids.begin(), ids.end(), r.id) == ids.end())
            failed.push_back({{"id", r.id}, {"message", "running; cancel it first"}});
      }
    }
    co_return json_response(
        req, 200,
        {{retry ? "retried" : "deleted", done}, {"failed", failed}, {"more", !cursor.empty()}});
  }

  awaitable<response> enqueue(const request& req) {
    taskq::detail::json_text_error bad;  // depth first: nothing recursive may see a deep document
    auto body = taskq::detail::parse_json_text(req.body(), json_depth_ceiling, bad);
    if (bad == taskq::detail::json_text_error::too_deep)
      throw api_error{400, "body",
                      fmt::format("the body is nested deeper than {} levels", json_depth_ceiling)};
    if (bad != taskq::detail::json_text_error::none || !body.is_object())
      throw api_error{400, "body", "the body must be a JSON object (a task spec)"};
    task_spec s;
    static const std::vector<std::string> known = {
        "type",         "queue",   "payload", "metadata",        "priority",   "delay", "run_at",
        "max_attempts", "timeout", "labels",  "concurrency_key", "unique_key", "id"};
    for (auto& [k, v] : body.items())
      if (std::find(known.begin(), known.end(), k) == known.end())
        throw api_error{400, k, fmt::format("unknown task field '{}'", k)};
    auto str = [&](const char* k, std::string& out) {
      if (!body.contains(k)) return;
      if (!body[k].is_string()) throw api_error{400, k, fmt::format("'{}' must be a string", k)};
      out = body[k].get<std::string>();
    };
    auto integer = [&](const char* k, int& out) {
      if (!body.contains(k)) return;
      if (!body[k].is_number_integer())
        throw api_error{400, k, fmt::format("'{}' must be an integer", k)};
      out = body[k].get<int>();
    };
    auto dur = [&](const char* k, duration& out) {
      if (!body.contains(k)) return;
      const auto& v = body[k];
      if (v.is_number()) {
        out = std::chrono::duration_cast<duration>(std::chrono::duration<double>(v.get<double>()));
        return;
      }
      error_code ec;
      if (v.is_string()) {
        auto d = parse_duration(v.get<std::string>(), ec);
        if (!ec) {
          out = d;
          return;
        }
      }
      throw api_error{400, k, fmt::format("'{}' must be seconds or a duration like \"90s\"", k)};
    };
    str("type", s.type);
    str("queue", s.queue);
    if (body.contains("payload")) s.payload = body["payload"];
    if (body.contains("metadata")) s.metadata = body["metadata"];
    integer("priority", s.priority);
    integer("max_attempts", s.max_attempts);
    dur("delay", s.delay);
    dur("timeout", s.timeout);
    str("concurrency_key", s.concurrency_key);
    str("unique_key", s.unique_key);
    str("id", s.id);
    if (body.contains("run_at")) {
      auto t = body["run_at"].is_string()
                   ? parse_time_arg(body["run_at"].get_ref<const std::string&>())
                   : std::nullopt;
      if (!t) throw api_error{400, "run_at", "'run_at' must be an ISO 8601 time"};
      s.run_at = *t;
    }
    if (body.contains("labels")) {
      const auto& l = body["labels"];
      if (!l.is_object()) throw api_error{400, "labels", "'labels' must be an object of strings"};
      for (auto& [k, v] : l.items()) {
        if (!v.is_string())
          throw api_error{400, "labels", fmt::format("label '{}' must be a string", k)};
        s.labels[k] = v.get<std::string>();
      }
    }
    auto [ec, id] = co_await src.client->async_enqueue(std::move(s), use_tuple);
    if (ec) throw from_ec(ec, "", "enqueue");
    co_return json_response(req, 201, {{"id", id}});
  }

  awaitable<response> queues(const request& req) {
    auto [ec, m] = co_await src.client->async_metrics(use_tuple);
    if (ec) throw from_ec(ec, "", "read counts");
    // Mean wait per queue from the registry's histograms, when one is attached.
    std::map<std::string, std::pair<double, std::uint64_t>> wait;
    if (src.metrics)
      for (auto& f : src.metrics->collect_fed())
        if (f.name == "taskq_task_wait_seconds")
          for (auto& s : f.series) {
            auto& w = wait[s.labels.at(0).second];
            w.first += s.value;
            w.second += s.count;
          }
    json out = json::array();
    for (auto& [name, row] : m.counts.by_queue) {
      auto [sec, st] = co_await src.client->get_queue().async_stats(name, use_tuple);
      task_filter f;
      f.queues = {name};
      f.statuses = {task_status::pending};
      f.limit = 1;
      auto [lec, page] = co_await src.client->async_list(f, use_tuple);
      json q = {
          {"name", name},
          {"paused", src.client->get_queue().is_paused(name)},
          {"counts", counts_json(row)},
          {"ready", sec ? json(nullptr) : json(st.ready)},
          {"delayed", sec ? json(nullptr) : json(st.delayed)},
          {"leased", sec ? json(nullptr) : json(st.leased)},
          {"oldest_pending_age_s",
           (!lec && !page.records.empty())
               ? json(std::chrono::duration<double>(src.client->time().now() -
                                                    page.records.front().created_at)
                          .count())
               : json(nullptr)},
      };
      auto w = wait.find(name);
      q["mean_wait_ms"] = w != wait.end() && w->second.second
                              ? json(w->second.first * 1000 / double(w->second.second))
                              : json(nullptr);
      out.push_back(std::move(q));
    }
    co_return json_response(req, 200, {{"queues", out}});
  }
};

// --- http_server --------------------------------------------------------------------------

http_server::http_server(asio::any_io_executor ex, http_server_sources src,
                         http_server_options opts) {
  std::string detail;
  if (auto ec = validate(opts, src, &detail)) throw error(ec, detail);
  state_ = std::make_shared<state>(std::move(ex), src, std::move(opts));
}

http_server::~http_server() {
  stop();
}

void http_server::start(error_code& ec, std::string* detail) {
  ec = {};
  auto& st = *state_;
  std::lock_guard lock(st.mutex);
  if (st.stopped) {
    ec = errc::shutting_down;
    return;
  }
  if (st.started) return;
  boost::system::error_code e;
  auto addr = asio::ip::make_address(st.opts.address, e);
  tcp::endpoint ep(addr, st.opts.port);
  auto fail = [&](const char* what) {
    ec = errc::io_error;
    if (detail)
      *detail = fmt::format("{}({}:{}): {}", what, st.opts.address, st.opts.port, e.message());
    boost::system::error_code ignored;
    st.acceptor.close(ignored);
  };
  st.acceptor.open(ep.protocol(), e);
  if (e) return fail("socket");
  st.acceptor.set_option(asio::socket_base::reuse_address(true), e);
  st.acceptor.bind(ep, e);
  if (e) return fail("bind");
  st.acceptor.listen(asio::socket_base::max_listen_connections, e);
  if (e) return fail("listen");
  st.bound_port = st.acceptor.local_endpoint(e).port();
  st.started = true;
  asio::post(st.strand, [s = state_] {
    s->accept_loop();
    s->sample();
  });
}

void http_server::start() {
  error_code ec;
  std::string detail;
  start(ec, &detail);
  throw_if(ec, detail);
}

std::uint16_t http_server::port() const noexcept {
  return state_->bound_port;
}

void http_server::stop() noexcept {
  if (!state_) return;
  auto s = state_;
  std::list<std::pair<asio::strand<asio::any_io_executor>, std::weak_ptr<beast::tcp_stream>>> conns;
  {
    std::lock_guard lock(s->mutex);
    if (s->stopped) return;
    s->stopped = true;
    conns.swap(s->conns);
  }
  asio::post(s->strand, [s] {
    boost::system::error_code ignored;
    s->acceptor.close(ignored);
    s->history_cancel.emit(asio::cancellation_type::terminal);
  });
  for (auto& conn : conns)
    asio::post(conn.first, [weak = conn.second] {
      if (auto stream = weak.lock()) {
        boost::system::error_code ignored;
        stream->socket().close(ignored);
      }
    });
}

}  // namespace taskq
