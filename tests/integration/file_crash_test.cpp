// The file backend's durability proofs: reopen, torn tail, corruption, injected disk-full and
// I/O errors, the lock, compaction, read-only open, retention, and the kill test (a child
// process SIGKILLed at random moments, hundreds of times).
#include "conformance/backends.hpp"
#include "engine_fixture.hpp"

#include <taskq/backends/file/store.hpp>
#include <taskq/scheduler.hpp>

#include <boost/asio/detached.hpp>

#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

using namespace taskq;
using namespace taskq::test;
namespace fs = std::filesystem;

namespace {

struct harness {
  asio::io_context io;
  manual_clock clk;
  temp_dir tmp;
  fs::path dir = tmp.path / "store";
  std::unique_ptr<file::backend> b;

  file::backend_options options() {
    return {.retention = duration::zero(), .compact_min_bytes = 0, .time = &clk};
  }
  error_code open(file::backend_options o, std::string* detail = nullptr) {
    error_code ec;
    if (b) b->close();
    b.reset();
    b = file::backend::open(io.get_executor(), dir, std::move(o), ec, detail);
    return ec;
  }
  void open() { REQUIRE_FALSE(open(options())); }
  void reopen() {
    b->close();
    drain(io);
    b.reset();
    open();
  }

  template <class... Ts, class Start>
  std::tuple<error_code, Ts...> call(Start start) {
    return taskq::test::call<Ts...>(io, std::move(start));
  }
  task_record rec(std::string id, task_spec spec = {.type = "t"}) {
    spec.id = std::move(id);
    return make_record(std::move(spec), clk.now());
  }
  error_code insert(std::vector<task_record> rs) {
    auto [ec] = call<>([&](auto cb) { b->store().async_insert(std::move(rs), cb); });
    return ec;
  }
  std::pair<error_code, task_record> get(const std::string& id) {
    auto [ec, r] = call<task_record>([&](auto cb) { b->store().async_get(id, cb); });
    return {ec, r};
  }
  std::vector<std::string> reserve_ids(std::size_t n) {
    auto [ec, ls] = call<std::vector<lease>>(
        [&](auto cb) { b->queue().async_reserve({.max = n, .lease_for = 24h}, cb); });
    REQUIRE_FALSE(ec);
    std::vector<std::string> out;
    for (auto& l : ls) out.push_back(l.id);
    return out;
  }
  std::vector<task_record> all() {
    auto [ec, p] = call<task_page>([&](auto cb) { b->store().async_list({.limit = 1000000}, cb); });
    REQUIRE_FALSE(ec);
    return p.records;
  }
};

fs::path last_segment(const fs::path& dir) {
  error_code ec;
  auto segs = file::list_segments(dir, ec);
  REQUIRE_FALSE(ec);
  REQUIRE_FALSE(segs.empty());
  return dir / file::segment_file_name(segs.back());
}

}  // namespace

TEST_CASE("file: state survives a clean close and reopen, queue order included", "[file]") {
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({h.rec("a"), h.rec("b", {.type = "t", .priority = 5}), h.rec("c"),
                          h.rec("d", {.type = "t", .max_attempts = 1}),
                          h.rec("e", {.type = "t", .delay = 1h})}));
  auto [e1, claim] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({{"a", "d"}, h.clk.now()}, cb);
  });
  REQUIRE(claim.claimed.size() == 2);
  auto [e2] = h.call<>([&](auto cb) { h.b->queue().async_set_paused("other", true, cb); });
  REQUIRE_FALSE(e2);
  auto before = h.all();
  h.reopen();
  CHECK(h.all() == before);
  CHECK(h.b->recovery().tasks == 5);
  CHECK(h.b->recovery().requeued_running == 2);
  CHECK(h.b->queue().is_paused("other"));
  CHECK_FALSE(h.b->queue().is_paused("default"));
  // Priority first, then enqueue order; the running ones (their process died) are ready in
  // their original place; e is still delayed.
  CHECK(h.reserve_ids(10) == std::vector<std::string>{"b", "a", "c", "d"});
  auto [e3, again] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({{"a", "d"}, h.clk.now()}, cb);
  });
  REQUIRE(again.claimed.size() == 1);
  CHECK(again.claimed[0].attempt == 2);  // rescued, the lost attempt counted
  REQUIRE(again.dropped.size() == 1);
  CHECK(again.dropped[0].id == "d");  // no attempts left
  h.clk.advance(1h);
  CHECK(h.reserve_ids(10) == std::vector<std::string>{"e"});
  // And once more, after those changes.
  before = h.all();
  h.reopen();
  CHECK(h.all() == before);
}

TEST_CASE("file: a torn tail is cut off with a warning; acknowledged records stay", "[file]") {
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({h.rec("a"), h.rec("b")}));
  h.b->close();
  h.b.reset();
  auto seg = last_segment(h.dir);
  auto size = fs::file_size(seg);
  {
    std::ofstream out(seg, std::ios::binary | std::ios::app);
    out.write("\x40\x00\x00\x00\x12\x34", 6);  // half a frame: what a crash mid-write leaves
  }
  std::string warning;
  auto o = h.options();
  o.on_warning = [&](const std::string& w) { warning = w; };
  REQUIRE_FALSE(h.open(o));
  CHECK_THAT(warning, Catch::Contains(seg.string()));
  CHECK_FALSE(h.b->recovery().warning.empty());
  CHECK(fs::file_size(seg) == size);
  CHECK(h.all().size() == 2);
  REQUIRE_FALSE(h.insert({h.rec("c")}));
  h.reopen();
  CHECK(h.all().size() == 3);
}

TEST_CASE("file: corruption before the tail is a clear error naming file and offset", "[file]") {
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({h.rec("a")}));
  REQUIRE_FALSE(h.insert({h.rec("b")}));
  REQUIRE_FALSE(h.insert({h.rec("c")}));
  h.b->close();
  h.b.reset();
  auto seg = last_segment(h.dir);
  {
    std::fstream f(seg, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(file::journal_header_size + 20);  // inside the first record's body
    f.put('\x7f');
  }
  std::string detail;
  auto ec = h.open(h.options(), &detail);
  CHECK(ec == errc::corrupt_journal);
  CHECK_THAT(detail, Catch::Contains(seg.string()));
  CHECK_THAT(detail, Catch::Contains("byte offset 32"));
  // verify reports the same, and read-only open refuses too.
  std::string vd, vw;
  error_code vec;
  file::verify_store(h.dir, vec, vd, vw);
  CHECK(vec == errc::corrupt_journal);
  CHECK_THAT(vd, Catch::Contains("byte offset 32"));
}

