// The Backend seam's generic composition: fused enqueue, fetch and complete over any separate
// Queue + Store pair. (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

struct composed_backend::state : std::enable_shared_from_this<state> {
  asio::any_io_executor ex;
  taskq::queue& q;
  taskq::store& s;
  clock& clk;
  logger log;

  state(asio::any_io_executor e, taskq::queue& qq, taskq::store& ss, composed_backend_options o)
      : ex(std::move(e)),
        q(qq),
        s(ss),
        clk(o.time ? *o.time : default_clock()),
        log(std::move(o.log)) {}

  // The completion of a follow-up nobody waits for: a failure goes to the log.
  auto log_failure(const char* what) {
    return [self = shared_from_this(), what](error_code ec, auto&&...) {
      if (ec) self->log.error("{}: {}", what, ec.message());
    };
  }

  void give_back(const lease& l) {
    release_params rp;
    rp.id = l.id;
    rp.token = l.token;
    rp.keep_position = true;
    q.async_release(std::move(rp), log_failure("give back: release"));
  }

  // Puts a task whose attempt ended in a retry (or a give-back) back at `available_at`. If the
  // lease lapsed meanwhile (its entry went back to ready at the old time), take it out and
  // push it again with the new time, so a retry's backoff holds.
  void requeue(const lease& l, bool keep_position, time_point available_at) {
    release_params rp;
    rp.id = l.id;
    rp.token = l.token;
    rp.keep_position = keep_position;
    rp.available_at = available_at;
    q.async_release(std::move(rp), [self = shared_from_this(), l, available_at](error_code ec) {
      if (ec && ec != errc::not_leased) self->log.error("task {}: release: {}", l.id, ec.message());
      if (ec != errc::not_leased) return;
      self->q.async_remove(l.id, [self, l, available_at](error_code rec, bool removed) {
        if (rec) self->log.error("task {}: requeue: {}", l.id, rec.message());
        if (!removed) return;  // leased by someone else: its claim decides
        push_params p;
        p.entries.push_back({l.id, l.queue, l.type, l.concurrency_key, l.priority, available_at});
        self->q.async_push(std::move(p), self->log_failure("requeue: push"));
      });
    });
  }
};

fetch_result detail::pair_claimed(std::vector<lease>& kept, claim_result&& r,
                                  std::vector<lease>& finished) {
  // A store answers in the order it was asked (searching on from the last match finds each
  // lease at once); any order still works.
  std::size_t cursor = 0;
  auto lease_of = [&](const std::string& id) -> lease* {
    for (std::size_t n = 0; n < kept.size(); ++n, ++cursor) {
      if (cursor == kept.size()) cursor = 0;
      if (kept[cursor].id == id) return &kept[cursor];
    }
    return nullptr;
  };
  for (const auto& id : r.skipped)
    if (auto* l = lease_of(id)) finished.push_back(*l);
  for (const auto& rec : r.dropped)
    if (auto* l = lease_of(rec.id)) finished.push_back(*l);
  fetch_result out;
  out.claimed.reserve(r.claimed.size());
  cursor = 0;
  for (auto& rec : r.claimed) {
    auto* l = lease_of(rec.id);
    if (!l) continue;  // not asked for: a store's bug, ignore
    // Built in place (no temporary record to move and destroy; clang 14 lacks parenthesized
    // aggregate initialisation, so the members are assigned).
    auto& f = out.claimed.emplace_back();
    f.held = std::move(*l);
    f.record = std::move(rec);
  }
  out.dropped = std::move(r.dropped);
  out.skipped = std::move(r.skipped);
  return out;
}

composed_backend::composed_backend(asio::any_io_executor ex, taskq::queue& q, taskq::store& s,
                                   composed_backend_options opts)
    : state_(std::make_shared<state>(std::move(ex), q, s, std::move(opts))) {}

composed_backend::~composed_backend() = default;

taskq::queue& composed_backend::get_queue() noexcept {
  return state_->q;
}
taskq::store& composed_backend::get_store() noexcept {
  return state_->s;
}

void composed_backend::do_enqueue(enqueue_params p, handler<void(error_code)> h) {
  auto st = state_;
  // A store that queues what it inserts does both in one write (nothing to undo, nothing to
  // orphan if this process dies in between); otherwise insert, then push.
  push_params push;
  const bool fed = st->q.fed_by(st->s);
  if (!fed) {
    push.entries.reserve(p.records.size());
    for (const auto& r : p.records) push.entries.push_back(entry_of(r));
  }
  st->s.async_insert(
      std::move(p.records), asio::bind_executor(st->ex, [st, fed, push = std::move(push),
                                                         h = std::move(h)](error_code ec) mutable {
        if (ec || fed) return detail::dispatch_completion(std::move(h), st->ex, ec);
        std::vector<std::string> ids;
        ids.reserve(push.entries.size());
        for (const auto& e : push.entries) ids.push_back(e.id);
        st->q.async_push(
            std::move(push), [st, ids = std::move(ids), h = std::move(h)](error_code ec) mutable {
              if (!ec) return detail::dispatch_completion(std::move(h), st->ex, ec);
              // Undo the insert so nothing is half-written.
              task_filter f;
              f.ids = std::move(ids);
              st->s.async_remove(std::move(f), [st, ec, h = std::move(h)](
                                                   error_code, std::vector<std::string>) mutable {
                detail::dispatch_completion(std::move(h), st->ex, ec);
              });
            });
      }));
}

