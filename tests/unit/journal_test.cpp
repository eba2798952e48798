// Tests of the file backend's journal: format, recovery, group commit, faults, locking,
// rotation and snapshots, and the Asio completion contract of async_append.
#include <taskq/backends/file/directory_lock.hpp>
#include <taskq/backends/file/journal.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/crc.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace taskq;
using namespace taskq::file;

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/taskq-journal-test-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Encodes a segment image the way the writer does; offsets[i] is where record i starts.
std::string make_image(std::uint64_t id, const std::vector<std::string>& records,
                       std::vector<std::uint64_t>* offsets = nullptr,
                       file_kind kind = file_kind::journal_segment) {
  std::string image = encode_file_header(kind, id);
  for (const auto& r : records) {
    if (offsets) offsets->push_back(image.size());
    encode_record(image, id, image.size(), r);
  }
  return image;
}

struct collected {
  std::vector<std::string> bodies;
  std::vector<std::uint64_t> offsets;
  record_visitor visitor() {
    return [this](const journal_record& r) {
      bodies.emplace_back(r.body);
      offsets.push_back(r.offset);
    };
  }
};

std::vector<std::string> read_all(const fs::path& dir, std::uint64_t first_segment = 0) {
  collected c;
  journal_read_result r = read_journal(dir, first_segment, c.visitor());
  INFO(r.detail);
  REQUIRE_FALSE(r.error);
  return c.bodies;
}

journal_writer open_writer(const fs::path& dir, journal_options options = {},
                           journal_recovery* recovery = nullptr,
                           std::vector<std::string>* replayed = nullptr) {
  static boost::asio::io_context unused_ioc;  // blocking appends never touch the executor
  journal_recovery rec;
  error_code ec;
  std::string detail;
  auto w = journal_writer::open(
      unused_ioc.get_executor(), dir, std::move(options), 0,
      [&](const journal_record& r) {
        if (replayed) replayed->emplace_back(r.body);
      },
      rec, ec, &detail);
  INFO(detail);
  REQUIRE_FALSE(ec);
  if (recovery) *recovery = rec;
  return w;
}

