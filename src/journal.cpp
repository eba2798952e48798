// The file backend's journal: format codec, reader, writer (committer thread), snapshots and
// the directory lock. The format is documented in include/taskq/backends/file/journal.hpp
// and docs/file-format.md.
#include <taskq/backends/file/directory_lock.hpp>
#include <taskq/backends/file/journal.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/system_executor.hpp>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define TASKQ_CRC32C_SSE42 1
#endif

namespace taskq::file {

namespace {

constexpr char magic[8] = {'T', 'A', 'S', 'K', 'Q', 'J', 'N', 'L'};
constexpr std::string_view tmp_suffix = ".tmp";
// Bytes of the pid record in LOCK: the pid left-aligned, padded with spaces, then '\n'.
constexpr std::size_t lock_pid_width = 21;

// --- CRC32C ---------------------------------------------------------------------------------
// Recovery checksums every byte of the store, so the CRC must run at memory speed: the SSE4.2
// crc32 instruction where the CPU has it (checked at run time), slicing-by-8 tables otherwise.
// Both update the raw register (no init or final xor), like the instruction does.

constexpr std::uint32_t crc32c_poly_reflected = 0x82F63B78;  // 0x1EDC6F41 bit-reversed

using crc32c_table = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr crc32c_table make_crc32c_table() {
  crc32c_table t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? crc32c_poly_reflected : 0);
    t[0][i] = c;
  }
  for (std::size_t s = 1; s < 8; ++s)
    for (std::size_t i = 0; i < 256; ++i) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  return t;
}

constexpr crc32c_table crc32c_tables = make_crc32c_table();

std::uint32_t crc32c_update_portable(std::uint32_t crc, const unsigned char* p,
                                     std::size_t n) noexcept {
  const auto& t = crc32c_tables;
  if constexpr (std::endian::native == std::endian::little) {
    while (n >= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      w ^= crc;
      crc = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
            t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^
            t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
      p += 8;
      n -= 8;
    }
  }
  while (n--) crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

#ifdef TASKQ_CRC32C_SSE42
__attribute__((target("sse4.2"))) std::uint32_t crc32c_update_sse42(std::uint32_t crc,
                                                                    const unsigned char* p,
                                                                    std::size_t n) noexcept {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
#endif

using crc32c_update_fn = std::uint32_t (*)(std::uint32_t, const unsigned char*, std::size_t);

crc32c_update_fn pick_crc32c_update() noexcept {
#ifdef TASKQ_CRC32C_SSE42
  __builtin_cpu_init();  // may run before the runtime's own CPU detection (static init)
  if (__builtin_cpu_supports("sse4.2")) return &crc32c_update_sse42;
#endif
  return &crc32c_update_portable;
}

std::uint32_t crc32c_update(std::uint32_t crc, const void* data, std::size_t n) noexcept {
  static const crc32c_update_fn fn = pick_crc32c_update();
  return fn(crc, static_cast<const unsigned char*>(data), n);
}

void put32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
std::uint32_t get32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint64_t get64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// The record CRC binds the body to its file and position (see the format comment).
std::uint32_t record_crc(std::uint64_t id, std::uint64_t offset, std::uint32_t length,
                         std::string_view body) {
  char prefix[20];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((id >> (8 * i)) & 0xFF);
  for (int i = 0; i < 8; ++i) prefix[8 + i] = static_cast<char>((offset >> (8 * i)) & 0xFF);
  for (int i = 0; i < 4; ++i) prefix[16 + i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  std::uint32_t crc = crc32c_update(0xFFFFFFFF, prefix, sizeof prefix);
  return ~crc32c_update(crc, body.data(), body.size());
}

std::string kind_name(file_kind k) {
  switch (k) {
    case file_kind::journal_segment:
      return "journal segment";
    case file_kind::snapshot:
      return "snapshot";
  }
  return "unknown kind " + std::to_string(static_cast<std::uint32_t>(k));
}

void set_error(error_code& ec, std::string* detail, error_code code, std::string text) {
  ec = code;
  if (detail) *detail = std::move(text);
}

// Maps a failed system call to taskq's codes: ENOSPC/EDQUOT are disk_full, anything else
// io_error; the detail names the call, the file and the system's message.
error_code sys_error(int err, std::string_view call, const std::filesystem::path& path,
                     std::string& detail) {
  detail = std::string(call) + "(" + path.string() + "): " + std::strerror(err);
  return make_error_code(err == ENOSPC || err == EDQUOT ? errc::disk_full : errc::io_error);
}

// --- small POSIX helpers (all retry EINTR) -------------------------------------------------

// Opens `path`, creating it with mode 0600 if missing. The mode of a file we create is set
// with fchmod, so neither a wide nor a narrow umask changes it.
int open_private_file(const std::filesystem::path& path, int flags) {
  for (;;) {
    int fd = ::open(path.c_str(), flags | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      if (::fchmod(fd, 0600) != 0) {
        int err = errno;
        ::close(fd);
        errno = err;
        return -1;
      }
      return fd;
    }
    if (errno == EINTR) continue;
    if (errno != EEXIST) return -1;
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd >= 0 || errno != EINTR) {
      if (fd < 0 && errno == ENOENT) continue;  // removed in between: create it again
      return fd;
    }
  }
}

int pwrite_all(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    data += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return 0;
}

int fdatasync_retry(int fd) {
  while (::fdatasync(fd) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

int ftruncate_retry(int fd, std::uint64_t size) {
  while (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

// Makes a rename or creation in `dir` durable.
error_code sync_directory(const std::filesystem::path& dir, std::string& detail) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(errno, "open", dir, detail);
  int err = 0;
  while (::fsync(fd) != 0) {
    if (errno != EINTR) {
      err = errno;
      break;
    }
  }
  ::close(fd);
  if (err) return sys_error(err, "fsync", dir, detail);
  return {};
}

// Reads the whole file; the reader is sans-io and works on the image.
error_code read_whole_file(const std::filesystem::path& path, std::string& out,
                           std::string& detail) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error(errno, "open", path, detail);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return sys_error(err, "fstat", path, detail);
  }
  out.clear();
  out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return sys_error(err, "read", path, detail);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return {};
}

std::optional<std::uint64_t> parse_segment_name(std::string_view name) {
  constexpr std::string_view prefix = "journal-", suffix = ".log";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix))
    return std::nullopt;
  std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 20 || digits[0] == '0') return std::nullopt;  // one spelling per number
  std::uint64_t n = 0;
  auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (err != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return n;
}

// Creates segment `n` in `dir` atomically (temporary file, sync, rename, directory sync), so
// a segment file never exists without its complete header.
error_code create_segment(const std::filesystem::path& dir, std::uint64_t n, std::string& detail) {
  auto final_path = dir / segment_file_name(n);
  auto tmp_path = final_path;
  tmp_path += tmp_suffix;
  int fd = open_private_file(tmp_path, O_WRONLY | O_TRUNC);
  if (fd < 0) return sys_error(errno, "open", tmp_path, detail);
  std::string header = encode_file_header(file_kind::journal_segment, n);
  int err = ftruncate_retry(fd, 0);
  error_code ec;
  if (err) ec = sys_error(err, "ftruncate", tmp_path, detail);
  if (!ec && (err = pwrite_all(fd, header.data(), header.size(), 0)))
    ec = sys_error(err, "write", tmp_path, detail);
  if (!ec && (err = fdatasync_retry(fd))) ec = sys_error(err, "fdatasync", tmp_path, detail);
  ::close(fd);
  if (!ec && ::rename(tmp_path.c_str(), final_path.c_str()) != 0)
    ec = sys_error(errno, "rename", tmp_path, detail);
  if (ec) {
    ::unlink(tmp_path.c_str());
    return ec;
  }
  return sync_directory(dir, detail);
}

}  // namespace

