// libFuzzer target: arbitrary record bodies through the file store's replay (the binary body
// decoder and the replay rules of src/file_store.cpp).
//
// Journal framing and CRCs keep damaged bytes away from this decoder in practice; this
// target makes sure that even a body with a valid frame and garbage inside (a bug, a
// hand-edited file) is refused with invalid_record, never a crash, a hang, an out-of-bounds
// read or state whose bookkeeping disagrees with its records.
//
// Input: a sequence of bodies, each a 2-byte little-endian length followed by that many bytes.
#include <taskq/backends/file/store.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string_view> bodies;
  std::size_t pos = 0;
  while (pos + 2 <= size && bodies.size() < 256) {
    std::size_t n = data[pos] | (std::size_t(data[pos + 1]) << 8);
    pos += 2;
    if (n > size - pos) n = size - pos;
    bodies.emplace_back(reinterpret_cast<const char*>(data) + pos, n);
    pos += n;
  }
  std::string detail;
  bool consistent = true;
  auto ec = taskq::file::detail::replay_bodies(bodies, detail, consistent);
  static const bool verbose = std::getenv("TASKQ_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%zu bodies: %s\n", bodies.size(), ec ? detail.c_str() : "ok");
  if (ec && (ec != taskq::errc::invalid_record || detail.empty())) std::abort();
  if (!consistent) std::abort();
  return 0;
}