unsigned file_mode(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("journal codec: crc32c matches Boost.CRC on every path", "[journal]") {
  // The reference the format is defined by (docs/file-format.md).
  using reference = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;
  CHECK(taskq::file::detail::crc32c_portable("123456789") == 0xE3069283u);
  std::mt19937 rng(42);
  std::string buf(4096 + 16, '\0');
  for (auto& c : buf) c = static_cast<char>(rng());
  // Every length up to 64 and a few long ones, at every alignment within a word.
  for (std::size_t start = 0; start < 8; ++start) {
    for (std::size_t len :
         std::initializer_list<std::size_t>{0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 63, 64, 1000, 4096}) {
      std::string_view v(buf.data() + start, len);
      reference ref;
      ref.process_bytes(v.data(), v.size());
      CHECK(crc32c(v) == ref.checksum());
      CHECK(taskq::file::detail::crc32c_portable(v) == ref.checksum());
    }
  }
}

TEST_CASE("journal codec: in-memory round trip", "[journal]") {
  std::vector<std::string> records = {"", "a", std::string(1000, 'x'), std::string("\0\1\2", 3)};
  std::vector<std::uint64_t> offsets;
  std::string image = make_image(7, records, &offsets);
  REQUIRE(image.substr(0, 8) == "TASKQJNL");
  CHECK(crc32c("123456789") == 0xE3069283u);  // the CRC32C check value

  collected c;
  scan_result r = scan_journal(image, file_kind::journal_segment, "mem", c.visitor());
  REQUIRE_FALSE(r.error);
  CHECK(r.header_valid);
  CHECK(r.id == 7);
  CHECK(r.records == records.size());
  CHECK(r.valid_end == image.size());
  CHECK_FALSE(r.torn_tail);
  CHECK(r.warning.empty());
  CHECK(c.bodies == records);
  CHECK(c.offsets == offsets);

  // The CRC is bound to the file id and offset: the same bytes under another id do not verify.
  std::string other = make_image(8, {});
  other += image.substr(journal_header_size);
  scan_result moved = scan_journal(other, file_kind::journal_segment, "mem", {});
  CHECK(moved.records == 0);
  CHECK(moved.torn_tail);  // nothing valid anywhere: treated as a torn tail, not corruption
}

TEST_CASE("journal writer: round trip, reopen and sequence numbers", "[journal]") {
  temp_dir dir;
  std::vector<std::string> all;
  {
    auto w = open_writer(dir.path);
    CHECK(w.current_segment() == 1);
    CHECK(w.append({"one"}) == 1);
    CHECK(w.append({"two", "", std::string(3, '\0')}) == 4);
    CHECK(w.append({}) == 4);  // empty: no-op, returns the current sequence
    auto s = w.stats();
    CHECK(s.records == 4);
    CHECK(s.appends == 3);
    CHECK(s.syncs == 2);
    w.close();
    w.close();  // idempotent
  }
  all = {"one", "two", "", std::string(3, '\0')};
  CHECK(read_all(dir.path) == all);

  journal_recovery rec;
  std::vector<std::string> replayed;
  auto w = open_writer(dir.path, {}, &rec, &replayed);
  CHECK(replayed == all);
  CHECK(rec.records == 4);
  CHECK(rec.segments == 1);
  CHECK_FALSE(rec.truncated_torn_tail);
  CHECK(w.append({"five"}) == 5);

  error_code ec;
  std::string detail;
  CHECK(w.append({std::string(max_record_size + 1, 'x')}, ec, &detail) == 0);
  CHECK(ec == errc::invalid_record);
  CHECK(detail.find("exceeds the maximum record size") != std::string::npos);
  w.close();
  CHECK(w.append({"late"}, ec) == 0);
  CHECK(ec == errc::store_closed);
  all.push_back("five");
  CHECK(read_all(dir.path) == all);
}

TEST_CASE("journal writer: concurrent appends share fdatasyncs (group commit)", "[journal]") {
  temp_dir dir;
  constexpr int threads = 8, per_thread = 50;
  std::atomic<journal_writer*> writer{nullptr};
  std::atomic<bool> stalled_once{false};
  journal_options options;
  // Test signal instead of a sleep: the first fdatasync waits until the other threads'
  // appends are queued behind it, so the next write+sync must cover several of them.
  options.fault_injector = [&](journal_op op, const fs::path&) {
    if (op == journal_op::fsync && !stalled_once.exchange(true)) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      for (;;) {
        auto s = writer.load()->stats();
        if (s.queued_appends + s.committing_appends >= threads) break;
        if (std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::yield();
      }
    }
    return journal_fault{};
  };
  auto w = open_writer(dir.path, options);
  writer = &w;
  std::vector<std::thread> producers;
  std::atomic<int> failures{0};
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        error_code ec;
        w.append({std::to_string(t) + ":" + std::to_string(i)}, ec);
        if (ec) ++failures;
      }
    });
  }
  for (auto& p : producers) p.join();
  auto s = w.stats();
  w.close();
  CHECK(failures == 0);
  CHECK(s.appends == threads * per_thread);
  CHECK(s.syncs == s.writes);
  CHECK(s.syncs < s.appends);
  CHECK(s.syncs <= static_cast<std::uint64_t>(threads * per_thread - (threads - 2)));

  // Every record is there once, and each thread's records are in its own order.
  auto records = read_all(dir.path);
  REQUIRE(records.size() == threads * per_thread);
  std::vector<int> next(threads, 0);
  for (const auto& r : records) {
    auto colon = r.find(':');
    int t = std::stoi(r.substr(0, colon)), i = std::stoi(r.substr(colon + 1));
    REQUIRE(i == next[t]);
    ++next[t];
  }
}

