// Clocks and the in-memory Queue and Store.
#include <taskq/backends/memory/backend.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/clock.hpp>
#include <taskq/detail/backend_alarm.hpp>
#include <taskq/detail/emplace.hpp>
#include <taskq/detail/record_ops.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/intrusive/set.hpp>

#include <algorithm>
#include <list>
#include <unordered_map>
#include <unordered_set>

namespace taskq {

// --- clocks ---------------------------------------------------------------------------------

void real_clock::do_wait_until(asio::any_io_executor ex, time_point at,
                               asio::any_completion_handler<void(error_code)> handler) {
  // The steady clock cannot be set back, so waits measure the remaining interval on it.
  auto timer = std::make_shared<asio::steady_timer>(ex);
  auto remaining = at - std::chrono::system_clock::now();
  timer->expires_after(std::chrono::duration_cast<asio::steady_timer::duration>(
      std::max(remaining, duration::zero())));
  // Keep the timer alive with the wait, and keep the handler's executor and cancellation
  // slot, so cancelling the wait cancels the timer.
  auto slot = asio::get_associated_cancellation_slot(handler);
  auto hex = asio::get_associated_executor(handler, ex);
  timer->async_wait(asio::bind_cancellation_slot(
      slot, asio::bind_executor(hex, [timer, slot, h = std::move(handler)](error_code ec) mutable {
        // The timer's cancellation handler in the caller's slot points into this timer, which
        // dies with this lambda: take it out before a later emit can reach it. This runs on
        // the handler's executor, where its owner emits, so clearing cannot race an emit.
        if (slot.is_connected()) slot.clear();
        std::move(h)(ec);
      })));
}

clock& default_clock() noexcept {
  static real_clock instance;
  return instance;
}

struct manual_clock::waiter {
  asio::any_completion_handler<void(error_code)> handler;
  asio::any_io_executor ex;  // work-tracked: a pending wait keeps its io_context busy
};

manual_clock::manual_clock(time_point start) : now_(start) {}

manual_clock::~manual_clock() {
  // Waits still pending are abandoned (their handlers destroyed unrun), as when an
  // io_context is destroyed with operations outstanding.
  waits_.clear();
}

time_point manual_clock::now() const noexcept {
  std::lock_guard lock(mutex_);
  return now_;
}

void manual_clock::advance(duration d) {
  {
    std::lock_guard lock(mutex_);
    now_ += d;
  }
  fire_due();
}

void manual_clock::set(time_point t) {
  {
    std::lock_guard lock(mutex_);
    now_ = std::max(now_, t);
  }
  fire_due();
}

std::size_t manual_clock::pending_waits() const {
  std::lock_guard lock(mutex_);
  return waits_.size();
}

std::optional<time_point> manual_clock::next_deadline() const {
  std::lock_guard lock(mutex_);
  if (waits_.empty()) return std::nullopt;
  return waits_.begin()->first;
}

void manual_clock::fire_due() {
  std::vector<std::unique_ptr<waiter>> due;
  {
    std::lock_guard lock(mutex_);
    auto end = waits_.upper_bound(now_);
    for (auto it = waits_.begin(); it != end; ++it) due.push_back(std::move(it->second.second));
    waits_.erase(waits_.begin(), end);
  }
  for (auto& w : due) complete(std::move(w), {});
}

void manual_clock::complete(std::unique_ptr<waiter> w, error_code ec) {
  // The cancellation handler stays installed (clearing could race with an emit); it finds
  // no waiter with its id and does nothing.
  auto ex = w->ex;
  detail::post_completion(std::move(w->handler), ex, ec);
}

void manual_clock::do_wait_until(asio::any_io_executor ex, time_point at,
                                 asio::any_completion_handler<void(error_code)> handler) {
  auto slot = asio::get_associated_cancellation_slot(handler);
  // Construct, never move-assign, an any_completion_handler: Boost 1.81's move assignment
  // copies through its converting constructor and recurses without end.
  auto w = std::make_unique<waiter>(
      waiter{std::move(handler), asio::prefer(ex, asio::execution::outstanding_work.tracked)});
  std::uint64_t id;
  {
    std::lock_guard lock(mutex_);
    if (at <= now_) {
      // Already due: complete (posted) at once.
    } else {
      id = ++next_id_;
      if (slot.is_connected()) {
        slot.assign([this, id, at](asio::cancellation_type) {
          std::unique_ptr<waiter> found;
          {
            std::lock_guard lock(mutex_);
            auto [b, e] = waits_.equal_range(at);
            for (auto it = b; it != e; ++it) {
              if (it->second.first == id) {
                found = std::move(it->second.second);
                waits_.erase(it);
                break;
              }
            }
          }
          // The slot's handler is running: don't clear the slot from inside it.
          if (found) {
            auto fex = found->ex;
            detail::post_completion(std::move(found->handler), fex,
                                    error_code(asio::error::operation_aborted));
          }
        });
      }
      waits_.emplace(at, std::make_pair(id, std::move(w)));
      return;
    }
  }
  complete(std::move(w), {});
}

namespace memory {

// --- queue ----------------------------------------------------------------------------------

namespace {

// An item is linked into exactly one of the ready, delayed and leased sets at a time, by its
// one intrusive hook: moving between them allocates nothing.
using item_hook = boost::intrusive::set_member_hook<>;

struct item {
  item_hook link;
  queue_entry entry;
  std::uint64_t seq = 0;
  enum class where { ready, delayed, leased } state = where::ready;
  time_point lease_expires{};
  std::uint64_t token = 0;
  // Pushed again while leased (an explicit retry racing the old holder's ack): the ack puts
  // it back with this entry instead of removing it.
  std::unique_ptr<queue_entry> repushed;  // rare: kept out of line so items stay small
  std::uint64_t push_stamp = 0;           // the last push that named this id (duplicate check)