TEST_CASE("file: a big journal replays in order; a bad record deep in it is named exactly",
          "[file]") {
  // Recovery is tuned for big journals; whatever it does, the first bad record must be named
  // exactly (file, offset, reason) wherever it is, and a good journal replays in order.
  harness h;
  h.open();
  constexpr int n = 10000;
  for (int done = 0; done < n;) {
    std::vector<task_record> rs;
    for (int i = 0; i < 1000; ++i, ++done) rs.push_back(h.rec(fmt::format("t{:05}", done)));
    REQUIRE_FALSE(h.insert(std::move(rs)));
  }
  h.reopen();
  CHECK(h.all().size() == n);
  CHECK(h.reserve_ids(3) == std::vector<std::string>{"t00000", "t00001", "t00002"});
  h.b->close();
  h.b.reset();

  auto seg = last_segment(h.dir);
  std::string image;
  {
    std::ifstream f(seg, std::ios::binary);
    image.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::vector<std::string> bodies;
  std::vector<std::uint64_t> offsets;
  auto scan = file::scan_journal(image, file::file_kind::journal_segment, "mem",
                                 [&](const file::journal_record& r) {
                                   bodies.emplace_back(r.body);
                                   offsets.push_back(r.offset);
                                 });
  REQUIRE_FALSE(scan.error);
  REQUIRE(bodies.size() == n);
  // Rewrites the segment with record k's body replaced (frames and CRCs made valid).
  auto rewrite = [&](std::size_t k, std::string body) {
    auto b = bodies;
    b[k] = std::move(body);
    std::string out = image.substr(0, file::journal_header_size);
    for (auto& x : b) file::encode_record(out, scan.id, out.size(), x);
    std::ofstream(seg, std::ios::binary | std::ios::trunc) << out;
  };
  struct bad_case {
    std::size_t k;
    std::string body;
    std::string what;
  };
  std::vector<bad_case> cases = {
      {100, bodies[100] + "x", "trailing bytes after the record"},
      {5000, bodies[5000].substr(0, bodies[5000].size() - 1), "record body ends early"},
      {6000, bodies[17], "second insert of task t00017"},
      {n - 1, bodies[n - 1] + "x", "trailing bytes after the record"},
  };
  for (auto& c : cases) {
    INFO("record " << c.k);
    rewrite(c.k, c.body);
    std::string detail;
    CHECK(h.open(h.options(), &detail) == errc::invalid_record);
    CHECK(detail == "journal segment " + seg.string() + ", byte offset " +
                        std::to_string(offsets[c.k]) + ": " + c.what);
  }
  rewrite(0, bodies[0]);  // as written: opens again
  REQUIRE_FALSE(h.open(h.options()));
  CHECK(h.all().size() == n);
}

TEST_CASE("file: disk full and I/O errors reach the caller and change nothing", "[file]") {
  harness h;
  std::atomic<int> fail_errno{0};
  auto o = h.options();
  o.fault_injector = [&](file::journal_op op, const fs::path&) {
    file::journal_fault f;
    if (op == file::journal_op::write) f.errno_value = fail_errno.load();
    return f;
  };
  REQUIRE_FALSE(h.open(o));
  REQUIRE_FALSE(h.insert({h.rec("a")}));

  fail_errno = ENOSPC;
  CHECK(h.insert({h.rec("b")}) == errc::disk_full);
  CHECK(h.get("b").first == errc::not_found);
  auto [e1, after] = h.call<task_record>([&](auto cb) {
    h.b->store().async_update(
        {.id = "a", .expected = task_status::pending, .to = task_status::cancelled}, cb);
  });
  CHECK(e1 == errc::disk_full);
  CHECK(h.get("a").second.status == task_status::pending);
  auto [e2, claimed] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({{"a"}, h.clk.now()}, cb);
  });
  CHECK(e2 == errc::disk_full);
  CHECK(h.get("a").second.status == task_status::pending);

  fail_errno = EIO;
  CHECK(h.insert({h.rec("c")}) == errc::io_error);

  fail_errno = 0;  // space is back
  REQUIRE_FALSE(h.insert({h.rec("d")}));
  std::string vd, vw;
  error_code vec;
  CHECK(file::verify_store(h.dir, vec, vd, vw) >= 2);
  CHECK_FALSE(vec);
  h.reopen();
  std::vector<std::string> ids;
  for (auto& r : h.all()) ids.push_back(r.id);
  CHECK(ids == std::vector<std::string>{"a", "d"});
  CHECK(h.get("a").second.status == task_status::pending);
}

TEST_CASE("file: a second opener gets store_locked; read-only open works alongside", "[file]") {
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({h.rec("a")}));
  asio::io_context io2;
  error_code ec;
  std::string detail;
  auto second = file::backend::open(io2.get_executor(), h.dir, {}, ec, &detail);
  CHECK(ec == errc::store_locked);
  CHECK_FALSE(second);
  CHECK_THAT(detail, Catch::Contains(std::to_string(::getpid())));

  auto ro = file::backend::open_read_only(io2.get_executor(), h.dir, ec, &detail);
  REQUIRE_FALSE(ec);
  REQUIRE(ro);
  CHECK(ro->read_only());
  std::optional<task_record> got;
  ro->store().async_get("a", [&](error_code e, task_record r) {
    CHECK_FALSE(e);
    got = r;
  });
  drain(io2);
  REQUIRE(got);
  CHECK(got->id == "a");
  std::optional<error_code> wec;
  ro->store().async_insert({h.rec("z")}, [&](error_code e) { wec = e; });
  drain(io2);
  CHECK(wec == errc::store_closed);

  auto missing = file::backend::open_read_only(io2.get_executor(), h.tmp.path / "nope", ec);
  CHECK(ec == errc::io_error);
}

