// The PostgreSQL backend: libpq driven by Asio, a connection pool, migrations, the Queue and
// the Store, LISTEN/NOTIFY wake-ups and transactional enqueue. See backends/postgres/backend.hpp.
#include <taskq/backends/postgres/backend.hpp>
#include <taskq/detail/backend_alarm.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/record_ops.hpp>
#include <taskq/schedule_store.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <libpq-fe.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

namespace taskq::postgres {

namespace {

using asio::awaitable;
using steady = std::chrono::steady_clock;
using wait_type = asio::posix::descriptor_base::wait_type;
using params = std::vector<std::optional<std::string>>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::int64_t to_us(time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}
time_point from_us(std::int64_t us) {
  return time_point(std::chrono::duration_cast<duration>(std::chrono::microseconds(us)));
}

std::string quote_ident(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + '"';
}

/// A text[] literal: {"a","b"} with backslash escapes.
std::string text_array(const std::vector<std::string>& v) {
  std::string out = "{";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (char c : v[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + '}';
}

std::string int_array(const std::vector<std::int64_t>& v) {
  std::string out = "{";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(v[i]);
  }
  return out + '}';
}

void ignore_notice(void*, const char*) {}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

/// Says which configuration problem a failed connection attempt shows.
std::string classify_connect_failure(const std::string& message) {
  auto has = [&](const char* w) { return message.find(w) != std::string::npos; };
  std::string what;
  if (has("password authentication failed") || has("no password supplied") ||
      has("authentication failed") || has("pg_hba.conf"))
    what = "authentication failed";
  else if (has("database") && has("does not exist"))
    what = "database does not exist";
  else if (has("role") && has("does not exist"))
    what = "authentication failed (no such role)";
  else if (has("permission denied"))
    what = "missing privileges";
  else
    what = "server unreachable";
  return "PostgreSQL " + what + ": " + trim(message);
}

// --- results and connections ----------------------------------------------------------------

struct result {
  std::shared_ptr<PGresult> res{};
  int rows() const { return res ? PQntuples(res.get()) : 0; }
  const char* get(int row, int col) const { return PQgetvalue(res.get(), row, col); }
  bool null(int row, int col) const { return PQgetisnull(res.get(), row, col) != 0; }
  std::int64_t i64(int row, int col) const { return std::stoll(get(row, col)); }
  std::size_t affected() const {
    const char* n = res ? PQcmdTuples(res.get()) : "";
    return *n ? std::stoull(n) : 0;
  }
};

struct reply {
  error_code ec{};
  std::string detail{};
  result res{};
  /// The connection was found dead before the statement went out: safe to run it again on
  /// another connection.
  bool unsent = false;
};

/// Maps a failed statement to taskq's errors.
reply error_reply(PGresult* r, PGconn* c) {
  reply out;
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const char* constraint = r ? PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME) : nullptr;
  std::string code = state ? state : "";
  std::string msg = trim(r ? PQresultErrorMessage(r) : PQerrorMessage(c));
  if (msg.empty()) msg = trim(PQerrorMessage(c));
  if (code == "23505") {
    std::string cn = constraint ? constraint : "";
    out.ec = cn.find("unique_key") != std::string::npos ? errc::duplicate_unique_key
                                                        : errc::duplicate_id;
  } else if (code == "42501") {
    out.ec = errc::backend_unavailable;
    out.detail = "PostgreSQL missing privileges: " + msg;
  } else if (code.rfind("08", 0) == 0 || code.rfind("57P", 0) == 0 ||
             PQstatus(c) == CONNECTION_BAD) {
    out.ec = errc::backend_unavailable;
    out.detail = "PostgreSQL connection lost: " + msg;
  } else if (code.rfind("28", 0) == 0) {
    out.ec = errc::backend_unavailable;
    out.detail = "PostgreSQL authentication failed: " + msg;
  } else if (code == "3D000" || code == "3F000" || code == "42P01") {
    out.ec = errc::backend_unavailable;
    out.detail = "PostgreSQL schema or database missing: " + msg;
  } else {
    out.ec = errc::io_error;
    out.detail = "PostgreSQL statement failed (" + code + "): " + msg;
  }
  return out;
}

struct connection {
  PGconn* pg = nullptr;
  asio::posix::stream_descriptor sd;
  bool broken = false;
  std::unordered_map<std::string, std::string> prepared{};  ///< statement text -> name

  connection(asio::any_io_executor ex, PGconn* c) : pg(c), sd(ex) {
    sd.assign(PQsocket(c));
    PQsetNoticeReceiver(pg, &on_notice, this);
  }
  ~connection() {
    sd.release();  // the socket is libpq's
    PQfinish(pg);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  reply lost(const char* what) {
    broken = true;
    reply out;
    out.ec = errc::backend_unavailable;
    out.detail =
        std::string("PostgreSQL connection lost (") + what + "): " + trim(PQerrorMessage(pg));
    return out;
  }

  /// libpq hands an error that arrives while no statement runs (the FATAL of a session the
  /// server ends: pg_terminate_backend, shutdown) to the notice receiver, and the connection
  /// still looks fine until the socket's end-of-file arrives, which may be later: note it.
  static void on_notice(void* self, const PGresult* r) {
    const char* sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev && (std::string_view(sev) == "FATAL" || std::string_view(sev) == "PANIC"))
      static_cast<connection*>(self)->broken = true;
  }

  /// Whether an idle connection is still usable (reads what the server sent meanwhile, e.g.
  /// the termination notice of pg_terminate_backend).
  bool healthy() {
    if (broken) return false;
    // A terminated session leaves an error message and then end-of-file in the socket: read
    // both (twice), and let libpq parse what it read.
    for (int i = 0; i < 2; ++i)
      if (!PQconsumeInput(pg)) return false;
    (void)PQisBusy(pg);  // parses what was read: a FATAL reaches on_notice
    return !broken && PQstatus(pg) != CONNECTION_BAD;
  }
};

/// Waits until the socket is ready, or `recheck` passes. Asio's reactor is edge-triggered:
/// when several threads run the io_context, the edge of data that arrived after libpq's last
/// read may be collected before this wait is registered, and the wait would never end; the
/// recheck bounds that case (the caller then simply reads again).
awaitable<error_code> wait_for(connection& c, wait_type w,
                               std::chrono::milliseconds recheck = std::chrono::milliseconds(200)) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(c.sd.get_executor(), recheck);
  auto r = co_await (c.sd.async_wait(w, use_tuple) || timer.async_wait(use_tuple));
  if (r.index() == 0) co_return std::get<0>(std::get<0>(r));
  co_return error_code{};  // rechecked: the caller reads what there is
}

awaitable<reply> collect(connection& c);

/// Runs one statement (extended protocol, text parameters) without blocking. With `prepare`,
/// the statement is parsed and planned once per connection (PQsendPrepare on first use), then
/// run by name: the hot statements are long CTEs whose parse and plan cost as much as a small
/// batch's execution.
awaitable<reply> exec(connection& c, const std::string& sql, const params& ps, bool prepare = false,
                      const std::vector<int>* formats = nullptr) {
  std::vector<const char*> values;
  values.reserve(ps.size());
  for (const auto& p : ps) values.push_back(p ? p->c_str() : nullptr);
  const int n = static_cast<int>(values.size());
  // Binary parameters carry their lengths (they may hold NUL bytes); text ones end at NUL.
  std::vector<int> lengths;
  if (formats)
    for (const auto& p : ps) lengths.push_back(p ? static_cast<int>(p->size()) : 0);
  const int* lens = formats ? lengths.data() : nullptr;
  const int* fmts = formats ? formats->data() : nullptr;
  const std::string* name = nullptr;
  if (prepare) {
    auto it = c.prepared.find(sql);
    if (it == c.prepared.end()) {
      std::string fresh = "taskq_" + std::to_string(c.prepared.size());
      if (!PQsendPrepare(c.pg, fresh.c_str(), sql.c_str(), n, nullptr)) {
        auto out = c.lost("send");
        out.unsent = true;  // refused by libpq: nothing of it reached the server
        co_return out;
      }
      reply made = co_await collect(c);
      if (made.ec) co_return made;
      it = c.prepared.emplace(sql, std::move(fresh)).first;
    }
    name = &it->second;
  }
  const int sent =
      name ? PQsendQueryPrepared(c.pg, name->c_str(), n, values.data(), lens, fmts, 0)
           : PQsendQueryParams(c.pg, sql.c_str(), n, nullptr, values.data(), lens, fmts, 0);
  if (!sent) {
    auto out = c.lost("send");
    out.unsent = true;  // refused by libpq: nothing of it reached the server
    co_return out;
  }
  co_return co_await collect(c);
}

/// Sends what libpq buffered and reads the statement's results.
awaitable<reply> collect(connection& c) {
  for (;;) {
    int f = PQflush(c.pg);
    if (f == 0) break;
    if (f < 0) co_return c.lost("flush");
    auto ec = co_await wait_for(c, wait_type::wait_write);
    if (ec) co_return c.lost("wait");
    if (!PQconsumeInput(c.pg)) co_return c.lost("read");
  }
  reply out;
  bool failed = false;
  for (;;) {
    bool done = false;
    while (!PQisBusy(c.pg)) {
      PGresult* r = PQgetResult(c.pg);
      if (!r) {
        done = true;
        break;
      }
      auto st = PQresultStatus(r);
      if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
        if (!failed) {
          auto e = error_reply(r, c.pg);
          out.ec = e.ec;
          out.detail = std::move(e.detail);
          failed = true;
        }
        PQclear(r);
      } else {
        out.res.res.reset(r, &PQclear);
      }
    }
    if (done) break;
    auto ec = co_await wait_for(c, wait_type::wait_read);
    if (ec) co_return c.lost("wait");
    if (!PQconsumeInput(c.pg)) co_return c.lost("read");
  }
  if (PQstatus(c.pg) == CONNECTION_BAD) {
    c.broken = true;
    if (!out.ec) co_return c.lost("status");
  }
  co_return out;
}

/// libpq's socket, waited on by Asio but never closed by it.
struct borrowed_socket {
  asio::posix::stream_descriptor sd;
  borrowed_socket(asio::any_io_executor ex, int fd) : sd(std::move(ex), fd) {}
  ~borrowed_socket() { sd.release(); }
  borrowed_socket(const borrowed_socket&) = delete;
  borrowed_socket& operator=(const borrowed_socket&) = delete;
};

/// Opens a connection without blocking (PQconnectStart / PQconnectPoll on Asio waits).
awaitable<std::tuple<error_code, std::string, std::unique_ptr<connection>>> connect_async(
    asio::any_io_executor ex, std::string conninfo, std::chrono::milliseconds timeout) {
  using namespace asio::experimental::awaitable_operators;
  const auto deadline = steady::now() + timeout;
  std::tuple<error_code, std::string, std::unique_ptr<connection>> out;
  // Owned by the frame: a frame destroyed while suspended (its io_context destroyed) frees it.
  std::unique_ptr<PGconn, void (*)(PGconn*)> owner(PQconnectStart(conninfo.c_str()), &PQfinish);
  PGconn* c = owner.get();
  if (!c || PQstatus(c) == CONNECTION_BAD) {
    std::get<0>(out) = errc::backend_unavailable;
    std::get<1>(out) = classify_connect_failure(c ? PQerrorMessage(c) : "out of memory");
    co_return out;
  }
  auto st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) {
      std::get<0>(out) = errc::backend_unavailable;
      std::get<1>(out) = classify_connect_failure(PQerrorMessage(c));
      co_return out;
    }
    borrowed_socket sock(ex, PQsocket(c));
    auto w = st == PGRES_POLLING_READING ? wait_type::wait_read : wait_type::wait_write;
    // A server that never answers (a black-holed address, a stopped server) would hold the
    // attempt forever: give up at the deadline.
    asio::steady_timer timer(ex, deadline);
    auto r = co_await (sock.sd.async_wait(w, use_tuple) || timer.async_wait(use_tuple));
    if (r.index() == 1) {
      std::get<0>(out) = errc::backend_unavailable;
      std::get<1>(out) = "PostgreSQL server unreachable: no answer within connect_timeout (" +
                         std::to_string(timeout.count()) + " ms)";
      co_return out;
    }
    auto [ec] = std::get<0>(r);
    if (ec) {
      std::get<0>(out) = errc::store_closed;
      std::get<1>(out) = "connection attempt cancelled";
      co_return out;
    }
    st = PQconnectPoll(c);
  }
  PQsetnonblocking(c, 1);
  PQsetNoticeProcessor(c, &ignore_notice, nullptr);
  std::get<2>(out) = std::make_unique<connection>(ex, owner.release());
  co_return out;
}

// --- SQL ------------------------------------------------------------------------------------

constexpr int advisory_class = 0x7461736b;  // "task"