// --- format --------------------------------------------------------------------------------

std::uint32_t crc32c(std::string_view data) noexcept {
  return ~crc32c_update(0xFFFFFFFF, data.data(), data.size());
}

namespace detail {
std::uint32_t crc32c_portable(std::string_view data) noexcept {
  return ~crc32c_update_portable(0xFFFFFFFF, reinterpret_cast<const unsigned char*>(data.data()),
                                 data.size());
}
}  // namespace detail

std::string encode_file_header(file_kind kind, std::uint64_t id) {
  std::string h(magic, sizeof magic);
  put32(h, journal_format_version);
  put32(h, static_cast<std::uint32_t>(kind));
  put64(h, id);
  put32(h, 0);  // flags
  put32(h, crc32c(h));
  return h;
}

void encode_record(std::string& out, std::uint64_t id, std::uint64_t offset,
                   std::string_view body) {
  auto length = static_cast<std::uint32_t>(body.size());
  put32(out, length);
  put32(out, record_crc(id, offset, length, body));
  out.append(body);
}

// --- reading -------------------------------------------------------------------------------

scan_result scan_journal(std::string_view bytes, file_kind expected, std::string_view name,
                         const record_visitor& visit) {
  scan_result r;
  const std::uint64_t size = bytes.size();
  r.file_size = size;
  const char* data = bytes.data();
  const std::string file(name);
  auto corrupt = [&](std::uint64_t offset, const std::string& what) {
    r.error = make_error_code(errc::corrupt_journal);
    r.detail =
        kind_name(expected) + " " + file + ", byte offset " + std::to_string(offset) + ": " + what;
    return r;
  };

  // Header. Versions are checked before the CRC: a future version may lay out (and checksum)
  // its header differently, and the user deserves "unsupported version", not "corrupt".
  if (size > 0 && std::memcmp(data, magic, std::min<std::size_t>(size, sizeof magic)) != 0)
    return corrupt(0, "bad magic (not a taskq journal file)");
  if (size >= 12 && get32(data + 8) != journal_format_version) {
    r.error = make_error_code(errc::unsupported_format_version);
    r.detail = kind_name(expected) + " " + file + ": format version " +
               std::to_string(get32(data + 8)) + " is not supported (this build reads version " +
               std::to_string(journal_format_version) + ")";
    return r;
  }
  if (size < journal_header_size) {
    // Empty or cut inside the header: a crash while the file was being created.
    r.torn_tail = true;
    r.warning = kind_name(expected) + " " + file + ": file of " + std::to_string(size) +
                " bytes ends inside its " + std::to_string(journal_header_size) +
                "-byte header (torn tail at byte offset 0)";
    return r;
  }
  if (get32(data + 28) != crc32c(bytes.substr(0, 28))) return corrupt(28, "header CRC mismatch");
  if (get32(data + 24) != 0) return corrupt(24, "unknown header flags");
  auto kind = static_cast<file_kind>(get32(data + 12));
  if (kind != expected) return corrupt(12, "file is a " + kind_name(kind));
  r.header_valid = true;
  r.id = get64(data + 16);

  // Why the record at `at` is not valid, or nullptr if it is.
  auto check = [&](std::uint64_t at, std::uint32_t& length) -> const char* {
    if (size - at < record_frame_size) return "truncated record frame";
    length = get32(data + at);
    if (length > max_record_size) return "record length above the maximum";
    if (size - at - record_frame_size < length) return "record extends past the end of file";
    std::string_view body(data + at + record_frame_size, length);
    if (get32(data + at + 4) != record_crc(r.id, at, length, body)) return "record CRC mismatch";
    return nullptr;
  };

  std::uint64_t pos = journal_header_size;
  while (pos < size) {
    std::uint32_t length = 0;
    const char* problem = check(pos, length);
    if (!problem) {
      if (visit)
        visit(journal_record{r.id, pos, std::string_view(data + pos + record_frame_size, length)});
      ++r.records;
      pos += record_frame_size + length;
      continue;
    }
    // A bad record ends the valid prefix. A valid record anywhere after it proves the damage
    // is not a torn write: report corruption instead of dropping what follows.
    for (std::uint64_t q = pos + 1; q + record_frame_size <= size; ++q) {
      std::uint32_t ignored = 0;
      if (!check(q, ignored))
        return corrupt(pos, std::string("corrupt record (") + problem +
                                "; a valid record follows at byte offset " + std::to_string(q) +
                                ")");
    }
    r.torn_tail = true;
    r.warning = kind_name(expected) + " " + file + ": torn tail of " + std::to_string(size - pos) +
                " bytes at byte offset " + std::to_string(pos) + " (" + problem + ")";
    break;
  }
  r.valid_end = pos;
  return r;
}

