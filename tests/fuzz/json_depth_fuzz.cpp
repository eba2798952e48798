// libFuzzer target: the JSON depth guard (include/taskq/detail/input_limits.hpp) that stands
// between input text and everything recursive in nlohmann::json.
//
// Input: one byte choosing the depth limit (0..127), then JSON text (or anything). Checked:
// the text scan never counts less than the depth of the document nlohmann builds; what the
// guard accepts is within the limit and can be dumped, copied and validated as a payload;
// what it refuses is deeper than the limit (or is not JSON). Never a crash or a hang.
#include <taskq/detail/input_limits.hpp>
#include <taskq/task.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace taskq;
  if (size == 0) return 0;
  const std::size_t limit = data[0] & 0x7f;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::size_t scanned = detail::json_text_depth(text, limit);
  detail::json_text_error err;
  json j = detail::parse_json_text(text, limit, err);
  // nlohmann's parser and destructor do not recurse, so the unguarded parse is safe here; its
  // document is the reference (measured without recursion too).
  json reference = json::parse(text.begin(), text.end(), nullptr, false);
  const bool valid = !reference.is_discarded();
  const std::size_t real = valid ? detail::json_depth(reference, limit) : 0;
  // The scan may count more than the document holds (nlohmann ends its input at a NUL byte,
  // and keeps only the last of duplicate keys), refusing more, never less.
  if (valid && real > scanned) std::abort();
  switch (err) {
    case detail::json_text_error::none: {
      if (!valid || scanned > limit || j != reference) std::abort();
      if (detail::json_depth(j, json_depth_ceiling) != real) std::abort();
      json copy = j;  // recursive: safe within the limit
      if (copy.dump() != reference.dump()) std::abort();
      task_spec spec{.type = "t", .payload = std::move(copy)};
      if (validate(spec, {.max_json_depth = limit}) == errc::payload_too_deep) std::abort();
      break;
    }
    case detail::json_text_error::too_deep:
      if (scanned <= limit || !j.is_null()) std::abort();
      break;
    case detail::json_text_error::malformed:
      if (valid || scanned > limit || !j.is_null()) std::abort();
      break;
  }
  return 0;
}