/// The migrations, in order; version n is migrations[n - 1]. "@" stands for the quoted schema.
const std::vector<std::string>& migrations() {
  static const std::vector<std::string> all = {
      R"(
CREATE TABLE @.tasks (
  id text COLLATE "C" PRIMARY KEY,
  type text NOT NULL,
  queue text NOT NULL,
  status smallint NOT NULL,
  attempt integer NOT NULL,
  unique_key text NOT NULL,
  unique_any boolean NOT NULL,
  created_at bigint NOT NULL,
  finished_at bigint,
  labels jsonb NOT NULL,
  version bigint NOT NULL DEFAULT 0,
  record json NOT NULL);
CREATE UNIQUE INDEX tasks_unique_key ON @.tasks (unique_key)
  WHERE unique_key <> '' AND (unique_any OR status < 2);
CREATE INDEX tasks_finished ON @.tasks (status, finished_at);
CREATE SEQUENCE @.queue_order;
CREATE SEQUENCE @.lease_tokens;
CREATE TABLE @.queue (
  id text COLLATE "C" PRIMARY KEY,
  queue text NOT NULL,
  type text NOT NULL,
  concurrency_key text NOT NULL,
  priority integer NOT NULL,
  available_at bigint NOT NULL,
  seq bigint NOT NULL DEFAULT nextval('@.queue_order'),
  leased_until bigint,
  token bigint NOT NULL DEFAULT 0);
CREATE INDEX queue_order_idx ON @.queue (queue, priority DESC, seq);
CREATE TABLE @.paused_queues (name text PRIMARY KEY);
)",
      // 2: schedule storage (the record in the stable JSON mapping of schedule_store.hpp) and
      // leader leases (expires_at in the injected clock's microseconds).
      R"(
CREATE TABLE @.schedules (
  name text COLLATE "C" PRIMARY KEY,
  record json NOT NULL,
  updated_at bigint NOT NULL);
CREATE TABLE @.leaders (
  name text PRIMARY KEY,
  holder text NOT NULL,
  expires_at bigint NOT NULL);
)",
      // 3: room on each page of the queue for a row's next versions, so that leasing a row
      // (leased_until and token, neither indexed) is a HOT update: no new index entries, and
      // no dead ones for every reserve to step over at the head of queue_order_idx. Vacuumed
      // sooner than the default (it churns: every task passes through it once).
      R"(
ALTER TABLE @.queue SET (fillfactor = 60, autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_vacuum_insert_scale_factor = 0.02);
)",
      // 4: a fetch records its claim in the queue row (the attempt it starts and when), not by
      // rewriting the record: an attempt beyond the record's means "running it since
      // claimed_at" (see claim_state). Constant defaults: no table rewrite, and processes of
      // version 3 go on inserting and leasing rows as they did.
      R"(
ALTER TABLE @.queue ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS claimed_at bigint;
)",
      // 5: reserve and fetch as functions planned without bitmap or sequential scans. Per queue
      // served they read the head of queue_order_idx in order (queue = one name, so the index
      // yields priority-then-FIFO order and the scan stops after `n` rows). The queue name
      // comes from an array, so the planner cannot know how many rows share it: on a table
      // not yet analysed (a queue filled moments ago) it guessed a few and chose a bitmap
      // scan of every row of the queue and a sort, 20 times slower at 30,000 rows. The SET
      // clauses hold the plan to the index whatever the statistics say.
      //
      // fetch_tasks reserves and claims in one statement. A pending task without a cancel
      // request, whose queue row holds no claim beyond its record's attempt, is claimed in
      // the queue row alone (`fast`: attempt + 1, claimed_at); any other (a lost worker's
      // task, a cancel request, a record gone) is only leased here, with its previous claim
      // returned (prev, prev_at), and the caller claims it through the record. The cancel
      // request is read off the record's first 100 characters: taskq writes its keys sorted
      // and compact, so `cancel_requested` is the third, after two numbers, where nothing a
      // user wrote can be; a record laid out otherwise is not `fast` and takes the exact path
      // (parsing the whole json for the key took a third of the statement's time).
      //
      // A lease's token is one per statement: a token is only ever compared with its task's
      // id, and a task leased again gets a later statement's token.
      R"(
CREATE OR REPLACE FUNCTION @.reserve_entries(names text[], now_us bigint, n integer,
    busy_types text[], busy_keys text[], until_us bigint)
  RETURNS TABLE (id text, queue text, type text, concurrency_key text, priority integer,
    token bigint, seq bigint)
  LANGUAGE plpgsql SET enable_bitmapscan = off SET enable_seqscan = off AS $fn$
#variable_conflict use_column
BEGIN
  RETURN QUERY WITH picked AS (SELECT c.id FROM (SELECT DISTINCT unnest(names) AS name) qn
    CROSS JOIN LATERAL (SELECT e.id, e.priority, e.seq FROM @.queue e
      WHERE e.queue = qn.name AND e.available_at <= now_us
        AND (e.leased_until IS NULL OR e.leased_until <= now_us)
        AND NOT (e.type = ANY(busy_types))
        AND NOT (e.concurrency_key <> '' AND e.concurrency_key = ANY(busy_keys))
      ORDER BY e.priority DESC, e.seq LIMIT n FOR UPDATE SKIP LOCKED) c
    WHERE NOT EXISTS (SELECT 1 FROM @.paused_queues p WHERE p.name = qn.name)
    ORDER BY c.priority DESC, c.seq LIMIT n)
  UPDATE @.queue e SET leased_until = until_us, token = (SELECT nextval('@.lease_tokens'))
  FROM picked WHERE e.id = picked.id
  RETURNING e.id, e.queue, e.type, e.concurrency_key, e.priority, e.token, e.seq;
END $fn$;
CREATE OR REPLACE FUNCTION @.fetch_tasks(names text[], now_us bigint, n integer,
    busy_types text[], busy_keys text[], until_us bigint)
  RETURNS TABLE (id text, queue text, type text, concurrency_key text, priority integer,
    token bigint, seq bigint, fast boolean, version bigint, record text, prev integer,
    prev_at bigint)
  LANGUAGE plpgsql SET enable_bitmapscan = off SET enable_seqscan = off AS $fn$
#variable_conflict use_column
BEGIN
  RETURN QUERY WITH picked AS (SELECT c.id, c.ctid, c.attempt AS prev, c.claimed_at AS prev_at
    FROM (SELECT DISTINCT unnest(names) AS name) qn
    CROSS JOIN LATERAL (SELECT e.id, e.ctid, e.priority, e.seq, e.attempt, e.claimed_at
      FROM @.queue e WHERE e.queue = qn.name AND e.available_at <= now_us
        AND (e.leased_until IS NULL OR e.leased_until <= now_us)
        AND NOT (e.type = ANY(busy_types))
        AND NOT (e.concurrency_key <> '' AND e.concurrency_key = ANY(busy_keys))
      ORDER BY e.priority DESC, e.seq LIMIT n FOR UPDATE SKIP LOCKED) c
    WHERE NOT EXISTS (SELECT 1 FROM @.paused_queues p WHERE p.name = qn.name)
    ORDER BY c.priority DESC, c.seq LIMIT n),
  d AS (SELECT p.*, t.version, t.record, t.attempt AS stored, (t.status = 0
      AND p.prev <= t.attempt AND left(t.record::text, 100)
        LIKE '{"attempt":%,"available_at":%,"cancel_requested":false,%') AS fast
    FROM picked p LEFT JOIN @.tasks t ON t.id = p.id)
  UPDATE @.queue e SET leased_until = until_us, token = (SELECT nextval('@.lease_tokens')),
    attempt = CASE WHEN d.fast THEN d.stored + 1 ELSE e.attempt END,
    claimed_at = CASE WHEN d.fast THEN now_us ELSE e.claimed_at END
  FROM d WHERE e.ctid = d.ctid
  RETURNING e.id, e.queue, e.type, e.concurrency_key, e.priority, e.token, e.seq, d.fast,
    d.version, d.record::text, d.prev, d.prev_at;
END $fn$;
)",
      // 6: a fetch leases a whole batch of rows in one statement, whose old versions are not
      // yet dead when their pages fill: at fillfactor 60 a third of the leases found no room
      // on their page and were not HOT (new entries in both indexes, then bottom-up deletion
      // of the old ones). At 45 a page holds a new version of every row it was filled with.
      // New pages only: rows already stored keep their pages.
      //
      // The functions' plans are generic: the SET clauses already pin them to the index, and
      // the plan cache, finding the custom plans cheaper than its generic estimate, replanned
      // the statement on every call (a fifth of the fetch's time).
      R"(
ALTER TABLE @.queue SET (fillfactor = 45);
ALTER FUNCTION @.reserve_entries(text[], bigint, integer, text[], text[], bigint)
  SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @.fetch_tasks(text[], bigint, integer, text[], text[], bigint)
  SET plan_cache_mode = force_generic_plan;
)"};
  return all;
}

std::string with_schema(const std::string& text, const std::string& quoted) {
  std::string out;
  for (char c : text) {
    if (c == '@')
      out += quoted;
    else
      out += c;
  }
  return out;
}

/// A one-dimensional array parameter in PostgreSQL's binary format (what array_recv reads):
/// a header, then each element as a big-endian 4-byte length (-1: NULL) and its bytes. No
/// quoting or escaping on either side: a record's JSON goes as it is.
class binary_array {
 public:
  // Element types (pg_type OIDs, fixed since PostgreSQL 7).
  static constexpr std::uint32_t bool_oid = 16, int8_oid = 20, int2_oid = 21, int4_oid = 23,
                                 text_oid = 25, json_oid = 114, jsonb_oid = 3802;

  explicit binary_array(std::uint32_t element) : element_(element) {}

  void bytes(std::string_view v) {
    be(static_cast<std::uint32_t>(v.size()), 4);
    body_.append(v);
    ++size_;
  }
  /// An integer of the element's width (2, 4 or 8 bytes).
  void integer(std::int64_t v, int width) {
    be(static_cast<std::uint32_t>(width), 4);
    be(static_cast<std::uint64_t>(v), width);
    ++size_;
  }
  void boolean(bool v) {
    be(1, 4);
    body_ += v ? '\1' : '\0';
    ++size_;
  }
  void null() {
    be(0xffffffffu, 4);
    nulls_ = true;
    ++size_;
  }
  std::string finish() const {
    std::string out;
    out.reserve(20 + body_.size());
    auto put = [&](std::uint32_t v) {
      for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
    };
    put(size_ ? 1 : 0);  // dimensions
    put(nulls_ ? 1 : 0);
    put(element_);
    if (size_) {
      put(static_cast<std::uint32_t>(size_));
      put(1);  // lower bound
    }
    out += body_;
    return out;
  }

 private:
  void be(std::uint64_t v, int width) {
    for (int shift = 8 * (width - 1); shift >= 0; shift -= 8)
      body_ += static_cast<char>((v >> shift) & 0xff);
  }

  std::uint32_t element_;
  std::size_t size_ = 0;
  bool nulls_ = false;
  std::string body_;
};

/// The columns every write of a record sets, one binary array each: id, status, attempt,
/// unique_any, created_at, finished_at and the record's JSON.
struct record_columns {
  binary_array id{binary_array::text_oid}, status{binary_array::int2_oid},
      attempt{binary_array::int4_oid}, ua{binary_array::bool_oid}, ca{binary_array::int8_oid},
      fa{binary_array::int8_oid}, record{binary_array::json_oid};
  std::string scratch;  // one value's text, reused (by the structs that hold these too)

  void add(const task_record& r) {
    id.bytes(r.id);
    status.integer(static_cast<int>(r.status), 2);
    attempt.integer(r.attempt, 4);
    ua.boolean(r.unique_for == unique_scope::any);
    ca.integer(to_us(r.created_at), 8);
    if (r.finished_at)
      fa.integer(to_us(*r.finished_at), 8);
    else
      fa.null();
    scratch.clear();
    detail::append_record_json(scratch, r);
    record.bytes(scratch);
  }
};

/// What write_back sets, with the expected version ($1..$8: id, version, status, attempt,
/// unique_any, finished_at, record, created_at).
struct write_rows {
  record_columns c;
  binary_array version{binary_array::int8_oid};

  void add(const task_record& r, std::int64_t v) {
    c.add(r);
    version.integer(v, 8);
  }
  params values() const {
    return {c.id.finish(), version.finish(), c.status.finish(), c.attempt.finish(),
            c.ua.finish(), c.fa.finish(),    c.record.finish(), c.ca.finish()};
  }
  static const std::vector<int>& formats() {
    static const std::vector<int> all(8, 1);
    return all;
  }
};

/// Record rows as one binary array per column, for `unnest($1::text[], ...)`: the server
/// reads arrays far faster than json_to_recordset (which lexes every record's json twice),
/// and each record's json is only validated.
struct row_arrays {
  record_columns c;
  binary_array type{binary_array::text_oid}, queue{binary_array::text_oid},
      uk{binary_array::text_oid}, labels{binary_array::jsonb_oid}, key{binary_array::text_oid},
      priority{binary_array::int4_oid}, at{binary_array::int8_oid};