  // Puts the re-pushed entry in place, keeping the id string itself (the same text): the
  // items map's key views it.
  void take_repushed() {
    auto own_id = std::move(entry.id);
    entry = std::move(*repushed);
    entry.id = std::move(own_id);
    repushed.reset();
  }
};

// Ready order: higher priority first, then FIFO by sequence number.
struct ready_less {
  bool operator()(const item& a, const item& b) const noexcept {
    if (a.entry.priority != b.entry.priority) return a.entry.priority > b.entry.priority;
    return a.seq < b.seq;
  }
};
struct delayed_less {
  bool operator()(const item& a, const item& b) const noexcept {
    if (a.entry.available_at != b.entry.available_at)
      return a.entry.available_at < b.entry.available_at;
    return a.seq < b.seq;
  }
};
struct lease_less {
  bool operator()(const item& a, const item& b) const noexcept {
    if (a.lease_expires != b.lease_expires) return a.lease_expires < b.lease_expires;
    return a.seq < b.seq;
  }
};
template <class Less>
using item_set =
    boost::intrusive::multiset<item, boost::intrusive::member_hook<item, item_hook, &item::link>,
                               boost::intrusive::compare<Less>,
                               boost::intrusive::constant_time_size<true>>;

using completion = std::function<void()>;

}  // namespace

struct queue::impl : std::enable_shared_from_this<queue::impl> {
  asio::any_io_executor ex;
  clock& clk;
  mutable std::mutex mutex;
  // Keyed by a view of the item's own entry.id (no second copy of every id).
  std::unordered_map<std::string_view, item> items;
  // Declared after `items`, so destroyed first: they unlink every item before it goes.
  std::unordered_map<std::string, item_set<ready_less>> ready;  // by queue name
  item_set<delayed_less> delayed;
  item_set<lease_less> leased;
  std::unordered_set<std::string> paused;
  std::uint64_t next_seq = 0;
  std::uint64_t next_token = 0;
  std::uint64_t next_push_stamp = 0;

  struct parked {
    std::uint64_t id;
    reserve_params params;
    asio::any_completion_handler<void(error_code, std::vector<lease>)> handler;
    asio::any_io_executor work;  // keeps the handler's io_context busy while parked
  };
  std::list<parked> waiting;
  std::uint64_t next_parked_id = 0;
  // The single wait that wakes parked reservations for a delay or lease running out (set up
  // by queue::queue, which has the shared state to point it at).
  std::shared_ptr<detail::backend_alarm> alarm;

  impl(asio::any_io_executor e, clock& c) : ex(std::move(e)), clk(c) {}

  void make_ready(item& it) {
    it.state = item::where::ready;
    // A pushed item has the highest seq so far, so it usually goes last among its priority:
    // the end() hint makes that O(1) (a bulk push of a million entries on recovery), and
    // costs one comparison when it is wrong.
    auto& set = ready[it.entry.queue];
    set.insert(set.end(), it);
  }

  void place(item& it, time_point now) {
    if (it.entry.available_at > now) {
      it.state = item::where::delayed;
      delayed.insert(it);
    } else {
      make_ready(it);
    }
  }

  // Moves what became visible (delays elapsed, leases expired) into the ready sets.
  void promote(time_point now) {
    while (!delayed.empty() && delayed.begin()->entry.available_at <= now) {
      item* it = &*delayed.begin();
      delayed.erase(delayed.begin());
      make_ready(*it);
    }
    while (!leased.empty() && leased.begin()->lease_expires <= now) {
      item* it = &*leased.begin();
      leased.erase(leased.begin());
      if (it->repushed) {  // pushed again meanwhile: that entry wins
        it->token = 0;
        it->take_repushed();
        place(*it, now);
        continue;
      }
      // Same priority and seq: back in its original position. It keeps the token until it
      // is reserved again, so a late extend by its holder can still take it back.
      make_ready(*it);
    }
  }

