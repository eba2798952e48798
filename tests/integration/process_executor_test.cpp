// process_executor: real child processes (sh, python3) driven on a polled io_context.
// Nothing here sleeps to decide a result: the tests wait for events (a heartbeat, a
// completion, the child count reaching zero) with a generous bound that only turns a hang
// into a failure.
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/client.hpp>
#include <taskq/process_executor.hpp>
#include <taskq/worker.hpp>

#include "engine_fixture.hpp"

#include <csignal>
#include <cstdlib>
#include <mutex>

#include <sys/wait.h>
#include <unistd.h>

namespace taskq::test {
namespace {

/// Records what a run reports through the hooks.
struct recording_hooks : run_hooks {
  explicit recording_hooks(asio::any_io_executor ex) : io(std::move(ex)) {}
  asio::any_io_executor io;
  std::mutex m;
  std::vector<json> progress;
  std::vector<std::string> log_entries;
  bool cancel_on_heartbeat = false;

  void heartbeat(const task_record&, std::optional<json> p,
                 asio::any_completion_handler<void(error_code, bool)> h) override {
    {
      std::lock_guard l(m);
      progress.push_back(p.value_or(json()));
    }
    detail::post_completion(std::move(h), io, error_code{}, cancel_on_heartbeat);
  }
  void log(const task_record&, std::string message,
           asio::any_completion_handler<void(error_code)> h) override {
    {
      std::lock_guard l(m);
      log_entries.push_back(std::move(message));
    }
    detail::post_completion(std::move(h), io, error_code{});
  }
  std::size_t heartbeats() {
    std::lock_guard l(m);
    return progress.size();
  }
  /// Every logged line (entries may hold several lines).
  std::string all_log() {
    std::lock_guard l(m);
    std::string s;
    for (auto& e : log_entries) s += e + "\n";
    return s;
  }
};

struct process_fixture {
  asio::io_context io;
  process_executor ex{io.get_executor()};
  std::shared_ptr<recording_hooks> hooks = std::make_shared<recording_hooks>(io.get_executor());
  int next_id = 0;

  ~process_fixture() {
    run_until(io, [&] { return ex.children() == 0; });
  }

  run_request request(std::string type, json payload = json::object(), int attempt = 1,
                      json metadata = json()) {
    run_request r;
    r.task.id = "task-" + std::to_string(++next_id);
    r.task.type = std::move(type);
    r.task.payload = std::move(payload);
    r.task.metadata = std::move(metadata);
    r.run.task_id = r.task.id;
    r.run.attempt = attempt;
    r.hooks = hooks;
    return r;
  }

  run_result run(std::string type, json payload = json::object(), json metadata = json()) {
    auto p = ex.execute(request(std::move(type), std::move(payload), 1, std::move(metadata)));
    REQUIRE(run_until(
        io, [&] { return p.done(); }, 60s));
    return *p.result();
  }