scan_result scan_journal_file(const std::filesystem::path& path, file_kind expected,
                              const record_visitor& visit) {
  std::string image;
  std::string detail;
  if (error_code ec = read_whole_file(path, image, detail)) {
    scan_result r;
    r.error = ec;
    r.detail = std::move(detail);
    return r;
  }
  return scan_journal(image, expected, path.string(), visit);
}

std::string segment_file_name(std::uint64_t n) {
  return "journal-" + std::to_string(n) + ".log";
}

std::vector<std::uint64_t> list_segments(const std::filesystem::path& dir, error_code& ec,
                                         std::string* detail) {
  ec.clear();
  std::vector<std::uint64_t> out;
  std::error_code sec;
  std::filesystem::directory_iterator it(dir, sec), end;
  for (; !sec && it != end; it.increment(sec)) {
    if (auto n = parse_segment_name(it->path().filename().string())) out.push_back(*n);
  }
  if (sec) {
    set_error(ec, detail, make_error_code(errc::io_error),
              "opendir(" + dir.string() + "): " + sec.message());
    return {};
  }
  std::sort(out.begin(), out.end());
  return out;
}

journal_read_result read_journal(const std::filesystem::path& dir, std::uint64_t first_segment,
                                 const record_visitor& visit) {
  journal_read_result r;
  auto segments = list_segments(dir, r.error, &r.detail);
  if (r.error) return r;
  std::erase_if(segments, [&](std::uint64_t n) { return n < first_segment; });
  // The journal continues exactly where the snapshot (or, without one, the store) begins: a
  // first segment that is missing would silently drop what it held. (0: no expectation.)
  const bool fresh = first_segment <= 1 && segments.empty();
  if (first_segment > 0 && !fresh && (segments.empty() || segments.front() != first_segment)) {
    r.error = make_error_code(errc::corrupt_journal);
    r.detail =
        "journal " + dir.string() + ": segment " + std::to_string(first_segment) + " is missing (" +
        (first_segment > 1 ? "the snapshot's id names it as the first after the snapshot"
                           : std::string("there is no snapshot, so the journal starts at 1")) +
        "; " +
        (segments.empty() ? std::string("no later segment exists")
                          : "the first segment found is " + std::to_string(segments.front())) +
        ")";
    return r;
  }
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::uint64_t n = segments[i];
    auto path = dir / segment_file_name(n);
    if (i > 0 && n != segments[i - 1] + 1) {
      r.error = make_error_code(errc::corrupt_journal);
      r.detail = "journal " + dir.string() + ": segment " + std::to_string(segments[i - 1] + 1) +
                 " is missing (found " + std::to_string(segments[i - 1]) + " and " +
                 std::to_string(n) + ")";
      return r;
    }
    scan_result s = scan_journal_file(path, file_kind::journal_segment, visit);
    r.records += s.records;
    ++r.segments;
    r.last_segment = n;
    if (s.error) {
      r.error = s.error;
      r.detail = std::move(s.detail);
      return r;
    }
    if (s.header_valid && s.id != n) {
      r.error = make_error_code(errc::corrupt_journal);
      r.detail = "journal segment " + path.string() + ": header names segment " +
                 std::to_string(s.id) + " at byte offset 16";
      return r;
    }
    const bool last = i + 1 == segments.size();
    if (s.torn_tail && !last) {
      // The writer syncs a segment before rotating away from it: a torn tail here means
      // synced data was lost.
      r.error = make_error_code(errc::corrupt_journal);
      r.detail = s.warning + ", but it is not the last segment";
      return r;
    }
    r.valid_end = s.valid_end;
    r.torn_tail = s.torn_tail;
    r.warning = std::move(s.warning);
  }
  return r;
}