  void add(const task_record& r) {
    c.add(r);
    type.bytes(r.type);
    queue.bytes(r.queue);
    uk.bytes(r.unique_key);
    c.scratch.assign(1, '\1');  // jsonb's binary form: a version byte, then the text
    detail::append_labels_json(c.scratch, r.labels);
    labels.bytes(c.scratch);
    key.bytes(r.concurrency_key);
    priority.integer(r.priority, 4);
    at.integer(to_us(r.available_at), 8);
  }
  /// $1..$11: the tasks columns (insert_tasks), binary.
  params insert_params() const {
    return {c.id.finish(),      type.finish(),   queue.finish(),   c.status.finish(),
            c.attempt.finish(), uk.finish(),     c.ua.finish(),    c.ca.finish(),
            c.fa.finish(),      labels.finish(), c.record.finish()};
  }
  static const std::vector<int>& insert_formats() {
    static const std::vector<int> all(11, 1);
    return all;
  }
  /// $1..$14: the tasks columns and the queue entry's (enqueue), binary; $15 the channel.
  params enqueue_params(const std::string& channel) const {
    auto ps = insert_params();
    ps.emplace_back(key.finish());
    ps.emplace_back(priority.finish());
    ps.emplace_back(at.finish());
    ps.emplace_back(channel);
    return ps;
  }
  static const std::vector<int>& enqueue_formats() {
    static const std::vector<int> all = [] {
      std::vector<int> f(15, 1);
      f.back() = 0;
      return f;
    }();
    return all;
  }
};

json entry_json(const queue_entry& e) {
  return json{{"id", e.id},
              {"queue", e.queue},
              {"type", e.type},
              {"key", e.concurrency_key},
              {"priority", e.priority},
              {"at", to_us(e.available_at)}};
}

struct sql_text {
  std::string insert_tasks, load, write_back, get, counts, prune;
  std::string push, reserve, hint, ack, extend, release, remove_entry, stats, pause, resume,
      paused_names;
  std::string enqueue, rescue, fetch;
  std::string sched_load, sched_load_all, sched_insert, sched_lock, sched_update, sched_remove;
  std::string lead_acquire, lead_release;

  explicit sql_text(const std::string& q) {
    auto s = [&](const char* t) { return with_schema(t, q); };
    const char* task_cols =
        "unnest($1::text[], $2::text[], $3::text[], $4::smallint[], $5::integer[], $6::text[], "
        "$7::boolean[], $8::bigint[], $9::bigint[], $10::jsonb[], $11::json[]";
    insert_tasks = s("INSERT INTO @.tasks (id, type, queue, status, attempt, unique_key, "
                     "unique_any, created_at, finished_at, labels, record) SELECT * FROM ") +
                   task_cols + ")";
    // Reads of records come with their queue row's claim (attempt, claimed_at; see
    // claim_state), which the reader lays over the record.
    load = s(
        "SELECT t.id, t.version, t.record::text, e.attempt, e.claimed_at FROM @.tasks t LEFT JOIN "
        "@.queue e ON e.id = t.id WHERE t.id = ANY($1::text[])");
    // A record reaching a final status loses its queue entry in the same statement (the queue
    // is fed by this store: workers need not ack finished tasks).
    write_back =
        s("WITH w AS (UPDATE @.tasks t SET status = x.status, attempt = x.attempt, unique_any = "
          "x.ua, finished_at = x.fa, record = x.r, version = t.version + 1 "
          "FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::integer[], $5::boolean[], "
          "$6::bigint[], $7::json[], $8::bigint[]) AS x(id, v, status, attempt, ua, fa, r, ca) "
          "WHERE t.id = x.id AND t.version = x.v AND t.created_at = x.ca "
          // A fetch claimed it since the writer read it (the record alone does not say so):
          // refused, so the writer reads it again as the claim left it.
          "AND NOT EXISTS (SELECT 1 FROM @.queue c WHERE c.id = t.id AND c.attempt > x.attempt) "
          "RETURNING t.id, t.status), "
          "d AS (DELETE FROM @.queue e USING w WHERE e.id = w.id AND w.status >= 2) "
          "SELECT id FROM w");
    get =
        s("SELECT t.record::text, e.attempt, e.claimed_at FROM @.tasks t LEFT JOIN @.queue e ON "
          "e.id = t.id WHERE t.id = $1");
    counts =
        s("SELECT CASE WHEN e.attempt > t.attempt THEN 1 ELSE t.status END, t.type, t.queue, "
          "count(*) FROM @.tasks t LEFT JOIN @.queue e ON e.id = t.id GROUP BY 1, 2, 3");
    prune = s("DELETE FROM @.tasks WHERE status >= 2 AND finished_at < $1");
    const char* push_ins =
        "INSERT INTO @.queue (id, queue, type, concurrency_key, priority, available_at) "
        "SELECT x.id, x.queue, x.type, x.key, x.priority, x.at FROM ROWS FROM "
        "(json_to_recordset($E::json) AS (id text, queue text, type text, key text, priority "
        "integer, at bigint)) WITH ORDINALITY AS x(id, queue, type, key, priority, at, n) "
        "ORDER BY x.n RETURNING queue, available_at";
    const char* notify_sel =
        " SELECT pg_notify($C, 'p' || chr(9) || queue || chr(9) || min(available_at)::text) "
        "FROM ins GROUP BY queue";
    auto fill = [&](std::string t, const char* e, const char* c) {
      t = s(t.c_str());
      for (auto pos = t.find("$E"); pos != std::string::npos; pos = t.find("$E"))
        t.replace(pos, 2, e);
      for (auto pos = t.find("$C"); pos != std::string::npos; pos = t.find("$C"))
        t.replace(pos, 2, c);
      return t;
    };
    push = fill(std::string("WITH ins AS (") + push_ins + ")" + notify_sel, "$1", "$2");
    // Records and, for the pending ones, their queue entries (in batch order: FIFO), in one
    // statement: a task is never stored without the entry that gets it run.
    enqueue = s((std::string("WITH x AS (SELECT * FROM ") + task_cols +
                 ", $12::text[], $13::integer[], $14::bigint[]) WITH ORDINALITY AS x(id, type, "
                 "queue, status, attempt, uk, ua, ca, fa, labels, r, key, priority, at, n)), "
                 "t AS (INSERT INTO @.tasks (id, type, queue, status, attempt, unique_key, "
                 "unique_any, created_at, finished_at, labels, record) SELECT id, type, queue, "
                 "status, attempt, uk, ua, ca, fa, labels, r FROM x), ins AS (INSERT INTO "
                 "@.queue (id, queue, type, concurrency_key, priority, available_at) SELECT id, "
                 "queue, type, key, priority, at FROM x WHERE status = 0 ORDER BY n RETURNING "
                 "queue, available_at) SELECT pg_notify($15, 'p' || chr(9) || queue || chr(9) || "
                 "min(available_at)::text) FROM ins GROUP BY queue")
                    .c_str());
    // Pending records without a queue entry (a dead process's half-done work) get it back.
    // The inner query walks pending rows through tasks_finished (status leads it) and the
    // queue's primary key; OFFSET 0 keeps the planner from parsing the json of every pending
    // record before the anti-join has thinned them out.
    rescue = fill(
        "WITH ins AS (INSERT INTO @.queue (id, queue, type, concurrency_key, priority, "
        "available_at) SELECT o.id, o.queue, o.type, o.record->>'concurrency_key', "
        "(o.record->>'priority')::integer, (o.record->>'available_at')::bigint FROM (SELECT t.id, "
        "t.queue, t.type, t.record FROM @.tasks t WHERE t.status = 0 AND NOT EXISTS (SELECT 1 "
        "FROM @.queue e WHERE e.id = t.id) OFFSET 0) o WHERE (o.record->>'updated_at')::bigint < "
        "$1 ORDER BY o.id ON CONFLICT (id) DO NOTHING RETURNING queue, available_at) SELECT queue, "
        "min(available_at), pg_notify($C, 'p' || chr(9) || queue || chr(9) || "
        "min(available_at)::text) FROM ins GROUP BY queue",
        "", "$2");
    // Both are functions of the schema (migration 5), planned with the index in mind.
    reserve =
        s("SELECT * FROM @.reserve_entries($1::text[], $2::bigint, $3::integer, $4::text[], "
          "$5::text[], $6::bigint)");
    fetch =
        s("SELECT * FROM @.fetch_tasks($1::text[], $2::bigint, $3::integer, $4::text[], "
          "$5::text[], $6::bigint)");
    hint =
        s("SELECT least(min(available_at) FILTER (WHERE available_at > $2 AND (leased_until IS "
          "NULL OR leased_until <= $2)), min(leased_until) FILTER (WHERE leased_until > $2)) "
          "FROM @.queue WHERE queue = ANY($1::text[])");
    ack =
        s("DELETE FROM @.queue e USING (SELECT unnest($1::text[]) AS id, unnest($2::bigint[]) AS "
          "tok) x WHERE e.id = x.id AND e.token = x.tok");
    extend =
        s("UPDATE @.queue e SET leased_until = $3 FROM (SELECT unnest($1::text[]) AS id, "
          "unnest($2::bigint[]) AS tok) x WHERE e.id = x.id AND e.token = x.tok RETURNING e.id");
    release = s(
        "WITH ins AS (UPDATE @.queue SET leased_until = NULL, token = 0, available_at = "
        "COALESCE($3::bigint, available_at), seq = CASE WHEN $4::boolean THEN seq ELSE "
        "nextval('@.queue_order') END WHERE id = $1 AND token = $2::bigint AND leased_until > $5 "
        "RETURNING queue, available_at) SELECT queue, available_at, pg_notify($6, 'p' || chr(9) || "
        "queue || chr(9) || available_at::text) FROM ins");
    remove_entry =
        s("DELETE FROM @.queue WHERE id = $1 AND (leased_until IS NULL OR leased_until <= $2)");
    stats =
        s("SELECT count(*) FILTER (WHERE (leased_until IS NULL OR leased_until <= $1) AND "
          "available_at <= $1), count(*) FILTER (WHERE (leased_until IS NULL OR leased_until <= "
          "$1) AND available_at > $1), count(*) FILTER (WHERE leased_until > $1) FROM @.queue "
          "WHERE $2 = '' OR queue = $2");
    pause =
        s("WITH x AS (INSERT INTO @.paused_queues (name) VALUES ($1) ON CONFLICT DO NOTHING) "
          "SELECT pg_notify($2, 's' || chr(9) || $1)");
    resume =
        s("WITH x AS (DELETE FROM @.paused_queues WHERE name = $1) "
          "SELECT pg_notify($2, 'r' || chr(9) || $1)");
    paused_names = s("SELECT name FROM @.paused_queues");
    sched_load = s("SELECT record::text FROM @.schedules WHERE name = $1");
    sched_load_all = s("SELECT name, record::text FROM @.schedules ORDER BY name");
    sched_insert =
        s("INSERT INTO @.schedules (name, record, updated_at) VALUES ($1, $2::json, $3) "
          "ON CONFLICT (name) DO NOTHING RETURNING name");
    sched_lock = s("SELECT record::text FROM @.schedules WHERE name = $1 FOR UPDATE");
    sched_update = s("UPDATE @.schedules SET record = $2::json, updated_at = $3 WHERE name = $1");
    sched_remove = s("DELETE FROM @.schedules WHERE name = $1");
    // Granted when the role is free, already ours, or its lease ran out (one statement: the
    // row lock serialises concurrent candidates).
    lead_acquire =
        s("INSERT INTO @.leaders AS l (name, holder, expires_at) VALUES ($1, $2, $3) "
          "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = "
          "EXCLUDED.expires_at WHERE l.holder = EXCLUDED.holder OR l.expires_at <= $4 "
          "RETURNING holder");
    lead_release = s("DELETE FROM @.leaders WHERE name = $1 AND holder = $2");
  }
};

std::string channel_for(const std::string& schema) {
  return "taskq_" + schema;
}

// --- the synchronous part (open, migrations, transactional enqueue) -------------------------

struct sync_result {
  PGresult* r = nullptr;
  ~sync_result() {
    if (r) PQclear(r);
  }
};

/// Runs statements on a blocking connection; false (with ec/detail) on failure.
bool run_sync(PGconn* c, const std::string& sql, error_code& ec, std::string& detail,
              const params& ps = {}, sync_result* keep = nullptr,
              const std::vector<int>* formats = nullptr) {
  std::vector<const char*> values;
  std::vector<int> lengths;
  for (const auto& p : ps) {
    values.push_back(p ? p->c_str() : nullptr);
    lengths.push_back(p ? static_cast<int>(p->size()) : 0);
  }
  PGresult* r = ps.empty() ? PQexec(c, sql.c_str())
                           : PQexecParams(c, sql.c_str(), static_cast<int>(values.size()), nullptr,
                                          values.data(), lengths.data(),
                                          formats ? formats->data() : nullptr, 0);
  auto st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    auto e = error_reply(r, c);
    ec = e.ec;
    detail = e.detail.empty() ? std::string(ec.message()) : e.detail;
    PQclear(r);
    return false;
  }
  if (keep)
    keep->r = r;
  else
    PQclear(r);
  return true;
}

