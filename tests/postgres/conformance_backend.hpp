// The PostgreSQL backend for the conformance suite (conformance/backend_suite.cpp, which
// includes it with TASKQ_CONFORMANCE_POSTGRES): each test gets a fresh schema in the test
// cluster, dropped afterwards.
#pragma once

#include "conformance/backends.hpp"
#include "postgres/pg_env.hpp"

namespace taskq::test {

struct postgres_backend {
  static constexpr const char* name = "postgres";
  postgres_backend(asio::io_context& io, manual_clock& clk)
      : schema(fresh_schema("conf")),
        b(postgres::backend::open(
            io.get_executor(),
            {.conninfo = pg_conninfo(), .schema = schema, .pool_size = 3, .time = &clk})) {}
  ~postgres_backend() {
    b.reset();
    drop_schema(schema);
  }
  postgres_backend(const postgres_backend&) = delete;
  postgres_backend& operator=(const postgres_backend&) = delete;
  taskq::queue& queue() { return b->queue(); }
  taskq::store& store() { return b->store(); }
  taskq::schedule_store& schedules() { return b->schedules(); }
  /// Clients in the suite run on the backend's own fused operations (its one-statement fetch).
  taskq::backend& fused() { return *b; }
  std::string schema;
  std::unique_ptr<postgres::backend> b;
};

}  // namespace taskq::test
