// libFuzzer target: the direct record reader (detail::read_record_text, src/task.cpp), a
// hand-written JSON reader on the PostgreSQL backend's fetch path.
//
// Input: any text. Checked against the general path (parse_json_text, then
// record_from_json), which is the reference: whatever the direct reader accepts, the general
// path accepts too and decodes to the same record; and a record the general path decodes,
// written back by append_record_json, is read directly to the same record unless one of its
// own strings is not ASCII. Never a crash, a hang or an out-of-bounds read.
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>
#include <taskq/task.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

bool ascii(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x80; });
}

bool own_strings_ascii(const taskq::task_record& r) {
  bool ok = ascii(r.id) && ascii(r.type) && ascii(r.queue) && ascii(r.concurrency_key) &&
            ascii(r.unique_key) && ascii(r.last_error);
  for (const auto& e : r.log) ok = ok && ascii(e.message);
  for (const auto& [k, v] : r.labels) ok = ok && ascii(k) && ascii(v);
  return ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace taskq;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  task_record direct;
  const bool read = detail::read_record_text(text, direct);
  detail::json_text_error err;
  json j = detail::parse_json_text(text, json_depth_ceiling, err);
  error_code ec;
  std::string why;
  std::optional<task_record> reference;
  if (err == detail::json_text_error::none) reference = record_from_json(j, ec, why);
  if (read && (!reference || !(*reference == direct))) std::abort();
  if (reference) {
    std::string again;
    try {
      detail::append_record_json(again, *reference);
    } catch (const json::exception&) {
      return 0;  // a string that is not UTF-8: dump() refuses it too
    }
    task_record back;
    const bool reread = detail::read_record_text(again, back);
    if (reread && !(back == *reference)) std::abort();
    if (!reread && own_strings_ascii(*reference)) std::abort();
  }
  return 0;
}