bool migrate(PGconn* c, const std::string& schema, error_code& ec, std::string& detail) {
  auto q = quote_ident(schema);
  if (!run_sync(c, "BEGIN", ec, detail)) return false;
  auto fail = [&] {
    PGresult* r = PQexec(c, "ROLLBACK");
    PQclear(r);
    return false;
  };
  // Serialises concurrent openers of the same schema until this transaction ends.
  params lock{std::to_string(advisory_class), schema};
  if (!run_sync(c, "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))", ec, detail, lock))
    return fail();
  if (!run_sync(c, "CREATE SCHEMA IF NOT EXISTS " + q, ec, detail)) return fail();
  if (!run_sync(c,
                "CREATE TABLE IF NOT EXISTS " + q +
                    ".migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                    "DEFAULT now())",
                ec, detail))
    return fail();
  sync_result cur;
  if (!run_sync(c, "SELECT coalesce(max(version), 0) FROM " + q + ".migrations", ec, detail, {},
                &cur))
    return fail();
  int version = std::stoi(PQgetvalue(cur.r, 0, 0));
  const auto& all = migrations();
  if (version > static_cast<int>(all.size())) {
    ec = errc::unsupported_format_version;
    detail = "schema " + schema + " is at version " + std::to_string(version) +
             ", newer than this taskq (" + std::to_string(all.size()) + ")";
    return fail();
  }
  for (int v = version + 1; v <= static_cast<int>(all.size()); ++v) {
    if (!run_sync(c, with_schema(all[static_cast<std::size_t>(v - 1)], q), ec, detail))
      return fail();
    if (!run_sync(c,
                  "INSERT INTO " + q + ".migrations (version) VALUES (" + std::to_string(v) + ")",
                  ec, detail))
      return fail();
  }
  return run_sync(c, "COMMIT", ec, detail);
}

}  // namespace

int schema_version() noexcept {
  return static_cast<int>(migrations().size());
}

// --- state ----------------------------------------------------------------------------------

namespace {

class pg_queue;
class pg_store;

}  // namespace

struct backend::state : std::enable_shared_from_this<backend::state> {
  asio::any_io_executor ex;
  backend_options opts;
  clock& clk;
  sql_text sql;
  std::string channel;

  mutable std::mutex mutex;
  bool closed = false;
  std::string last_error;
  // pool
  std::vector<std::unique_ptr<connection>> idle;
  std::size_t open_conns = 0;
  std::uint64_t connects = 0, connect_failures = 0, errors = 0;  // backend::stats()
  std::list<std::shared_ptr<asio::steady_timer>> pool_waiters;
  steady::time_point next_connect{};
  std::chrono::milliseconds backoff{0};
  // queue
  std::unordered_set<std::string> paused;
  struct waiter {
    std::uint64_t id = 0;
    reserve_params params{};
    asio::any_completion_handler<void(error_code, std::vector<lease>)> handler;
    asio::any_io_executor work{};
    bool in_flight = false;
    bool cancelled = false;
    std::uint64_t gen = 0;
  };
  std::list<waiter> waiting;
  std::uint64_t next_waiter = 0;
  std::uint64_t wake_gen = 0;
  // Wakes parked reservations when a delayed task becomes due (set up in backend::open).
  std::shared_ptr<detail::backend_alarm> alarm;
  // listener and fallback poll
  connection* listener = nullptr;
  asio::steady_timer poll_timer;
  asio::steady_timer listen_backoff;
  asio::steady_timer rescue_timer;

  // Running records this process wrote last (version, record): the next update of one (its
  // worker's outcome, a heartbeat) skips loading it. Only a hint: every write is checked
  // against the stored version, and a record the hint would refuse is loaded first.
  std::unordered_map<std::string, std::pair<std::int64_t, task_record>> written;
  static constexpr std::size_t written_cap = 8192;
  /// Keeps (version, record) as the hint for `id`'s next update. `mutex` held.
  void remember_written(const std::string& id, std::int64_t version, const task_record& r) {
    if (written.size() > written_cap) written.clear();
    written.insert_or_assign(id, std::make_pair(version, r));
  }

  std::unique_ptr<taskq::queue> q;
  std::unique_ptr<taskq::store> s;
  // The fused operations over q and s: enqueue and complete always, fetch when it waits or
  // has an admission check (backend::do_fetch does the rest in one statement).
  std::unique_ptr<composed_backend> composed;
  std::unique_ptr<taskq::schedule_store> schedules;
  std::unique_ptr<taskq::leader_election> leaders;

  state(asio::any_io_executor e, backend_options o)
      : ex(std::move(e)),
        opts(std::move(o)),
        clk(opts.time ? *opts.time : default_clock()),
        sql(quote_ident(opts.schema)),
        channel(channel_for(opts.schema)),
        poll_timer(ex),
        listen_backoff(ex),
        rescue_timer(ex) {}

  void note_error(const std::string& detail) {
    if (detail.empty()) return;
    {
      std::lock_guard lock(mutex);
      last_error = detail;
      ++errors;
    }
    if (opts.on_error) opts.on_error(detail);
  }

  // --- pool ---

  awaitable<std::tuple<error_code, std::unique_ptr<connection>>> acquire() {
    std::tuple<error_code, std::unique_ptr<connection>> out;
    for (;;) {
      std::shared_ptr<asio::steady_timer> wait;
      std::unique_ptr<connection> got;
      bool make = false;
      steady::time_point not_before;
      {
        std::lock_guard lock(mutex);
        if (closed) {
          std::get<0>(out) = errc::store_closed;
          co_return out;
        }
        while (!idle.empty() && !got) {
          got = std::move(idle.back());
          idle.pop_back();
          if (!got->healthy()) {
            got.reset();
            --open_conns;
          }
        }
        if (!got) {
          if (open_conns < opts.pool_size) {
            ++open_conns;
            make = true;
            not_before = next_connect;
          } else {
            // Woken by release(); the bound only covers a wake-up lost between threads.
            wait = std::make_shared<asio::steady_timer>(ex, std::chrono::milliseconds(100));
            pool_waiters.push_back(wait);
          }
        }
      }
      if (got) {
        std::get<1>(out) = std::move(got);
        co_return out;
      }
      if (make) {
        if (steady::now() < not_before) {
          asio::steady_timer t(ex, not_before);
          co_await t.async_wait(use_tuple);
        }
        auto [ec, detail, conn] = co_await connect_async(ex, opts.conninfo, opts.connect_timeout);
        if (ec) {
          {
            std::lock_guard lock(mutex);
            --open_conns;
            ++connect_failures;
            backoff = std::clamp(backoff * 2, opts.reconnect_min, opts.reconnect_max);
            next_connect = steady::now() + backoff;
            wake_pool_waiter();
          }
          note_error(detail);
          std::get<0>(out) = ec;
          co_return out;
        }
        {
          std::lock_guard lock(mutex);
          backoff = std::chrono::milliseconds(0);
          ++connects;
        }
        std::get<1>(out) = std::move(conn);
        co_return out;
      }
      co_await wait->async_wait(use_tuple);
    }
  }

  void wake_pool_waiter() {  // mutex held
    if (pool_waiters.empty()) return;
    auto w = pool_waiters.front();
    pool_waiters.pop_front();
    asio::post(ex, [w] { w->cancel(); });
  }

  void release(std::unique_ptr<connection> c) {
    std::unique_ptr<connection> drop;
    std::lock_guard lock(mutex);
    if (c->broken || closed) {
      --open_conns;
      drop = std::move(c);
    } else {
      idle.push_back(std::move(c));
    }
    wake_pool_waiter();
  }

  /// Runs one statement on a pooled connection.
  awaitable<reply> query(std::string sql_text, params ps, bool prepare = false,
                         const std::vector<int>* formats = nullptr) {
    auto [ec, conn] = co_await acquire();
    if (ec) {
      reply r;
      r.ec = ec;
      co_return r;
    }
    reply r = co_await exec(*conn, sql_text, ps, prepare, formats);
    release(std::move(conn));
    if (r.unsent) {
      // Nothing was sent: run it once more, on a connection acquire() checks or opens.
      note_error(r.detail);
      auto [ec2, conn2] = co_await acquire();
      if (ec2) {
        r = reply{};
        r.ec = ec2;
        co_return r;
      }
      r = co_await exec(*conn2, sql_text, ps, prepare, formats);
      release(std::move(conn2));
    }
    if (r.ec) note_error(r.detail);
    co_return r;
  }

  // --- waking waiting reserves ---

  void wake(const std::string* queue_name);
  void rearm(time_point at);  // mutex held
  void on_pushed(const std::string& queue_name, time_point at);
  void handle_notification(const std::string& payload);
  awaitable<void> attempt(std::uint64_t id);
  awaitable<void> listen_loop();
  awaitable<void> poll_loop();
  awaitable<void> rescue_loop();
};

namespace {

using state = backend::state;

/// Runs `coro` (an awaitable<std::tuple<error_code, R...>>) and completes `h` with its
/// result, posted (never inline).
template <class Tuple, class Handler>
void launch(const std::shared_ptr<state>& st, Handler h, awaitable<Tuple> coro) {
  asio::co_spawn(
      st->ex, std::move(coro), [st, h = std::move(h)](std::exception_ptr e, Tuple t) mutable {
        if (e) {
          t = Tuple{};
          std::get<0>(t) = errc::io_error;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& x) {
            st->note_error(std::string("taskq postgres: ") + x.what());
          }
        }
        std::apply(
            [&](auto&&... a) { detail::post_completion(std::move(h), st->ex, std::move(a)...); },
            std::move(t));
      });
}

std::optional<task_record> parse_record(const char* text) {
  task_record r;
  if (taskq::detail::read_record_text(text, r)) return r;  // the layout taskq writes
  error_code ec;
  std::string detail;
  // Malformed or nested deeper than any accepted document: undecodable, not a crash.
  taskq::detail::json_text_error err;
  json j = taskq::detail::parse_json_text(text, json_depth_ceiling, err);
  if (err != taskq::detail::json_text_error::none) return std::nullopt;
  return record_from_json(j, ec, detail);
}

/// Lays the claim a fetch recorded in a task's queue row over its record: when the row's
/// attempt (column `col` of `res`, claimed_at in the next) is beyond the record's, the record
/// reads as apply_claim would have left it, running that attempt since claimed_at.
void claim_state(task_record& r, const result& res, int row, int col) {
  if (res.null(row, col)) return;
  const auto attempt = res.i64(row, col);
  if (attempt <= r.attempt) return;
  const auto at = res.null(row, col + 1) ? r.updated_at : from_us(res.i64(row, col + 1));
  r.status = task_status::running;
  r.attempt = static_cast<int>(attempt);
  r.started_at = at;
  r.heartbeat_at = at;
  r.updated_at = at;
  r.finished_at.reset();
}

// --- read, modify, write with a version check -----------------------------------------------

/// Loads the records of `ids`, calls `apply(id, record or nullptr)` (true: changed), writes
/// the changed ones back if their version is unchanged, and re-applies to those that moved
/// meanwhile. A write refused by the unique-key index is retried one record at a time and
/// `on_unique(id)` is told of each refused one.
template <class Apply, class OnUnique>
awaitable<reply> rmw(std::shared_ptr<state> st, std::vector<std::string> ids, Apply apply,
                     OnUnique on_unique) {
  auto [aec, conn] = co_await st->acquire();
  reply out;
  if (aec) {
    out.ec = aec;
    co_return out;
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int round = 0; !ids.empty(); ++round) {
    if (round == 50) {
      out.ec = errc::status_conflict;
      out.detail = "taskq postgres: records kept changing under an update";
      break;
    }
    std::unordered_map<std::string, std::pair<std::int64_t, task_record>> rows;
    std::unordered_set<std::string> hinted;  // taken from st->written, not loaded
    std::vector<std::string> to_load;
    {
      std::lock_guard lock(st->mutex);
      for (const auto& id : ids) {
        auto it = round == 0 ? st->written.find(id) : st->written.end();
        if (it != st->written.end()) {
          // Taken, not copied: a written record leaves the hints anyway, and one refused on
          // the hint is loaded in the next round (so is one a concurrent update finds gone).
          auto hint = st->written.extract(it);
          rows.emplace(std::move(hint.key()), std::move(hint.mapped()));
          hinted.insert(id);
        } else {
          st->written.erase(id);
          to_load.push_back(id);
        }
      }
    }
    reply loaded;
    if (!to_load.empty()) {
      params lp{text_array(to_load)};
      loaded = co_await exec(*conn, st->sql.load, lp, true);
    }
    if (loaded.ec) {
      out = std::move(loaded);
      break;
    }
    for (int i = 0; i < loaded.res.rows(); ++i) {
      auto rec = parse_record(loaded.res.get(i, 2));
      if (!rec) {
        out.ec = errc::invalid_record;
        out.detail = std::string("taskq postgres: undecodable record ") + loaded.res.get(i, 0);
        break;
      }
      claim_state(*rec, loaded.res, i, 3);
      rows.emplace(loaded.res.get(i, 0), std::make_pair(loaded.res.i64(i, 1), std::move(*rec)));
    }
    if (out.ec) break;
    write_rows batch;
    std::vector<std::string> changed;
    std::vector<std::string> again;
    for (const auto& id : ids) {
      auto it = rows.find(id);
      task_record* rec = it == rows.end() ? nullptr : &it->second.second;
      if (apply(id, rec)) {
        batch.add(*rec, it->second.first);
        changed.push_back(id);
      } else if (hinted.count(id)) {
        again.push_back(id);  // refused on the hint alone: decide on the stored record
      }
    }
    if (changed.empty() && again.empty()) break;
    {
      // Re-entered below for what this write is known to have stored.
      std::lock_guard lock(st->mutex);
      for (const auto& id : changed) st->written.erase(id);
    }
    reply w;
    if (!changed.empty())
      w = co_await exec(*conn, st->sql.write_back, batch.values(), true, &write_rows::formats());
    if (w.ec == errc::duplicate_unique_key) {
      for (std::size_t k = 0; k < changed.size(); ++k) {
        auto& row = rows.find(changed[k])->second;
        write_rows single;
        single.add(row.second, row.first);
        params one = single.values();
        reply w1 = co_await exec(*conn, st->sql.write_back, one, true, &write_rows::formats());
        if (w1.ec == errc::duplicate_unique_key) {
          on_unique(changed[k]);
        } else if (w1.ec) {
          out = std::move(w1);
          break;
        } else if (w1.res.rows() == 0) {
          again.push_back(changed[k]);
        }
      }
      if (out.ec) break;
    } else if (w.ec) {
      out = std::move(w);
      break;
    } else {
      std::unordered_set<std::string> written;
      for (int i = 0; i < w.res.rows(); ++i) written.insert(w.res.get(i, 0));
      std::lock_guard lock(st->mutex);
      for (auto& id : changed) {
        auto& row = rows.find(id)->second;
        if (!written.count(id))
          again.push_back(id);
        else if (row.second.status == task_status::running)
          st->remember_written(id, row.first + 1, row.second);
      }
    }
    ids = std::move(again);
  }
  st->release(std::move(conn));
  if (out.ec) st->note_error(out.detail);
  co_return out;
}