TEST_CASE("file: read-only opens during constant compaction see every acknowledged task",
          "[file][compaction][read-only]") {
  // A writer inserts and claims tasks while another thread compacts without pause; readers
  // open the store read-only (and verify it) in a loop. Each read must succeed and hold every
  // task acknowledged before it began. Before the fix a compaction finishing between the
  // reader's snapshot and its journal replayed a later segment onto the older snapshot: reads
  // missed tasks (exit 0) or failed with "record for unknown task" (invalid_record).
  harness h;
  h.open();
  std::atomic<int> acked{0};
  std::atomic<bool> writing{true};
  std::atomic<int> compactions{0};
  std::mutex m;
  std::vector<std::string> failures;
  auto fail = [&](std::string what) {
    std::lock_guard lk(m);
    failures.push_back(std::move(what));
  };
  std::thread compactor([&] {
    while (writing) {
      error_code ec;
      std::string d;
      h.b->compact(ec, &d);
      if (ec) fail("compaction: " + d);
      ++compactions;
    }
  });
  std::atomic<int> reads{0};
  auto reader = [&](bool verify) {
    while (writing) {
      const int before = acked.load();
      error_code ec;
      std::string d, warning;
      if (verify) {
        file::verify_store(h.dir, ec, d, warning);
        if (ec) fail("verify: " + d + ": " + ec.message());
        ++reads;
        continue;
      }
      asio::io_context io;
      auto ro = file::backend::open_read_only(io.get_executor(), h.dir, ec, &d);
      if (!ro) {
        fail("open_read_only: " + d + ": " + ec.message());
        continue;
      }
      std::optional<task_page> page;
      ro->store().async_list({.limit = 1000000}, [&](error_code, task_page p) { page = p; });
      io.run();
      std::set<std::string> seen;
      for (auto& r : page->records) seen.insert(r.id);
      for (int i = 0; i < before; ++i)
        if (!seen.count(fmt::format("t-{:05}", i))) {
          fail(fmt::format("a read begun after {} acknowledged tasks lacks t-{:05}", before, i));
          break;
        }
      ++reads;
    }
  };
  std::thread r1(reader, false), r2(reader, true);
  for (int batch = 0; batch < 60; ++batch) {
    std::vector<task_record> rs;
    std::vector<std::string> ids;
    for (int i = 0; i < 20; ++i) {
      rs.push_back(h.rec(fmt::format("t-{:05}", batch * 20 + i)));
      ids.push_back(rs.back().id);
    }
    REQUIRE_FALSE(h.insert(std::move(rs)));
    acked += 20;
    auto [cec, claimed] = h.call<claim_result>([&](auto cb) {
      h.b->store().async_claim({ids, h.clk.now()}, cb);
    });
    REQUIRE_FALSE(cec);
  }
  // Let the readers overlap a few more compactions of the final state. Both counts are waited
  // for: on a loaded machine a compaction (snapshot plus fsyncs, and the writes in flight it
  // waits for) can take longer than all the writes above did.
  const int target_reads = reads.load() + 6;
  const int target_compactions = compactions.load() + 3;
  CHECK(run_until(h.io, [&] {
    return reads.load() >= target_reads && compactions.load() >= target_compactions;
  }));
  writing = false;
  r1.join();
  r2.join();
  compactor.join();
  INFO(failures.size() << " failures; first: " << (failures.empty() ? "" : failures.front()));
  CHECK(failures.empty());
  CHECK(compactions > 2);
  CHECK(reads > 2);
}

TEST_CASE("file: a missing journal segment is corrupt_journal, for open, read-only and verify",
          "[file]") {
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({h.rec("before")}));
  error_code ec;
  std::string detail;
  h.b->compact(ec, &detail);
  REQUIRE_FALSE(ec);
  REQUIRE_FALSE(h.insert({h.rec("after-1")}));  // in the segment the snapshot names
  h.b->close();
  h.b.reset();
  auto segs = file::list_segments(h.dir, ec);
  REQUIRE(segs.size() == 1);
  const auto first = segs.front();
  {
    // Two more segments after it, each with a task.
    file::journal_recovery jr;
    auto w = file::journal_writer::open(
        h.io.get_executor(), h.dir, {}, first, [](const file::journal_record&) {}, jr);
    w.rotate();
    w.rotate();
    w.close();
  }
  auto expect_corrupt = [&](const std::string& missing) {
    CHECK(h.open(h.options(), &detail) == errc::corrupt_journal);
    CHECK_THAT(detail, Catch::Contains("segment " + missing + " is missing"));
    asio::io_context io;
    auto ro = file::backend::open_read_only(io.get_executor(), h.dir, ec, &detail);
    CHECK_FALSE(ro);
    CHECK(ec == errc::corrupt_journal);
    std::string warning;
    file::verify_store(h.dir, ec, detail, warning);
    CHECK(ec == errc::corrupt_journal);
    CHECK_THAT(detail, Catch::Contains("segment " + missing + " is missing"));
  };
  SECTION("the segment the snapshot names") {
    // Before the fix: verify said ok and open went on without the task in it.
    fs::remove(h.dir / file::segment_file_name(first));
    expect_corrupt(std::to_string(first));
  }
  SECTION("a segment in the middle") {
    fs::remove(h.dir / file::segment_file_name(first + 1));
    expect_corrupt(std::to_string(first + 1));
  }
}

TEST_CASE("file: a directory that is not a store is refused; a crashed snapshot's temp goes",
          "[file]") {
  harness h;
  fs::create_directories(h.dir);
  std::ofstream(h.dir / "notes.txt") << "not a store\n";
  asio::io_context io;
  error_code ec;
  std::string detail, warning;
  // Before: verify said "ok: 0 records checked" and list showed an empty store.
  CHECK(file::verify_store(h.dir, ec, detail, warning) == 0);
  CHECK(ec == errc::io_error);
  CHECK_THAT(detail, Catch::Contains("not a taskq store"));
  CHECK_FALSE(file::backend::open_read_only(io.get_executor(), h.dir, ec, &detail));
  CHECK(ec == errc::io_error);
  CHECK_THAT(detail, Catch::Contains("not a taskq store"));

  h.open();
  REQUIRE_FALSE(h.insert({h.rec("a")}));
  h.b->compact(ec, &detail);
  REQUIRE_FALSE(ec);
  h.b->close();
  h.b.reset();
  // A crash while writing a snapshot leaves its temporary file.
  fs::copy_file(h.dir / file::snapshot_file_name, h.dir / "snapshot.bin.tmp");
  h.open();
  CHECK_FALSE(fs::exists(h.dir / "snapshot.bin.tmp"));
  CHECK(h.all().size() == 1);
}

TEST_CASE("file: a stored document nested too deep is refused on load, not a crash",
          "[file][depth]") {
  harness h;
  h.open();
  // A task whose payload is a string as long as the deep document will be, then the string is
  // swapped for 100,000 nested arrays in the journal (same length, frames re-encoded).
  constexpr std::size_t levels = 100'000;
  REQUIRE_FALSE(
      h.insert({h.rec("deep", {.type = "t", .payload = std::string(2 * levels - 2, 'x')})}));
  h.b->close();
  h.b.reset();
  const auto seg = last_segment(h.dir);
  std::vector<std::string> bodies;
  std::uint64_t id = 0;
  auto scan = file::scan_journal_file(seg, file::file_kind::journal_segment,
                                      [&](const file::journal_record& r) {
                                        bodies.emplace_back(r.body);
                                        id = r.segment;
                                      });
  REQUIRE_FALSE(scan.error);
  const std::string quoted = '"' + std::string(2 * levels - 2, 'x') + '"';
  const std::string deep = std::string(levels, '[') + std::string(levels, ']');
  bool swapped = false;
  for (auto& b : bodies)
    if (auto at = b.find(quoted); at != std::string::npos) {
      b.replace(at, quoted.size(), deep);
      swapped = true;
    }
  REQUIRE(swapped);
  std::string image = file::encode_file_header(file::file_kind::journal_segment, id);
  for (auto& b : bodies) file::encode_record(image, id, image.size(), b);
  std::ofstream(seg, std::ios::binary | std::ios::trunc) << image;

  std::string detail;
  CHECK(h.open(h.options(), &detail) == errc::invalid_record);
  CHECK_THAT(detail, Catch::Contains("nested deeper than 512 levels"));
  CHECK_THAT(detail, Catch::Contains("byte offset"));
  error_code ec;
  std::string warning;
  file::verify_store(h.dir, ec, detail, warning);
  CHECK(ec == errc::invalid_record);
  asio::io_context io;
  CHECK_FALSE(file::backend::open_read_only(io.get_executor(), h.dir, ec, &detail));
  CHECK(ec == errc::invalid_record);
}