TEST_CASE("journal recovery: a torn last record is truncated at every cut point", "[journal]") {
  temp_dir source;
  {
    auto w = open_writer(source.path);
    w.append({"alpha", "beta", "gamma", "delta"});
    w.append({"the last record, long enough to be cut in many places"});
  }
  const std::string image = read_file(source.path / "journal-1.log");
  std::vector<std::uint64_t> offsets;
  scan_journal(image, file_kind::journal_segment, "x",
               [&](const journal_record& r) { offsets.push_back(r.offset); });
  REQUIRE(offsets.size() == 5);
  const std::uint64_t last = offsets.back();

  for (std::uint64_t cut = last; cut < image.size(); ++cut) {
    INFO("cut at " << cut);
    temp_dir dir;
    write_file(dir.path / "journal-1.log", image.substr(0, cut));
    journal_recovery rec;
    std::vector<std::string> replayed;
    auto w = open_writer(dir.path, {}, &rec, &replayed);
    CHECK(rec.records == 4);
    CHECK(replayed == std::vector<std::string>{"alpha", "beta", "gamma", "delta"});
    CHECK(rec.truncated_torn_tail == (cut != last));
    if (cut != last) {
      CHECK(rec.truncated_bytes == cut - last);
      CHECK(rec.warning.find("byte offset " + std::to_string(last)) != std::string::npos);
      CHECK(rec.warning.find("journal-1.log") != std::string::npos);
    }
    CHECK(fs::file_size(dir.path / "journal-1.log") == last);
    CHECK(w.append({"again"}) == 5);
    w.close();
    CHECK(read_all(dir.path) ==
          std::vector<std::string>{"alpha", "beta", "gamma", "delta", "again"});
  }
}

TEST_CASE("journal recovery: a file cut inside its header gets a new header", "[journal]") {
  for (std::size_t cut : {std::size_t{0}, std::size_t{5}, std::size_t{31}}) {
    temp_dir dir;
    write_file(dir.path / "journal-1.log", make_image(1, {}).substr(0, cut));
    journal_recovery rec;
    auto w = open_writer(dir.path, {}, &rec);
    CHECK(rec.truncated_torn_tail);
    CHECK(w.append({"x"}) == 1);
    w.close();
    CHECK(read_all(dir.path) == std::vector<std::string>{"x"});
  }
}

TEST_CASE("journal reader: corruption before the tail is an error with the exact offset",
          "[journal]") {
  std::vector<std::string> records = {"r0", "r1-body", "r2-body-longer", "r3", "r4"};
  std::vector<std::uint64_t> offsets;
  const std::string image = make_image(1, records, &offsets);

  for (std::size_t victim = 0; victim + 1 < records.size(); ++victim) {
    for (std::uint64_t byte : {offsets[victim], offsets[victim] + 4, offsets[victim] + 8}) {
      std::string bad = image;
      bad[byte] = static_cast<char>(bad[byte] ^ 0x40);
      collected c;
      scan_result r =
          scan_journal(bad, file_kind::journal_segment, "/some/dir/journal-1.log", c.visitor());
      INFO("victim " << victim << " byte " << byte);
      CHECK(r.error == errc::corrupt_journal);
      CHECK(r.detail.find("/some/dir/journal-1.log") != std::string::npos);
      CHECK(r.detail.find("byte offset " + std::to_string(offsets[victim]) + ":") !=
            std::string::npos);
      CHECK(r.records == victim);
    }
  }

  // Same through the file API and the writer: open refuses, naming the file and offset.
  temp_dir dir;
  std::string bad = image;
  bad[offsets[2] + 9] ^= 1;
  write_file(dir.path / "journal-1.log", bad);
  journal_recovery rec;
  error_code ec;
  std::string detail;
  boost::asio::io_context ioc;
  auto w = journal_writer::open(ioc.get_executor(), dir.path, {}, 0, {}, rec, ec, &detail);
  CHECK(ec == errc::corrupt_journal);
  CHECK_FALSE(w.is_open());
  CHECK(detail.find((dir.path / "journal-1.log").string() + ", byte offset " +
                    std::to_string(offsets[2]) + ":") != std::string::npos);
  CHECK(fs::file_size(dir.path / "journal-1.log") == bad.size());  // nothing was "repaired"
  CHECK_THROWS_AS(journal_writer::open(ioc.get_executor(), dir.path, {}, 0, {}, rec), taskq::error);

  // A damaged last record with nothing valid after it is a torn tail, not corruption.
  std::string tail = image;
  tail[offsets.back() + 9] ^= 1;
  scan_result t = scan_journal(tail, file_kind::journal_segment, "x", {});
  CHECK_FALSE(t.error);
  CHECK(t.torn_tail);
  CHECK(t.valid_end == offsets.back());
}

