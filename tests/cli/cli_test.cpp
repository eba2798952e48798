// The taskq tool end to end, as a separate process (TASKQ_TOOL is its path): queue and schedule
// commands on a file store nobody holds; writes through the control channel of a live owner
// (this test process, with its backend and scheduler on an io_context thread); the channel's
// refusals (socket mode, peer uid, request size) and a crashed owner's stale socket; and
// every store command against PostgreSQL ("[postgres]", run under the taskq_pg fixture).
#include <taskq/backends/file/control.hpp>
#include <taskq/backends/file/store.hpp>
#include <taskq/client.hpp>
#include <taskq/scheduler.hpp>
#if TASKQ_CLI_TEST_POSTGRES
#include "postgres/pg_env.hpp"
#endif

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using namespace taskq;
using namespace std::chrono_literals;

namespace {

struct cli_result {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A fresh directory under the temporary directory (short: socket paths are limited).
fs::path fresh_dir() {
  static int n = 0;
  auto d = fs::temp_directory_path() /
           ("tq-cli-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
  fs::remove_all(d);
  return d;
}

/// Runs the taskq tool with `args` (each passed as one argument).
cli_result taskq_cli(const std::vector<std::string>& args) {
  static const fs::path scratch = fresh_dir();
  fs::create_directories(scratch);
  std::string cmd = "'" TASKQ_TOOL "'";
  for (auto& a : args) {
    std::string q;
    for (char ch : a) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    cmd += " '" + q + "'";
  }
  cmd += " >'" + (scratch / "out").string() + "' 2>'" + (scratch / "err").string() + "'";
  int status = std::system(cmd.c_str());
  cli_result r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(scratch / "out");
  r.err = slurp(scratch / "err");
  INFO(cmd << "\nstdout: " << r.out << "\nstderr: " << r.err);
  return r;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// A store's owner: a backend (control channel on), a client and a scheduler, on an
/// io_context run by one thread; the test thread uses the blocking forms.
struct owner {
  explicit owner(const fs::path& dir, file::control_options control = {.enabled = true}) {
    b = file::backend::open(io.get_executor(), dir, {.control = control});
    c = std::make_unique<client>(io.get_executor(), b->queue(), b->store());
    s = std::make_unique<scheduler>(*c, scheduler_options{.store = &b->schedules()});
    b->attach(c.get(), s.get());
  }
  ~owner() {
    b->attach(nullptr, nullptr);
    s.reset();
    c.reset();
    b->close();
    b.reset();
    work.reset();
    t.join();
  }
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread t{[this] { io.run(); }};
  std::unique_ptr<file::backend> b;
  std::unique_ptr<client> c;
  std::unique_ptr<scheduler> s;
};

schedule hourly(const std::string& name) {
  return {.name = name, .task = {.type = "tick"}, .every = 1h, .anchor = {}};
}

}  // namespace

TEST_CASE("taskq queue and schedules commands on a file store nobody holds", "[cli][file]") {
  auto dir = fresh_dir();
  std::string id;
  {
    owner o(dir, {.enabled = false});
    id = o.c->enqueue({.type = "mail", .queue = "q1"});
    o.s->ensure_schedule(hourly("tick"));
  }
  auto d = dir.string();
  auto r = taskq_cli({"queue", "pause", d, "q1"});
  CHECK(r.rc == 0);
  CHECK(r.out == "queue q1 paused\n");
  {
    asio::io_context io;
    error_code ec;
    auto ro = file::backend::open_read_only(io.get_executor(), dir, ec);
    REQUIRE_FALSE(ec);
    CHECK(ro->queue().is_paused("q1"));
  }
  CHECK(taskq_cli({"queue", "resume", d, "q1", "--json"}).out ==
        "{\"paused\":false,\"queue\":\"q1\"}\n");

  CHECK(taskq_cli({"schedules", "pause", d, "tick"}).rc == 0);
  r = taskq_cli({"schedules", d, "--json"});
  REQUIRE(r.rc == 0);
  auto all = json::parse(r.out);
  REQUIRE(all.size() == 1);
  CHECK(all[0]["paused"] == true);
  CHECK(contains(taskq_cli({"schedules", d}).out, "paused"));
  CHECK(taskq_cli({"schedules", "resume", d, "tick"}).rc == 0);
  CHECK(json::parse(taskq_cli({"schedules", d, "--json"}).out)[0]["paused"] == false);

  r = taskq_cli({"schedules", "run", d, "tick"});
  REQUIRE(r.rc == 0);
  auto run_id = r.out.substr(0, r.out.size() - 1);
  CHECK(run_id.size() == 36);
  r = taskq_cli({"show", d, run_id, "--json"});
  REQUIRE(r.rc == 0);
  CHECK(json::parse(r.out)["labels"]["taskq.schedule"] == "tick");

  r = taskq_cli({"schedules", "pause", d, "nope"});
  CHECK(r.rc == 1);
  CHECK(contains(r.err, "no schedule named nope"));
  CHECK(taskq_cli({"schedules", "remove", d, "tick"}).out == "schedule tick removed\n");
  CHECK(taskq_cli({"schedules", d, "--json"}).out == "[]\n");

  CHECK(taskq_cli({"delete", d, id}).out == id + " deleted\n");
  r = taskq_cli({"show", d, id});
  CHECK(r.rc == 1);
  CHECK(contains(r.err, "no task with id"));
  r = taskq_cli({"delete", d, id});
  CHECK(r.rc == 1);

  // Usage errors from the generated parser: exit code 2, the command named.
  r = taskq_cli({"queue", "pause", d});
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "taskq queue pause"));
  CHECK(taskq_cli({"list", d, "--limit", "0"}).rc == 2);
  CHECK(taskq_cli({"list", d, "--status", "later"}).rc == 2);
  r = taskq_cli({"--help"});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, "schedules"));
  CHECK(contains(taskq_cli({"schedules", "run", "--help"}).out, "NAME"));
  fs::remove_all(dir);
}

