// Admin requests (taskq/admin.hpp): decoding, execution through a client (tasks, queues) or a
// scheduler (schedules), and the response encoding.
#include <taskq/admin.hpp>
#include <taskq/client.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/post.hpp>

#include <fmt/format.h>

namespace taskq {

namespace {

using reply_fn = std::function<void(json)>;

/// A malformed request: the detail names the field.
struct bad_request {
  std::string detail;
};

const json& member(const json& r, const char* name, json::value_t type, const char* what) {
  auto it = r.find(name);
  bool ok = it != r.end() && (it->type() == type ||
                              (type == json::value_t::number_integer && it->is_number_unsigned()));
  if (!ok) throw bad_request{fmt::format("request field '{}' must be {}", name, what)};
  return *it;
}

std::string text(const json& r, const char* name) {
  auto s = member(r, name, json::value_t::string, "a non-empty string").get<std::string>();
  if (s.empty())
    throw bad_request{fmt::format("request field '{}' must be a non-empty string", name)};
  return s;
}

std::int64_t integer(const json& r, const char* name) {
  return member(r, name, json::value_t::number_integer, "an integer").get<std::int64_t>();
}

json ok(json result = json::object()) {
  return json{{"ok", true}, {"result", std::move(result)}};
}

task_spec spec_from(const json& j) {
  if (!j.is_object()) throw bad_request{"request field 'task' must be an object"};
  task_spec s{.type = text(j, "type")};
  if (j.contains("queue")) s.queue = text(j, "queue");
  if (j.contains("payload")) s.payload = j["payload"];
  if (j.contains("priority")) {
    auto p = integer(j, "priority");
    if (p < INT32_MIN || p > INT32_MAX)
      throw bad_request{"request field 'priority' is out of range"};
    s.priority = static_cast<int>(p);
  }
  if (j.contains("delay_us")) s.delay = std::chrono::microseconds(integer(j, "delay_us"));
  return s;
}

/// What one request needs alive until it completes: the client (and a scheduler over it,
/// destroyed first) unless the target has its own, and the target's keep-alive.
struct session {
  std::shared_ptr<void> keep_alive;
  std::unique_ptr<client> own_client;
  client* c = nullptr;  // the target's, or own_client
  std::unique_ptr<taskq::scheduler> own_scheduler;
};

void run_schedule_op(const std::shared_ptr<session>& ses, taskq::scheduler& sched,
                     const std::string& op, const std::string& name, bool cancel_runs,
                     reply_fn done) {
  auto fail_or = [done](error_code ec, const std::string& name, json result) {
    done(ec ? admin_error_response(ec, "schedule '" + name + "'") : ok(std::move(result)));
  };
  if (op == "schedule_pause" || op == "schedule_resume") {
    auto then = [ses, fail_or, name](error_code ec) { fail_or(ec, name, json::object()); };
    if (op == "schedule_pause")
      sched.async_pause(name, then);
    else
      sched.async_resume(name, then);
  } else if (op == "schedule_remove") {
    sched.async_remove(name, cancel_runs, [ses, fail_or, name](error_code ec, std::size_t n) {
      fail_or(ec, name, json{{"cancelled", n}});
    });
  } else {
    sched.async_run_now(name, [ses, fail_or, name](error_code ec, std::string id) {
      fail_or(ec, name, json{{"id", id}});
    });
  }
}

void execute(const admin_target& t, const json& req, const std::shared_ptr<session>& ses,
             reply_fn done) {
  if (!req.is_object()) throw bad_request{"a request must be a JSON object"};
  const auto op = text(req, "op");
  auto& c = *ses->c;
  auto record_reply = [ses, done](error_code ec, task_record r) {
    done(ec ? admin_error_response(ec, r.id) : ok(json{{"record", to_json(r)}}));
  };
  if (op == "enqueue") {
    c.async_enqueue(spec_from(member(req, "task", json::value_t::object, "an object")),
                    [ses, done](error_code ec, std::string id) {
                      done(ec ? admin_error_response(ec) : ok(json{{"id", id}}));
                    });
  } else if (op == "cancel" || op == "retry") {
    auto id = text(req, "id");
    auto then = [record_reply, id](error_code ec, task_record r) {
      if (r.id.empty()) r.id = id;
      record_reply(ec, std::move(r));
    };
    if (op == "cancel")
      c.async_cancel(id, then);
    else
      c.async_retry(id, then);
  } else if (op == "delete") {
    auto id = text(req, "id");
    c.async_remove(
        task_filter{.ids = {id}}, [ses, done, id](error_code ec, std::vector<std::string> ids) {
          if (ec) return done(admin_error_response(ec, id));
          if (!ids.empty()) return done(ok(json{{"deleted", ids}}));
          // Nothing deleted: no such task, or it is running (remove leaves running tasks alone).
          ses->c->async_get(id, [ses, done, id](error_code gec, task_record) {
            done(admin_error_response(gec ? gec : error_code(errc::illegal_transition), id));
          });
        });
  } else if (op == "prune") {
    auto us = integer(req, "older_than_us");
    if (us < 0) throw bad_request{"request field 'older_than_us' must not be negative"};
    c.async_prune(std::chrono::microseconds(us), [ses, done](error_code ec, std::size_t n) {
      done(ec ? admin_error_response(ec) : ok(json{{"pruned", n}}));
    });
  } else if (op == "queue_pause" || op == "queue_resume") {
    auto q = text(req, "queue");
    c.async_set_paused(q, op == "queue_pause", [ses, done, q](error_code ec) {
      done(ec ? admin_error_response(ec, "queue '" + q + "'") : ok());
    });
  } else if (op.starts_with("schedule_") && (op == "schedule_pause" || op == "schedule_resume" ||
                                             op == "schedule_remove" || op == "schedule_run")) {
    auto name = text(req, "name");
    bool cancel_runs = req.contains("cancel_runs") &&
                       member(req, "cancel_runs", json::value_t::boolean, "a boolean").get<bool>();
    if (t.scheduler) return run_schedule_op(ses, *t.scheduler, op, name, cancel_runs, done);
    if (!t.schedules) throw bad_request{"this target has no schedule store ('op' " + op + ")"};
    // No scheduler runs here: one over the store takes the stored schedule on (with its
    // progress), applies the operation (which saves it) and goes away.
    ses->own_scheduler = std::make_unique<taskq::scheduler>(
        c, scheduler_options{.store = t.schedules, .adopt_stored = false});
    t.schedules->async_load(
        name, [ses, op, name, cancel_runs, done](error_code ec, std::optional<schedule_record> r) {
          if (!ec && !r) ec = errc::schedule_not_found;
          if (ec) return done(admin_error_response(ec, "schedule '" + name + "'"));
          auto& sched = *ses->own_scheduler;
          sched.async_ensure_schedule(
              r->definition, [ses, op, name, cancel_runs, done](error_code ec, ensure_result) {
                if (ec) return done(admin_error_response(ec, "schedule '" + name + "'"));
                run_schedule_op(ses, *ses->own_scheduler, op, name, cancel_runs, done);
              });
        });
  } else {
    throw bad_request{"request field 'op' names no operation: '" + op + "'"};
  }
}

}  // namespace

json admin_error_response(const error_code& ec, const std::string& detail) {
  json e{{"category", ec.category().name()}, {"code", ec.value()}, {"message", ec.message()}};
  if (!detail.empty()) e["detail"] = detail;
  return json{{"ok", false}, {"error", std::move(e)}};
}

json admin_result(const json& response, error_code& ec, std::string& detail) {
  ec = {};
  detail.clear();
  auto okv = response.is_object() ? response.find("ok") : response.end();
  if (!response.is_object() || okv == response.end() || !okv->is_boolean()) {
    ec = errc::invalid_request;
    detail = "response field 'ok' is missing";
    return {};
  }
  if (okv->get<bool>()) {
    auto r = response.find("result");
    return r != response.end() && r->is_object() ? *r : json::object();
  }
  const json e = response.value("error", json::object());
  const auto code = e.value("code", 0);
  if (e.value("category", "") == category().name() && code != 0) {
    ec = error_code(code, category());
    detail = e.value("detail", "");
  } else {
    ec = errc::invalid_request;
    detail = e.value("message", "an error without a taskq code");
  }
  return {};
}

void do_admin(admin_target t, json request, asio::any_completion_handler<void(json)> h) {
  auto ex = t.ex;
  auto ses = std::make_shared<session>();
  ses->keep_alive = t.keep_alive;
  auto hp = std::make_shared<asio::any_completion_handler<void(json)>>(std::move(h));
  // Always posted (never inline); the session goes in a later handler, outside the
  // completions of its own client and scheduler.
  auto done = [ex, hp, weak = std::weak_ptr<session>(ses)](json r) {
    asio::post(ex, asio::append(std::move(*hp), std::move(r)));
    if (auto s = weak.lock()) asio::post(ex, [s] {});
  };
  if (!t.queue || !t.store) {
    done(admin_error_response(errc::invalid_option, "admin_target needs a queue and a store"));
    return;
  }
  if (t.client) {
    ses->c = t.client;
  } else {
    ses->own_client =
        std::make_unique<client>(ex, *t.queue, *t.store, client_options{.time = t.time});
    ses->c = ses->own_client.get();
  }
  try {
    execute(t, request, ses, done);
  } catch (const bad_request& e) {
    done(admin_error_response(errc::invalid_request, e.detail));
  } catch (const std::exception& e) {  // e.g. json type errors in a payload
    done(admin_error_response(errc::invalid_request, e.what()));
  }
}

}  // namespace taskq