  std::vector<lease> take(const reserve_params& p, time_point now) {
    std::vector<lease> out;
    std::unordered_set<std::string_view> skip_types(p.skip_types.begin(), p.skip_types.end());
    std::unordered_set<std::string_view> skip_keys(p.skip_keys.begin(), p.skip_keys.end());
    auto skipped = [&](const item* it) {
      return (!skip_types.empty() && skip_types.count(it->entry.type)) ||
             (!skip_keys.empty() && !it->entry.concurrency_key.empty() &&
              skip_keys.count(it->entry.concurrency_key));
    };
    // One cursor per served queue; the best head across them is taken each round.
    using set_t = item_set<ready_less>;
    struct cursor {
      set_t* set;
      set_t::iterator it;
    };
    std::vector<cursor> cursors;
    for (const auto& name : p.queues) {
      if (paused.count(name)) continue;
      auto f = ready.find(name);
      if (f == ready.end() || f->second.empty()) continue;
      if (std::any_of(cursors.begin(), cursors.end(), [&](auto& c) { return c.set == &f->second; }))
        continue;  // the same queue named twice
      cursors.push_back({&f->second, f->second.begin()});
    }
    // One allocation for the batch, not a doubling per power of two (a lease is large).
    std::size_t ready_count = 0;
    for (const auto& c : cursors) ready_count += c.set->size();
    out.reserve(std::min(p.max, ready_count));
    while (out.size() < p.max) {
      cursor* best = nullptr;
      for (auto& c : cursors) {
        while (c.it != c.set->end() && skipped(&*c.it)) ++c.it;
        if (c.it == c.set->end()) continue;
        if (!best || ready_less{}(*c.it, *best->it)) best = &c;
      }
      if (!best) break;
      item* it = &*best->it;
      best->it = best->set->erase(best->it);
      it->state = item::where::leased;
      it->lease_expires = now + p.lease_for;
      it->token = ++next_token;
      leased.insert(*it);
      out.push_back({it->entry.id, it->entry.queue, it->entry.type, it->entry.concurrency_key,
                     it->entry.priority, it->lease_expires, it->token});
    }
    return out;
  }

  // Satisfies parked reservations that can now be served. Called with the mutex held;
  // completions are collected and run after unlocking.
  void serve_parked(time_point now, std::vector<completion>& done) {
    if (waiting.empty()) return;
    promote(now);
    for (auto it = waiting.begin(); it != waiting.end();) {
      auto leases = take(it->params, now);
      if (leases.empty()) {
        ++it;
        continue;
      }
      auto h = std::make_shared<parked>(std::move(*it));
      it = waiting.erase(it);
      // Its cancellation handler stays installed (clearing could race with the owner's
      // emit); it finds no parked entry with its id and does nothing.
      done.push_back([h, leases = std::move(leases)]() mutable {
        detail::post_completion(std::move(h->handler), h->work, error_code{}, std::move(leases));
      });
    }
    rearm();
  }

  // Keeps one clock wait armed at the next moment something becomes visible, while any
  // reservation is parked.
  void rearm() {
    std::optional<time_point> next;
    if (!waiting.empty()) {
      if (!delayed.empty()) next = delayed.begin()->entry.available_at;
      if (!leased.empty()) {
        auto l = leased.begin()->lease_expires;
        next = next ? std::min(*next, l) : l;
      }
    }
    alarm->arm(next);
  }

  // The operations' work, with the mutex held (completions of parked reservations served on
  // the way go to `done`, run after unlocking).
  error_code push(push_params& p, std::vector<completion>& done);
  std::size_t ack(const std::vector<lease>& leases, std::vector<completion>& done);
  error_code release(release_params& p, std::vector<completion>& done);
  bool remove(const std::string& id);