  void sh(const std::string& type, std::string script, process_command extra = {}) {
    extra.argv = {std::move(script)};
    extra.shell = true;
    ex.add(type, std::move(extra));
  }
};

bool group_alive(pid_t pgid) {
  return ::kill(-pgid, 0) == 0 || errno != ESRCH;
}

}  // namespace

TEST_CASE("process: success with progress, log lines and the result", "[process]") {
  process_fixture f;
  f.sh("echo",
       "read -r p\n"
       "echo '{\"taskq\":\"progress\",\"progress\":{\"done\":0.5}}'\n"
       "echo plain text\n"
       "echo '{\"taskq\":\"log\",\"message\":\"from the protocol\"}'\n"
       "echo oops >&2\n"
       "echo \"{\\\"taskq\\\":\\\"result\\\",\\\"result\\\":$p}\"\n");
  auto r = f.run("echo", {{"n", 42}, {"s", "x y"}});
  INFO(r.message);
  REQUIRE(r.ok());
  CHECK(r.result == json{{"n", 42}, {"s", "x y"}});
  REQUIRE(f.hooks->progress.size() == 1);
  CHECK(f.hooks->progress[0] == json{{"done", 0.5}});
  auto log = f.hooks->all_log();
  CHECK(log.find("stdout: plain text") != std::string::npos);
  CHECK(log.find("from the protocol\n") != std::string::npos);
  CHECK(log.find("stderr: oops") != std::string::npos);
  CHECK(r.stats.finished_at >= r.stats.started_at);
}

TEST_CASE("process: environment is the allowlist, the command's variables and TASKQ_*",
          "[process]") {
  process_fixture f;
  ::setenv("TASKQ_TEST_NOT_ALLOWED", "leak", 1);
  ::setenv("TASKQ_TEST_ALLOWED", "yes", 1);
  process_command c;
  c.inherit_env = {"PATH", "TASKQ_TEST_ALLOWED"};
  c.env = {{"GREETING", "hello"}};
  f.sh("env",
       "printf '{\"taskq\":\"result\",\"result\":{\"id\":\"%s\",\"type\":\"%s\",\"attempt\":\"%s\","
       "\"greeting\":\"%s\",\"allowed\":\"%s\",\"leak\":\"%s\",\"cwd\":\"%s\"}}\\n' "
       "\"$TASKQ_TASK_ID\" \"$TASKQ_TASK_TYPE\" \"$TASKQ_ATTEMPT\" \"$GREETING\" "
       "\"$TASKQ_TEST_ALLOWED\" \"$TASKQ_TEST_NOT_ALLOWED\" \"$(pwd)\"",
       [&] {
         c.working_directory = "/tmp";
         return c;
       }());
  auto p = f.ex.execute(f.request("env", json::object(), 3));
  REQUIRE(run_until(f.io, [&] { return p.done(); }));
  auto r = *p.result();
  INFO(r.message);
  REQUIRE(r.ok());
  CHECK(r.result["id"] == p.run().task_id);
  CHECK(r.result["type"] == "env");
  CHECK(r.result["attempt"] == "3");
  CHECK(r.result["greeting"] == "hello");
  CHECK(r.result["allowed"] == "yes");
  CHECK(r.result["leak"] == "");
  CHECK(r.result["cwd"] == "/tmp");
}

TEST_CASE("process: argv is not a shell string", "[process]") {
  process_fixture f;
  f.ex.add("printf",
           {.argv = {"printf", "{\"taskq\":\"result\",\"result\":\"%s\"}\n", "$HOME; x"}});
  auto r = f.run("printf");
  INFO(r.message);
  REQUIRE(r.ok());
  CHECK(r.result == "$HOME; x");
}

TEST_CASE("process: exit codes map to retryable and permanent failures", "[process]") {
  process_fixture f;
  f.sh("retry", "echo 'try later' >&2; exit 75");
  f.sh("perm", "echo 'bad input' >&2; exit 65");
  f.sh("other", "echo one >&2; echo two >&2; exit 3");
  f.sh("reported", "echo '{\"taskq\":\"error\",\"message\":\"quota exceeded\"}'; exit 75");

  auto r = f.run("retry");
  CHECK(r.error == errc::handler_failed);
  CHECK(r.retryable);
  CHECK(r.message.find("code 75") != std::string::npos);
  CHECK(r.message.find("try later") != std::string::npos);

  r = f.run("perm");
  CHECK(r.error == errc::handler_failed);
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("code 65 (permanent failure)") != std::string::npos);
  CHECK(r.message.find("bad input") != std::string::npos);

  r = f.run("other");
  CHECK(r.error == errc::handler_failed);
  CHECK(r.retryable);
  CHECK(r.message.find("exited with code 3; last stderr lines:\none\ntwo") != std::string::npos);

  r = f.run("reported");
  CHECK(r.retryable);
  CHECK(r.message.find("quota exceeded") != std::string::npos);

  SECTION("the codes are configurable") {
    process_command c;
    c.retryable_exit_code = 9;
    c.permanent_exit_code = 75;
    f.sh("custom", "exit 75", c);
    r = f.run("custom");
    CHECK_FALSE(r.retryable);
  }
}

TEST_CASE("process: death by a signal is a retryable failure naming the signal", "[process]") {
  process_fixture f;
  f.sh("segv", "kill -SEGV $$");
  auto r = f.run("segv");
  CHECK(r.error == errc::handler_failed);
  CHECK(r.retryable);
  CHECK(r.message.find("SIGSEGV") != std::string::npos);
}

