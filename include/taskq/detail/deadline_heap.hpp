// Internal: the deadlines of many runs in one structure (a binary min-heap whose items know
// their place), so a timeout costs no timer, signal or allocation per run: the worker keeps
// one clock wait armed for the earliest deadline. Pure: tested without an io_context.
#pragma once

#include <taskq/task.hpp>

#include <cstddef>
#include <vector>

namespace taskq::detail {

/// `T` has a member `std::size_t deadline_index`, which the heap keeps (npos: not in it).
/// Not thread-safe: the owner's strand serialises it.
template <class T>
class deadline_heap {
 public:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

  bool empty() const noexcept { return heap_.empty(); }
  std::size_t size() const noexcept { return heap_.size(); }
  /// The earliest deadline; the heap must not be empty.
  time_point next() const noexcept { return heap_.front().at; }
  T& top() const noexcept { return *heap_.front().item; }

  /// Adds `item` due at `at` (moves it if it is in already).
  void push(T& item, time_point at) {
    if (item.deadline_index != npos) erase(item);
    item.deadline_index = heap_.size();
    heap_.push_back({at, &item});
    up(heap_.size() - 1);
  }

  /// Removes `item` if it is in; O(log n).
  void erase(T& item) noexcept {
    std::size_t i = item.deadline_index;
    if (i == npos) return;
    item.deadline_index = npos;
    std::size_t last = heap_.size() - 1;
    if (i != last) {
      heap_[i] = heap_[last];
      heap_[i].item->deadline_index = i;
    }
    heap_.pop_back();
    if (i < heap_.size()) {
      up(i);
      down(heap_[i].item->deadline_index);
    }
  }

  void pop() noexcept { erase(top()); }

 private:
  struct entry {
    time_point at;
    T* item;
  };

  void swap_at(std::size_t a, std::size_t b) noexcept {
    std::swap(heap_[a], heap_[b]);
    heap_[a].item->deadline_index = a;
    heap_[b].item->deadline_index = b;
  }
  void up(std::size_t i) noexcept {
    while (i > 0) {
      std::size_t parent = (i - 1) / 2;
      if (!(heap_[i].at < heap_[parent].at)) break;
      swap_at(i, parent);
      i = parent;
    }
  }
  void down(std::size_t i) noexcept {
    for (;;) {
      std::size_t l = 2 * i + 1, r = l + 1, m = i;
      if (l < heap_.size() && heap_[l].at < heap_[m].at) m = l;
      if (r < heap_.size() && heap_[r].at < heap_[m].at) m = r;
      if (m == i) return;
      swap_at(i, m);
      i = m;
    }
  }

  std::vector<entry> heap_;
};

}  // namespace taskq::detail
