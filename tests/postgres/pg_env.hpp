// The PostgreSQL test cluster: where it is, and fresh schemas in it. The cluster is started by
// scripts/pg_test_cluster.sh (CTest fixture taskq_pg); tests find it through
// TASKQ_PG_CONNINFO (a libpq connection string) or TASKQ_PG_CONNINFO_FILE (a file holding
// one). Without either, the tests fail: they are never skipped.
#pragma once

#include <taskq/backends/postgres/backend.hpp>

#include <libpq-fe.h>

#include <unistd.h>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

namespace taskq::test {

inline std::string pg_conninfo() {
  if (const char* c = std::getenv("TASKQ_PG_CONNINFO"); c && *c) return c;
  if (const char* f = std::getenv("TASKQ_PG_CONNINFO_FILE"); f && *f) {
    std::ifstream in(f);
    std::string line;
    if (std::getline(in, line) && !line.empty()) return line;
    throw std::runtime_error(std::string("cannot read the connection string from ") + f);
  }
  throw std::runtime_error(
      "no PostgreSQL test cluster: set TASKQ_PG_CONNINFO or TASKQ_PG_CONNINFO_FILE (see "
      "scripts/pg_test_cluster.sh)");
}

/// A schema name unique to this process and call.
inline std::string fresh_schema(const std::string& prefix = "t") {
  static std::atomic<int> n{0};
  return prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
}

/// Runs one statement on a new blocking connection; returns the first value of the first row
/// (empty if none). Throws on failure.
inline std::string pg_exec(const std::string& sql, const std::string& conninfo = pg_conninfo()) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error(msg);
  }
  PGresult* r = PQexec(c, sql.c_str());
  auto st = PQresultStatus(r);
  std::string out;
  std::string err = PQresultErrorMessage(r);
  if (st == PGRES_TUPLES_OK && PQntuples(r) > 0) out = PQgetvalue(r, 0, 0);
  PQclear(r);
  PQfinish(c);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) throw std::runtime_error(err);
  return out;
}

inline void drop_schema(const std::string& schema) {
  try {
    pg_exec("SET client_min_messages = warning; SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"" +
            schema + "\" CASCADE");
  } catch (const std::exception&) {
  }
}

}  // namespace taskq::test
