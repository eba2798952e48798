// libFuzzer target: arbitrary bytes through the journal reader.
//
// The reader must never crash, hang or read out of bounds, and its answer must be
// self-consistent: either an error with a detail, or a valid prefix that re-scans to the same
// records. Built only with -DTASKQ_BUILD_FUZZERS=ON and clang; run with scripts/fuzz.sh.
#include <taskq/backends/file/journal.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace taskq::file;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The first byte picks the expected kind, so both segment and snapshot paths are explored.
  if (size == 0) return 0;
  const file_kind kind = (data[0] & 1) ? file_kind::snapshot : file_kind::journal_segment;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::vector<std::string> bodies;
  std::uint64_t last_end = journal_header_size;
  scan_result r = scan_journal(bytes, kind, "fuzz-input", [&](const journal_record& rec) {
    // Records are in order, inside the input, and contiguous.
    if (rec.offset != last_end) std::abort();
    if (rec.offset + record_frame_size + rec.body.size() > bytes.size()) std::abort();
    last_end = rec.offset + record_frame_size + rec.body.size();
    bodies.emplace_back(rec.body);
  });
  if (r.error) {
    if (r.detail.empty()) std::abort();
    return 0;
  }
  if (r.valid_end > bytes.size() || r.records != bodies.size()) std::abort();
  if (r.torn_tail != (r.valid_end != bytes.size() || !r.header_valid)) std::abort();
  if (r.header_valid && r.valid_end != last_end) std::abort();

  // The valid prefix alone must scan cleanly to the same records (what recovery relies on
  // after truncating the tail).
  if (r.header_valid) {
    std::size_t i = 0;
    scan_result again = scan_journal(bytes.substr(0, r.valid_end), kind, "fuzz-prefix",
                                     [&](const journal_record& rec) {
                                       if (i >= bodies.size() || rec.body != bodies[i])
                                         std::abort();
                                       ++i;
                                     });
    if (again.error || again.torn_tail || again.records != r.records) std::abort();
  }
  return 0;
}