TEST_CASE("process: a crash is retried by the worker and the next attempt succeeds", "[process]") {
  asio::io_context io;
  memory::queue q{io.get_executor()};
  memory::store s{io.get_executor()};
  client c{io.get_executor(), q, s};
  process_executor ex{io.get_executor()};
  ex.add("flaky", {.argv = {"if [ \"$TASKQ_ATTEMPT\" = 1 ]; then kill -KILL $$; fi\n"
                            "echo '{\"taskq\":\"result\",\"result\":\"second time\"}'"},
                   .shell = true});
  worker w{c, ex};
  w.async_run([](error_code) {});
  std::optional<std::string> id;
  c.async_enqueue({.type = "flaky",
                   .max_attempts = 3,
                   .retry = {.initial_delay = std::chrono::milliseconds(1), .jitter = 0}},
                  [&](error_code ec, std::string i) {
                    REQUIRE_FALSE(ec);
                    id = i;
                  });
  REQUIRE(run_until(io, [&] { return id.has_value(); }));
  std::optional<task_record> done;
  c.async_wait(*id, [&](error_code, task_record r) { done = r; });
  REQUIRE(run_until(
      io, [&] { return done.has_value(); }, 60s));
  CHECK(done->status == task_status::succeeded);
  CHECK(done->attempt == 2);
  CHECK(done->result == "second time");
  w.stop();
  run_until(io, [&] { return w.running() == 0 && ex.children() == 0; });
  io.run_for(std::chrono::milliseconds(50));
}

TEST_CASE("process: cancel kills the child's whole process group", "[process]") {
  process_fixture f;
  process_command c;
  c.kill_grace = std::chrono::milliseconds(300);
  SECTION("children that obey SIGTERM") {
    f.sh("tree",
         "sleep 1000 & sleep 1000 &\n"
         "echo \"{\\\"taskq\\\":\\\"progress\\\",\\\"progress\\\":$$}\"\n"
         "wait",
         c);
    CHECK(f.ex.has_command("tree"));
  }
  SECTION("a child that ignores SIGTERM gets SIGKILL after the grace period") {
    f.sh("tree",
         "trap '' TERM\n"
         "sleep 1000 & sleep 1000 &\n"
         "echo \"{\\\"taskq\\\":\\\"progress\\\",\\\"progress\\\":$$}\"\n"
         "while :; do wait; done",
         c);
    CHECK(f.ex.has_command("tree"));
  }
  auto p = f.ex.execute(f.request("tree"));
  REQUIRE(run_until(f.io, [&] { return f.hooks->heartbeats() == 1; }));
  pid_t pgid = f.hooks->progress[0].get<pid_t>();
  REQUIRE(group_alive(pgid));
  CHECK(f.ex.children() == 1);
  p.cancel();
  REQUIRE(p.done());
  CHECK(p.result()->error == errc::run_cancelled);
  REQUIRE(run_until(f.io, [&] { return f.ex.children() == 0; }));
  REQUIRE(run_until(f.io, [&] { return !group_alive(pgid); }));
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);  // nothing left to reap: no zombie
}

TEST_CASE("process: a timeout ends the run timed out and kills the child", "[process]") {
  engine_fixture f;
  process_executor ex{f.io.get_executor(), {.time = &f.clk}};
  ex.add("slow", {.argv = {"echo \"{\\\"taskq\\\":\\\"progress\\\",\\\"progress\\\":$$}\"\n"
                           "exec sleep 1000"},
                  .shell = true});
  // The fixture's memory store has no hooks to the test: watch progress through events.
  std::optional<pid_t> child;
  f.c.subscribe([&](const event& e) {
    if (e.kind == event_kind::progress && e.progress.is_number()) child = e.progress.get<pid_t>();
  });
  worker w{f.c, ex};
  w.async_run([](error_code) {});
  auto id = f.enqueue({.type = "slow", .max_attempts = 1, .timeout = std::chrono::seconds(10)});
  REQUIRE(run_until(f.io, [&] { return child.has_value(); }));
  f.clk.advance(std::chrono::seconds(11));
  REQUIRE(f.wait_status(id, task_status::failed));
  CHECK(f.get(id).last_error.find("timed out") != std::string::npos);
  REQUIRE(run_until(f.io, [&] { return ex.children() == 0; }));
  CHECK_FALSE(group_alive(*child));
  w.stop();
  run_until(f.io, [&] { return w.running() == 0; });
}