TEST_CASE("journal reader: bad headers", "[journal]") {
  const std::string good = make_image(1, {"a"});
  auto scan = [](const std::string& bytes, file_kind k = file_kind::journal_segment) {
    return scan_journal(bytes, k, "f.log", {});
  };
  SECTION("bad magic") {
    std::string b = good;
    b[0] = 'X';
    auto r = scan(b);
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("f.log, byte offset 0: bad magic") != std::string::npos);
    CHECK(scan("hello").error == errc::corrupt_journal);
  }
  SECTION("header CRC") {
    std::string b = good;
    b[16] ^= 1;  // the id
    auto r = scan(b);
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("byte offset 28: header CRC mismatch") != std::string::npos);
  }
  SECTION("wrong kind") {
    auto r = scan(good, file_kind::snapshot);
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("is a journal segment") != std::string::npos);
  }
  SECTION("unsupported version") {
    std::string b = good;
    b[8] = 2;
    auto r = scan(b);
    CHECK(r.error == errc::unsupported_format_version);
    CHECK(r.detail.find("f.log") != std::string::npos);
    CHECK(r.detail.find("version 2 is not supported") != std::string::npos);
    CHECK(r.detail.find("reads version 1") != std::string::npos);
    // Even in a file cut short after the version field.
    CHECK(scan(b.substr(0, 12)).error == errc::unsupported_format_version);
  }
}

TEST_CASE("journal reader: randomized damage never crashes and is classified", "[journal]") {
  std::mt19937_64 rng(20240601);
  auto rnd = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  for (int iter = 0; iter < 5000; ++iter) {
    std::vector<std::string> records(1 + rnd(12));
    for (auto& r : records) {
      r.resize(rnd(40));
      for (auto& ch : r) ch = static_cast<char>(rnd(256));
    }
    std::vector<std::uint64_t> offsets;
    const std::string image = make_image(1 + rnd(3), records, &offsets);
    std::string bad = image;
    const int mutation = static_cast<int>(rnd(4));
    std::uint64_t where = 0;
    if (mutation == 0) {  // bit flip
      where = rnd(bad.size());
      bad[where] = static_cast<char>(bad[where] ^ (1 << rnd(8)));
    } else if (mutation == 1) {  // truncation
      bad.resize(rnd(bad.size()));
    } else if (mutation == 2) {  // garbage appended
      std::size_t n = 1 + rnd(64);
      for (std::size_t i = 0; i < n; ++i) bad.push_back(static_cast<char>(rnd(256)));
    } else {  // several flips plus a truncation
      for (int k = 0; k < 3; ++k) bad[rnd(bad.size())] ^= static_cast<char>(1 + rnd(255));
      bad.resize(rnd(bad.size() + 1));
    }
    INFO("iteration " << iter << " mutation " << mutation);
    collected c;
    scan_result r = scan_journal(bad, file_kind::journal_segment, "x", c.visitor());
    // Whatever was visited is a prefix of what was written, byte for byte.
    REQUIRE(c.bodies.size() <= records.size());
    for (std::size_t i = 0; i < c.bodies.size(); ++i) REQUIRE(c.bodies[i] == records[i]);
    REQUIRE((r.error || r.valid_end <= bad.size()));
    if (mutation == 1) {  // truncation: never an error, exactly the complete records survive
      REQUIRE_FALSE(r.error);
      std::size_t complete = 0;
      while (complete < records.size() &&
             (complete + 1 < offsets.size() ? offsets[complete + 1] : image.size()) <= bad.size())
        ++complete;
      REQUIRE(r.records == (bad.size() >= journal_header_size ? complete : 0));
    } else if (mutation == 2) {  // garbage: all records kept, the garbage is a torn tail
      REQUIRE_FALSE(r.error);
      REQUIRE(r.records == records.size());
      REQUIRE(r.torn_tail);
      REQUIRE(r.valid_end == image.size());
    } else if (mutation == 0) {
      if (where < journal_header_size) {
        REQUIRE(r.error);
      } else {
        std::size_t victim = 0;
        while (victim + 1 < offsets.size() && offsets[victim + 1] <= where) ++victim;
        REQUIRE(r.records == victim);
        if (victim + 1 == records.size()) {
          REQUIRE_FALSE(r.error);
          REQUIRE(r.torn_tail);
        } else {
          REQUIRE(r.error == errc::corrupt_journal);
          REQUIRE(r.detail.find("byte offset " + std::to_string(offsets[victim]) + ":") !=
                  std::string::npos);
        }
      }
    } else if (!r.error) {
      REQUIRE(r.valid_end <= bad.size());
    }
  }
}