// --- directory and lock --------------------------------------------------------------------

void create_private_directory(const std::filesystem::path& dir, error_code& ec,
                              std::string* detail) {
  ec.clear();
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      set_error(ec, detail, make_error_code(errc::io_error),
                "mkdir(" + dir.string() + "): exists and is not a directory");
    return;
  }
  if (errno != ENOENT) {
    std::string d;
    ec = sys_error(errno, "stat", dir, d);
    if (detail) *detail = std::move(d);
    return;
  }
  auto parent = dir.parent_path();
  if (!parent.empty() && parent != dir) {
    create_private_directory(parent, ec, detail);
    if (ec) return;
  }
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST) return;  // created concurrently; leave its mode alone
    std::string d;
    ec = sys_error(errno, "mkdir", dir, d);
    if (detail) *detail = std::move(d);
    return;
  }
  if (::chmod(dir.c_str(), 0700) != 0) {
    std::string d;
    ec = sys_error(errno, "chmod", dir, d);
    if (detail) *detail = std::move(d);
  }
}

directory_lock::directory_lock(directory_lock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), dir_(std::move(other.dir_)) {}

directory_lock& directory_lock::operator=(directory_lock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
    dir_ = std::move(other.dir_);
  }
  return *this;
}

directory_lock::~directory_lock() {
  release();
}

void directory_lock::release() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);  // closing the only descriptor of the open file drops the flock
    fd_ = -1;
  }
}

directory_lock directory_lock::acquire(const std::filesystem::path& dir, error_code& ec,
                                       std::string* detail) {
  create_private_directory(dir, ec, detail);
  if (ec) return {};
  auto path = dir / "LOCK";
  std::string d;
  // The pid record has one width, so writing it over a previous holder's never passes through
  // an empty or partial file, and a new LOCK appears with a record already in it (written to a
  // temporary file, then linked into place; link fails harmlessly if LOCK exists).
  std::string pid = std::to_string(::getpid());
  pid.resize(lock_pid_width - 1, ' ');
  pid += '\n';
  if (::access(path.c_str(), F_OK) != 0) {
    auto tmp = dir / ("LOCK." + std::to_string(::getpid()) + tmp_suffix.data());
    int tfd = open_private_file(tmp, O_WRONLY | O_TRUNC);
    if (tfd >= 0) {
      bool ok = pwrite_all(tfd, pid.data(), pid.size(), 0) == 0;
      ::close(tfd);
      if (ok) (void)::link(tmp.c_str(), path.c_str());
      ::unlink(tmp.c_str());
    }
  }
  int fd = open_private_file(path, O_RDWR);
  if (fd < 0) {
    ec = sys_error(errno, "open", path, d);
    if (detail) *detail = std::move(d);
    return {};
  }
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    if (err == EWOULDBLOCK) {
      char buf[32] = {};
      ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      std::string holder = "held by an unknown process";
      if (n > 0) {
        std::string_view text(buf, static_cast<std::size_t>(n));
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
        if (!text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos)
          holder = "held by pid " + std::string(text);
      }
      ::close(fd);
      set_error(ec, detail, make_error_code(errc::store_locked),
                "directory " + dir.string() + " is locked by another process (" + holder + ")");
      return {};
    }
    ::close(fd);
    ec = sys_error(err, "flock", path, d);
    if (detail) *detail = std::move(d);
    return {};
  }
  // Informational: who holds the lock. Failure to record it is not worth failing over. One
  // pwrite of the fixed-width record, no truncation: a refused opener reads a whole pid.
  (void)pwrite_all(fd, pid.data(), pid.size(), 0);
  ec.clear();
  directory_lock lock;
  lock.fd_ = fd;
  lock.dir_ = dir;
  return lock;
}

directory_lock directory_lock::acquire(const std::filesystem::path& dir) {
  error_code ec;
  std::string detail;
  auto lock = acquire(dir, ec, &detail);
  throw_if(ec, detail);
  return lock;
}

// --- writer --------------------------------------------------------------------------------

namespace detail {

class journal_writer_impl {
 public:
  using handler_type = boost::asio::any_completion_handler<journal_writer::append_signature>;
  using direct_type = std::function<void(error_code, std::uint64_t, const std::string&)>;

  struct request {
    enum class kind { append, rotate } what = kind::append;
    std::vector<std::string> records;
    // Exactly one of these completes the request: an async handler (with work tracked on
    // both the writer's and the handler's executor), or a blocking caller's callback.
    handler_type handler;
    boost::asio::any_io_executor io_work;
    boost::asio::any_completion_executor handler_work;
    direct_type direct;

    request() = default;
    request(request&&) = default;
    // Boost 1.81's any_completion_handler move assignment wraps the handler in itself and
    // recurses (fixed in 1.82), so requests are only ever move-constructed.
    request& operator=(request&&) = delete;
  };

  journal_writer_impl(journal_writer::executor_type ex, std::filesystem::path dir,
                      journal_options options)
      : ex_(std::move(ex)), dir_(std::move(dir)), options_(std::move(options)) {}

  ~journal_writer_impl() { close(); }

