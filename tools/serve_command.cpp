// taskq serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]
//
// Runs the operations server (dashboard, JSON API, /metrics) standalone over a store: a file
// store directory — locked for writes when no application holds it, else opened read-only
// (the API then refuses changes) — or a PostgreSQL connection string. Runs until SIGINT or
// SIGTERM.
#include "target.hpp"

#include <taskq/backends/file/store.hpp>
#include <taskq/client.hpp>
#include <taskq/http_server.hpp>
#include <taskq/prometheus.hpp>
#if TASKQ_TOOL_POSTGRES
#include <taskq/backends/postgres/backend.hpp>
#endif

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/signal_set.hpp>

#include <cstdlib>
#include <filesystem>
#include <ostream>

namespace taskq::tool {

int serve_command(const args& a, std::ostream& out, std::ostream& err) {
  std::string store, listen = "127.0.0.1:8080", token;
  if (const char* t = std::getenv("TASKQ_TOKEN")) token = t;
  bool read_only = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& x = a[i];
    auto value = [&](const char* name) -> const std::string* {
      if (i + 1 >= a.size()) {
        err << "taskq serve: " << name << " needs a value\n";
        return nullptr;
      }
      return &a[++i];
    };
    if (x == "--listen") {
      auto v = value("--listen");
      if (!v) return 2;
      listen = *v;
    } else if (x == "--token") {
      auto v = value("--token");
      if (!v) return 2;
      token = *v;
    } else if (x == "--read-only") {
      read_only = true;
    } else if (!x.empty() && x[0] == '-') {
      err << "taskq serve: unknown option '" << x << "'\n";
      return 2;
    } else if (store.empty()) {
      store = x;
    } else {
      err << "taskq serve: unexpected argument '" << x << "'\n";
      return 2;
    }
  }
  if (store.empty()) {
    err << "usage: taskq serve STORE [--listen 127.0.0.1:PORT] [--token T] [--read-only]\n"
           "  STORE: a file store directory or a PostgreSQL connection string\n";
    return 2;
  }
  auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    err << "taskq serve: --listen '" << listen << "' must be ADDRESS:PORT\n";
    return 2;
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = std::stoi(listen.substr(colon + 1));
  } catch (...) {
    port = -1;
  }
  if (port < 0 || port > 65535) {
    err << "taskq serve: --listen port '" << listen.substr(colon + 1) << "' is not a port number\n";
    return 2;
  }
  boost::system::error_code aec;
  auto addr = asio::ip::make_address(host, aec);
  if (aec || !addr.is_loopback()) {
    err << "taskq serve: --listen address '" << host
        << "' must be a loopback address (127.0.0.0/8 or ::1)\n";
    return 2;
  }

  asio::io_context io;
  owned_store st;
  if (int rc = open_owned(io.get_executor(), store, "serve", true, st, err)) return rc;
  read_only = read_only || st.read_only;
  metrics_registry metrics;
#if TASKQ_TOOL_POSTGRES
  if (st.pg) metrics.add_collector(postgres_backend_collector(*st.pg));
#endif
  if (st.file) metrics.add_collector(file_backend_collector(*st.file));
  error_code ec;
  std::string detail;
  client c(io.get_executor(), *st.queue, *st.store, {.metrics = &metrics});
  metrics.attach(c);
  http_server_options o;
  o.address = host;
  o.port = static_cast<std::uint16_t>(port);
  o.bearer_token = token;
  o.read_only = read_only;
  http_server server(io.get_executor(), {&c, nullptr, &metrics}, o);
  server.start(ec, &detail);
  if (ec) {
    err << "taskq serve: " << (detail.empty() ? ec.message() : detail) << "\n";
    return 1;
  }
  out << "taskq serve: listening on http://" << (addr.is_v6() ? "[" + host + "]" : host) << ":"
      << server.port() << "/" << (read_only ? " (read-only)" : "") << std::endl;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](boost::system::error_code e, int) {
    if (!e) server.stop();
  });
  io.run();
  return 0;
}

}  // namespace taskq::tool
