// The file backend's control channel (taskq/backends/file/control.hpp): the owner's Unix
// socket server on its io_context, and the blocking client the CLI uses.
#include <taskq/backends/file/control.hpp>
#include <taskq/backends/file/store.hpp>
#include <taskq/detail/input_limits.hpp>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <fmt/format.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>

namespace taskq::file {

namespace fs = std::filesystem;
using stream = asio::local::stream_protocol;

namespace detail {

class control_server : public std::enable_shared_from_this<control_server> {
 public:
  control_server(const fs::path& p, const control_options& o, admin_target t)
      : strand(asio::make_strand(t.ex)), acceptor(strand), path(p), opts(o), target(std::move(t)) {}

  struct connection;

  asio::strand<asio::any_io_executor> strand;
  stream::acceptor acceptor;
  fs::path path;
  control_options opts;
  admin_target target;  // its client and scheduler are set under `m`
  std::mutex m;
  bool stopped = false;                         // under m
  std::set<std::shared_ptr<connection>> conns;  // on the strand

  void accept();
  void stop_on_strand();
  admin_target request_target() {
    std::lock_guard lk(m);
    return target;
  }
};

struct control_server::connection : std::enable_shared_from_this<connection> {
  connection(std::shared_ptr<control_server> s, stream::socket sock)
      : server(std::move(s)), socket(std::move(sock)) {}
  std::shared_ptr<control_server> server;
  stream::socket socket;
  std::string in;
  std::string out;

  void read() {
    asio::async_read_until(
        socket, asio::dynamic_buffer(in, server->opts.max_request_bytes + 1), '\n',
        asio::bind_executor(
            server->strand, [self = shared_from_this()](error_code ec, std::size_t n) {
              if (ec == asio::error::not_found) {  // no newline within the limit
                return self->reply_and_close(admin_error_response(
                    errc::invalid_request, fmt::format("a request line is longer than {} bytes",
                                                       self->server->opts.max_request_bytes)));
              }
              if (ec) return self->close();
              std::string line = self->in.substr(0, n - 1);
              self->in.erase(0, n);
              self->handle(line);
            }));
  }

  void handle(const std::string& line) {
    taskq::detail::json_text_error bad;  // depth first: nothing recursive may see a deep document
    auto req = taskq::detail::parse_json_text(line, json_depth_ceiling, bad);
    if (bad != taskq::detail::json_text_error::none) {
      write(admin_error_response(errc::invalid_request,
                                 bad == taskq::detail::json_text_error::too_deep
                                     ? "a request line is nested too deeply"
                                     : "a request line is not valid JSON"),
            true);
      return;
    }
    async_admin(server->request_target(), std::move(req),
                asio::bind_executor(server->strand, [self = shared_from_this()](json resp) {
                  self->write(std::move(resp), true);
                }));
  }

  void write(const json& resp, bool then_read) {
    out = resp.dump() + "\n";
    asio::async_write(socket, asio::buffer(out),
                      asio::bind_executor(server->strand, [self = shared_from_this(), then_read](
                                                              error_code ec, std::size_t) {
                        if (ec || !then_read) return self->close();
                        self->read();
                      }));
  }

  void reply_and_close(const json& resp) { write(resp, false); }