  // The alarm went off: serve what became visible.
  void on_alarm() {
    std::vector<completion> done;
    {
      std::lock_guard lock(mutex);
      serve_parked(clk.now(), done);
    }
    for (auto& d : done) d();
  }
};

queue::queue(asio::any_io_executor ex, clock& clk)
    : impl_(std::make_shared<impl>(std::move(ex), clk)) {
  impl_->alarm = detail::backend_alarm::make(impl_->ex, clk, [weak = std::weak_ptr<impl>(impl_)] {
    if (auto self = weak.lock()) self->on_alarm();
  });
}

queue::~queue() {
  // Parked reservations are abandoned with the queue, like operations of a destroyed I/O
  // object; detach the alarm first so it cannot touch freed state.
  std::lock_guard lock(impl_->mutex);
  impl_->alarm->close();
  impl_->waiting.clear();
}

bool queue::is_paused(const std::string& queue_name) const {
  std::lock_guard lock(impl_->mutex);
  return impl_->paused.count(queue_name) != 0;
}

error_code queue::impl::push(push_params& p, std::vector<completion>& done) {
  error_code ec;
  auto now = clk.now();
  // All or nothing, with one hash lookup per entry (this is what recovery of a big file
  // store spends its time in): insert the new ids unplaced, then undo those insertions if
  // an entry turns out invalid or a duplicate.
  // Grow once for a big push instead of rehashing repeatedly; never shrink, which would
  // cost O(size) per small push.
  if (auto need = items.size() + p.entries.size();
      static_cast<double>(need) >
      static_cast<double>(items.bucket_count()) * items.max_load_factor())
    items.reserve(need);
  const auto stamp = ++next_push_stamp;  // marks the items this push reached
  // Iterators stay valid: the reserve above leaves room for every insertion without a rehash.
  std::vector<decltype(items)::iterator> slots;
  std::vector<std::size_t> added;  // entries whose id this push inserted
  slots.reserve(p.entries.size());
  added.reserve(p.entries.size());
  for (std::size_t k = 0; k < p.entries.size(); ++k) {
    const auto& e = p.entries[k];
    if (e.id.empty()) {
      ec = errc::blank_id;
      break;
    }
    if (e.queue.empty()) {
      ec = errc::blank_queue;
      break;
    }
    // A new item's key views the pushed entry's id until the entry moves into the item.
    auto [it, inserted] = items.try_emplace(std::string_view(e.id));
    item& i = it->second;
    // An existing id is accepted only if leased (a retry racing the holder's ack), and
    // only once per push; a second occurrence of a new id finds it stamped too.
    if (!inserted && (i.state != item::where::leased || i.push_stamp == stamp)) {
      ec = errc::duplicate_id;
      break;
    }
    i.push_stamp = stamp;
    if (inserted) added.push_back(k);
    slots.push_back(it);
  }
  if (ec) {
    for (auto k : added)
      items.erase(p.entries[k].id);  // by key: iterators may not outlive a rehash
  } else {
    for (std::size_t k = 0; k < slots.size(); ++k) {
      item& i = slots[k]->second;
      auto& e = p.entries[k];
      if (i.state == item::where::leased) {                        // new items are never leased
        i.repushed = std::make_unique<queue_entry>(std::move(e));  // takes effect at its ack
        continue;
      }
      i.entry = std::move(e);
      if (slots[k]->first.data() != i.entry.id.data()) {
        // A short id lives inside the string (SSO), so the move left the key viewing the
        // pushed entry: point it at the item's own (a node re-insert, no allocation).
        auto node = items.extract(slots[k]);
        node.key() = node.mapped().entry.id;
        items.insert(std::move(node));
      }
      i.seq = ++next_seq;
      place(i, now);
    }
    serve_parked(now, done);
  }
  return ec;
}

void queue::do_push(push_params p, handler<void(error_code)> h) {
  error_code ec;
  std::vector<completion> done;
  {
    std::lock_guard lock(impl_->mutex);
    ec = impl_->push(p, done);
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), impl_->ex, ec);
}

void queue::do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) {
  if (p.max == 0 || p.lease_for <= duration::zero()) {
    detail::post_completion(std::move(h), impl_->ex, error_code(errc::invalid_option),
                            std::vector<lease>{});
    return;
  }
  std::unique_lock lock(impl_->mutex);
  auto now = impl_->clk.now();
  impl_->promote(now);
  auto leases = impl_->take(p, now);
  if (!leases.empty() || !p.wait) {
    lock.unlock();
    detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(leases));
    return;
  }
  // Park until something can be served, or the caller cancels.
  auto id = ++impl_->next_parked_id;
  auto slot = asio::get_associated_cancellation_slot(h);
  asio::any_io_executor work = asio::prefer(impl_->ex, asio::execution::outstanding_work.tracked);
  impl_->waiting.push_back({id, std::move(p), std::move(h), work});
  if (slot.is_connected()) {
    std::weak_ptr<impl> weak = impl_;
    slot.assign([weak, id](asio::cancellation_type) {
      auto self = weak.lock();
      if (!self) return;
      std::unique_lock lock(self->mutex);
      auto it = std::find_if(self->waiting.begin(), self->waiting.end(),
                             [&](auto& w) { return w.id == id; });
      if (it == self->waiting.end()) return;
      auto parked = std::move(*it);
      self->waiting.erase(it);
      self->rearm();
      lock.unlock();
      detail::post_completion(std::move(parked.handler), parked.work,
                              error_code(asio::error::operation_aborted), std::vector<lease>{});
    });
  }
  impl_->rearm();
}

std::size_t queue::impl::ack(const std::vector<lease>& leases, std::vector<completion>& done) {
  std::size_t removed = 0;
  for (const auto& l : leases) {
    auto it = items.find(l.id);
    if (it == items.end()) continue;
    item& i = it->second;
    if (i.state != item::where::leased || i.token != l.token) continue;
    leased.erase(leased.iterator_to(i));
    ++removed;
    if (i.repushed) {
      // Pushed again while this lease was held: it is new work, queued behind its peers.
      i.take_repushed();
      i.token = 0;
      i.seq = ++next_seq;
      place(i, clk.now());
      continue;
    }
    items.erase(it);
  }
  serve_parked(clk.now(), done);
  return removed;
}

void queue::do_ack(std::vector<lease> leases, handler<void(error_code, std::size_t)> h) {
  std::size_t removed = 0;
  std::vector<completion> done;
  {
    std::lock_guard lock(impl_->mutex);
    removed = impl_->ack(leases, done);
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), impl_->ex, error_code{}, removed);
}