  // Recovery, then the committer thread. On error the impl is discarded.
  error_code open(std::uint64_t first_segment, const record_visitor& visit,
                  journal_recovery& recovery, std::string& detail) {
    if (options_.mode == durability::batch && options_.batch_interval.count() <= 0) {
      detail = "journal option 'batch_interval' must be positive";
      return make_error_code(errc::invalid_option);
    }
    error_code ec;
    create_private_directory(dir_, ec, &detail);
    if (ec) return ec;
    remove_temporary_files();

    journal_read_result r = read_journal(dir_, first_segment, visit);
    if (r.error) {
      detail = r.detail;
      return r.error;
    }
    recovery.records = r.records;
    recovery.segments = r.segments;
    if (r.segments == 0) {
      segment_ = std::max<std::uint64_t>(1, first_segment);
      if ((ec = create_segment(dir_, segment_, detail))) return ec;
      end_ = journal_header_size;
    } else {
      segment_ = r.last_segment;
      end_ = r.valid_end;
    }
    path_ = dir_ / segment_file_name(segment_);
    fd_ = open_private_file(path_, O_RDWR);
    if (fd_ < 0) return sys_error(errno, "open", path_, detail);
    if (r.torn_tail) {
      struct stat st {};
      std::uint64_t size = ::fstat(fd_, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
      if (int err = ftruncate_retry(fd_, end_)) return sys_error(err, "ftruncate", path_, detail);
      if (end_ == 0) {  // the header itself was torn: write it again
        std::string header = encode_file_header(file_kind::journal_segment, segment_);
        if (int err = pwrite_all(fd_, header.data(), header.size(), 0))
          return sys_error(err, "write", path_, detail);
        end_ = journal_header_size;
      }
      if (int err = fdatasync_retry(fd_)) return sys_error(err, "fdatasync", path_, detail);
      recovery.truncated_torn_tail = true;
      recovery.truncated_bytes = size > r.valid_end ? size - r.valid_end : 0;
      recovery.warning = r.warning + "; truncated";
    }
    recovery.segment = segment_;
    sequence_ = r.records;
    last_sync_ = std::chrono::steady_clock::now();
    committer_ = std::thread([this] { run(); });
    return {};
  }

  void enqueue(request r) {
    {
      std::lock_guard lk(m_);
      if (!closing_) {
        queue_.push_back(std::move(r));
        ++stats_.queued_appends;
        cv_.notify_one();
        return;
      }
    }
    complete(r, make_error_code(errc::store_closed), 0, "journal " + dir_.string() + " is closed");
  }

  void start_append(std::vector<std::string> records, handler_type handler) {
    request r;
    r.records = std::move(records);
    // Work is tracked from initiation to completion so the host's io_context does not run
    // out of work while the committer holds the operation.
    r.io_work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
    r.handler_work = boost::asio::prefer(boost::asio::get_associated_executor(handler, ex_),
                                         boost::asio::execution::outstanding_work.tracked);
    r.handler.swap(handler);  // not move assignment: see request
    if (auto problem = oversized(r.records)) {
      complete(r, make_error_code(errc::invalid_record), 0, *problem);
      return;
    }
    enqueue(std::move(r));
  }

  std::uint64_t append_blocking(std::vector<std::string> records, error_code& ec,
                                std::string* detail) {
    if (auto problem = oversized(records)) {
      set_error(ec, detail, make_error_code(errc::invalid_record), *problem);
      return 0;
    }
    return call_blocking(request::kind::append, std::move(records), ec, detail);
  }

  std::uint64_t rotate(error_code& ec, std::string* detail) {
    return call_blocking(request::kind::rotate, {}, ec, detail);
  }

  void remove_segments_before(std::uint64_t segment, error_code& ec, std::string* detail) {
    ec.clear();
    const std::uint64_t limit = std::min(segment, current_segment());
    auto segments = list_segments(dir_, ec, detail);
    if (ec) return;
    bool removed = false;
    for (std::uint64_t n : segments) {
      if (n >= limit) break;
      auto path = dir_ / segment_file_name(n);
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        std::string d;
        ec = sys_error(errno, "unlink", path, d);
        if (detail) *detail = std::move(d);
        return;
      }
      removed = true;
    }
    if (removed) {
      std::string d;
      if ((ec = sync_directory(dir_, d)) && detail) *detail = std::move(d);
    }
  }

  std::uint64_t current_segment() const {
    std::lock_guard lk(m_);
    return segment_;
  }

  std::pair<error_code, std::string> last_error() const {
    std::lock_guard lk(m_);
    return {last_error_, last_error_detail_};
  }

  journal_stats stats() const {
    std::lock_guard lk(m_);
    return stats_;
  }

  const journal_writer::executor_type& executor() const { return ex_; }

  void close() noexcept {
    {
      std::lock_guard lk(m_);
      if (closing_ && !committer_.joinable()) return;
      closing_ = true;
      cv_.notify_one();
    }
    if (committer_.joinable()) committer_.join();
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

 private:
  static std::optional<std::string> oversized(const std::vector<std::string>& records) {
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (records[i].size() > max_record_size)
        return "journal record " + std::to_string(i) + " of " + std::to_string(records[i].size()) +
               " bytes exceeds the maximum record size of " + std::to_string(max_record_size) +
               " bytes";
    }
    return std::nullopt;
  }