TEST_CASE("taskq writes go through a live owner's control channel", "[cli][control]") {
  auto dir = fresh_dir();
  auto d = dir.string();
  owner o(dir);
  const auto sock = dir / file::control_socket_name;
  struct stat st {};
  REQUIRE(::lstat(sock.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0600);

  auto id = o.c->enqueue({.type = "mail"});
  // The application waits for the task; a cancel through the channel ends the wait.
  std::promise<task_record> waited;
  o.c->async_wait(id, [&](error_code, task_record rec) { waited.set_value(rec); });
  auto r = taskq_cli({"cancel", d, id});
  REQUIRE(r.rc == 0);
  CHECK(r.out == id + " cancelled\n");
  CHECK(o.c->get(id).status == task_status::cancelled);
  auto fw = waited.get_future();
  REQUIRE(fw.wait_for(10s) == std::future_status::ready);
  CHECK(fw.get().status == task_status::cancelled);
  r = taskq_cli({"cancel", d, id});  // the owner's answer, printed as always
  CHECK(r.rc == 1);
  CHECK(contains(r.err, "task " + id));
  r = taskq_cli({"retry", d, id, "--json"});
  REQUIRE(r.rc == 0);
  CHECK(json::parse(r.out)["status"] == "pending");
  CHECK(o.c->get(id).status == task_status::pending);
  CHECK(taskq_cli({"show", d, "00000000-0000-0000-0000-000000000000"}).rc == 1);

  CHECK(taskq_cli({"queue", "pause", d, "default"}).rc == 0);
  CHECK(o.b->queue().is_paused("default"));
  CHECK(taskq_cli({"queue", "resume", d, "default"}).rc == 0);
  CHECK_FALSE(o.b->queue().is_paused("default"));

  // Schedule operations reach the owner's running scheduler (backend::attach).
  o.s->ensure_schedule(hourly("tick"));
  CHECK(taskq_cli({"schedules", "pause", d, "tick"}).rc == 0);
  REQUIRE(o.s->info("tick"));
  CHECK(o.s->info("tick")->definition.paused);
  CHECK(taskq_cli({"schedules", "resume", d, "tick"}).rc == 0);
  CHECK_FALSE(o.s->info("tick")->definition.paused);
  r = taskq_cli({"schedules", "run", d, "tick"});
  REQUIRE(r.rc == 0);
  CHECK(o.c->get(r.out.substr(0, 36)).type == "tick");
  CHECK(taskq_cli({"schedules", "remove", d, "tick"}).rc == 0);
  CHECK_FALSE(o.s->info("tick"));

  r = taskq_cli({"enqueue", d, "--type", "report", "--payload", "{\"m\":11}"});
  REQUIRE(r.rc == 0);
  CHECK(o.c->get(r.out.substr(0, 36)).payload == json{{"m", 11}});
  CHECK(taskq_cli({"prune", d, "--older-than", "1h"}).out == "pruned 0 finished tasks\n");
  CHECK(taskq_cli({"delete", d, id}).rc == 0);
  error_code ec;
  o.c->get(id, ec);
  CHECK(ec == errc::not_found);

  // Closing the owner removes the socket; the CLI then takes the lock itself.
  o.b->close();
  CHECK_FALSE(fs::exists(sock));
}

TEST_CASE("the control channel refuses a socket with the wrong mode, and long requests",
          "[cli][control]") {
  auto dir = fresh_dir();
  owner o(dir, {.enabled = true, .max_request_bytes = 256});
  const auto sock = dir / file::control_socket_name;
  auto id = o.c->enqueue({.type = "mail"});

  REQUIRE(::chmod(sock.c_str(), 0666) == 0);
  auto r = taskq_cli({"cancel", dir.string(), id});
  CHECK(r.rc == 1);
  CHECK(contains(r.err, "mode 0666, not 0600"));
  CHECK(o.c->get(id).status == task_status::pending);
  REQUIRE(::chmod(sock.c_str(), 0600) == 0);

  file::control_client cc;
  error_code ec;
  std::string detail;
  REQUIRE(cc.connect(dir, ec, detail));
  auto resp = cc.call({{"op", "cancel"}, {"id", std::string(1000, 'x')}}, ec, detail);
  REQUIRE_FALSE(ec);
  admin_result(resp, ec, detail);
  CHECK(ec == errc::invalid_request);
  CHECK(contains(detail, "longer than 256 bytes"));
  cc.call({{"op", "cancel"}, {"id", id}}, ec, detail);  // the owner closed the connection
  CHECK(ec == errc::io_error);

  // A malformed request is answered, naming the field, and the connection stays usable.
  file::control_client cc2;
  REQUIRE(cc2.connect(dir, ec, detail));
  resp = cc2.call({{"op", "cancel"}}, ec, detail);
  admin_result(resp, ec, detail);
  CHECK(ec == errc::invalid_request);
  CHECK(contains(detail, "'id'"));
  resp = cc2.call({{"op", "cancel"}, {"id", id}}, ec, detail);
  CHECK(admin_result(resp, ec, detail)["record"]["status"] == "cancelled");
}

TEST_CASE("the control channel refuses a peer with another uid", "[cli][control]") {
  if (::geteuid() != 0) {
    WARN("needs root to connect as another user; checked by the socket's mode otherwise");
    return;
  }
  auto dir = fresh_dir();
  owner o(dir);
  const auto sock = dir / file::control_socket_name;
  // Let another user reach the socket at all, so that only the peer check stands in the way.
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);
  REQUIRE(::chmod(sock.c_str(), 0666) == 0);
  // The refusal names taskq's access_denied code.
  const std::string expected_text =
      "\"code\":" + std::to_string(static_cast<int>(errc::access_denied));
  const char* expected = expected_text.c_str();
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ::_exit(11);
    // Only async-signal-safe calls after fork (the parent has threads). The owner may close
    // before the request is written: MSG_NOSIGNAL, and its answer decides.
    const char line[] = "{\"op\":\"queue_pause\",\"queue\":\"default\"}\n";
    (void)::send(fd, line, sizeof line - 1, MSG_NOSIGNAL);
    char in[1024];
    std::size_t len = 0;
    ssize_t n;
    while (len < sizeof in - 1 && (n = ::read(fd, in + len, sizeof in - 1 - len)) > 0)
      len += static_cast<std::size_t>(n);
    in[len] = 0;
    ::_exit(std::strstr(in, expected) ? 0 : 12);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_FALSE(o.b->queue().is_paused("default"));
}