// --- the queue ------------------------------------------------------------------------------

std::vector<lease> parse_leases(const result& r, time_point expires) {
  std::vector<std::pair<std::int64_t, lease>> rows;
  for (int i = 0; i < r.rows(); ++i) {
    lease l;
    l.id = r.get(i, 0);
    l.queue = r.get(i, 1);
    l.type = r.get(i, 2);
    l.concurrency_key = r.get(i, 3);
    l.priority = static_cast<int>(r.i64(i, 4));
    l.token = static_cast<std::uint64_t>(r.i64(i, 5));
    l.expires_at = expires;
    rows.emplace_back(r.i64(i, 6), std::move(l));
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (a.second.priority != b.second.priority) return a.second.priority > b.second.priority;
    return a.first < b.first;
  });
  std::vector<lease> out;
  out.reserve(rows.size());
  for (auto& [seq, l] : rows) out.push_back(std::move(l));
  return out;
}

struct reserve_outcome {
  error_code ec{};
  std::vector<lease> leases{};
  std::optional<time_point> next{};  ///< when something may become visible (if asked)
};

awaitable<reserve_outcome> reserve_once(std::shared_ptr<state> st, reserve_params p,
                                        bool want_hint) {
  reserve_outcome out;
  auto now = st->clk.now();
  auto until = now + p.lease_for;
  params ps{text_array(p.queues),     std::to_string(to_us(now)), std::to_string(p.max),
            text_array(p.skip_types), text_array(p.skip_keys),    std::to_string(to_us(until))};
  reply r = co_await st->query(st->sql.reserve, ps, true);
  if (r.ec) {
    out.ec = r.ec;
    co_return out;
  }
  out.leases = parse_leases(r.res, until);
  if (out.leases.empty() && want_hint) {
    params hp{text_array(p.queues), std::to_string(to_us(now))};
    reply h = co_await st->query(st->sql.hint, hp);
    if (!h.ec && h.res.rows() == 1 && !h.res.null(0, 0)) out.next = from_us(h.res.i64(0, 0));
  }
  co_return out;
}

awaitable<error_code> release_leases(std::shared_ptr<state> st, std::vector<lease> leases) {
  error_code ec;
  auto now = st->clk.now();
  for (const auto& l : leases) {
    params ps{l.id,   std::to_string(l.token),    std::nullopt,
              "true", std::to_string(to_us(now)), st->channel};
    reply r = co_await st->query(st->sql.release, ps);
    if (r.ec) ec = r.ec;
  }
  co_return ec;
}

bool serves(const reserve_params& p, const std::string& queue_name) {
  return std::find(p.queues.begin(), p.queues.end(), queue_name) != p.queues.end();
}

}  // namespace

void backend::state::wake(const std::string* queue_name) {
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(mutex);
    if (closed) return;
    ++wake_gen;
    for (auto& w : waiting) {
      if (w.in_flight || (queue_name && !serves(w.params, *queue_name))) continue;
      w.in_flight = true;
      w.gen = wake_gen;
      ids.push_back(w.id);
    }
  }
  for (auto id : ids) asio::co_spawn(ex, attempt(id), asio::detached);
}

void backend::state::rearm(time_point at) {
  if (!closed) alarm->arm_by(at);
}

void backend::state::on_pushed(const std::string& queue_name, time_point at) {
  if (at <= clk.now()) {
    wake(&queue_name);
    return;
  }
  std::lock_guard lock(mutex);
  bool any = std::any_of(waiting.begin(), waiting.end(),
                         [&](const waiter& w) { return serves(w.params, queue_name); });
  if (any) rearm(at);
}

void backend::state::handle_notification(const std::string& payload) {
  // "p\tQUEUE\tAVAILABLE_US" (pushed or released), "s\tQUEUE" (paused), "r\tQUEUE" (resumed)
  if (payload.size() < 2 || payload[1] != '\t') return;
  auto rest = payload.substr(2);
  if (payload[0] == 'p') {
    auto tab = rest.rfind('\t');
    if (tab == std::string::npos) return;
    std::int64_t us = 0;
    try {
      us = std::stoll(rest.substr(tab + 1));
    } catch (const std::exception&) {
      return;
    }
    on_pushed(rest.substr(0, tab), from_us(us));
  } else if (payload[0] == 's') {
    std::lock_guard lock(mutex);
    paused.insert(rest);
  } else if (payload[0] == 'r') {
    {
      std::lock_guard lock(mutex);
      paused.erase(rest);
    }
    wake(&rest);
  }
}

awaitable<void> backend::state::attempt(std::uint64_t id) {
  auto self = shared_from_this();
  for (;;) {
    reserve_params p;
    {
      std::lock_guard lock(mutex);
      auto it =
          std::find_if(waiting.begin(), waiting.end(), [&](const waiter& w) { return w.id == id; });
      if (it == waiting.end()) co_return;
      p = it->params;
    }
    auto r = co_await reserve_once(self, p, true);
    std::optional<waiter> done;
    error_code ec = r.ec;
    {
      std::lock_guard lock(mutex);
      auto it =
          std::find_if(waiting.begin(), waiting.end(), [&](const waiter& w) { return w.id == id; });
      if (it == waiting.end()) co_return;
      if (it->cancelled || !r.leases.empty() || (ec && ec != errc::backend_unavailable)) {
        done.emplace(std::move(*it));
        waiting.erase(it);
      } else if (it->gen != wake_gen) {
        it->gen = wake_gen;
        continue;  // woken while the query ran: look again
      } else {
        // Nothing yet (or the server is away: the fallback poll retries): wait for a wake-up.
        it->in_flight = false;
        if (r.next) rearm(*r.next);
        co_return;
      }
    }
    if (done->cancelled) {
      if (!r.leases.empty()) co_await release_leases(self, std::move(r.leases));
      r.leases.clear();
      ec = asio::error::operation_aborted;
    } else {
      auto slot = asio::get_associated_cancellation_slot(done->handler);
      if (slot.is_connected()) slot.clear();
    }
    detail::post_completion(std::move(done->handler), done->work, ec, std::move(r.leases));
    co_return;
  }
}

awaitable<void> backend::state::listen_loop() {
  auto self = shared_from_this();
  auto delay = opts.reconnect_min;
  const std::string listen_sql = "LISTEN " + quote_ident(channel);
  for (;;) {
    {
      std::lock_guard lock(mutex);
      if (closed) co_return;
    }
    auto [ec, detail, conn] = co_await connect_async(ex, opts.conninfo, opts.connect_timeout);
    if (!ec) {
      reply r = co_await exec(*conn, listen_sql, {});
      if (!r.ec) r = co_await exec(*conn, sql.paused_names, {});
      if (r.ec) {
        ec = r.ec;
        detail = r.detail;
      } else {
        std::unordered_set<std::string> names;
        for (int i = 0; i < r.res.rows(); ++i) names.insert(r.res.get(i, 0));
        {
          std::lock_guard lock(mutex);
          if (closed) co_return;
          paused = std::move(names);
          listener = conn.get();
        }
        delay = opts.reconnect_min;
        wake(nullptr);  // notifications may have been missed while disconnected
        for (;;) {
          // Notifications may already sit in libpq's buffer (read with the last reply).
          while (PGnotify* n = PQnotifies(conn->pg)) {
            std::string payload = n->extra ? n->extra : "";
            PQfreemem(n);
            handle_notification(payload);
          }
          auto wec = co_await wait_for(*conn, wait_type::wait_read, std::chrono::seconds(1));
          {
            std::lock_guard lock(mutex);
            if (closed) {
              listener = nullptr;
              co_return;
            }
          }
          if (wec || !PQconsumeInput(conn->pg)) break;
        }
        {
          std::lock_guard lock(mutex);
          listener = nullptr;
          if (closed) co_return;
        }
        detail = "PostgreSQL connection lost (listener): " + trim(PQerrorMessage(conn->pg));
      }
    }
    if (ec == errc::store_closed) co_return;
    note_error(detail);
    conn.reset();
    listen_backoff.expires_after(delay);
    auto [tec] = co_await listen_backoff.async_wait(use_tuple);
    if (tec) co_return;
    delay = std::min(delay * 2, opts.reconnect_max);
  }
}

awaitable<void> backend::state::poll_loop() {
  auto self = shared_from_this();
  for (;;) {
    poll_timer.expires_after(opts.poll_interval);
    auto [ec] = co_await poll_timer.async_wait(use_tuple);
    if (ec) co_return;
    {
      std::lock_guard lock(mutex);
      if (closed) co_return;
      if (waiting.empty()) continue;
    }
    wake(nullptr);
  }
}

awaitable<void> backend::state::rescue_loop() {
  auto self = shared_from_this();
  for (;;) {
    rescue_timer.expires_after(opts.orphan_check_interval);
    auto [ec] = co_await rescue_timer.async_wait(use_tuple);
    if (ec) co_return;
    {
      std::lock_guard lock(mutex);
      if (closed) co_return;
    }
    params ps{std::to_string(to_us(clk.now() - opts.orphan_grace)), channel};
    reply r = co_await query(sql.rescue, ps);
    // A failure is reported by query(); the next round tries again.
    for (int i = 0; !r.ec && i < r.res.rows(); ++i)
      on_pushed(r.res.get(i, 0), from_us(r.res.i64(i, 1)));  // this process's waiters, now
  }
}

namespace {

class pg_queue final : public taskq::queue {
 public:
  explicit pg_queue(state& s) : st_(s) {}

  bool is_paused(const std::string& queue_name) const override {
    std::lock_guard lock(st_.mutex);
    return st_.paused.count(queue_name) != 0;
  }

  // Any PostgreSQL store on the same tables queues what it inserts (another backend object
  // opened with the same conninfo and schema, say), not only this backend's own.
  bool fed_by(const taskq::store& s) const noexcept override;

 protected:
  void do_push(push_params p, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    std::unordered_set<std::string_view> seen;
    for (const auto& e : p.entries) {
      error_code ec;
      if (e.id.empty())
        ec = errc::blank_id;
      else if (e.queue.empty())
        ec = errc::blank_queue;
      else if (!seen.insert(e.id).second)
        ec = errc::duplicate_id;
      if (ec) return detail::post_completion(std::move(h), st->ex, ec);
    }
    launch(st, std::move(h), push(st, std::move(p)));
  }

  static awaitable<std::tuple<error_code>> push(std::shared_ptr<state> st, push_params p) {
    if (p.entries.empty()) co_return std::tuple<error_code>{};
    json arr = json::array();
    for (const auto& e : p.entries) arr.push_back(entry_json(e));
    params ps{arr.dump(), st->channel};
    reply r = co_await st->query(st->sql.push, ps, true);
    if (!r.ec) {
      // Wake this process's waiters now (the notification also comes back, later).
      std::unordered_map<std::string, time_point> first;
      for (const auto& e : p.entries) {
        auto [it, fresh] = first.try_emplace(e.queue, e.available_at);
        if (!fresh) it->second = std::min(it->second, e.available_at);
      }
      for (const auto& [q, at] : first) st->on_pushed(q, at);
    }
    co_return std::tuple<error_code>{r.ec};
  }

  void do_reserve(reserve_params p, handler<void(error_code, std::vector<lease>)> h) override {
    auto st = st_.shared_from_this();
    if (p.max == 0 || p.lease_for <= duration::zero())
      return detail::post_completion(std::move(h), st->ex, error_code(errc::invalid_option),
                                     std::vector<lease>{});
    if (!p.wait) return launch(st, std::move(h), reserve_now(st, std::move(p)));
    auto slot = asio::get_associated_cancellation_slot(h);
    std::uint64_t id;
    {
      std::lock_guard lock(st->mutex);
      if (st->closed)
        return detail::post_completion(std::move(h), st->ex, error_code(errc::store_closed),
                                       std::vector<lease>{});
      id = ++st->next_waiter;
      auto& w = st->waiting.emplace_back(state::waiter{
          id, std::move(p), std::move(h),
          asio::prefer(st->ex, asio::execution::outstanding_work.tracked), true, false, 0});
      w.gen = st->wake_gen;
    }
    if (slot.is_connected()) {
      std::weak_ptr<state> weak = st;
      slot.assign([weak, id](asio::cancellation_type) {
        auto self = weak.lock();
        if (!self) return;
        std::optional<state::waiter> gone;
        {
          std::lock_guard lock(self->mutex);
          auto it = std::find_if(self->waiting.begin(), self->waiting.end(),
                                 [&](const state::waiter& w) { return w.id == id; });
          if (it == self->waiting.end()) return;
          if (it->in_flight) {
            it->cancelled = true;  // the query in flight finishes and gives back what it got
            return;
          }
          gone.emplace(std::move(*it));
          self->waiting.erase(it);
        }
        detail::post_completion(std::move(gone->handler), gone->work,
                                error_code(asio::error::operation_aborted), std::vector<lease>{});
      });
    }
    asio::co_spawn(st->ex, st->attempt(id), asio::detached);
  }

