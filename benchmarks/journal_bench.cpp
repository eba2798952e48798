// Journal append throughput: group commit in sync mode versus one fdatasync per record.
//
//   taskq_journal_bench [--json] [--dir DIR] [--seconds S]
//
// For 1, 4 and 16 producer threads, each appending ~100-byte records one at a time with the
// blocking append: records/s, fdatasyncs/s and records per fdatasync in `sync` mode, then
// records/s in `none` mode. The baseline, in the same run and on the same file system, is
// what a journal without group commit does: every record written and fdatasync()ed on its
// own (16 threads serialised by a mutex). --json prints one {"name","value","unit"} object
// per line. Files go to a fresh directory under DIR (default /tmp), removed afterwards; the
// numbers are only meaningful on a real disk (not tmpfs). Each phase runs S seconds
// (default 0.4), about 3 s in all.
#include <taskq/backends/file/journal.hpp>

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace taskq::file;
using bench_clock = std::chrono::steady_clock;

namespace {

bool json = false;

void report(const std::string& name, double value, const char* unit) {
  if (json) {
    std::printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  } else {
    std::printf("%-46s %12.1f %s\n", name.c_str(), value, unit);
  }
  std::fflush(stdout);
}

struct run_figures {
  double records_per_s = 0;
  double syncs_per_s = 0;
  double records_per_sync = 0;
};

fs::path make_dir(const fs::path& base) {
  std::string tmpl = (base / "taskq-journal-bench-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    std::exit(1);
  }
  return tmpl;
}

// Runs `producer(stop)` on `threads` threads for `seconds`; returns the elapsed time.
template <class Producer>
double run_for(int threads, double seconds, Producer producer) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  auto start = bench_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&] { producer(stop); });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : pool) t.join();
  return std::chrono::duration<double>(bench_clock::now() - start).count();
}

run_figures bench_journal(const fs::path& base, durability mode, int threads, double seconds) {
  fs::path dir = make_dir(base);
  boost::asio::io_context ioc;
  journal_recovery recovery;
  journal_options options;
  options.mode = mode;
  auto writer = journal_writer::open(ioc.get_executor(), dir, options, 0, {}, recovery);
  const std::string record(100, 'r');
  std::atomic<std::uint64_t> failures{0};
  double elapsed = run_for(threads, seconds, [&](std::atomic<bool>& stop) {
    while (!stop.load(std::memory_order_relaxed)) {
      taskq::error_code ec;
      writer.append({record}, ec);
      if (ec) ++failures;
    }
  });
  journal_stats s = writer.stats();  // before close(), whose final sync is not a commit
  writer.close();
  fs::remove_all(dir);
  if (failures)
    std::fprintf(stderr, "warning: %llu appends failed\n", (unsigned long long)failures.load());
  run_figures f;
  f.records_per_s = static_cast<double>(s.records) / elapsed;
  f.syncs_per_s = static_cast<double>(s.syncs) / elapsed;
  f.records_per_sync = s.syncs ? static_cast<double>(s.records) / static_cast<double>(s.syncs) : 0;
  return f;
}

// No group commit: each record is framed, written and fdatasync()ed on its own.
run_figures bench_per_record_sync(const fs::path& base, int threads, double seconds) {
  fs::path dir = make_dir(base);
  fs::path file = dir / "journal-1.log";
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror("open");
    std::exit(1);
  }
  std::string header = encode_file_header(file_kind::journal_segment, 1);
  std::uint64_t end = header.size();
  if (::pwrite(fd, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size()))
    std::exit(1);
  const std::string record(100, 'r');
  std::mutex m;
  std::uint64_t records = 0;
  double elapsed = run_for(threads, seconds, [&](std::atomic<bool>& stop) {
    std::string frame;
    while (!stop.load(std::memory_order_relaxed)) {
      std::lock_guard lk(m);
      frame.clear();
      encode_record(frame, 1, end, record);
      if (::pwrite(fd, frame.data(), frame.size(), static_cast<off_t>(end)) !=
              static_cast<ssize_t>(frame.size()) ||
          ::fdatasync(fd) != 0) {
        std::perror("pwrite/fdatasync");
        std::exit(1);
      }
      end += frame.size();
      ++records;
    }
  });
  ::close(fd);
  fs::remove_all(dir);
  run_figures f;
  f.records_per_s = static_cast<double>(records) / elapsed;
  f.syncs_per_s = f.records_per_s;
  f.records_per_sync = 1;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path base = "/tmp";
  double seconds = 0.4;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      base = argv[++i];
    } else if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--json] [--dir DIR] [--seconds S]\n", argv[0]);
      return 2;
    }
  }

  double sync16 = 0;
  for (int threads : {1, 4, 16}) {
    run_figures f = bench_journal(base, durability::sync, threads, seconds);
    std::string prefix = "journal_sync_append_" + std::to_string(threads) + "_threads";
    report(prefix + "_records_per_s", f.records_per_s, "records/s");
    report(prefix + "_fdatasyncs_per_s", f.syncs_per_s, "fdatasyncs/s");
    report(prefix + "_records_per_sync", f.records_per_sync, "records/fdatasync");
    if (threads == 16) sync16 = f.records_per_s;
  }
  for (int threads : {1, 4, 16}) {
    run_figures f = bench_journal(base, durability::none, threads, seconds);
    report("journal_none_append_" + std::to_string(threads) + "_threads_records_per_s",
           f.records_per_s, "records/s");
  }
  run_figures baseline = bench_per_record_sync(base, 16, seconds);
  report("baseline_fdatasync_per_record_16_threads_records_per_s", baseline.records_per_s,
         "records/s");
  report("group_commit_speedup_16_threads",
         baseline.records_per_s > 0 ? sync16 / baseline.records_per_s : 0, "x");
  return 0;
}