TEST_CASE("journal writer: disk full and I/O errors leave a readable journal", "[journal]") {
  temp_dir dir;
  std::atomic<int> write_errno{0}, fsync_errno{0};
  journal_options options;
  options.fault_injector = [&](journal_op op, const fs::path&) {
    journal_fault f;
    f.errno_value = (op == journal_op::write ? write_errno : fsync_errno).exchange(0);
    f.bytes_written = 13;  // a short write before the failure
    return f;
  };
  auto w = open_writer(dir.path, options);
  const auto file = (dir.path / "journal-1.log").string();
  REQUIRE(w.append({"A"}) == 1);

  error_code ec;
  std::string detail;
  write_errno = ENOSPC;
  CHECK(w.append({"B1", "B2"}, ec, &detail) == 0);
  CHECK(ec == errc::disk_full);
  CHECK(detail == "write(" + file + "): No space left on device");
  CHECK(w.last_error().first == errc::disk_full);
  CHECK(w.last_error().second == detail);
  CHECK(read_all(dir.path) == std::vector<std::string>{"A"});  // no torn bytes left behind
  CHECK_FALSE(read_journal(dir.path, 0, {}).torn_tail);

  CHECK(w.append({"C"}) == 2);  // space is back

  fsync_errno = EIO;
  CHECK(w.append({"D"}, ec, &detail) == 0);
  CHECK(ec == errc::io_error);
  CHECK(detail == "fdatasync(" + file + "): Input/output error");
  CHECK(read_all(dir.path) == std::vector<std::string>{"A", "C"});

  write_errno = EIO;
  CHECK_THROWS_AS(w.append({"E"}), taskq::error);

  CHECK(w.append({"F"}) == 3);
  auto s = w.stats();
  CHECK(s.failed_appends == 3);
  CHECK(s.appends == 3);
  w.close();
  CHECK(read_all(dir.path) == std::vector<std::string>{"A", "C", "F"});
}

TEST_CASE("journal writer: batch and none modes", "[journal]") {
  for (durability mode : {durability::batch, durability::none}) {
    temp_dir dir;
    journal_options options;
    options.mode = mode;
    options.batch_interval = std::chrono::milliseconds(2);
    auto w = open_writer(dir.path, options);
    std::vector<std::thread> producers;
    for (int t = 0; t < 4; ++t)
      producers.emplace_back([&] {
        for (int i = 0; i < 25; ++i) w.append({"r"});
      });
    for (auto& p : producers) p.join();
    if (mode == durability::none) CHECK(w.stats().syncs == 0);
    w.close();
    CHECK(w.stats().syncs >= 1);  // close syncs whatever the mode
    CHECK(read_all(dir.path).size() == 100);
  }
  boost::asio::io_context ioc;
  journal_recovery rec;
  error_code ec;
  temp_dir dir;
  journal_options bad;
  bad.mode = durability::batch;
  bad.batch_interval = std::chrono::milliseconds(0);
  journal_writer::open(ioc.get_executor(), dir.path, bad, 0, {}, rec, ec);
  CHECK(ec == errc::invalid_option);
}

TEST_CASE("journal writer: async_append honours the completion token", "[journal]") {
  temp_dir dir;
  SECTION("callback on the io_context, with work tracked until completion") {
    boost::asio::io_context ioc;
    journal_recovery rec;
    auto w = journal_writer::open(ioc.get_executor(), dir.path, {}, 0, {}, rec);
    int calls = 0;
    std::thread::id on;
    w.async_append({"a", "b"}, [&](error_code ec, std::uint64_t seq) {
      CHECK_FALSE(ec);
      CHECK(seq == 2);
      on = std::this_thread::get_id();
      ++calls;
    });
    ioc.run();  // returns only after the completion: the operation kept the context busy
    CHECK(calls == 1);
    CHECK(on == std::this_thread::get_id());

    // Failures (here: after close) are still posted, never run inside async_append.
    w.close();
    ioc.restart();
    bool returned = false, inline_call = false;
    error_code got;
    boost::asio::post(ioc, [&] {
      w.async_append({"c"}, [&](error_code ec, std::uint64_t) {
        inline_call = !returned;
        got = ec;
        ++calls;
      });
      returned = true;
    });
    ioc.run();
    CHECK(calls == 2);
    CHECK_FALSE(inline_call);
    CHECK(got == errc::store_closed);
  }
  SECTION("use_future") {
    boost::asio::thread_pool pool(1);
    journal_recovery rec;
    auto w = journal_writer::open(pool.get_executor(), dir.path, {}, 0, {}, rec);
    auto f1 = w.async_append({"x"}, boost::asio::use_future);
    auto f2 = w.async_append({"y", "z"}, boost::asio::use_future);
    CHECK(f1.get() == 1);
    CHECK(f2.get() == 3);
    auto f3 = w.async_append({std::string(max_record_size + 1, 'x')}, boost::asio::use_future);
    CHECK_THROWS_AS(f3.get(), boost::system::system_error);
    w.close();
    auto f4 = w.async_append({"late"}, boost::asio::use_future);
    try {
      f4.get();
      FAIL("expected store_closed");
    } catch (const boost::system::system_error& e) {
      CHECK(e.code() == errc::store_closed);
    }
    pool.join();
  }
}