void queue::do_extend(std::vector<lease> leases, duration lease_for,
                      handler<void(error_code, std::vector<bool>)> h) {
  std::vector<bool> kept(leases.size(), false);
  {
    std::lock_guard lock(impl_->mutex);
    auto now = impl_->clk.now();
    impl_->promote(now);
    for (std::size_t k = 0; k < leases.size(); ++k) {
      auto it = impl_->items.find(leases[k].id);
      if (it == impl_->items.end()) continue;
      item& i = it->second;
      if (i.token == 0 || i.token != leases[k].token) continue;
      if (i.state == item::where::leased) {
        impl_->leased.erase(impl_->leased.iterator_to(i));
      } else if (i.state == item::where::ready) {
        // The lease ran out but nobody reserved the task since: its holder takes it back.
        auto& set = impl_->ready[i.entry.queue];
        set.erase(set.iterator_to(i));
        i.state = item::where::leased;
      } else {
        continue;
      }
      i.lease_expires = now + lease_for;
      impl_->leased.insert(i);
      kept[k] = true;
    }
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(kept));
}

error_code queue::impl::release(release_params& p, std::vector<completion>& done) {
  error_code ec;
  auto now = clk.now();
  promote(now);
  auto it = items.find(p.id);
  if (it == items.end() || it->second.state != item::where::leased || it->second.token != p.token) {
    ec = errc::not_leased;
  } else {
    item& i = it->second;
    leased.erase(leased.iterator_to(i));
    i.token = 0;
    if (i.repushed) {  // pushed again meanwhile: that entry wins over the holder's release
      i.take_repushed();
      p.available_at.reset();
    }
    if (p.available_at) i.entry.available_at = *p.available_at;
    if (!p.keep_position) i.seq = ++next_seq;
    place(i, now);
    serve_parked(now, done);
  }
  return ec;
}

void queue::do_release(release_params p, handler<void(error_code)> h) {
  error_code ec;
  std::vector<completion> done;
  {
    std::lock_guard lock(impl_->mutex);
    ec = impl_->release(p, done);
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), impl_->ex, ec);
}

bool queue::impl::remove(const std::string& id) {
  bool removed = false;
  auto it = items.find(id);
  if (it != items.end()) {
    item& i = it->second;
    switch (i.state) {
      case item::where::ready: {
        auto& set = ready[i.entry.queue];
        set.erase(set.iterator_to(i));
      } break;
      case item::where::delayed:
        delayed.erase(delayed.iterator_to(i));
        break;
      case item::where::leased:
        break;
    }
    if (i.state != item::where::leased) {
      items.erase(it);
      removed = true;
    }
  }
  return removed;
}

void queue::do_remove(std::string id, handler<void(error_code, bool)> h) {
  bool removed = false;
  {
    std::lock_guard lock(impl_->mutex);
    removed = impl_->remove(id);
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, removed);
}

void queue::do_set_paused(std::string queue_name, bool paused, handler<void(error_code)> h) {
  std::vector<completion> done;
  {
    std::lock_guard lock(impl_->mutex);
    if (paused) {
      impl_->paused.insert(std::move(queue_name));
    } else if (impl_->paused.erase(queue_name)) {
      impl_->serve_parked(impl_->clk.now(), done);
    }
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), impl_->ex, error_code{});
}

void queue::do_stats(std::string queue_name, handler<void(error_code, queue_stats)> h) {
  queue_stats s;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->promote(impl_->clk.now());
    for (const auto& [id, i] : impl_->items) {
      if (!queue_name.empty() && i.entry.queue != queue_name) continue;
      switch (i.state) {
        case item::where::ready:
          ++s.ready;
          break;
        case item::where::delayed:
          ++s.delayed;
          break;
        case item::where::leased:
          ++s.leased;
          break;
      }
    }
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, s);
}

// --- store ----------------------------------------------------------------------------------

struct store::impl {
  asio::any_io_executor ex;
  std::mutex mutex;
  // Keyed by a view of the record's own id (no second copy of it); a hash map, so nothing on
  // the hot path walks or grows an ordered index of every record (list sorts what it returns).
  using record_map = std::unordered_map<std::string_view, task_record>;
  record_map records;
  std::unordered_map<std::string, std::string> unique_holders;  // unique_key -> id
  task_counts counts;

  void count(const task_record& r, int delta) { counts.add(r, delta); }

  // Changes a record in place through `f` (which leaves it unchanged when it returns an
  // error), keeping counts and unique-key holders in step. In place: no record copy on the
  // hot path.
  template <class F>
  error_code mutate(task_record& slot, F&& f) {
    const auto old_status = slot.status;
    const bool old_holds = detail::holds_unique_key(slot);
    if (error_code ec = f(slot)) return ec;
    counts.move(slot, old_status);
    const bool new_holds = detail::holds_unique_key(slot);
    if (old_holds && !new_holds)
      unique_holders.erase(slot.unique_key);
    else if (!old_holds && new_holds)
      unique_holders[slot.unique_key] = slot.id;
    return {};
  }