  std::uint64_t call_blocking(request::kind what, std::vector<std::string> records, error_code& ec,
                              std::string* detail) {
    struct outcome {
      error_code ec;
      std::uint64_t value = 0;
      std::string detail;
    };
    std::promise<outcome> done;
    auto result = done.get_future();
    request r;
    r.what = what;
    r.records = std::move(records);
    r.direct = [&done](error_code e, std::uint64_t v, const std::string& d) {
      done.set_value(outcome{e, v, d});
    };
    enqueue(std::move(r));
    outcome o = result.get();
    ec = o.ec;
    if (ec && detail) *detail = std::move(o.detail);
    return o.value;
  }

  // Delivers a request's completion: a blocking caller is woken directly; an async handler is
  // posted through the writer's executor and dispatched to its own associated executor, so it
  // never runs inline in async_append nor on the committer thread.
  void complete(request& r, error_code ec, std::uint64_t value, const std::string& detail) {
    if (r.direct) {
      r.direct(ec, value, detail);
      return;
    }
    auto io_work = std::move(r.io_work);
    auto handler_work = std::move(r.handler_work);
    boost::asio::post(io_work, boost::asio::bind_executor(
                                   handler_work, [h = std::move(r.handler), ec, value]() mutable {
                                     std::move(h)(ec, value);
                                   }));
  }

  void record_error(error_code ec, const std::string& detail) {
    std::lock_guard lk(m_);
    last_error_ = ec;
    last_error_detail_ = detail;
  }

  journal_fault inject(journal_op op) {
    return options_.fault_injector ? options_.fault_injector(op, path_) : journal_fault{};
  }

  error_code write_at(const std::string& buf, std::uint64_t offset, std::string& detail) {
    if (journal_fault f = inject(journal_op::write); f.errno_value != 0) {
      std::size_t n = std::min(f.bytes_written, buf.size());
      (void)pwrite_all(fd_, buf.data(), n, offset);
      return sys_error(f.errno_value, "write", path_, detail);
    }
    if (int err = pwrite_all(fd_, buf.data(), buf.size(), offset))
      return sys_error(err, "write", path_, detail);
    return {};
  }

  error_code sync(std::string& detail) {
    {
      std::lock_guard lk(m_);
      ++stats_.syncs;
    }
    if (journal_fault f = inject(journal_op::fsync); f.errno_value != 0)
      return sys_error(f.errno_value, "fdatasync", path_, detail);
    if (int err = fdatasync_retry(fd_)) return sys_error(err, "fdatasync", path_, detail);
    last_sync_ = std::chrono::steady_clock::now();
    dirty_ = false;
    return {};
  }

  // The committer: takes everything queued, writes it with one write and (in sync mode) one
  // fdatasync, completes it, repeats. Appends arriving meanwhile form the next group.
  void run() {
    std::unique_lock lk(m_);
    for (;;) {
      if (queue_.empty()) {
        if (closing_) break;
        if (dirty_ && options_.mode == durability::batch) {
          auto due = last_sync_ + options_.batch_interval;
          if (!cv_.wait_until(lk, due, [&] { return !queue_.empty() || closing_; })) {
            lk.unlock();
            periodic_sync();
            lk.lock();
          }
        } else {
          cv_.wait(lk, [&] { return !queue_.empty() || closing_; });
        }
        continue;
      }
      std::deque<request> batch;
      batch.swap(queue_);
      stats_.queued_appends = 0;
      lk.unlock();
      process(batch);
      lk.lock();
    }
    lk.unlock();
    if (dirty_ && !failed_) {
      std::string detail;
      if (error_code ec = sync(detail)) record_error(ec, detail);
    }
  }

  void periodic_sync() {
    if (failed_ || !dirty_) return;
    std::string detail;
    if (error_code ec = sync(detail)) fail(ec, detail);
  }

  // After a failed fdatasync of acknowledged data (batch mode) the kernel may have dropped
  // the dirty pages; retrying could falsely succeed. Refuse all later appends instead.
  void fail(error_code ec, const std::string& detail) {
    failed_ = true;
    failed_ec_ = ec;
    failed_detail_ = "journal is failed after an earlier error: " + detail;
    record_error(ec, detail);
  }

  void process(std::deque<request>& batch) {
    std::vector<request*> group;
    for (auto& r : batch) {
      if (r.what == request::kind::append) {
        group.push_back(&r);
        continue;
      }
      commit(group);
      group.clear();
      do_rotate(r);
    }
    commit(group);
  }

  void commit(const std::vector<request*>& group) {
    if (group.empty()) return;
    set_committing(group.size());
    commit_group(group);
    set_committing(0);
  }

  void set_committing(std::size_t n) {
    std::lock_guard lk(m_);
    stats_.committing_appends = n;
  }