  static awaitable<std::tuple<error_code, std::vector<lease>>> reserve_now(
      std::shared_ptr<state> st, reserve_params p) {
    auto r = co_await reserve_once(st, std::move(p), false);
    co_return std::make_tuple(r.ec, std::move(r.leases));
  }

  void do_ack(std::vector<lease> l, handler<void(error_code, std::size_t)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), ack(st, std::move(l)));
  }

  static std::pair<std::string, std::string> id_token_arrays(const std::vector<lease>& l) {
    std::vector<std::string> ids;
    std::vector<std::int64_t> tokens;
    for (const auto& x : l) {
      ids.push_back(x.id);
      tokens.push_back(static_cast<std::int64_t>(x.token));
    }
    return {text_array(ids), int_array(tokens)};
  }

  static awaitable<std::tuple<error_code, std::size_t>> ack(std::shared_ptr<state> st,
                                                            std::vector<lease> l) {
    if (l.empty()) co_return std::make_tuple(error_code{}, std::size_t{0});
    auto [ids, tokens] = id_token_arrays(l);
    params ps{ids, tokens};
    reply r = co_await st->query(st->sql.ack, ps, true);
    co_return std::make_tuple(r.ec, r.ec ? std::size_t{0} : r.res.affected());
  }

  void do_extend(std::vector<lease> l, duration lease_for,
                 handler<void(error_code, std::vector<bool>)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), extend(st, std::move(l), lease_for));
  }

  static awaitable<std::tuple<error_code, std::vector<bool>>> extend(std::shared_ptr<state> st,
                                                                     std::vector<lease> l,
                                                                     duration lease_for) {
    std::vector<bool> kept(l.size(), false);
    if (l.empty()) co_return std::make_tuple(error_code{}, std::move(kept));
    auto now = st->clk.now();
    auto [ids, tokens] = id_token_arrays(l);
    // A lease that ran out still holds while its token does (nobody reserved the task since).
    params ps{ids, tokens, std::to_string(to_us(now + lease_for))};
    reply r = co_await st->query(st->sql.extend, ps, true);
    if (!r.ec) {
      std::unordered_set<std::string> got;
      for (int i = 0; i < r.res.rows(); ++i) got.insert(r.res.get(i, 0));
      for (std::size_t k = 0; k < l.size(); ++k) kept[k] = got.count(l[k].id) != 0;
    }
    co_return std::make_tuple(r.ec, std::move(kept));
  }

  void do_release(release_params p, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), release(st, std::move(p)));
  }

  static awaitable<std::tuple<error_code>> release(std::shared_ptr<state> st, release_params p) {
    auto now = st->clk.now();
    params ps{p.id,
              std::to_string(p.token),
              p.available_at ? std::optional<std::string>(std::to_string(to_us(*p.available_at)))
                             : std::nullopt,
              p.keep_position ? "true" : "false",
              std::to_string(to_us(now)),
              st->channel};
    reply r = co_await st->query(st->sql.release, ps);
    if (r.ec) co_return std::tuple<error_code>{r.ec};
    if (r.res.rows() == 0) co_return std::tuple<error_code>{errc::not_leased};
    st->on_pushed(r.res.get(0, 0), from_us(r.res.i64(0, 1)));  // wake this process's waiters
    co_return std::tuple<error_code>{};
  }

  void do_remove(std::string id, handler<void(error_code, bool)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), remove(st, std::move(id)));
  }

  static awaitable<std::tuple<error_code, bool>> remove(std::shared_ptr<state> st, std::string id) {
    params ps{id, std::to_string(to_us(st->clk.now()))};
    reply r = co_await st->query(st->sql.remove_entry, ps);
    co_return std::make_tuple(r.ec, !r.ec && r.res.affected() > 0);
  }

  void do_set_paused(std::string queue_name, bool paused, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), set_paused(st, std::move(queue_name), paused));
  }

  static awaitable<std::tuple<error_code>> set_paused(std::shared_ptr<state> st, std::string name,
                                                      bool paused) {
    params ps{name, st->channel};
    reply r = co_await st->query(paused ? st->sql.pause : st->sql.resume, ps);
    if (!r.ec) {
      {
        std::lock_guard lock(st->mutex);
        if (paused)
          st->paused.insert(name);
        else
          st->paused.erase(name);
      }
      if (!paused) st->wake(&name);
    }
    co_return std::tuple<error_code>{r.ec};
  }

  void do_stats(std::string queue_name, handler<void(error_code, queue_stats)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), stats(st, std::move(queue_name)));
  }

  static awaitable<std::tuple<error_code, queue_stats>> stats(std::shared_ptr<state> st,
                                                              std::string name) {
    params ps{std::to_string(to_us(st->clk.now())), name};
    reply r = co_await st->query(st->sql.stats, ps);
    queue_stats s;
    if (!r.ec && r.res.rows() == 1) {
      s.ready = static_cast<std::size_t>(r.res.i64(0, 0));
      s.delayed = static_cast<std::size_t>(r.res.i64(0, 1));
      s.leased = static_cast<std::size_t>(r.res.i64(0, 2));
    }
    co_return std::make_tuple(r.ec, s);
  }

 private:
  state& st_;
};

// --- the store ------------------------------------------------------------------------------

/// The status of task row `t` as readers see it: running while a fetch's claim in its queue
/// row is beyond the record's attempt (see claim_state).
std::string effective_status(const std::string& schema) {
  return "(CASE WHEN EXISTS (SELECT 1 FROM " + schema +
         ".queue c WHERE c.id = t.id AND c.attempt > t.attempt) THEN 1 ELSE t.status END)";
}

/// The WHERE clause of a filter over task rows `t`, with its parameters appended to `ps`.
std::string where_of(const task_filter& f, const std::string& schema, params& ps) {
  std::string w = "WHERE true";
  auto add = [&](std::string value) {
    ps.emplace_back(std::move(value));
    return "$" + std::to_string(ps.size());
  };
  if (!f.ids.empty()) w += " AND t.id = ANY(" + add(text_array(f.ids)) + "::text[])";
  if (!f.statuses.empty()) {
    std::vector<std::int64_t> s;
    for (auto x : f.statuses) s.push_back(static_cast<int>(x));
    w += " AND " + effective_status(schema) + " = ANY(" + add(int_array(s)) + "::smallint[])";
  }
  if (!f.types.empty()) w += " AND t.type = ANY(" + add(text_array(f.types)) + "::text[])";
  if (!f.queues.empty()) w += " AND t.queue = ANY(" + add(text_array(f.queues)) + "::text[])";
  if (!f.labels.empty()) w += " AND t.labels @> " + add(json(f.labels).dump()) + "::jsonb";
  if (f.created_after)
    w += " AND t.created_at >= " + add(std::to_string(to_us(*f.created_after))) + "::bigint";
  if (f.created_before)
    w += " AND t.created_at < " + add(std::to_string(to_us(*f.created_before))) + "::bigint";
  return w;
}

class pg_store final : public taskq::store {
 public:
  explicit pg_store(state& s) : st_(s) {}
  const state& owner() const noexcept { return st_; }
  bool durable() const noexcept override { return true; }

 protected:
  void do_insert(std::vector<task_record> r, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    for (const auto& x : r)
      if (x.id.empty())
        return detail::post_completion(std::move(h), st->ex, error_code(errc::blank_id));
    launch(st, std::move(h), insert(st, std::move(r)));
  }

  // Pending records are queued in the same statement (the queue is fed by this store), so
  // no record is ever left without the entry that gets it run.
  static awaitable<std::tuple<error_code>> insert(std::shared_ptr<state> st,
                                                  std::vector<task_record> rs) {
    if (rs.empty()) co_return std::tuple<error_code>{};
    row_arrays rows;
    std::unordered_map<std::string, time_point> first;  // per queue: the earliest available_at
    for (const auto& r : rs) {
      rows.add(r);
      if (r.status != task_status::pending) continue;
      auto [it, fresh] = first.try_emplace(r.queue, r.available_at);
      if (!fresh) it->second = std::min(it->second, r.available_at);
    }
    if (first.empty()) {
      reply r = co_await st->query(st->sql.insert_tasks, rows.insert_params(), true,
                                   &row_arrays::insert_formats());
      co_return std::tuple<error_code>{r.ec};
    }
    reply r = co_await st->query(st->sql.enqueue, rows.enqueue_params(st->channel), true,
                                 &row_arrays::enqueue_formats());
    if (!r.ec)
      for (const auto& [q, at] : first) st->on_pushed(q, at);  // this process's waiters, now
    co_return std::tuple<error_code>{r.ec};
  }