void composed_backend::do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) {
  auto st = state_;
  reserve_params rp;
  rp.queues = std::move(p.queues);
  rp.max = p.max;
  rp.lease_for = p.lease_for;
  rp.wait = p.wait;
  rp.skip_types = std::move(p.skip_types);
  rp.skip_keys = std::move(p.skip_keys);
  // The caller's cancellation reaches the reservation (the only step that waits).
  auto slot = asio::get_associated_cancellation_slot(h);
  st->q.async_reserve(
      std::move(rp),
      asio::bind_cancellation_slot(
          slot, asio::bind_executor(st->ex, [st, admit = std::move(p.admit),
                                             lease_for = p.lease_for, h = std::move(h)](
                                                error_code ec, std::vector<lease> leases) mutable {
            if (ec && leases.empty())
              return detail::dispatch_completion(std::move(h), st->ex, ec, fetch_result{});
            claim_params cp;
            cp.now = st->clk.now();
            cp.ids.reserve(leases.size());
            std::vector<lease> kept;
            kept.reserve(leases.size());
            for (auto& l : leases) {
              if (admit && !admit(l)) {
                st->give_back(l);  // original position; a later round (or another worker) takes it
                continue;
              }
              cp.ids.push_back(l.id);
              kept.push_back(std::move(l));
            }
            if (kept.empty())
              return detail::dispatch_completion(std::move(h), st->ex, error_code{},
                                                 fetch_result{});
            const auto reserved_at = cp.now;  // about when the leases were taken
            st->s.async_claim(
                std::move(cp),
                asio::bind_executor(st->ex, [st, kept = std::move(kept), reserved_at, lease_for,
                                             h = std::move(h)](error_code ec,
                                                               claim_result r) mutable {
                  if (ec) {
                    for (const auto& l : kept) st->give_back(l);
                    return detail::dispatch_completion(std::move(h), st->ex, ec, fetch_result{});
                  }
                  std::vector<lease> done;  // dropped and skipped: out of the queue
                  auto out = detail::pair_claimed(kept, std::move(r), done);
                  if (!done.empty())
                    st->q.async_ack(std::move(done), st->log_failure("dropped: ack"));
                  if (out.claimed.empty() || st->clk.now() - reserved_at < lease_for / 3)
                    return detail::dispatch_completion(std::move(h), st->ex, error_code{},
                                                       std::move(out));
                  // The claim's write was slow (a journal flush, a round trip): renew the
                  // leases before the caller's renewals take over, and leave out any that lapsed
                  // and went to another holder meanwhile (its claim decides).
                  std::vector<lease> renew;
                  renew.reserve(out.claimed.size());
                  for (const auto& f : out.claimed) renew.push_back(f.held);
                  st->q.async_extend(
                      std::move(renew), lease_for,
                      asio::bind_executor(st->ex,
                                          [st, out = std::move(out), h = std::move(h)](
                                              error_code ec, std::vector<bool> kept) mutable {
                                            std::size_t n = 0;
                                            for (std::size_t i = 0; i < out.claimed.size(); ++i) {
                                              if (!ec && i < kept.size() && !kept[i]) continue;
                                              if (n != i)
                                                out.claimed[n] = std::move(out.claimed[i]);
                                              ++n;
                                            }
                                            out.claimed.resize(n);
                                            detail::dispatch_completion(
                                                std::move(h), st->ex, error_code{}, std::move(out));
                                          }));
                }));
          })));
}

void composed_backend::do_complete(complete_params p,
                                   handler<void(error_code, std::vector<update_result>)> h) {
  auto st = state_;
  std::vector<task_update> updates;
  updates.reserve(p.completions.size());
  std::vector<lease> leases;
  leases.reserve(p.completions.size());
  std::vector<bool> keep_position;
  keep_position.reserve(p.completions.size());
  for (auto& c : p.completions) {
    updates.push_back(std::move(c.update));
    leases.push_back(std::move(c.held));
    keep_position.push_back(c.keep_position);
  }
  // What each update does to its queue entry, kept for after the store has answered.
  struct target {
    task_status to;
    time_point available_at;
  };
  std::vector<target> targets;
  targets.reserve(updates.size());
  for (const auto& u : updates) targets.push_back({u.to, u.available_at.value_or(u.now)});
  st->s.async_update_batch(
      std::move(updates),
      asio::bind_executor(
          st->ex, [st, leases = std::move(leases), keep_position = std::move(keep_position),
                   targets = std::move(targets), h = std::move(h)](
                      error_code batch_ec, std::vector<update_result> results) mutable {
            if (batch_ec) {
              // Nothing recorded: give the leases back so the tasks run again rather than hang as
              // running (the records still say running; the next claim counts a lost attempt).
              for (const auto& l : leases) st->give_back(l);
              return detail::dispatch_completion(std::move(h), st->ex, batch_ec,
                                                 std::move(results));
            }
            const bool store_removes_finished = st->q.fed_by(st->s);
            std::vector<lease> acks;
            for (std::size_t i = 0; i < leases.size(); ++i) {
              const error_code ec = i < results.size() ? results[i].error : errc::io_error;
              const auto to = targets[i].to;
              if (!ec) {
                if (to == task_status::pending)
                  st->requeue(leases[i], keep_position[i], targets[i].available_at);
                else if (!is_terminal(to) || !store_removes_finished)
                  acks.push_back(std::move(leases[i]));  // else the store's write took it out
              } else if (ec != errc::status_conflict && ec != errc::not_found) {
                st->give_back(leases[i]);  // could not record it: run it again
              }
              // status_conflict / not_found: the entry belongs to whoever holds the task now.
            }
            if (!acks.empty()) st->q.async_ack(std::move(acks), st->log_failure("finished: ack"));
            results.resize(leases.size(), update_result{errc::io_error, std::nullopt});
            detail::dispatch_completion(std::move(h), st->ex, error_code{}, std::move(results));
          }));
}

}  // namespace taskq