  void commit_group(const std::vector<request*>& group) {
    if (failed_) {
      bump_failed(group.size());
      for (request* r : group) complete(*r, failed_ec_, 0, failed_detail_);
      return;
    }
    std::string buf;
    std::uint64_t records = 0;
    for (request* r : group) {
      for (const auto& rec : r->records) {
        encode_record(buf, segment_, end_ + buf.size(), rec);
        ++records;
      }
    }
    std::string detail;
    error_code ec;
    if (!buf.empty()) {
      const bool acknowledged_unsynced = dirty_;  // batch/none: earlier groups not yet synced
      ec = write_at(buf, end_, detail);
      if (!ec) {
        dirty_ = true;
        const bool sync_now =
            options_.mode == durability::sync ||
            (options_.mode == durability::batch &&
             std::chrono::steady_clock::now() - last_sync_ >= options_.batch_interval);
        if (sync_now) {
          // In batch mode earlier acknowledged groups ride on this sync too: if it fails they
          // may be lost, so the journal refuses further appends (see fail()).
          ec = sync(detail);
          if (ec && acknowledged_unsynced) failed_ = true;
        }
      }
      if (ec) {
        dirty_ = acknowledged_unsynced;
        // Cut the failed bytes off so the journal stays readable and these records, which
        // are reported as failed, do not reappear on recovery.
        if (int err = ftruncate_retry(fd_, end_)) {
          std::string d2;
          sys_error(err, "ftruncate", path_, d2);
          detail += "; then " + d2;
          failed_ = true;
        }
        record_error(ec, detail);
        if (failed_) {
          failed_ec_ = ec;
          failed_detail_ = "journal is failed after an earlier error: " + detail;
        }
        bump_failed(group.size());
        for (request* r : group) complete(*r, ec, 0, detail);
        return;
      }
    }
    end_ += buf.size();
    {
      // Before completing, so a caller woken by its completion sees its append counted.
      std::lock_guard lk(m_);
      stats_.writes += buf.empty() ? 0 : 1;
      stats_.bytes += buf.size();
      stats_.records += records;
      stats_.appends += group.size();
    }
    for (request* r : group) {
      sequence_ += r->records.size();
      complete(*r, {}, sequence_, {});
    }
  }

  void bump_failed(std::size_t n) {
    std::lock_guard lk(m_);
    stats_.failed_appends += n;
  }

  void do_rotate(request& r) {
    std::string detail;
    if (failed_) {
      complete(r, failed_ec_, 0, failed_detail_);
      return;
    }
    // The old segment is synced whatever the mode: only the last segment may have a tail.
    if (int err = fdatasync_retry(fd_)) {
      error_code ec = sys_error(err, "fdatasync", path_, detail);
      fail(ec, detail);
      complete(r, ec, 0, detail);
      return;
    }
    const std::uint64_t next = segment_ + 1;
    if (error_code ec = create_segment(dir_, next, detail)) {
      record_error(ec, detail);
      complete(r, ec, 0, detail);
      return;
    }
    auto path = dir_ / segment_file_name(next);
    int fd = open_private_file(path, O_RDWR);
    if (fd < 0) {
      error_code ec = sys_error(errno, "open", path, detail);
      record_error(ec, detail);
      complete(r, ec, 0, detail);
      return;
    }
    ::close(fd_);
    fd_ = fd;
    {
      std::lock_guard lk(m_);
      segment_ = next;
    }
    path_ = std::move(path);
    end_ = journal_header_size;
    dirty_ = false;
    last_sync_ = std::chrono::steady_clock::now();
    complete(r, {}, next, {});
  }

  void remove_temporary_files() {
    std::error_code sec;
    for (std::filesystem::directory_iterator it(dir_, sec), end; !sec && it != end;
         it.increment(sec)) {
      std::string name = it->path().filename().string();
      if (name.ends_with(tmp_suffix) &&
          parse_segment_name(std::string_view(name).substr(0, name.size() - tmp_suffix.size())))
        ::unlink(it->path().c_str());
    }
  }

  const journal_writer::executor_type ex_;
  const std::filesystem::path dir_;
  const journal_options options_;

  // Guarded by m_: the queue, closing_, stats_, last_error_*, segment_ (written by the
  // committer, read by others).
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<request> queue_;
  bool closing_ = false;
  journal_stats stats_;
  error_code last_error_;
  std::string last_error_detail_;
  std::uint64_t segment_ = 0;

  // Owned by the committer thread once it runs (by open() before).
  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t end_ = 0;       // end of the last good record in the current segment
  std::uint64_t sequence_ = 0;  // sequence number of the last committed record
  bool dirty_ = false;          // written but not synced
  bool failed_ = false;
  error_code failed_ec_;
  std::string failed_detail_;
  std::chrono::steady_clock::time_point last_sync_;
  std::thread committer_;
};

}  // namespace detail

journal_writer::journal_writer() noexcept = default;
journal_writer::journal_writer(journal_writer&&) noexcept = default;
journal_writer& journal_writer::operator=(journal_writer&&) noexcept = default;
journal_writer::~journal_writer() {
  close();
}

journal_writer::journal_writer(std::unique_ptr<detail::journal_writer_impl> impl) noexcept
    : impl_(std::move(impl)) {}

journal_writer journal_writer::open(executor_type ex, const std::filesystem::path& dir,
                                    journal_options options, std::uint64_t first_segment,
                                    const record_visitor& visit, journal_recovery& recovery,
                                    error_code& ec, std::string* detail) {
  recovery = journal_recovery{};
  auto impl = std::make_unique<detail::journal_writer_impl>(std::move(ex), dir, std::move(options));
  std::string d;
  ec = impl->open(first_segment, visit, recovery, d);
  if (ec) {
    if (detail) *detail = std::move(d);
    return {};
  }
  return journal_writer(std::move(impl));
}