TEST_CASE("file: compaction keeps the state and bounds disk use; retention prunes", "[file]") {
  harness h;
  h.open();
  std::vector<std::string> ids;
  for (int batch = 0; batch < 20; ++batch) {
    std::vector<task_record> rs;
    for (int i = 0; i < 50; ++i) {
      rs.push_back(h.rec("t-" + std::to_string(1000 + batch * 50 + i),
                         {.type = "t", .payload = {{"n", i}, {"pad", std::string(100, 'x')}}}));
      ids.push_back(rs.back().id);
    }
    REQUIRE_FALSE(h.insert(std::move(rs)));
  }
  // Finish most of them, with a few updates each.
  for (std::size_t i = 0; i < 900; i += 100) {
    std::vector<std::string> some(ids.begin() + i, ids.begin() + i + 100);
    h.call<claim_result>([&](auto cb) { h.b->store().async_claim({some, h.clk.now()}, cb); });
    std::vector<task_update> us;
    for (auto& id : some)
      us.push_back({.id = id,
                    .expected = task_status::running,
                    .to = task_status::succeeded,
                    .now = h.clk.now()});
    auto [ec, res] = h.call<std::vector<update_result>>(
        [&](auto cb) { h.b->store().async_update_batch(std::move(us), cb); });
    REQUIRE_FALSE(ec);
  }
  auto before = h.all();
  auto journal_before = h.b->info().journal_bytes;
  error_code ec;
  std::string detail;
  h.b->compact(ec, &detail);
  REQUIRE_FALSE(ec);
  auto info = h.b->info();
  CHECK(info.compactions == 1);
  CHECK(info.snapshot_bytes > 0);
  CHECK(info.journal_bytes < 100);  // a fresh segment: just its header
  CHECK(info.snapshot_bytes < journal_before);
  REQUIRE_FALSE(h.insert({h.rec("after")}));
  before = h.all();
  h.reopen();
  auto after = h.all();
  REQUIRE(after.size() == before.size());
  for (std::size_t i = 0; i < after.size(); ++i) {
    INFO(to_json(after[i]).dump() << "\n" << to_json(before[i]).dump());
    CHECK(after[i] == before[i]);
  }
  CHECK(h.b->recovery().snapshot_records == 1000);

  // Retention: finished tasks older than it are pruned (journaled like any delete).
  h.b->close();
  h.b.reset();
  auto o = h.options();
  o.retention = 1h;
  REQUIRE_FALSE(h.open(o));
  h.clk.advance(2h);
  h.b->prune_expired();
  REQUIRE(run_until(h.io, [&] { return h.all().size() == 101; }));
  h.reopen();
  CHECK(h.all().size() == 101);
}

TEST_CASE("file: schedules persist; after a crash they resume under their catch-up policy",
          "[file][schedules]") {
  harness h;
  h.clk.set(std::chrono::sys_days{std::chrono::year{2026} / 1 / 1});
  const auto t0 = h.clk.now();
  h.open();
  auto fired = [&] {
    std::vector<time_point> out;
    for (auto& r : h.all()) out.push_back(r.scheduled_for.value());
    std::sort(out.begin(), out.end());
    return out;
  };
  auto ensure = [&](scheduler& sched, schedule def) {
    auto [ec, r] = h.call<ensure_result>([&](auto cb) { sched.async_ensure_schedule(def, cb); });
    REQUIRE_FALSE(ec);
  };
  const auto minutely = schedule{.name = "minutely",
                                 .task = {.type = "t"},
                                 .cron = "* * * * *",
                                 .catch_up = catch_up_policy::run_all,
                                 .max_catch_up = 3};
  const auto hourly = schedule{
      .name = "hourly", .task = {.type = "t"}, .every = 1h, .catch_up = catch_up_policy::skip};
  const fs::path crash_image = h.tmp.path / "crash-image";
  {
    client c{h.io.get_executor(), h.b->queue(), h.b->store(), {.time = &h.clk}};
    scheduler sched(c, {.store = &h.b->schedules()});
    ensure(sched, minutely);
    ensure(sched, hourly);
    sched.async_run(asio::detached);
    drain(h.io);
    h.clk.set(t0 + 1min);
    REQUIRE(run_until(h.io, [&] { return fired().size() == 1; }));
    h.clk.set(t0 + 2min);
    REQUIRE(run_until(h.io, [&] { return fired().size() == 2; }));
    REQUIRE(run_until(h.io, [&] {
      auto [ec, r] = h.call<std::optional<schedule_record>>(
          [&](auto cb) { h.b->schedules().async_load("minutely", cb); });
      return r && r->state.cursor == t0 + 2min;
    }));
    // What a SIGKILL leaves: the directory as it is on disk now, lock file and all, with the
    // scheduler still running (acknowledged writes are durable in sync mode).
    fs::copy(h.dir, crash_image, fs::copy_options::recursive);
    sched.stop();
    drain(h.io);
  }
  h.b->close();
  h.b.reset();
  h.dir = crash_image;
  // Down for ~10 minutes (and past the top of the hour).
  h.clk.set(t0 + 12min + 30s);
  h.open();
  CHECK(fired() == std::vector<time_point>{t0 + 1min, t0 + 2min});
  auto [ec, stored] =
      h.call<std::vector<schedule_record>>([&](auto cb) { h.b->schedules().async_load_all(cb); });
  REQUIRE_FALSE(ec);
  REQUIRE(stored.size() == 2);
  CHECK(stored[0].definition == hourly);
  CHECK(stored[1].definition == minutely);
  {
    client c{h.io.get_executor(), h.b->queue(), h.b->store(), {.time = &h.clk}};
    scheduler sched(c, {.store = &h.b->schedules()});
    sched.async_run(asio::detached);  // adopts both without ensure
    // run_all, at most 3: the latest three missed minutes; the hourly one (skip) does not
    // run the missed top of the hour.
    REQUIRE(run_until(h.io, [&] { return fired().size() == 5; }));
    drain(h.io);
    CHECK(fired() ==
          std::vector<time_point>{t0 + 1min, t0 + 2min, t0 + 10min, t0 + 11min, t0 + 12min});
    sched.stop();
    drain(h.io);
  }
  // Compaction carries the schedules into the snapshot. (On another thread: it waits for the
  // writes in flight, whose completions run on this one.)
  error_code cec;
  std::string detail;
  std::atomic<bool> compacted{false};
  std::thread compactor([&] {
    h.b->compact(cec, &detail);
    compacted = true;
  });
  REQUIRE(run_until(h.io, [&] { return compacted.load(); }));
  compactor.join();
  REQUIRE_FALSE(cec);
  h.reopen();
  auto [ec2, again] =
      h.call<std::vector<schedule_record>>([&](auto cb) { h.b->schedules().async_load_all(cb); });
  REQUIRE_FALSE(ec2);
  REQUIRE(again.size() == 2);
  CHECK(again[1].state.cursor == t0 + 12min);
  auto [ec3, removed] = h.call<bool>([&](auto cb) { h.b->schedules().async_remove("hourly", cb); });
  CHECK(removed);
  h.reopen();
  auto [ec4, left] =
      h.call<std::vector<schedule_record>>([&](auto cb) { h.b->schedules().async_load_all(cb); });
  REQUIRE(left.size() == 1);

  // A schedule record whose frame is intact but whose body is not: a clear error with the
  // file and offset, never a silent skip.
  h.b->close();
  h.b.reset();
  {
    error_code lec;
    auto segs = file::list_segments(h.dir, lec);
    REQUIRE_FALSE(segs.empty());
    file::journal_recovery jr;
    auto w = file::journal_writer::open(
        h.io.get_executor(), h.dir, {}, segs.front(), [](const file::journal_record&) {}, jr);
    const std::string text = R"({"v":1})";  // a schedule record without its fields
    w.append({std::string(1, '\x09') + static_cast<char>(text.size()) + text});
    w.close();
  }
  auto ec5 = h.open(h.options(), &detail);
  CHECK(ec5 == errc::invalid_record);
  CHECK_THAT(detail, Catch::Contains("journal segment"));
  CHECK_THAT(detail, Catch::Contains("byte offset"));
  CHECK_THAT(detail, Catch::Contains("schedule record: field 'name'"));
}