  void do_get(std::string id, handler<void(error_code, task_record)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), get(st, std::move(id)));
  }

  static awaitable<std::tuple<error_code, task_record>> get(std::shared_ptr<state> st,
                                                            std::string id) {
    params ps{id};
    reply r = co_await st->query(st->sql.get, ps, true);
    std::tuple<error_code, task_record> out;
    if (r.ec) {
      std::get<0>(out) = r.ec;
    } else if (r.res.rows() == 0) {
      std::get<0>(out) = errc::not_found;
    } else if (auto rec = parse_record(r.res.get(0, 0))) {
      claim_state(*rec, r.res, 0, 1);
      std::get<1>(out) = std::move(*rec);
    } else {
      std::get<0>(out) = errc::invalid_record;
    }
    co_return out;
  }

  void do_claim(claim_params p, handler<void(error_code, claim_result)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), claim(st, std::move(p)));
  }

  static awaitable<std::tuple<error_code, claim_result>> claim(std::shared_ptr<state> st,
                                                               claim_params p) {
    std::unordered_map<std::string, std::pair<detail::claim_outcome, task_record>> got;
    auto apply = [&](const std::string& id, task_record* r) {
      if (!r) {
        got[id] = {detail::claim_outcome::skipped, {}};
        return false;
      }
      const auto before = r->status;
      auto outcome = detail::apply_claim(*r, p.now);
      got[id] = {outcome, outcome == detail::claim_outcome::skipped ? task_record{} : *r};
      // Skipped but changed (a cancel request won over a retry or a rescue): written too, as
      // the memory and file stores do; left pending, the rescue would queue it again forever.
      return outcome != detail::claim_outcome::skipped || r->status != before;
    };
    reply r = co_await rmw(st, p.ids, apply, [](const std::string&) {});
    claim_result out;
    if (!r.ec) {
      for (auto& id : p.ids) {
        auto it = got.find(id);
        if (it == got.end()) continue;
        switch (it->second.first) {
          case detail::claim_outcome::claimed:
            out.claimed.push_back(std::move(it->second.second));
            break;
          case detail::claim_outcome::dropped:
            out.dropped.push_back(std::move(it->second.second));
            break;
          case detail::claim_outcome::skipped:
            out.skipped.push_back(id);
            break;
        }
        got.erase(it);
      }
    }
    co_return std::make_tuple(r.ec, std::move(out));
  }

  void do_update(task_update u, handler<void(error_code, task_record)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), update_one(st, std::move(u)));
  }

  static awaitable<std::tuple<error_code, task_record>> update_one(std::shared_ptr<state> st,
                                                                   task_update u) {
    std::vector<task_update> one;
    one.push_back(std::move(u));
    auto [ec, results] = co_await update_batch(st, std::move(one));
    if (ec) co_return std::make_tuple(ec, task_record{});
    co_return std::make_tuple(results[0].error,
                              std::move(results[0].record).value_or(task_record{}));
  }

  void do_update_batch(std::vector<task_update> u,
                       handler<void(error_code, std::vector<update_result>)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), update_batch(st, std::move(u)));
  }

  static awaitable<std::tuple<error_code, std::vector<update_result>>> update_batch(
      std::shared_ptr<state> st, std::vector<task_update> us) {
    std::vector<update_result> results(us.size());
    std::unordered_map<std::string, std::vector<std::size_t>> by_id;
    std::vector<std::string> ids;
    for (std::size_t i = 0; i < us.size(); ++i) {
      auto& v = by_id[us[i].id];
      if (v.empty()) ids.push_back(us[i].id);
      v.push_back(i);
    }
    auto apply = [&](const std::string& id, task_record* r) {
      bool changed = false;
      for (auto i : by_id[id]) {
        results[i] = update_result{};
        if (!r) {
          results[i].error = errc::not_found;
          continue;
        }
        results[i].error = detail::apply_update(*r, us[i]);
        if (!results[i].error) {
          changed = true;
          if (us[i].return_record) results[i].record = *r;
        }
      }
      return changed;
    };
    auto refused = [&](const std::string& id) {
      for (auto i : by_id[id]) {
        results[i].error = errc::duplicate_unique_key;
        results[i].record.reset();
      }
    };
    reply r = co_await rmw(st, std::move(ids), apply, refused);
    co_return std::make_tuple(r.ec, std::move(results));
  }

  void do_heartbeat(heartbeat_params p, handler<void(error_code, bool)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), heartbeat(st, std::move(p)));
  }

  static awaitable<std::tuple<error_code, bool>> heartbeat(std::shared_ptr<state> st,
                                                           heartbeat_params p) {
    error_code result;
    bool cancel = false;
    auto apply = [&](const std::string&, task_record* r) {
      if (!r) {
        result = errc::not_found;
        return false;
      }
      result = detail::apply_heartbeat(*r, p, cancel);
      return !result;
    };
    std::vector<std::string> ids{p.id};
    reply r = co_await rmw(st, std::move(ids), apply, [](const std::string&) {});
    co_return std::make_tuple(r.ec ? r.ec : result, cancel);
  }

  void do_append_log(std::string id, log_entry e, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), append_log(st, std::move(id), std::move(e)));
  }

  static awaitable<std::tuple<error_code>> append_log(std::shared_ptr<state> st, std::string id,
                                                      log_entry e) {
    error_code result;
    auto apply = [&](const std::string&, task_record* r) {
      if (!r) {
        result = errc::not_found;
        return false;
      }
      result = {};
      r->log.push_back(e);
      return true;
    };
    std::vector<std::string> ids{id};
    reply r = co_await rmw(st, std::move(ids), apply, [](const std::string&) {});
    co_return std::tuple<error_code>{r.ec ? r.ec : result};
  }

  void do_request_cancel(std::string id, time_point now,
                         handler<void(error_code, task_record)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), request_cancel(st, std::move(id), now));
  }

  static awaitable<std::tuple<error_code, task_record>> request_cancel(std::shared_ptr<state> st,
                                                                       std::string id,
                                                                       time_point now) {
    error_code result;
    task_record after;
    auto apply = [&](const std::string&, task_record* r) {
      if (!r) {
        result = errc::not_found;
        return false;
      }
      result = detail::apply_cancel_request(*r, now);
      after = *r;
      return !result;
    };
    std::vector<std::string> ids{id};
    reply r = co_await rmw(st, std::move(ids), apply, [](const std::string&) {});
    co_return std::make_tuple(r.ec ? r.ec : result, std::move(after));
  }

  void do_list(task_filter f, handler<void(error_code, task_page)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), list(st, std::move(f)));
  }

  static awaitable<std::tuple<error_code, task_page>> list(std::shared_ptr<state> st,
                                                           task_filter f) {
    params ps;
    const auto schema = quote_ident(st->opts.schema);
    std::string sql = "SELECT t.record::text, e.attempt, e.claimed_at FROM " + schema +
                      ".tasks t LEFT JOIN " + schema + ".queue e ON e.id = t.id " +
                      where_of(f, schema, ps);
    if (!f.after_id.empty()) {
      ps.emplace_back(f.after_id);
      sql += " AND t.id > $" + std::to_string(ps.size());
    }
    sql += " ORDER BY t.id LIMIT " + std::to_string(f.limit + 1);
    reply r = co_await st->query(sql, ps);
    task_page page;
    if (!r.ec) {
      for (int i = 0; i < r.res.rows(); ++i) {
        if (page.records.size() == f.limit) {
          page.next_cursor = page.records.empty() ? std::string() : page.records.back().id;
          break;
        }
        auto rec = parse_record(r.res.get(i, 0));
        if (!rec) co_return std::make_tuple(error_code(errc::invalid_record), task_page{});
        claim_state(*rec, r.res, i, 1);
        page.records.push_back(std::move(*rec));
      }
    }
    co_return std::make_tuple(r.ec, std::move(page));
  }

  void do_remove(task_filter f, handler<void(error_code, std::vector<std::string>)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), remove(st, std::move(f)));
  }

  static awaitable<std::tuple<error_code, std::vector<std::string>>> remove(
      std::shared_ptr<state> st, task_filter f) {
    params ps;
    const auto schema = quote_ident(st->opts.schema);
    std::string sql = "DELETE FROM " + schema + ".tasks t " + where_of(f, schema, ps) + " AND " +
                      effective_status(schema) + " <> 1 RETURNING t.id";
    reply r = co_await st->query(sql, ps);
    std::vector<std::string> ids;
    for (int i = 0; !r.ec && i < r.res.rows(); ++i) ids.emplace_back(r.res.get(i, 0));
    std::sort(ids.begin(), ids.end());
    co_return std::make_tuple(r.ec, std::move(ids));
  }

  void do_prune(time_point finished_before, handler<void(error_code, std::size_t)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), prune(st, finished_before));
  }

  static awaitable<std::tuple<error_code, std::size_t>> prune(std::shared_ptr<state> st,
                                                              time_point before) {
    params ps{std::to_string(to_us(before))};
    reply r = co_await st->query(st->sql.prune, ps);
    co_return std::make_tuple(r.ec, r.ec ? std::size_t{0} : r.res.affected());
  }

  void do_counts(handler<void(error_code, task_counts)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), counts(st));
  }

  static awaitable<std::tuple<error_code, task_counts>> counts(std::shared_ptr<state> st) {
    reply r = co_await st->query(st->sql.counts, {});
    task_counts c;
    for (int i = 0; !r.ec && i < r.res.rows(); ++i) {
      auto s = static_cast<std::size_t>(r.res.i64(i, 0));
      if (s >= task_status_count) continue;
      auto n = static_cast<std::size_t>(r.res.i64(i, 3));
      c.total[s] += n;
      c.by_type[r.res.get(i, 1)][s] += n;
      c.by_queue[r.res.get(i, 2)][s] += n;
    }
    co_return std::make_tuple(r.ec, std::move(c));
  }

 private:
  state& st_;
};

bool pg_queue::fed_by(const taskq::store& s) const noexcept {
  if (&s == st_.s.get()) return true;
  const auto* other = dynamic_cast<const pg_store*>(&s);
  return other && other->owner().opts.schema == st_.opts.schema &&
         other->owner().opts.conninfo == st_.opts.conninfo;
}

// --- schedule storage -----------------------------------------------------------------------

/// Decodes a stored schedule row; on failure `detail` names the schedule and the field.
std::optional<schedule_record> decode_schedule(const std::string& name, const char* text,
                                               error_code& ec, std::string& detail) {
  taskq::detail::json_text_error err;
  json j = taskq::detail::parse_json_text(text, json_depth_ceiling, err);
  std::optional<schedule_record> r;
  if (err != taskq::detail::json_text_error::none) {
    ec = errc::invalid_record;
    detail = err == taskq::detail::json_text_error::too_deep
                 ? "JSON nested deeper than " + std::to_string(json_depth_ceiling) + " levels"
                 : "not JSON";
  } else if ((r = schedule_record_from_json(j, ec, detail)) && r->definition.name != name) {
    ec = errc::invalid_record;
    detail = "field 'name' is '" + r->definition.name + "', not the row's name";
    r.reset();
  }
  if (!r) detail = "taskq postgres: stored schedule '" + name + "': " + detail;
  return r;
}

class pg_schedule_store final : public taskq::schedule_store {
 public:
  explicit pg_schedule_store(state& s) : st_(s) {}

 protected:
  void do_load(std::string name,
               handler<void(error_code, std::optional<schedule_record>)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), load(st, std::move(name)));
  }

  static awaitable<std::tuple<error_code, std::optional<schedule_record>>> load(
      std::shared_ptr<state> st, std::string name) {
    params ps{name};
    reply r = co_await st->query(st->sql.sched_load, ps);
    std::tuple<error_code, std::optional<schedule_record>> out{r.ec, std::nullopt};
    if (r.ec || r.res.rows() == 0) co_return out;
    std::string detail;
    std::get<1>(out) = decode_schedule(name, r.res.get(0, 0), std::get<0>(out), detail);
    if (!std::get<1>(out)) st->note_error(detail);
    co_return out;
  }

  void do_load_all(handler<void(error_code, std::vector<schedule_record>)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), load_all(st));
  }

  static awaitable<std::tuple<error_code, std::vector<schedule_record>>> load_all(
      std::shared_ptr<state> st) {
    reply r = co_await st->query(st->sql.sched_load_all, {});
    std::tuple<error_code, std::vector<schedule_record>> out{r.ec, {}};
    for (int i = 0; !r.ec && i < r.res.rows(); ++i) {
      std::string detail;
      auto rec = decode_schedule(r.res.get(i, 0), r.res.get(i, 1), std::get<0>(out), detail);
      if (!rec) {
        // One undecodable row fails the whole load: a scheduler must not run on a partial view.
        st->note_error(detail);
        std::get<1>(out).clear();
        co_return out;
      }
      std::get<1>(out).push_back(std::move(*rec));
    }
    co_return out;
  }

  void do_save(schedule_record r, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), save(st, std::move(r)));
  }

  static awaitable<std::tuple<error_code>> save(std::shared_ptr<state> st, schedule_record r) {
    auto [aec, conn] = co_await st->acquire();
    if (aec) co_return std::tuple<error_code>{aec};
    reply out = co_await save_on(*st, *conn, std::move(r));
    if (out.ec && !conn->broken) {
      // A pooled connection must not keep a failed transaction open.
      static const std::string rollback = "ROLLBACK";
      reply rb = co_await exec(*conn, rollback, {});
      if (rb.ec) conn->broken = true;
    }
    st->release(std::move(conn));
    if (out.ec) st->note_error(out.detail);
    co_return std::tuple<error_code>{out.ec};
  }

  // The save rule (detail::merge_on_save) against the stored row, locked for the transaction
  // so that concurrent savers in other processes apply it one after the other.
  static awaitable<reply> save_on(state& st, connection& c, schedule_record r) {
    static const std::string begin = "BEGIN", commit = "COMMIT";
    const std::string name = r.definition.name;
    const std::string now = std::to_string(to_us(st.clk.now()));
    reply x = co_await exec(c, begin, {});
    if (x.ec) co_return x;
    for (int round = 0;; ++round) {
      if (round == 50) {
        x.ec = errc::status_conflict;
        x.detail = "taskq postgres: schedule '" + name + "' kept being removed under a save";
        co_return x;
      }
      params ins{name, to_json(r).dump(), now};
      x = co_await exec(c, st.sql.sched_insert, ins);
      if (x.ec || x.res.rows() == 1) break;  // failed, or a new schedule
      params lock{name};
      x = co_await exec(c, st.sql.sched_lock, lock);
      if (x.ec) break;
      if (x.res.rows() == 0) continue;  // removed meanwhile: insert again
      error_code dec;
      std::string why;
      if (auto stored = decode_schedule(name, x.res.get(0, 0), dec, why))
        detail::merge_on_save(*stored, r);
      else
        st.note_error(why + " (replaced by a save)");  // nothing in it to keep
      params up{name, to_json(r).dump(), now};
      x = co_await exec(c, st.sql.sched_update, up);
      break;
    }
    if (x.ec) co_return x;
    co_return co_await exec(c, commit, {});
  }

  void do_remove(std::string name, handler<void(error_code, bool)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), remove(st, std::move(name)));
  }

  static awaitable<std::tuple<error_code, bool>> remove(std::shared_ptr<state> st,
                                                        std::string name) {
    params ps{name};
    reply r = co_await st->query(st->sql.sched_remove, ps);
    co_return std::make_tuple(r.ec, !r.ec && r.res.affected() > 0);
  }

 private:
  state& st_;
};

// --- leader election ------------------------------------------------------------------------

class pg_leaders final : public taskq::leader_election {
 public:
  explicit pg_leaders(state& s) : st_(s) {}

 protected:
  void do_acquire(std::string name, std::string holder, duration ttl,
                  handler<void(error_code, bool)> h) override {
    auto st = st_.shared_from_this();
    if (ttl <= duration::zero())
      return detail::post_completion(std::move(h), st->ex, error_code(errc::invalid_option), false);
    launch(st, std::move(h), acquire(st, std::move(name), std::move(holder), ttl));
  }

  static awaitable<std::tuple<error_code, bool>> acquire(std::shared_ptr<state> st,
                                                         std::string name, std::string holder,
                                                         duration ttl) {
    auto now = st->clk.now();
    params ps{name, holder, std::to_string(to_us(now + ttl)), std::to_string(to_us(now))};
    reply r = co_await st->query(st->sql.lead_acquire, ps);
    co_return std::make_tuple(r.ec, !r.ec && r.res.rows() == 1);
  }

  void do_release(std::string name, std::string holder, handler<void(error_code)> h) override {
    auto st = st_.shared_from_this();
    launch(st, std::move(h), release(st, std::move(name), std::move(holder)));
  }

  static awaitable<std::tuple<error_code>> release(std::shared_ptr<state> st, std::string name,
                                                   std::string holder) {
    params ps{name, holder};
    reply r = co_await st->query(st->sql.lead_release, ps);
    co_return std::tuple<error_code>{r.ec};
  }

 private:
  state& st_;
};

// --- the fused fetch ------------------------------------------------------------------------