  update_result update(const task_update& u);
  // The operations' work, with the mutex held.
  error_code insert(std::vector<task_record>& batch);  // all or nothing
  claim_result claim(claim_params& p);
  // The fused fetch's claim: each leased task claimed and paired with its lease in `out`; the
  // leases of dropped and skipped tasks go to `finished` (to be acked).
  void claim_leased(std::vector<lease>& kept, time_point now, fetch_result& out,
                    std::vector<lease>& finished);
  std::pair<detail::claim_outcome, record_map::iterator> claim_one(std::string_view id,
                                                                   time_point now);

  record_map::iterator erase(record_map::iterator it) {
    count(it->second, -1);
    if (detail::holds_unique_key(it->second)) unique_holders.erase(it->second.unique_key);
    return records.erase(it);
  }

  // Adds `r` unless its id is taken (then `r` is left as it was).
  std::pair<record_map::iterator, bool> emplace(task_record& r) {
    auto [it, inserted] = records.try_emplace(std::string_view(r.id), std::move(r));
    if (inserted && it->first.data() != it->second.id.data()) {
      // A short id lives inside the string (SSO), so the move left the key viewing the old
      // object: point the key at the stored record's id (a node re-insert, no allocation).
      auto node = records.extract(it);
      node.key() = node.mapped().id;
      it = records.insert(std::move(node)).position;
    }
    return {it, inserted};
  }
};

store::store(asio::any_io_executor ex) : impl_(std::make_unique<impl>()) {
  impl_->ex = std::move(ex);
}

store::~store() = default;

error_code store::impl::insert(std::vector<task_record>& batch) {
  error_code ec;
  auto& stored = records;
  // Grow once for a big batch; never for a small one (reserve would rehash every time).
  if (auto need = stored.size() + batch.size();
      static_cast<double>(need) >
      static_cast<double>(stored.bucket_count()) * stored.max_load_factor())
    stored.reserve(need);
  // All or nothing in one pass: insert as we go (a duplicate within the batch then meets
  // the first copy), and take the inserted ones out again on the first refusal.
  std::vector<std::string_view> added;
  added.reserve(batch.size());
  for (auto& r : batch) {
    if (r.id.empty()) {
      ec = errc::blank_id;
      break;
    }
    auto [it, inserted] = emplace(r);
    if (!inserted) {
      ec = errc::duplicate_id;
      break;
    }
    const task_record& in = it->second;
    if (detail::holds_unique_key(in)) {
      auto [holder, free] = unique_holders.try_emplace(in.unique_key, in.id);
      if (!free) {
        r = std::move(it->second);
        stored.erase(it);
        ec = errc::duplicate_unique_key;
        break;
      }
    }
    count(in, +1);
    added.push_back(it->first);
  }
  if (ec)
    for (auto id : added) erase(stored.find(id));
  return ec;
}

void store::do_insert(std::vector<task_record> records, handler<void(error_code)> h) {
  error_code ec;
  {
    std::lock_guard lock(impl_->mutex);
    ec = impl_->insert(records);
  }
  detail::post_completion(std::move(h), impl_->ex, ec);
}

void store::do_get(std::string id, handler<void(error_code, task_record)> h) {
  error_code ec;
  task_record r;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->records.find(id);
    if (it == impl_->records.end())
      ec = errc::not_found;
    else
      r = it->second;
  }
  detail::post_completion(std::move(h), impl_->ex, ec, std::move(r));
}

// Claims one id (or finds it gone: skipped), counts and unique holders kept in step.
std::pair<detail::claim_outcome, store::impl::record_map::iterator> store::impl::claim_one(
    std::string_view id, time_point now) {
  auto it = records.find(id);
  if (it == records.end()) return {detail::claim_outcome::skipped, it};
  auto outcome = detail::claim_outcome::skipped;
  mutate(it->second, [&](task_record& r) {
    outcome = detail::apply_claim(r, now);
    return error_code{};
  });
  return {outcome, it};
}

claim_result store::impl::claim(claim_params& p) {
  claim_result out;
  out.claimed.reserve(p.ids.size());  // the usual case: every id is claimed
  for (auto& id : p.ids) {
    auto [outcome, it] = claim_one(id, p.now);
    switch (outcome) {
      case detail::claim_outcome::claimed:
        out.claimed.push_back(it->second);
        break;
      case detail::claim_outcome::dropped:
        out.dropped.push_back(it->second);
        break;
      case detail::claim_outcome::skipped:
        out.skipped.push_back(std::move(id));
        break;
    }
  }
  return out;
}

void store::impl::claim_leased(std::vector<lease>& kept, time_point now, fetch_result& out,
                               std::vector<lease>& finished) {
  out.claimed.reserve(kept.size());  // the usual case: every lease is claimed
  for (auto& l : kept) {
    // Not a structured binding: the lambda below captures the iterator (clang 14 cannot
    // capture a binding).
    const auto claimed = claim_one(l.id, now);
    const auto it = claimed.second;
    switch (claimed.first) {
      case detail::claim_outcome::claimed: {
        // The record is copy-constructed once, in its place in the result.
        detail::emplace_back_result(out.claimed, [&] {
          return fetched_task{std::move(l), it->second};
        });
        break;
      }
      case detail::claim_outcome::dropped:
        out.dropped.push_back(it->second);
        finished.push_back(std::move(l));
        break;
      case detail::claim_outcome::skipped:
        out.skipped.push_back(l.id);
        finished.push_back(std::move(l));
        break;
    }
  }
}