TEST_CASE("file: compaction while writes go on keeps every write, before and after the cut",
          "[file][compaction]") {
  harness h;
  h.open();
  std::vector<std::string> ids;
  for (int batch = 0; batch < 6; ++batch) {
    std::vector<task_record> rs;
    for (int i = 0; i < 250; ++i) {
      rs.push_back(h.rec(fmt::format("c-{:02}-{:03}", batch, i), {.type = "t", .payload = i}));
      ids.push_back(rs.back().id);
    }
    REQUIRE_FALSE(h.insert(std::move(rs)));
  }
  auto [cec0, claimed] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({ids, h.clk.now()}, cb);
  });
  REQUIRE(claimed.claimed.size() == ids.size());

  // Compactions on another thread while this one heartbeats, logs and finishes tasks (each
  // write changes a record the compaction may be encoding at that moment).
  std::atomic<int> compactions{0};
  std::atomic<bool> stop{false};
  error_code compact_error;
  std::thread compactor([&] {
    do {
      error_code ec;
      std::string d;
      h.b->compact(ec, &d);
      if (ec) compact_error = ec;
      ++compactions;
    } while (!stop);
  });
  for (std::size_t next = 0; next < ids.size(); ++next) {
    auto& id = ids[next];
    auto [hec, cancel] = h.call<bool>([&](auto cb) {
      h.b->store().async_heartbeat(
          {.id = id, .attempt = 1, .progress = json(0.5), .now = h.clk.now()}, cb);
    });
    REQUIRE_FALSE(hec);
    auto [lec] = h.call<>([&](auto cb) {
      h.b->store().async_append_log(id, {h.clk.now(), "half way"}, cb);
    });
    REQUIRE_FALSE(lec);
    if (next % 2 == 0) {
      auto [uec, r] = h.call<task_record>([&](auto cb) {
        h.b->store().async_update({.id = id,
                                   .expected = task_status::running,
                                   .to = task_status::succeeded,
                                   .now = h.clk.now(),
                                   .result = json(next)},
                                  cb);
      });
      REQUIRE_FALSE(uec);
    }
  }
  stop = true;
  REQUIRE(run_until(h.io, [&] { return compactions.load() >= 1; }));
  compactor.join();
  CHECK_FALSE(compact_error);
  CHECK(compactions >= 2);  // (hundreds, in practice: each takes milliseconds)
  const auto before = h.all();
  h.reopen();
  CHECK(h.b->recovery().snapshot_records > 0);
  const auto after = h.all();
  REQUIRE(after.size() == before.size());
  for (std::size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].id);
    CHECK(after[i] == before[i]);
  }
  auto done = std::count_if(after.begin(), after.end(),
                            [](auto& r) { return r.status == task_status::succeeded; });
  CHECK(done == static_cast<long>(ids.size() / 2));
}