TEST_CASE("journal: rotation, snapshots and compaction", "[journal]") {
  temp_dir dir;
  {
    auto w = open_writer(dir.path);
    w.append({"r1", "r2"});
    CHECK(w.rotate() == 2);
    CHECK(w.current_segment() == 2);
    CHECK(w.append({"r3"}) == 3);
    CHECK(read_all(dir.path) == std::vector<std::string>{"r1", "r2", "r3"});

    std::vector<std::string> state = {"s1", "s2"};
    error_code ec;
    write_snapshot(dir.path / "snapshot", 2, state, ec);
    REQUIRE_FALSE(ec);
    w.remove_segments_before(2, ec);
    REQUIRE_FALSE(ec);
    CHECK(list_segments(dir.path, ec) == std::vector<std::uint64_t>{2});
  }
  collected snap;
  scan_result s = read_snapshot(dir.path / "snapshot", snap.visitor());
  REQUIRE_FALSE(s.error);
  CHECK(s.id == 2);
  CHECK(snap.bodies == std::vector<std::string>{"s1", "s2"});
  CHECK(read_all(dir.path, s.id) == std::vector<std::string>{"r3"});
  CHECK_FALSE(fs::exists(dir.path / "snapshot.tmp"));

  journal_recovery rec;
  {
    boost::asio::io_context ioc;
    auto w = journal_writer::open(ioc.get_executor(), dir.path, {}, 2, {}, rec);
    CHECK(rec.records == 1);
    CHECK(rec.segment == 2);
  }

  SECTION("a torn snapshot is corruption") {
    std::string image = read_file(dir.path / "snapshot");
    write_file(dir.path / "snapshot", image.substr(0, image.size() - 1));
    scan_result r = read_snapshot(dir.path / "snapshot", {});
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("snapshot") != std::string::npos);
  }
  SECTION("a torn tail in a segment that is not the last is corruption") {
    write_file(dir.path / "journal-3.log", make_image(3, {"r4"}));
    std::string seg2 = read_file(dir.path / "journal-2.log");
    write_file(dir.path / "journal-2.log", seg2 + "torn");
    journal_read_result r = read_journal(dir.path, 0, {});
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("journal-2.log") != std::string::npos);
    CHECK(r.detail.find("not the last segment") != std::string::npos);
  }
  SECTION("a missing segment is corruption") {
    write_file(dir.path / "journal-4.log", make_image(4, {"r5"}));
    journal_read_result r = read_journal(dir.path, 0, {});
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("segment 3 is missing") != std::string::npos);
  }
  SECTION("a missing first segment is corruption: the snapshot's, or segment 1 without one") {
    write_file(dir.path / "journal-3.log", make_image(3, {"r4"}));
    fs::remove(dir.path / "journal-2.log");
    // Before, segments from the snapshot's id were read without checking that the first one
    // left is that id: r3 vanished silently.
    journal_read_result r = read_journal(dir.path, 2, {});
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("segment 2 is missing") != std::string::npos);
    CHECK(r.detail.find("the first segment found is 3") != std::string::npos);
    r = read_journal(dir.path, 1, {});  // no snapshot: the journal must start at 1
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("segment 1 is missing") != std::string::npos);
    fs::remove(dir.path / "journal-3.log");
    r = read_journal(dir.path, 2, {});  // none at all after a snapshot
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("no later segment exists") != std::string::npos);
    CHECK_FALSE(read_journal(dir.path, 1, {}).error);  // no snapshot, no segment: a new store
    boost::asio::io_context ioc;
    journal_recovery jr;
    error_code ec;
    std::string detail;
    journal_writer::open(ioc.get_executor(), dir.path, {}, 2, {}, jr, ec, &detail);
    CHECK(ec == errc::corrupt_journal);  // the writer does not paper over it with a new segment
  }
  SECTION("a segment whose header names another number is corruption") {
    write_file(dir.path / "journal-3.log", make_image(7, {}));
    CHECK(read_journal(dir.path, 0, {}).error == errc::corrupt_journal);
  }
  SECTION("a snapshot is never replayed as a segment") {
    fs::copy_file(dir.path / "snapshot", dir.path / "journal-3.log");
    journal_read_result r = read_journal(dir.path, 0, {});
    CHECK(r.error == errc::corrupt_journal);
    CHECK(r.detail.find("is a snapshot") != std::string::npos);
  }
}