journal_writer journal_writer::open(executor_type ex, const std::filesystem::path& dir,
                                    journal_options options, std::uint64_t first_segment,
                                    const record_visitor& visit, journal_recovery& recovery) {
  error_code ec;
  std::string detail;
  auto w =
      open(std::move(ex), dir, std::move(options), first_segment, visit, recovery, ec, &detail);
  throw_if(ec, detail);
  return w;
}

bool journal_writer::is_open() const noexcept {
  return impl_ != nullptr;
}

journal_writer::executor_type journal_writer::get_executor() const noexcept {
  return impl_ ? impl_->executor() : executor_type(boost::asio::system_executor());
}

void journal_writer::start_append(std::vector<std::string> records,
                                  boost::asio::any_completion_handler<append_signature> handler) {
  if (impl_) {
    impl_->start_append(std::move(records), std::move(handler));
    return;
  }
  auto ex = boost::asio::get_associated_executor(handler, boost::asio::system_executor());
  boost::asio::post(boost::asio::system_executor(),
                    boost::asio::bind_executor(ex, [h = std::move(handler)]() mutable {
                      std::move(h)(make_error_code(errc::store_closed), 0);
                    }));
}

std::uint64_t journal_writer::append(std::vector<std::string> records, error_code& ec,
                                     std::string* detail) {
  if (!impl_) {
    set_error(ec, detail, make_error_code(errc::store_closed), "journal is closed");
    return 0;
  }
  return impl_->append_blocking(std::move(records), ec, detail);
}

std::uint64_t journal_writer::append(std::vector<std::string> records) {
  error_code ec;
  std::string detail;
  auto seq = append(std::move(records), ec, &detail);
  throw_if(ec, detail);
  return seq;
}

std::uint64_t journal_writer::rotate(error_code& ec, std::string* detail) {
  if (!impl_) {
    set_error(ec, detail, make_error_code(errc::store_closed), "journal is closed");
    return 0;
  }
  return impl_->rotate(ec, detail);
}

std::uint64_t journal_writer::rotate() {
  error_code ec;
  std::string detail;
  auto n = rotate(ec, &detail);
  throw_if(ec, detail);
  return n;
}

void journal_writer::remove_segments_before(std::uint64_t segment, error_code& ec,
                                            std::string* detail) {
  if (!impl_) {
    set_error(ec, detail, make_error_code(errc::store_closed), "journal is closed");
    return;
  }
  impl_->remove_segments_before(segment, ec, detail);
}

std::uint64_t journal_writer::current_segment() const {
  return impl_ ? impl_->current_segment() : 0;
}

std::pair<error_code, std::string> journal_writer::last_error() const {
  return impl_ ? impl_->last_error() : std::pair<error_code, std::string>{};
}

journal_stats journal_writer::stats() const {
  return impl_ ? impl_->stats() : journal_stats{};
}

void journal_writer::close() noexcept {
  if (impl_) impl_->close();
}

// --- snapshots -----------------------------------------------------------------------------

void write_snapshot(const std::filesystem::path& path, std::uint64_t id,
                    std::span<const std::string> records, error_code& ec, std::string* detail) {
  ec.clear();
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (records[i].size() > max_record_size) {
      set_error(ec, detail, make_error_code(errc::invalid_record),
                "snapshot record " + std::to_string(i) + " of " +
                    std::to_string(records[i].size()) + " bytes exceeds the maximum record size");
      return;
    }
  }
  auto tmp = path;
  tmp += tmp_suffix;
  std::string d;
  int fd = open_private_file(tmp, O_WRONLY | O_TRUNC);
  if (fd < 0) {
    ec = sys_error(errno, "open", tmp, d);
    if (detail) *detail = std::move(d);
    return;
  }
  // Written in chunks of about 1 MiB so a large snapshot is not held twice in memory.
  std::string buf = encode_file_header(file_kind::snapshot, id);
  std::uint64_t offset = 0;
  int err = ftruncate_retry(fd, 0);
  if (err) ec = sys_error(err, "ftruncate", tmp, d);
  auto flush = [&] {
    if (!ec && (err = pwrite_all(fd, buf.data(), buf.size(), offset)))
      ec = sys_error(err, "write", tmp, d);
    offset += buf.size();
    buf.clear();
  };
  for (const auto& rec : records) {
    if (ec) break;
    encode_record(buf, id, offset + buf.size(), rec);
    if (buf.size() >= (1u << 20)) flush();
  }
  flush();
  if (!ec && (err = fdatasync_retry(fd))) ec = sys_error(err, "fdatasync", tmp, d);
  ::close(fd);
  if (!ec && ::rename(tmp.c_str(), path.c_str()) != 0) ec = sys_error(errno, "rename", tmp, d);
  if (!ec) {
    auto dir = path.parent_path();
    ec = sync_directory(dir.empty() ? std::filesystem::path(".") : dir, d);
  } else {
    ::unlink(tmp.c_str());
  }
  if (ec && detail) *detail = std::move(d);
}

scan_result read_snapshot(const std::filesystem::path& path, const record_visitor& visit) {
  scan_result r = scan_journal_file(path, file_kind::snapshot, visit);
  if (!r.error && r.torn_tail) {
    // Snapshots are renamed into place complete: any damage is corruption.
    r.error = make_error_code(errc::corrupt_journal);
    r.detail = r.warning + " (a snapshot is written atomically, so this is corruption)";
    r.warning.clear();
  }
  return r;
}

}  // namespace taskq::file