TEST_CASE("process: the command's own timeout and cancel_all end runs retryably", "[process]") {
  process_fixture f;
  auto script =
      "echo \"{\\\"taskq\\\":\\\"progress\\\",\\\"progress\\\":$$}\"\n"
      "exec sleep 1000";
  SECTION("timeout") {
    f.sh("slow", script, {.timeout = std::chrono::seconds(1)});
    auto r = f.run("slow");
    CHECK(r.error == errc::run_timed_out);
    CHECK(r.retryable);
    CHECK(r.message.find("1000 ms") != std::string::npos);
  }
  SECTION("cancel_all") {
    f.sh("slow", script);
    auto p = f.ex.execute(f.request("slow"));
    REQUIRE(run_until(f.io, [&] { return f.hooks->heartbeats() == 1; }));
    f.ex.cancel_all();
    REQUIRE(run_until(f.io, [&] { return p.done(); }));
    CHECK(p.result()->error == errc::shutting_down);
    CHECK(p.result()->retryable);
  }
  SECTION("a heartbeat that learns of a cancel request") {
    f.hooks->cancel_on_heartbeat = true;
    f.sh("slow", script);
    auto r = f.run("slow");
    CHECK(r.error == errc::run_cancelled);
  }
  REQUIRE(run_until(f.io, [&] { return f.ex.children() == 0; }));
  pid_t pgid = f.hooks->progress.at(0).get<pid_t>();
  CHECK_FALSE(group_alive(pgid));
}

TEST_CASE("process: exceeding the memory limit fails saying so", "[process]") {
  process_fixture f;
  f.ex.add("hog", {.argv = {"/usr/bin/python3", "-c", "x = bytearray(1 << 30)"},
                   .limits = {.address_space = 256u << 20}});
  auto r = f.run("hog");
  INFO(r.message);
  CHECK(r.error == errc::handler_failed);
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("memory limit exceeded") != std::string::npos);
  CHECK(r.message.find("268435456") != std::string::npos);

  SECTION("the limit can come from task metadata when allowed, up to the ceiling") {
    f.ex.add("hog2", {.argv = {"/usr/bin/python3", "-c", "x = bytearray(200 << 20)"},
                      .limits_from_metadata = true,
                      .max_limits = {.address_space = 1u << 30}});
    CHECK(f.run("hog2").ok());
    r = f.run("hog2", json::object(), {{"limits", {{"address_space", 128u << 20}}}});
    INFO(r.message);
    CHECK(r.message.find("memory limit exceeded") != std::string::npos);
    r = f.run("hog2", json::object(), {{"limits", {{"address_space", 2u << 30}}}});
    CHECK_FALSE(r.retryable);
    CHECK(r.message.find("'limits.address_space'") != std::string::npos);
    r = f.run("hog2", json::object(), {{"limits", {{"cores", 2}}}});
    CHECK(r.message.find("'limits.cores' is not a known limit") != std::string::npos);
  }
  SECTION("metadata is ignored unless allowed") {
    f.ex.add("hog3", {.argv = {"/usr/bin/python3", "-c", "x = bytearray(64 << 20)"}});
    CHECK(f.run("hog3", json::object(), {{"limits", {{"address_space", 1}}}}).ok());
  }
}

TEST_CASE("process: CPU and open-file limits apply", "[process]") {
  process_fixture f;
  f.sh("nofile", "echo \"{\\\"taskq\\\":\\\"result\\\",\\\"result\\\":$(ulimit -n)}\"",
       {.limits = {.open_files = 77}});
  auto r = f.run("nofile");
  INFO(r.message);
  CHECK(r.result == 77);
  f.sh("spin", "while :; do :; done", {.limits = {.cpu_seconds = 1}});
  r = f.run("spin");
  INFO(r.message);
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("CPU time limit exceeded") != std::string::npos);
}

TEST_CASE("process: output above the cap is cut and the cut is logged", "[process]") {
  process_fixture f;
  f.sh("chatty", "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); done",
       {.output_cap = 1000});
  auto r = f.run("chatty");
  REQUIRE(r.ok());
  auto log = f.hooks->all_log();
  CHECK(log.find("stdout: line 0\n") != std::string::npos);
  CHECK(log.find("stdout: line 1999") == std::string::npos);
  CHECK(log.find("output cap of 1000 bytes per run reached") != std::string::npos);
  CHECK(log.size() < 1200);
}

TEST_CASE("process: stdin of several megabytes, read or not", "[process]") {
  process_fixture f;
  json payload = {{"blob", std::string(6u << 20, 'x')}};
  auto expected = payload.dump().size() + 1;
  SECTION("read entirely") {
    f.sh("count", "n=$(wc -c); echo \"{\\\"taskq\\\":\\\"result\\\",\\\"result\\\":$n}\"");
    auto r = f.run("count", payload);
    INFO(r.message);
    REQUIRE(r.ok());
    CHECK(r.result == expected);
  }
  SECTION("stdin closed early") {
    f.sh("close",
         "head -c 10 >/dev/null; exec 0<&-; sleep 0.1; echo '{\"taskq\":\"result\",\"result\":1}'");
    auto r = f.run("close", payload);
    INFO(r.message);
    REQUIRE(r.ok());
    CHECK(r.result == 1);
  }
  SECTION("never read") {
    f.sh("ignore", "echo '{\"taskq\":\"result\",\"result\":2}'");
    auto r = f.run("ignore", payload);
    INFO(r.message);
    REQUIRE(r.ok());
    CHECK(r.result == 2);
  }
}

