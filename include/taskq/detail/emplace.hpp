// taskq — building a function's result straight into a vector's new element.
#pragma once

#include <utility>
#include <vector>

namespace taskq::detail {

/// Appends `make()`'s result to `v`, constructed in its place: emplace_back converts through
/// an operator T() whose prvalue result is elided into the element (C++17), so no temporary
/// is moved and destroyed. For the hot path's large aggregates (records, leases).
template <class T, class F>
T& emplace_back_result(std::vector<T>& v, F&& make) {
  struct result_of {
    F& make;
    operator T() const { return std::forward<F>(make)(); }
  };
  return v.emplace_back(result_of{make});
}

}  // namespace taskq::detail