TEST_CASE("file: randomized damage to a store directory is detected, never a crash or a skip",
          "[file][damage]") {
  // A store with a snapshot and journal segments after it: tasks in several states, a paused
  // queue, a schedule.
  harness h;
  h.open();
  for (int batch = 0; batch < 4; ++batch) {
    std::vector<task_record> rs;
    for (int i = 0; i < 5; ++i)
      rs.push_back(h.rec(fmt::format("t-{}-{}", batch, i),
                         {.type = "t", .payload = {{"n", i}}, .labels = {{"b", "x"}}}));
    REQUIRE_FALSE(h.insert(std::move(rs)));
    auto [ec, claim] = h.call<claim_result>([&](auto cb) {
      h.b->store().async_claim({{fmt::format("t-{}-0", batch)}, h.clk.now()}, cb);
    });
    REQUIRE_FALSE(ec);
    if (batch == 1) {
      auto [pec] = h.call<>([&](auto cb) { h.b->queue().async_set_paused("p", true, cb); });
      REQUIRE_FALSE(pec);
      auto [sec] = h.call<>([&](auto cb) {
        h.b->schedules().async_save(
            {.definition = {.name = "s", .task = {.type = "t"}, .cron = "* * * * *"}}, cb);
      });
      REQUIRE_FALSE(sec);
      error_code cec;
      std::string cd;
      std::atomic<bool> done{false};
      std::thread t([&] {
        h.b->compact(cec, &cd);
        done = true;
      });
      REQUIRE(run_until(h.io, [&] { return done.load(); }));
      t.join();
      REQUIRE_FALSE(cec);
    }
  }
  const auto original = h.all();
  h.b->close();
  h.b.reset();
  std::vector<fs::path> files;
  for (auto& de : fs::directory_iterator(h.dir))
    if (de.path().filename() != "LOCK") files.push_back(de.path().filename());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 2);  // the snapshot and at least one segment

  std::mt19937_64 rng(20261125);
  auto rnd = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  const fs::path work = h.tmp.path / "damaged";
  int refused = 0, recovered = 0;
  for (int iter = 0; iter < 150; ++iter) {
    fs::remove_all(work);
    fs::copy(h.dir, work, fs::copy_options::recursive);
    const auto victim = work / files[rnd(files.size())];
    std::string bytes;
    {
      std::ifstream in(victim, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    const int mutation = static_cast<int>(rnd(3));
    if (mutation == 0) {
      auto where = rnd(bytes.size());
      bytes[where] = static_cast<char>(bytes[where] ^ (1 << rnd(8)));
    } else if (mutation == 1) {
      bytes.resize(rnd(bytes.size()));
    } else {
      for (auto n = 1 + rnd(64); n > 0; --n) bytes.push_back(static_cast<char>(rnd(256)));
    }
    {
      std::ofstream out(victim, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    INFO("iteration " << iter << ": mutation " << mutation << " of " << victim.filename());
    std::string vdetail, vwarning;
    error_code vec;
    file::verify_store(work, vec, vdetail, vwarning);
    error_code ec;
    std::string detail;
    auto b = file::backend::open(h.io.get_executor(), work,
                                 {.retention = duration::zero(), .time = &h.clk}, ec, &detail);
    CHECK(ec == vec);  // verify and open agree
    if (ec) {
      ++refused;
      CHECK((ec == errc::corrupt_journal || ec == errc::invalid_record ||
             ec == errc::unsupported_format_version));
      CHECK_THAT(detail, Catch::Contains(work.string()));
      CHECK_THAT(detail, Catch::Contains("offset"));
      continue;
    }
    ++recovered;
    std::vector<task_record> now;
    {
      auto [lec, page] = taskq::test::call<task_page>(
          h.io, [&](auto cb) { b->store().async_list({.limit = 1000}, cb); });
      REQUIRE_FALSE(lec);
      now = page.records;
    }
    b->close();
    drain(h.io);
    const bool in_last_segment = victim == last_segment(work);
    if (mutation == 2) {
      // Garbage after the last record is a torn tail (the snapshot refuses any tail).
      CHECK(in_last_segment);
      CHECK_FALSE(b->recovery().warning.empty());
      CHECK(now == original);
    } else {
      // Only the tail of the last segment may be cut: what remains is the state as of an
      // earlier acknowledged write, so every recovered task exists in the original.
      CHECK(in_last_segment);
      for (auto& r : now) {
        auto it =
            std::find_if(original.begin(), original.end(), [&](auto& o) { return o.id == r.id; });
        CHECK(it != original.end());
      }
    }
  }
  CHECK(refused > 0);
  CHECK(recovered > 0);
}

// --- the kill test ------------------------------------------------------------------------------

namespace {

// The ids written to an ACK or EXEC file. A SIGKILL can cut a write() short at a page
// boundary (the kernel checks for fatal signals between pages), leaving part of a line with no
// newline; the next process then appends a whole "id\n" to it. So the id of a line is its last
// 36 characters, and a shorter line is a cut one (its task is not counted: it was not
// acknowledged, or did not finish, and runs again later).
std::vector<std::string> read_lines(const fs::path& p) {
  std::vector<std::string> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line))
    if (line.size() >= 36) out.push_back(line.substr(line.size() - 36));
  return out;
}

pid_t spawn_child(const fs::path& dir, const fs::path& acks, const fs::path& execs, int n) {
  auto count = std::to_string(n);
  pid_t pid = ::fork();
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 1);
    ::execl(TASKQ_KILL_CHILD, TASKQ_KILL_CHILD, dir.c_str(), acks.c_str(), execs.c_str(),
            count.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

}  // namespace

TEST_CASE("file: kill test — SIGKILL at random moments loses nothing acknowledged",
          "[file][kill]") {
  temp_dir tmp;
  auto dir = tmp.path / "store";
  auto acks = tmp.path / "acks";
  auto execs = tmp.path / "execs";
  fs::create_directories(tmp.path);
  std::mt19937 rng(20240607);
  const int kills = 220;
  int killed_alive = 0;
  std::map<int, int> exited_before_kill;  // exit status -> children that ended on their own
  std::set<std::string> finished;         // succeeded as of the last check
  std::size_t exec_lines_at_check = 0;
  std::size_t reruns_of_finished = 0;
  auto start = std::chrono::steady_clock::now();

  auto check = [&](bool final) {
    asio::io_context io;
    error_code ec;
    std::string detail;
    auto b =
        file::backend::open(io.get_executor(), dir,
                            {.retention = duration::zero(), .compact_min_bytes = 0}, ec, &detail);
    INFO(detail);
    REQUIRE_FALSE(ec);
    std::optional<task_page> page;
    b->store().async_list({.limit = 10000000}, [&](error_code e, task_page p) {
      REQUIRE_FALSE(e);
      page = std::move(p);
    });
    drain(io);
    REQUIRE(page);
    std::unordered_map<std::string, task_status> status;
    for (auto& r : page->records) status[r.id] = r.status;
    auto acked = read_lines(acks);
    std::size_t missing = 0;
    for (auto& id : acked)
      if (!status.count(id)) ++missing;
    CHECK(missing == 0);
    if (final) {
      std::size_t unfinished = 0;  // every task, acknowledged or not, ran to success
      for (auto& [id, st] : status)
        if (st != task_status::succeeded) ++unfinished;
      CHECK(unfinished == 0);
    }
    CHECK(status.size() >= acked.size());  // plus enqueues durable but not yet reported
    // A task succeeded at an earlier check must not have run again since.
    auto ran = read_lines(execs);
    for (std::size_t i = exec_lines_at_check; i < ran.size(); ++i)
      if (finished.count(ran[i])) ++reruns_of_finished;
    exec_lines_at_check = ran.size();
    for (auto& [id, st] : status)
      if (st == task_status::succeeded) finished.insert(id);
    b->close();
    drain(io);
  };

  for (int k = 0; k < kills; ++k) {
    pid_t pid = spawn_child(dir, acks, execs, 5000);
    // Mostly early (during recovery, enqueue bursts); every 8th later (compactions run).
    auto wait_us = k % 8 == 7 ? 40000 + rng() % 120000 : 1000 + rng() % 30000;
    std::this_thread::sleep_for(std::chrono::microseconds(wait_us));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
      ++killed_alive;
    else
      ++exited_before_kill[WIFEXITED(status) ? WEXITSTATUS(status) : -1];
    check(false);
  }
  // Let a last child finish everything.
  pid_t pid = spawn_child(dir, acks, execs, 0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  check(true);

  auto acked = read_lines(acks);
  auto ran = read_lines(execs);
  std::unordered_map<std::string, int> runs;
  for (auto& id : ran) ++runs[id];
  std::size_t reruns = 0;
  for (auto& [id, n] : runs) reruns += static_cast<std::size_t>(n - 1);
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("kill test: " << kills << " kills (" << killed_alive << " while running), " << acked.size()
                     << " tasks acknowledged (" << runs.size() << " enqueued), all succeeded; "
                     << ran.size() << " executions, " << reruns
                     << " re-runs of tasks in flight at a kill; " << secs << " s; snapshot "
                     << (fs::exists(dir / file::snapshot_file_name) ? "present" : "absent"));
  CHECK(acked.size() > 200);  // the test did real work (sanitizer builds are slower)
  // Each acknowledged task ran; so did enqueues that were durable when the kill came but
  // not yet reported to the parent.
  std::size_t never_ran = 0;
  for (auto& id : acked)
    if (!runs.count(id)) ++never_ran;
  CHECK(never_ran == 0);
  CHECK(runs.size() >= acked.size());
  CHECK(reruns_of_finished == 0);
  std::string exits;
  for (auto [code, n] : exited_before_kill) exits += fmt::format(" {}x exit {}", n, code);
  INFO("children that ended before their kill:" << exits);
  CHECK(killed_alive >= 200);
}

// --- recovery keeps records in their stored form --------------------------------------------

TEST_CASE("file: recovered records are built on first use and come back exactly", "[file][lazy]") {
  harness h;
  h.open();
  const json payload = {{"text", "gr\xc3\xbc\xc3\x9f dich \xf0\x9f\x98\x80 \"quoted\"\n"},
                        {"n", -12345678901234},
                        {"big", 18446744073709551615u},
                        {"x", 0.1},
                        {"tiny", 5e-324},
                        {"list", {1, 2.5, nullptr, true, false, json::object(), json::array()}}};
  REQUIRE_FALSE(h.insert({
      h.rec("a-plain"),
      h.rec("b-full",
            {.type = "mail",
             .queue = "q2",
             .payload = payload,
             .metadata = {{"tenant", "t1"}},
             .priority = -3,
             .delay = 1h,
             .max_attempts = 4,
             .retry = {.initial_delay = 2s, .max_delay = 1min, .multiplier = 3, .jitter = 0},
             .timeout = 30s,
             .labels = {{"k", "v"}, {"empty", ""}},
             .concurrency_key = "ck",
             .unique_key = "u1"}),
      h.rec("c-done", {.type = "t", .unique_key = "u2", .unique_for = unique_scope::any}),
      h.rec("d-running", {.type = "t", .payload = "just a string"}),
      h.rec("e-scheduled", {.type = "t", .scheduled_for = h.clk.now() - 1min}),
  }));
  // c succeeds with a result and log lines; d runs with a heartbeat's progress.
  auto [ce, claim] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({{"c-done", "d-running"}, h.clk.now()}, cb);
  });
  REQUIRE_FALSE(ce);
  REQUIRE(claim.claimed.size() == 2);
  auto [le] = h.call<>([&](auto cb) {
    h.b->store().async_append_log("c-done", {h.clk.now(), "line 1"}, cb);
  });
  REQUIRE_FALSE(le);
  auto [ue, done] = h.call<task_record>([&](auto cb) {
    h.b->store().async_update({.id = "c-done",
                               .expected = task_status::running,
                               .to = task_status::succeeded,
                               .now = h.clk.now(),
                               .result = json{{"ok", true}, {"items", {1, 2, 3}}},
                               .log = log_entry{h.clk.now(), "finished"}},
                              cb);
  });
  REQUIRE_FALSE(ue);
  auto [he, cancel] = h.call<bool>([&](auto cb) {
    h.b->store().async_heartbeat(
        {.id = "d-running", .attempt = 1, .progress = json{{"pct", 50}}, .now = h.clk.now()}, cb);
  });
  REQUIRE_FALSE(he);

  auto counts_of = [&] {
    auto [ec, c] = h.call<task_counts>([&](auto cb) { h.b->store().async_counts(cb); });
    REQUIRE_FALSE(ec);
    return c;
  };
  const auto before = h.all();
  const auto counts_before = counts_of();
  REQUIRE(before.size() == 5);

  // Through the journal, then through a snapshot compacted from records nobody built yet.
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    h.reopen();
    // Bookkeeping made from the stored forms: counts and unique keys.
    auto c = counts_of();
    CHECK(c.total == counts_before.total);
    CHECK(c.by_type == counts_before.by_type);
    CHECK(c.by_queue == counts_before.by_queue);
    CHECK(h.insert({h.rec("z1", {.type = "t", .unique_key = "u1"})}) == errc::duplicate_unique_key);
    CHECK(h.insert({h.rec("z2", {.type = "t", .unique_key = "u2"})}) == errc::duplicate_unique_key);
    if (round < 2) {
      // Compact while every record is still stored: the snapshot carries their stored bytes.
      error_code ec;
      std::string detail;
      h.b->compact(ec, &detail);
      REQUIRE_FALSE(ec);
      h.reopen();
    }
    for (const auto& r : before) {
      auto [ec, got] = h.get(r.id);
      REQUIRE_FALSE(ec);
      INFO(to_json(got).dump() << "\n" << to_json(r).dump());
      CHECK(got == r);
    }
    CHECK(h.all() == before);
  }
  CHECK(h.b->recovery().snapshot_records == 5);
  // The queue index came from the stored forms: priority, delay and the rescued running task.
  h.reopen();
  CHECK(h.b->recovery().requeued_running == 1);
  CHECK(h.reserve_ids(10) == std::vector<std::string>{"a-plain", "d-running", "e-scheduled"});
  auto reserve_q2 = [&] {
    auto [ec, ls] = h.call<std::vector<lease>>([&](auto cb) {
      h.b->queue().async_reserve({.queues = {"q2"}, .max = 10, .lease_for = 24h}, cb);
    });
    REQUIRE_FALSE(ec);
    return ls.size() == 1 ? ls[0].id : std::to_string(ls.size()) + " leases";
  };
  CHECK(reserve_q2() == "0 leases");  // delayed
  h.clk.advance(2h);
  CHECK(reserve_q2() == "b-full");
  // A stored finished task is pruned by its stored finish time.
  h.reopen();
  auto [pe, pruned] =
      h.call<std::size_t>([&](auto cb) { h.b->store().async_prune(h.clk.now() + 1s, cb); });
  REQUIRE_FALSE(pe);
  CHECK(pruned == 1);
  CHECK(h.get("c-done").first == errc::not_found);
  CHECK(h.all().size() == 4);
}