TEST_CASE("directory_lock: a second holder fails with store_locked", "[journal]") {
  temp_dir dir;
  auto lock = directory_lock::acquire(dir.path / "store");
  REQUIRE(lock.owns_lock());

  // Another process.
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    error_code ec;
    std::string detail;
    auto other = directory_lock::acquire(dir.path / "store", ec, &detail);
    int code = 0;
    if (ec != errc::store_locked) code = 1;
    if (other.owns_lock()) code = 2;
    if (detail.find((dir.path / "store").string()) == std::string::npos) code = 3;
    if (detail.find("pid " + std::to_string(::getppid())) == std::string::npos) code = 4;
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);

  // The same process, through another open file: also refused.
  error_code ec;
  std::string detail;
  auto again = directory_lock::acquire(dir.path / "store", ec, &detail);
  CHECK(ec == errc::store_locked);
  CHECK_THROWS_AS(directory_lock::acquire(dir.path / "store"), taskq::error);

  lock.release();
  auto after = directory_lock::acquire(dir.path / "store", ec);
  CHECK_FALSE(ec);
  CHECK(after.owns_lock());
}

TEST_CASE("directory_lock: a refused opener always reads the holder's pid", "[journal][lock]") {
  // A child takes and releases the lock as fast as it can while this process keeps trying.
  // Before the fix the holder truncated LOCK and then wrote its pid, so a refused opener
  // could read an empty file: "held by an unknown process".
  temp_dir dir;
  const auto store = dir.path / "store";
  directory_lock::acquire(store).release();  // LOCK exists with a pid record
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    for (int i = 0; i < 20000; ++i) {
      error_code ec;
      auto l = directory_lock::acquire(store, ec);
    }
    ::_exit(0);
  }
  int refused = 0, unknown = 0, status = 0;
  std::string example;
  while (::waitpid(child, &status, WNOHANG) == 0) {
    error_code ec;
    std::string detail;
    auto l = directory_lock::acquire(store, ec, &detail);
    if (ec != errc::store_locked) continue;
    ++refused;
    if (detail.find("unknown process") != std::string::npos) {
      ++unknown;
      example = detail;
    }
  }
  CHECK(WIFEXITED(status));
  INFO(example);
  CHECK(unknown == 0);
  CHECK(refused > 0);
}

TEST_CASE("journal files are 0600 and directories 0700 whatever the umask", "[journal]") {
  for (mode_t mask : {mode_t{0}, mode_t{0277}}) {
    temp_dir dir;
    mode_t old = ::umask(mask);
    auto store = dir.path / "a" / "b";
    error_code ec;
    auto lock = directory_lock::acquire(store, ec);
    REQUIRE_FALSE(ec);
    {
      auto w = open_writer(store);
      w.append({"x"});
      w.rotate();
    }
    write_snapshot(store / "snapshot", 1, std::vector<std::string>{"s"}, ec);
    ::umask(old);
    REQUIRE_FALSE(ec);
    CHECK(file_mode(dir.path / "a") == 0700);
    CHECK(file_mode(store) == 0700);
    CHECK(file_mode(store / "LOCK") == 0600);
    CHECK(file_mode(store / "journal-1.log") == 0600);
    CHECK(file_mode(store / "journal-2.log") == 0600);
    CHECK(file_mode(store / "snapshot") == 0600);
  }
}