TEST_CASE("process: a command that cannot start fails clearly at once", "[process]") {
  process_fixture f;
  f.ex.add("missing", {.argv = {"/nonexistent/taskq-no-such-program"}});
  auto r = f.run("missing");
  CHECK(r.error == errc::handler_failed);
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("/nonexistent/taskq-no-such-program") != std::string::npos);
  CHECK(r.message.find("No such file or directory") != std::string::npos);

  f.ex.add("unknown", {.argv = {"taskq-no-such-command"}});
  r = f.run("unknown");
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("'taskq-no-such-command' was not found in PATH") != std::string::npos);

  f.ex.add("baddir", {.argv = {"true"}, .working_directory = "/nonexistent/dir"});
  r = f.run("baddir");
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("chdir failed (working directory '/nonexistent/dir')") != std::string::npos);

  r = f.run("unregistered");
  CHECK(r.error == errc::handler_not_found);
  CHECK(f.ex.children() == 0);
}

TEST_CASE("process: bad commands are refused naming the field", "[process]") {
  process_fixture f;
  error_code ec;
  std::string detail;
  f.ex.add("x", {}, ec, &detail);
  CHECK(ec == errc::invalid_option);
  CHECK(detail.find("'argv'") != std::string::npos);
  CHECK_FALSE(f.ex.has_command("x"));
  CHECK_THROWS_WITH(f.ex.add("x", {.argv = {"true"}, .output_cap = 0}),
                    Catch::Contains("'output_cap'"));
  CHECK_THROWS_WITH(f.ex.add("x", {.argv = {"true"}, .kill_grace = -std::chrono::seconds(1)}),
                    Catch::Contains("'kill_grace'"));
  CHECK_THROWS_WITH(f.ex.add("x", {.argv = {"true"}, .env = {{"A=B", "c"}}}),
                    Catch::Contains("'env'"));
}

TEST_CASE("process: the example helpers speak the protocol", "[process]") {
  process_fixture f;
  auto script = GENERATE(as<std::string>{}, "taskq_child.sh", "taskq_child.py");
  // The Python helper runs with the system interpreter whatever python3 PATH finds first.
  if (script == "taskq_child.py")
    f.ex.add("shout", {.argv = {"/usr/bin/python3", TASKQ_EXAMPLES_DIR "/" + script}});
  else
    f.ex.add("shout", {.argv = {TASKQ_EXAMPLES_DIR "/" + script}});
  auto r = f.run("shout", {{"text", "hello"}});
  INFO(script << ": " << r.message);
  REQUIRE(r.ok());
  CHECK(r.result == json{{"shouted", "HELLO"}});
  CHECK(f.hooks->progress.size() == 2);
  auto log = f.hooks->all_log();
  CHECK(log.find("attempt 1") != std::string::npos);
  CHECK(log.find("stdout: this line is not protocol") != std::string::npos);
  r = f.run("shout", json::object());
  CHECK_FALSE(r.retryable);
  CHECK(r.message.find("payload has no \"text\" string") != std::string::npos);
}

TEST_CASE("process: no zombies after 1000 runs", "[process]") {
  process_fixture f;
  f.ex.add("true", {.argv = {"/bin/true"}});
  constexpr int total = 1000, window = 16;
  int started = 0, ok = 0, finished = 0;
  std::vector<run_promise> live;
  REQUIRE(run_until(
      f.io,
      [&] {
        for (auto it = live.begin(); it != live.end();) {
          if (it->done()) {
            ok += it->result()->ok();
            ++finished;
            it = live.erase(it);
          } else {
            ++it;
          }
        }
        while (started < total && live.size() < window) {
          live.push_back(f.ex.execute(f.request("true")));
          ++started;
        }
        return finished == total;
      },
      120s));
  CHECK(ok == total);
  REQUIRE(run_until(f.io, [&] { return f.ex.children() == 0; }));
  errno = 0;
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);
  CHECK(errno == ECHILD);
  std::optional<bool> waited;
  f.ex.async_wait_children([&] { waited = true; });
  REQUIRE(run_until(f.io, [&] { return waited.has_value(); }));
}

}  // namespace taskq::test