/// One statement leases the batch and claims its plain pending tasks (sql.fetch); the others
/// (a lost worker's task, a cancel request) are claimed through their records, as the
/// composed path does, and what is no longer claimable is acked.
awaitable<std::tuple<error_code, fetch_result>> fused_fetch(std::shared_ptr<state> st,
                                                            fetch_params p) {
  std::tuple<error_code, fetch_result> out;
  auto& [ec, fetched] = out;
  const auto now = st->clk.now();
  const auto until = now + p.lease_for;
  params ps{text_array(p.queues),     std::to_string(to_us(now)), std::to_string(p.max),
            text_array(p.skip_types), text_array(p.skip_keys),    std::to_string(to_us(until))};
  reply r = co_await st->query(st->sql.fetch, ps, true);
  if (r.ec) {
    ec = r.ec;
    co_return out;
  }
  // In queue order: priority first, then FIFO (the statement returns them in no order).
  // The keys are parsed once, not in every comparison.
  struct order {
    std::int64_t priority, seq;
    int row;
  };
  std::vector<order> rows;
  rows.reserve(static_cast<std::size_t>(r.res.rows()));
  for (int i = 0; i < r.res.rows(); ++i) rows.push_back({r.res.i64(i, 4), r.res.i64(i, 6), i});
  std::sort(rows.begin(), rows.end(), [](const order& a, const order& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
  });
  std::vector<lease> slow, finished;
  std::vector<std::int64_t> versions;  // of the records claimed by the statement, in order
  claim_params slow_claim{.ids = {}, .now = now};
  for (const auto& o : rows) {
    const int i = o.row;
    lease l{r.res.get(i, 0),
            r.res.get(i, 1),
            r.res.get(i, 2),
            r.res.get(i, 3),
            static_cast<int>(o.priority),
            until,
            static_cast<std::uint64_t>(r.res.i64(i, 5))};
    if (r.res.null(i, 9)) {  // its record is gone: nothing to run
      finished.push_back(std::move(l));
      continue;
    }
    std::optional<task_record> rec;
    if (*r.res.get(i, 7) == 't') rec = parse_record(r.res.get(i, 9));
    // The statement claimed it in the queue row: the record as that claim leaves it.
    if (rec && detail::apply_claim(*rec, now) == detail::claim_outcome::claimed) {
      versions.push_back(r.res.i64(i, 8));
      fetched.claimed.push_back({std::move(l), std::move(*rec)});
    } else {
      slow_claim.ids.push_back(l.id);
      slow.push_back(std::move(l));
    }
  }
  {
    // Their outcomes' writes start from what the statement left (no load).
    std::lock_guard lock(st->mutex);
    for (std::size_t k = 0; k < versions.size(); ++k)
      st->remember_written(fetched.claimed[k].record.id, versions[k], fetched.claimed[k].record);
  }
  if (!slow.empty()) {
    auto [cec, claimed] = co_await st->s->async_claim(std::move(slow_claim), use_tuple);
    if (cec) {
      // Their leases run out and they come back; what the statement claimed still runs.
      st->note_error("taskq postgres: claiming fetched tasks: " + cec.message());
    } else {
      auto more = detail::pair_claimed(slow, std::move(claimed), finished);
      for (auto& f : more.claimed) fetched.claimed.push_back(std::move(f));
      fetched.dropped = std::move(more.dropped);
      fetched.skipped = std::move(more.skipped);
    }
  }
  if (!finished.empty()) {
    auto [aec, n] = co_await st->q->async_ack(std::move(finished), use_tuple);
    (void)n;
    if (aec) st->note_error("taskq postgres: acking unclaimable tasks: " + aec.message());
  }
  co_return out;
}

}  // namespace

void backend::do_enqueue(enqueue_params p, handler<void(error_code)> h) {
  state_->composed->async_enqueue(std::move(p), std::move(h));
}

void backend::do_fetch(fetch_params p, handler<void(error_code, fetch_result)> h) {
  // The caller's admission check is asked between reserving and claiming: that takes two steps.
  if (p.admit) return state_->composed->async_fetch(std::move(p), std::move(h));
  // Nothing ready: wait as the queue's reservations do (notifications, the clock, the poll),
  // through the composed path, which takes the caller's cancellation with its handler.
  std::optional<fetch_params> waiting;
  if (std::exchange(p.wait, false)) waiting = p;
  auto st = state_;
  auto then = [st, waiting = std::move(waiting), h = std::move(h)](error_code ec,
                                                                   fetch_result out) mutable {
    if (!ec && waiting && out.claimed.empty() && out.dropped.empty() && out.skipped.empty())
      return st->composed->async_fetch(std::move(*waiting), std::move(h));
    detail::dispatch_completion(std::move(h), st->ex, ec, std::move(out));
  };
  launch(st, std::move(then), fused_fetch(st, std::move(p)));
}

void backend::do_complete(complete_params p,
                          handler<void(error_code, std::vector<update_result>)> h) {
  state_->composed->async_complete(std::move(p), std::move(h));
}

// --- backend --------------------------------------------------------------------------------

backend::backend(std::shared_ptr<state> s) noexcept : state_(std::move(s)) {}

backend::~backend() {
  close();
}

std::unique_ptr<backend> backend::open(asio::any_io_executor ex, backend_options opts,
                                       error_code& ec, std::string* detail) {
  std::string why;
  auto fail = [&](error_code e, std::string d) {
    ec = e;
    if (detail) *detail = std::move(d);
    return std::unique_ptr<backend>();
  };
  if (opts.schema.empty() || opts.schema.size() > 48)
    return fail(errc::invalid_option,
                "backend_options field 'schema' must have 1 to 48 characters");
  if (opts.schema.rfind("pg_", 0) == 0)
    return fail(
        errc::invalid_option,
        "backend_options field 'schema' must not start with 'pg_' (reserved by PostgreSQL)");
  if (opts.pool_size == 0)
    return fail(errc::invalid_option, "backend_options field 'pool_size' must be at least 1");
  if (opts.poll_interval <= std::chrono::milliseconds(0))
    return fail(errc::invalid_option, "backend_options field 'poll_interval' must be positive");
  if (opts.reconnect_min <= std::chrono::milliseconds(0) || opts.reconnect_max < opts.reconnect_min)
    return fail(
        errc::invalid_option,
        "backend_options fields 'reconnect_min'/'reconnect_max' must be positive and ordered");
  if (opts.orphan_check_interval < std::chrono::milliseconds(0) ||
      opts.orphan_grace < std::chrono::milliseconds(0))
    return fail(errc::invalid_option,
                "backend_options fields 'orphan_check_interval'/'orphan_grace' must not be "
                "negative");
  if (opts.connect_timeout <= std::chrono::milliseconds(0))
    return fail(errc::invalid_option, "backend_options field 'connect_timeout' must be positive");
  PGconn* c = PQconnectdb(opts.conninfo.c_str());
  if (!c || PQstatus(c) != CONNECTION_OK) {
    std::string msg = c ? PQerrorMessage(c) : "out of memory";
    if (c) PQfinish(c);
    return fail(errc::backend_unavailable, classify_connect_failure(msg));
  }
  PQsetNoticeProcessor(c, &ignore_notice, nullptr);  // "schema already exists, skipping"
  if (!migrate(c, opts.schema, ec, why)) {
    PQfinish(c);
    return fail(ec, why);
  }
  PQsetnonblocking(c, 1);
  auto st = std::make_shared<state>(ex, std::move(opts));
  st->alarm = detail::backend_alarm::make(st->ex, st->clk, [weak = std::weak_ptr<state>(st)] {
    if (auto self = weak.lock()) self->wake(nullptr);
  });
  st->q = std::make_unique<pg_queue>(*st);
  st->s = std::make_unique<pg_store>(*st);
  st->composed = std::make_unique<composed_backend>(
      st->ex, *st->q, *st->s,
      composed_backend_options{
          .time = &st->clk,
          .log = logger([w = std::weak_ptr<state>(st)](log_level, std::string_view m) {
            if (auto s = w.lock()) s->note_error(std::string(m));
          })});
  st->schedules = std::make_unique<pg_schedule_store>(*st);
  st->leaders = std::make_unique<pg_leaders>(*st);
  st->idle.push_back(std::make_unique<connection>(st->ex, c));
  st->open_conns = 1;
  asio::co_spawn(st->ex, st->listen_loop(), asio::detached);
  asio::co_spawn(st->ex, st->poll_loop(), asio::detached);
  if (st->opts.orphan_check_interval > std::chrono::milliseconds(0))
    asio::co_spawn(st->ex, st->rescue_loop(), asio::detached);
  ec = {};
  return std::unique_ptr<backend>(new backend(std::move(st)));
}

std::unique_ptr<backend> backend::open(asio::any_io_executor ex, backend_options opts) {
  error_code ec;
  std::string detail;
  auto b = open(std::move(ex), std::move(opts), ec, &detail);
  throw_if(ec, detail);
  return b;
}

taskq::queue& backend::queue() noexcept {
  return *state_->q;
}
taskq::store& backend::store() noexcept {
  return *state_->s;
}
taskq::schedule_store& backend::schedules() noexcept {
  return *state_->schedules;
}
taskq::leader_election& backend::leaders() noexcept {
  return *state_->leaders;
}
const std::string& backend::schema() const noexcept {
  return state_->opts.schema;
}

backend_stats backend::stats() const {
  std::lock_guard lock(state_->mutex);
  backend_stats b;
  b.pool_size = state_->opts.pool_size;
  b.open_connections = state_->open_conns;
  b.idle_connections = state_->idle.size();
  b.connects = state_->connects;
  b.connect_failures = state_->connect_failures;
  b.errors = state_->errors;
  return b;
}

std::string backend::last_error() const {
  std::lock_guard lock(state_->mutex);
  return state_->last_error;
}

void backend::close() noexcept {
  auto st = state_;
  std::vector<std::unique_ptr<connection>> idle;
  {
    std::lock_guard lock(st->mutex);
    if (st->closed) return;
    st->closed = true;
    idle.swap(st->idle);
    st->open_conns -= idle.size();
    st->alarm->close();
    // Parked reservations are abandoned with the backend, like operations of a destroyed I/O
    // object (their handlers are destroyed unrun).
    for (auto it = st->waiting.begin(); it != st->waiting.end();) {
      if (it->in_flight)
        ++it;
      else
        it = st->waiting.erase(it);
    }
  }
  // Timers and the listener's socket belong to the io_context's threads: cancel from there.
  asio::post(st->ex, [st] {
    st->poll_timer.cancel();
    st->listen_backoff.cancel();
    st->rescue_timer.cancel();
    std::lock_guard lock(st->mutex);
    if (st->listener) st->listener->sd.cancel();
    for (auto& w : st->pool_waiters) w->cancel();
    st->pool_waiters.clear();
  });
}

// --- transactional enqueue ------------------------------------------------------------------

std::vector<std::string> enqueue(PGconn* conn, const std::string& schema,
                                 std::vector<task_spec> specs, time_point now, error_code& ec,
                                 std::string* detail) {
  std::string why;
  ec = {};
  for (const auto& s : specs) {
    if ((ec = validate(s))) {
      if (detail) *detail = ec.message();
      return {};
    }
  }
  if (!conn || PQstatus(conn) != CONNECTION_OK) {
    ec = errc::backend_unavailable;
    if (detail) *detail = "PostgreSQL connection lost: the host's connection is not usable";
    return {};
  }
  auto tx = PQtransactionStatus(conn);
  if (tx == PQTRANS_INERROR || tx == PQTRANS_ACTIVE) {
    ec = errc::invalid_option;
    if (detail) *detail = "the host's connection is in a failed transaction or busy";
    return {};
  }
  row_arrays rows;
  std::vector<std::string> ids;
  for (auto& s : specs) {
    auto r = make_record(std::move(s), now);
    rows.add(r);
    ids.push_back(r.id);
  }
  if (ids.empty()) return ids;
  sql_text sql(quote_ident(schema));
  params ps = rows.enqueue_params(channel_for(schema));
  const bool in_tx = tx == PQTRANS_INTRANS;
  if (in_tx && !run_sync(conn, "SAVEPOINT taskq_enqueue", ec, why)) {
    if (detail) *detail = why;
    return {};
  }
  if (!run_sync(conn, sql.enqueue, ec, why, ps, nullptr, &row_arrays::enqueue_formats())) {
    if (in_tx) {
      error_code ignored;
      std::string ignored_detail;
      run_sync(conn, "ROLLBACK TO SAVEPOINT taskq_enqueue", ignored, ignored_detail);
      run_sync(conn, "RELEASE SAVEPOINT taskq_enqueue", ignored, ignored_detail);
    }
    if (detail) *detail = why;
    return {};
  }
  if (in_tx && !run_sync(conn, "RELEASE SAVEPOINT taskq_enqueue", ec, why)) {
    if (detail) *detail = why;
    return {};
  }
  return ids;
}

std::vector<std::string> enqueue(PGconn* conn, const std::string& schema,
                                 std::vector<task_spec> specs, time_point now) {
  error_code ec;
  std::string detail;
  auto ids = enqueue(conn, schema, std::move(specs), now, ec, &detail);
  throw_if(ec, detail);
  return ids;
}

}  // namespace taskq::postgres