TEST_CASE("file: the check of stored JSON text accepts no more than the JSON parser",
          "[file][lazy][json]") {
  using file::detail::check_json_text;
  using file::detail::json_text_check;
  auto accepted = [](std::string_view t) { return json::accept(t.begin(), t.end()); };
  // Cases both must refuse, or both accept.
  const std::vector<std::pair<std::string, bool>> cases = {
      {"0", true},
      {"-0", true},
      {"1.5e+300", true},
      {"1e-999", true},
      {"-1E5", true},
      {" [1, 2] ", true},
      {"\"\\u0000\"", true},
      {"\"\\ud83d\\ude00\"", true},
      {"{\"a\":{}}", true},
      {"[[],[{}]]", true},
      {"\"\xe2\x82\xac\"", true},
      {"\"\xf4\x8f\xbf\xbf\"", true},
      {"18446744073709551616", true},
      {"", false},
      {" ", false},
      {"01", false},
      {"-", false},
      {"1.", false},
      {".5", false},
      {"1e", false},
      {"1e+", false},
      {"+1", false},
      {"1e999", false},
      {"-1e309", false},
      {"[1,]", false},
      {"{\"a\":1,}", false},
      {"{\"a\"}", false},
      {"{1:2}", false},
      {"[1 2]", false},
      {"tru", false},
      {"nulll", false},
      {"NaN", false},
      {"\"\\ud800\"", false},
      {"\"\\udc00\"", false},
      {"\"\\ud800\\u0041\"", false},
      {"\"\\x\"", false},
      {"\"\\u12g4\"", false},
      {"\"a", false},
      {"\"\x01\"", false},
      {"\"\xc0\xaf\"", false},
      {"\"\xed\xa0\x80\"", false},
      {"\"\xf5\x80\x80\x80\"", false},
      {"\"\xe2\x82\"", false},
      {"[1]]", false},
      {"{}{}", false},
      {"/**/1", false},
      {std::string(400, '9'), false},
  };
  for (const auto& [text, valid] : cases) {
    INFO("text: " << text);
    CHECK((check_json_text(text, json_depth_ceiling) == json_text_check::ok) == valid);
    CHECK(accepted(text) == valid);
  }
  // Stricter than the parser where that can only refuse what taskq never writes: the parser
  // stops at a NUL byte and skips a byte order mark.
  CHECK(check_json_text(std::string("1\0", 2), 512) == json_text_check::malformed);
  CHECK(check_json_text("\xef\xbb\xbf"
                        "1",
                        512) == json_text_check::malformed);
  // Depth: 512 levels are accepted, 513 are too deep (measured before anything else).
  CHECK(check_json_text(std::string(512, '[') + std::string(512, ']'), 512) == json_text_check::ok);
  CHECK(check_json_text(std::string(513, '[') + std::string(513, ']'), 512) ==
        json_text_check::too_deep);
  CHECK(check_json_text("[[1]]", 1) == json_text_check::too_deep);

  // Every text the writer produces (dump()) is accepted; and no mutation of one is accepted
  // that the parser refuses.
  std::mt19937_64 rng(4711);
  auto pick = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  std::function<json(int)> make = [&](int depth) -> json {
    switch (pick(depth > 3 ? 6 : 8)) {
      case 0:
        return nullptr;
      case 1:
        return pick(2) == 1;
      case 2:
        return static_cast<std::int64_t>(rng()) >> pick(64);
      case 3:
        return std::ldexp(static_cast<double>(rng() % 1000000) - 500000.0,
                          static_cast<int>(pick(200)) - 100);
      case 4: {
        static const std::vector<std::string> words = {"",
                                                       "a",
                                                       "\"",
                                                       "\\",
                                                       "\n\t",
                                                       "\xc3\xa9",
                                                       "\xe2\x82\xac",
                                                       "\xf0\x9f\x98\x80",
                                                       std::string("\x01\x1f", 2),
                                                       "/"};
        return words[pick(words.size())] + words[pick(words.size())];
      }
      case 5:
        return static_cast<std::uint64_t>(rng());
      case 6: {
        json a = json::array();
        for (auto n = pick(4); n > 0; --n) a.push_back(make(depth + 1));
        return a;
      }
      default: {
        json o = json::object();
        for (auto n = pick(4); n > 0; --n) o[std::to_string(pick(100))] = make(depth + 1);
        return o;
      }
    }
  };
  const std::string alphabet =
      "{}[]\",:\\u0123456789abcdefEe+-. tnrl\x01\x7f\x80\xbf\xc3\xed\xf0\xff";
  int mutated_ok = 0;
  for (int i = 0; i < 3000; ++i) {
    const auto text = make(0).dump();
    INFO("text: " << text);
    REQUIRE(check_json_text(text, json_depth_ceiling) == json_text_check::ok);
    for (int m = 0; m < 8; ++m) {
      auto t = text;
      switch (pick(3)) {
        case 0:
          t[pick(t.size())] = alphabet[pick(alphabet.size())];
          break;
        case 1:
          t.insert(pick(t.size() + 1), 1, alphabet[pick(alphabet.size())]);
          break;
        default:
          t.erase(pick(t.size()), 1);
          break;
      }
      INFO("mutated: " << t);
      const bool ok = check_json_text(t, json_depth_ceiling) == json_text_check::ok;
      if (ok) {
        ++mutated_ok;
        CHECK(accepted(t));
      }
    }
  }
  CHECK(mutated_ok > 0);
}