void store::do_claim(claim_params p, handler<void(error_code, claim_result)> h) {
  claim_result out;
  {
    std::lock_guard lock(impl_->mutex);
    out = impl_->claim(p);
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(out));
}

update_result store::impl::update(const task_update& u) {
  update_result out;
  auto it = records.find(u.id);
  if (it == records.end()) {
    out.error = errc::not_found;
    return out;
  }
  out.error = mutate(it->second, [&](task_record& r) -> error_code {
    // A task coming back to life (an explicit retry) needs its unique key again.
    const bool will_hold =
        !r.unique_key.empty() && (r.unique_for == unique_scope::any || !is_terminal(u.to));
    if (r.status == u.expected && will_hold && !detail::holds_unique_key(r)) {
      auto holder = unique_holders.find(r.unique_key);
      if (holder != unique_holders.end() && holder->second != r.id)
        return errc::duplicate_unique_key;
    }
    return detail::apply_update(r, u);
  });
  if (!out.error && u.return_record) out.record = it->second;
  return out;
}

void store::do_update(task_update u, handler<void(error_code, task_record)> h) {
  update_result r;
  {
    std::lock_guard lock(impl_->mutex);
    r = impl_->update(u);
  }
  detail::post_completion(std::move(h), impl_->ex, r.error,
                          std::move(r.record).value_or(task_record{}));
}

void store::do_update_batch(std::vector<task_update> updates,
                            handler<void(error_code, std::vector<update_result>)> h) {
  std::vector<update_result> out;
  out.reserve(updates.size());
  {
    std::lock_guard lock(impl_->mutex);
    for (const auto& u : updates) out.push_back(impl_->update(u));
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(out));
}

void store::do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) {
  error_code ec;
  bool cancel = false;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->records.find(p.id);
    if (it == impl_->records.end())
      ec = errc::not_found;
    else
      ec = detail::apply_heartbeat(it->second, p, cancel);  // counts unaffected
  }
  detail::post_completion(std::move(h), impl_->ex, ec, cancel);
}

void store::do_append_log(std::string id, log_entry e, handler<void(error_code)> h) {
  error_code ec;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->records.find(id);
    if (it == impl_->records.end())
      ec = errc::not_found;
    else
      it->second.log.push_back(std::move(e));
  }
  detail::post_completion(std::move(h), impl_->ex, ec);
}

void store::do_request_cancel(std::string id, time_point now,
                              handler<void(error_code, task_record)> h) {
  error_code ec;
  task_record after;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->records.find(id);
    if (it == impl_->records.end()) {
      ec = errc::not_found;
    } else {
      ec = impl_->mutate(it->second,
                         [&](task_record& r) { return detail::apply_cancel_request(r, now); });
      after = it->second;
    }
  }
  detail::post_completion(std::move(h), impl_->ex, ec, std::move(after));
}

void store::do_list(task_filter f, handler<void(error_code, task_page)> h) {
  task_page page;
  {
    std::lock_guard lock(impl_->mutex);
    // The first limit + 1 matches in id order (one more tells whether a next page exists).
    std::vector<const task_record*> hits;
    for (const auto& [id, r] : impl_->records)
      if ((f.after_id.empty() || id > f.after_id) && matches(r, f)) hits.push_back(&r);
    auto by_id = [](const task_record* a, const task_record* b) { return a->id < b->id; };
    const std::size_t want = std::min(hits.size(), f.limit + 1);
    std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(want), hits.end(),
                      by_id);
    for (std::size_t k = 0; k < want && k < f.limit; ++k) page.records.push_back(*hits[k]);
    if (want > f.limit && !page.records.empty()) page.next_cursor = page.records.back().id;
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(page));
}

void store::do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) {
  std::vector<std::string> removed;
  {
    std::lock_guard lock(impl_->mutex);
    for (auto it = impl_->records.begin(); it != impl_->records.end();) {
      if (it->second.status != task_status::running && matches(it->second, f)) {
        removed.push_back(it->second.id);
        it = impl_->erase(it);
      } else {
        ++it;
      }
    }
  }
  std::sort(removed.begin(), removed.end());  // in id order, as documented for lists
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(removed));
}

void store::do_prune(time_point before, handler<void(error_code, std::size_t)> h) {
  std::size_t n = 0;
  {
    std::lock_guard lock(impl_->mutex);
    for (auto it = impl_->records.begin(); it != impl_->records.end();) {
      const auto& r = it->second;
      if (is_terminal(r.status) && r.finished_at && *r.finished_at < before) {
        it = impl_->erase(it);
        ++n;
      } else {
        ++it;
      }
    }
  }
  detail::post_completion(std::move(h), impl_->ex, error_code{}, n);
}

void store::do_counts(handler<void(error_code, task_counts)> h) {
  task_counts c;
  {
    std::lock_guard lock(impl_->mutex);
    c = impl_->counts;
  }
  c.drop_empty_rows();
  detail::post_completion(std::move(h), impl_->ex, error_code{}, std::move(c));
}

