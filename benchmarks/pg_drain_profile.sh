#!/usr/bin/env bash
# Where one PostgreSQL drain spends its time: fills a fresh schema with N no-op tasks, drains it
# with one taskq_postgres_bench worker process, and prints the drain rate, CPU per task of the
# worker and of the server's processes, how many updates of each table were HOT, and the
# statements by server time per row (pg_stat_statements).
#
#   benchmarks/pg_drain_profile.sh CONNINFO [N] [BUILD_DIR]
#
# CONNINFO names a database of a cluster started by scripts/pg_test_cluster.sh (the script
# reads the server's processes' CPU from /proc, so the server must run on this machine, as
# the user the cluster script runs it as: PG_USER, default taskq-pg). The cluster needs
# pg_stat_statements in shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries =
# 'pg_stat_statements', then restart it); the extension is created if missing.
# PRE_SQL, if set, runs after the schema is created and before it is filled ("@" stands for
# the schema): an experiment with the schema's storage or indexes, say.
set -euo pipefail
conninfo=${1:?usage: pg_drain_profile.sh CONNINFO [N] [BUILD_DIR]}
n=${2:-20000}
build=${3:-$(cd "$(dirname "$0")/.." && pwd)/build}
pg_user=${PG_USER:-taskq-pg}
schema=drain_profile_$$
sql() { psql "$conninfo" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

sql "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
trap 'sql "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null' EXIT
"$build/tools/taskq" stats "$conninfo" --schema "$schema" >/dev/null  # creates and migrates it
[ -n "${PRE_SQL:-}" ] && sql "${PRE_SQL//@/$schema}" >/dev/null
seq 1 "$n" | "$build/tools/taskq" enqueue "$conninfo" --schema "$schema" --type noop --stdin \
  >/dev/null
sql "SELECT pg_stat_statements_reset()" >/dev/null

server_ticks() {  # user + system clock ticks of every process of the server
  local total=0 f
  for pid in $(pgrep -u "$pg_user" postgres); do
    f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a s <<<"$f"
    total=$((total + s[11] + s[12]))
  done
  echo "$total"
}
tick_ms=$((1000 / $(getconf CLK_TCK)))

s0=$(server_ticks)
t0=$(date +%s%N)
"$build/benchmarks/taskq_postgres_bench" --worker "$conninfo" "$schema" &
worker=$!
until [ "$(sql "SELECT NOT EXISTS (SELECT 1 FROM $schema.queue)")" = t ]; do sleep 0.02; done
t1=$(date +%s%N)
s1=$(server_ticks)
read -r -a w <<<"$(sed 's/.*) //' "/proc/$worker/stat")"
kill -TERM "$worker"
wait "$worker" || true

wall_ms=$(((t1 - t0) / 1000000))
worker_ms=$(((w[11] + w[12]) * tick_ms))
server_ms=$(((s1 - s0) * tick_ms))
echo "drained $n tasks in $wall_ms ms: $((n * 1000 / (wall_ms > 0 ? wall_ms : 1))) tasks/s"
echo "CPU per task: worker $((worker_ms * 1000 / n)) us, server $((server_ms * 1000 / n)) us"
sql "SELECT relname || ': ' || n_tup_hot_upd || ' of ' || n_tup_upd || ' updates HOT'
     FROM pg_stat_user_tables WHERE schemaname = '$schema' AND relname IN ('tasks', 'queue')
     ORDER BY relname"
psql "$conninfo" -qX -c "SELECT calls, rows,
    round((total_exec_time * 1000 / greatest(rows, 1))::numeric, 1) AS us_per_row,
    round(total_exec_time::numeric) AS total_ms, left(query, 60) AS statement
  FROM pg_stat_statements WHERE query LIKE '%$schema%' ORDER BY total_exec_time DESC LIMIT 6"