TEST_CASE("file: a mutated record body is refused on replay or builds as its stored form said",
          "[file][lazy]") {
  // Bodies with valid frames and damage inside (a bug, a hand-edited file): replay refuses them
  // with invalid_record, or keeps them, and then every kept record builds, into what the stored
  // form said (replay_bodies checks both and the bookkeeping).
  harness h;
  h.open();
  REQUIRE_FALSE(h.insert({
      h.rec("a", {.type = "t",
                  .payload = {{"s", "\xc3\xa9\\\""}, {"n", 1.5e300}, {"l", {1, nullptr, true}}},
                  .metadata = {{"m", -1}},
                  .labels = {{"k", "v"}},
                  .unique_key = "u"}),
      h.rec("b", {.type = "t2", .queue = "q", .payload = "x", .priority = 2}),
  }));
  auto [ce, claim] = h.call<claim_result>([&](auto cb) {
    h.b->store().async_claim({{"b"}, h.clk.now()}, cb);
  });
  REQUIRE_FALSE(ce);
  h.b->close();
  h.b.reset();
  std::vector<std::string> bodies;
  auto scan =
      file::scan_journal_file(last_segment(h.dir), file::file_kind::journal_segment,
                              [&](const file::journal_record& r) { bodies.emplace_back(r.body); });
  REQUIRE_FALSE(scan.error);
  REQUIRE(bodies.size() == 3);
  std::mt19937_64 rng(99);
  auto pick = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  int refused = 0, kept = 0;
  for (int i = 0; i < 4000; ++i) {
    auto damaged = bodies;
    auto& b = damaged[pick(2)];  // one of the inserts
    for (auto n = 1 + pick(3); n > 0; --n) {
      switch (pick(3)) {
        case 0:
          b[pick(b.size())] = static_cast<char>(rng());
          break;
        case 1:
          b.insert(pick(b.size() + 1), 1, static_cast<char>(rng()));
          break;
        default:
          if (b.size() > 1) b.erase(pick(b.size()), 1);
      }
    }
    std::vector<std::string_view> views(damaged.begin(), damaged.end());
    std::string detail;
    bool consistent = false;
    auto ec = file::detail::replay_bodies(views, detail, consistent);
    INFO("iteration " << i << ": " << detail);
    CHECK(consistent);
    if (ec) {
      ++refused;
      CHECK(ec == errc::invalid_record);
      CHECK_FALSE(detail.empty());
    } else {
      ++kept;
    }
  }
  CHECK(refused > 0);
  CHECK(kept > 0);
}