// --- backend --------------------------------------------------------------------------------
// Both locks are taken together (std::scoped_lock orders them); nothing else takes both.

backend::backend(asio::any_io_executor ex, clock& clk)
    : ex_(ex), clk_(clk), queue_(ex, clk), store_(ex) {}

backend::~backend() = default;

void backend::do_enqueue(enqueue_params p, handler<void(error_code)> h) {
  push_params push;
  push.entries.reserve(p.records.size());
  for (const auto& r : p.records)
    detail::emplace_back_result(push.entries, [&] { return entry_of(r); });
  error_code ec;
  std::vector<completion> done;
  {
    auto& st = *store_.impl_;
    std::scoped_lock lock(st.mutex, queue_.impl_->mutex);
    ec = st.insert(p.records);
    if (!ec) {
      ec = queue_.impl_->push(push, done);
      if (ec) {  // nothing half-written: take the records out again (a refused push keeps them)
        for (const auto& e : push.entries)
          if (auto it = st.records.find(e.id); it != st.records.end()) st.erase(it);
      }
    }
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), ex_, ec);
}

void backend::do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) {
  if (p.max == 0 || p.lease_for <= duration::zero())
    return detail::post_completion(std::move(h), ex_, error_code(errc::invalid_option),
                                   fetch_result{});
  reserve_params rp;
  rp.queues = std::move(p.queues);
  rp.max = p.max;
  rp.lease_for = p.lease_for;
  rp.wait = p.wait;
  rp.skip_types = std::move(p.skip_types);
  rp.skip_keys = std::move(p.skip_keys);
  std::vector<lease> leases;
  {
    auto& q = *queue_.impl_;
    std::lock_guard lock(q.mutex);
    const auto now = clk_.now();
    q.promote(now);
    leases = q.take(rp, now);
  }
  if (leases.empty() && rp.wait) {
    // Nothing ready: wait through the queue's reservation (it parks, wakes and cancels), then
    // claim what it hands out.
    auto slot = asio::get_associated_cancellation_slot(h);
    queue_.async_reserve(
        std::move(rp),
        asio::bind_cancellation_slot(slot, [this, admit = std::move(p.admit), h = std::move(h)](
                                               error_code ec, std::vector<lease> got) mutable {
          if (ec && got.empty())
            return detail::dispatch_completion(std::move(h), ex_, ec, fetch_result{});
          claim_reserved(std::move(got), admit, std::move(h));
        }));
    return;
  }
  claim_reserved(std::move(leases), p.admit, std::move(h));
}

void backend::claim_reserved(std::vector<lease> leases,
                             const std::function<bool(const lease&)>& admit,
                             handler<void(error_code, fetch_result)> h) {
  fetch_result out;
  std::vector<completion> done;
  {
    auto& st = *store_.impl_;
    auto& q = *queue_.impl_;
    std::scoped_lock lock(st.mutex, q.mutex);
    if (admit) {
      std::erase_if(leases, [&](const lease& l) {
        if (admit(l)) return false;
        release_params back{l.id, l.token, true, std::nullopt};  // its original position
        q.release(back, done);
        return true;
      });
    }
    if (!leases.empty()) {
      std::vector<lease> finished;  // dropped and skipped
      st.claim_leased(leases, clk_.now(), out, finished);
      if (!finished.empty()) q.ack(finished, done);
    }
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), ex_, error_code{}, std::move(out));
}

void backend::do_complete(complete_params p,
                          handler<void(error_code, std::vector<update_result>)> h) {
  std::vector<update_result> results;
  results.reserve(p.completions.size());
  std::vector<completion> done;
  {
    auto& st = *store_.impl_;
    auto& q = *queue_.impl_;
    std::scoped_lock lock(st.mutex, q.mutex);
    std::vector<lease> acks;
    acks.reserve(p.completions.size());
    for (auto& c : p.completions) {
      auto r = st.update(c.update);
      if (!r.error) {
        if (c.update.to == task_status::pending) {
          const auto at = c.update.available_at.value_or(c.update.now);
          release_params back{c.held.id, c.held.token, c.keep_position, at};
          // The lease lapsed meanwhile (the entry went back to ready at the old time): take
          // it out and queue it again at the new time, so a retry's backoff holds.
          if (q.release(back, done) == errc::not_leased && q.remove(c.held.id)) {
            push_params again;
            again.entries.push_back({std::move(c.held.id), std::move(c.held.queue),
                                     std::move(c.held.type), std::move(c.held.concurrency_key),
                                     c.held.priority, at});
            q.push(again, done);
          }
        } else if (is_terminal(c.update.to)) {
          acks.push_back(std::move(c.held));
        }
      }
      // status_conflict / not_found: the entry belongs to whoever holds the task now.
      results.push_back(std::move(r));
    }
    if (!acks.empty()) q.ack(acks, done);
  }
  for (auto& d : done) d();
  detail::post_completion(std::move(h), ex_, error_code{}, std::move(results));
}

}  // namespace memory
}  // namespace taskq
