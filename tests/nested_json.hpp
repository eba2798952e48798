// Test helper: deeply nested JSON, built without recursion (as a hostile caller would).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>

namespace taskq::test {

/// `levels` nested arrays around a 1: nested_json(2) is [[1]].
inline nlohmann::json nested_json(std::size_t levels) {
  nlohmann::json j = 1;
  for (std::size_t i = 0; i < levels; ++i) {
    nlohmann::json outer = nlohmann::json::array();
    outer.push_back(std::move(j));
    j = std::move(outer);
  }
  return j;
}

}  // namespace taskq::test