  void close() {
    error_code ignored;
    socket.close(ignored);
    server->conns.erase(shared_from_this());
  }
};

void control_server::accept() {
  acceptor.async_accept(asio::bind_executor(strand, [self = shared_from_this()](
                                                        error_code ec, stream::socket sock) {
    if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
    if (!ec) {
      auto c = std::make_shared<connection>(self, std::move(sock));
      ucred cred{};
      socklen_t len = sizeof cred;
      bool same_user =
          ::getsockopt(c->socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
          cred.uid == ::geteuid();
      if (self->conns.size() >= self->opts.max_connections) {
        error_code ignored;
        c->socket.close(ignored);
      } else {
        self->conns.insert(c);
        if (!same_user)
          c->reply_and_close(admin_error_response(
              errc::access_denied, fmt::format("peer uid {} is not the store owner's", cred.uid)));
        else
          c->read();
      }
    }
    self->accept();
  }));
}

void control_server::stop_on_strand() {
  error_code ignored;
  acceptor.close(ignored);
  for (auto& c : conns) c->socket.close(ignored);
  conns.clear();
}

std::shared_ptr<control_server> start_control(const fs::path& dir, const control_options& opts,
                                              admin_target target, std::string& detail) {
  const auto path = dir / control_socket_name;
  auto s = std::make_shared<control_server>(path, opts, std::move(target));
  // The store's lock is held: a socket file left here is a crashed owner's.
  std::error_code fe;
  fs::remove(path, fe);
  error_code ec;
  if (path.native().size() >= sizeof(sockaddr_un::sun_path)) {
    detail = path.string() + ": path too long for a Unix socket; no control channel";
    return nullptr;
  }
  s->acceptor.open(stream(), ec);
  if (!ec) s->acceptor.bind(stream::endpoint(path.native()), ec);
  if (!ec && ::chmod(path.c_str(), 0600) != 0)
    ec = error_code(errno, boost::system::system_category());
  if (!ec) s->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    detail = path.string() + ": control channel: " + ec.message();
    error_code ignored;
    s->acceptor.close(ignored);
    fs::remove(path, fe);
    return nullptr;
  }
  asio::post(s->strand, [s] { s->accept(); });
  return s;
}

void stop_control(control_server& s) noexcept {
  {
    std::lock_guard lk(s.m);
    if (s.stopped) return;
    s.stopped = true;
    s.target.client = nullptr;
    s.target.scheduler = nullptr;
  }
  std::error_code fe;
  fs::remove(s.path, fe);
  asio::post(s.strand, [self = s.shared_from_this()] { self->stop_on_strand(); });
}

void attach_control(control_server& s, taskq::client* c, taskq::scheduler* sched) noexcept {
  std::lock_guard lk(s.m);
  if (s.stopped) return;
  s.target.client = c;
  s.target.scheduler = sched;
}

}  // namespace detail

// --- the client ---------------------------------------------------------------------------

control_client::~control_client() {
  if (fd_ >= 0) ::close(fd_);
}

bool control_client::connect(const fs::path& dir, error_code& ec, std::string& detail) {
  ec = {};
  const auto path = dir / control_socket_name;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;  // no owner serves a channel
    ec = errc::io_error;
    detail = path.string() + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISSOCK(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 07777) != 0600) {
    ec = errc::access_denied;
    detail = !S_ISSOCK(st.st_mode) ? path.string() + " is not a socket"
             : st.st_uid != ::geteuid()
                 ? fmt::format("{} belongs to uid {}, not to this user", path.string(), st.st_uid)
                 : fmt::format("{} has mode {:04o}, not 0600", path.string(), st.st_mode & 07777);
    return false;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof addr.sun_path) return false;  // never served (too long)
  std::memcpy(addr.sun_path, path.c_str(), path.native().size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ec = errc::io_error;
    detail = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd);
    if (e == ECONNREFUSED || e == ENOENT) return false;  // a crashed owner's socket, or gone
    ec = errc::io_error;
    detail = path.string() + ": connect: " + std::strerror(e);
    return false;
  }
  // A live owner answers at once; one that hangs must not hang the operator's shell.
  timeval tv{.tv_sec = 30, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  fd_ = fd;
  return true;
}

json control_client::call(const json& request, error_code& ec, std::string& detail) {
  ec = {};
  if (fd_ < 0) {
    ec = errc::io_error;
    detail = "control channel: not connected";
    return {};
  }
  auto fail = [&](const std::string& what) {
    ec = errc::io_error;
    detail = "control channel: " + what;
    ::close(fd_);
    fd_ = -1;
    return json();
  };
  const std::string line = request.dump() + "\n";
  for (std::size_t off = 0; off < line.size();) {
    auto n = ::send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(std::string("send: ") + std::strerror(errno));
    off += static_cast<std::size_t>(n);
  }
  std::size_t nl;
  while ((nl = buffer_.find('\n')) == std::string::npos) {
    char buf[4096];
    auto n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return fail("no response from the store's owner within 30s");
    if (n < 0) return fail(std::string("recv: ") + std::strerror(errno));
    if (n == 0) return fail("the store's owner closed the connection");
    buffer_.append(buf, static_cast<std::size_t>(n));
  }
  taskq::detail::json_text_error bad;
  auto resp = taskq::detail::parse_json_text(std::string_view(buffer_).substr(0, nl),
                                             json_depth_ceiling, bad);
  buffer_.erase(0, nl + 1);
  if (bad != taskq::detail::json_text_error::none) {
    ec = errc::invalid_request;
    detail = "control channel: the owner's response is not valid JSON";
    return {};
  }
  return resp;
}

// --- the owner's side, as the backend exposes it ------------------------------------------

void backend::attach(taskq::client* c, taskq::scheduler* s) noexcept {
  if (control_) detail::attach_control(*control_, c, s);
}

}  // namespace taskq::file