TEST_CASE("a crashed owner's stale socket does not stop the CLI", "[cli][control]") {
  auto dir = fresh_dir();
  std::string id;
  {
    owner o(dir, {.enabled = false});
    id = o.c->enqueue({.type = "mail"});
  }
  // What a SIGKILLed owner leaves: a bound socket file nobody listens on.
  const auto sock = dir / file::control_socket_name;
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  ::close(fd);
  REQUIRE(::chmod(sock.c_str(), 0600) == 0);

  auto r = taskq_cli({"cancel", dir.string(), id});
  CHECK(r.rc == 0);
  CHECK(r.out == id + " cancelled\n");
  // The next owner replaces the stale socket with its own.
  owner o(dir);
  file::control_client cc;
  error_code ec;
  std::string detail;
  CHECK(cc.connect(dir, ec, detail));
  CHECK(o.c->get(id).status == task_status::cancelled);
}

#if TASKQ_CLI_TEST_POSTGRES
TEST_CASE("every store command takes a PostgreSQL connection string", "[cli][postgres]") {
  const auto conninfo = test::pg_conninfo();
  const auto schema = test::fresh_schema("cli");
  // A scheduler stores one schedule, as an application would.
  {
    asio::io_context io;
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
    std::thread t([&] { io.run(); });
    {
      auto pg =
          postgres::backend::open(io.get_executor(), {.conninfo = conninfo, .schema = schema});
      client c(io.get_executor(), pg->queue(), pg->store());
      scheduler s(c, {.store = &pg->schedules()});
      s.ensure_schedule(hourly("tick"));
      s.stop();
    }
    work.reset();
    t.join();
  }
  // STORE follows the command's name ("list", "queue pause", "schedules run").
  auto pg = [&](std::vector<std::string> args) {
    const bool nested = (args[0] == "queue" || args[0] == "schedules") && args.size() > 1 &&
                        !args[1].starts_with("--");
    args.insert(args.begin() + (nested ? 2 : 1), conninfo);
    args.push_back("--schema");
    args.push_back(schema);
    return taskq_cli(args);
  };
  auto r = pg({"enqueue", "--type", "mail", "--queue", "q1", "--payload", "{\"to\":\"a\"}"});
  REQUIRE(r.rc == 0);
  auto id = r.out.substr(0, 36);
  r = pg({"list"});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, id));
  r = pg({"show", id});
  CHECK(contains(r.out, "payload:       {\"to\":\"a\"}"));
  CHECK(pg({"stats", "--json"}).out.find("\"pending\":1") != std::string::npos);
  CHECK(pg({"cancel", id}).out == id + " cancelled\n");
  r = pg({"cancel", id});
  CHECK(r.rc == 1);
  CHECK(json::parse(pg({"retry", id, "--json"}).out)["status"] == "pending");
  CHECK(pg({"queue", "pause", "q1"}).rc == 0);
  CHECK(pg({"queue", "resume", "q1"}).rc == 0);
  CHECK(pg({"prune", "--older-than", "1h"}).out == "pruned 0 finished tasks\n");
  CHECK(pg({"schedules", "pause", "tick"}).rc == 0);
  CHECK(json::parse(pg({"schedules", "--json"}).out)[0]["paused"] == true);
  CHECK(pg({"schedules", "resume", "tick"}).rc == 0);
  r = pg({"schedules", "run", "tick"});
  REQUIRE(r.rc == 0);
  CHECK(contains(pg({"list", "--type", "tick"}).out, r.out.substr(0, 36)));
  CHECK(pg({"schedules", "remove", "tick"}).rc == 0);
  CHECK(pg({"schedules", "--json"}).out == "[]\n");
  CHECK(pg({"delete", id}).rc == 0);
  CHECK(pg({"show", id}).rc == 1);
  r = pg({"verify"});
  CHECK(r.rc == 2);
  // A server that is not there: a readable error, exit code 1.
  r = taskq_cli({"list", "postgresql://127.0.0.1:1/none?connect_timeout=2"});
  CHECK(r.rc == 1);
  CHECK(contains(r.err, "PostgreSQL"));
}
#endif
