#!/usr/bin/env bash
# Starts or stops a private, throw-away PostgreSQL cluster for taskq's tests.
#
#   scripts/pg_test_cluster.sh start DIR   initdb in DIR (removed first), start the server on
#                                          127.0.0.1 on a free port, create database "taskq";
#                                          writes DIR/conninfo (a libpq connection string)
#   scripts/pg_test_cluster.sh start DIR --durable
#                                          the same, configured as users run PostgreSQL
#                                          (fsync, synchronous_commit and full_page_writes on):
#                                          for benchmarks; the tests use the fast default
#   scripts/pg_test_cluster.sh stop DIR    stop the server and remove DIR
#
# Uses Debian's PostgreSQL binaries (PG_BIN, default /usr/lib/postgresql/15/bin). When run as
# root the server runs as the unprivileged user PG_USER (default taskq-pg, created if missing),
# since PostgreSQL refuses to run as root. Authentication is "trust" on 127.0.0.1 for the test
# superuser "taskq" plus md5 for the other roles (the tests create a role with a password to check
# authentication errors).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start DIR [--durable] | stop DIR" >&2
  exit 2
fi
durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
case "${3:-}" in
  "") ;;
  --durable) durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on" ;;
  *)
    echo "usage: $0 start DIR [--durable] | stop DIR" >&2
    exit 2
    ;;
esac
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-taskq-pg}

as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

case "$cmd" in
  start)
    if [[ ! -x "$PG_BIN/initdb" ]]; then
      echo "taskq: $PG_BIN/initdb not found; run scripts/deps.sh" >&2
      exit 1
    fi
    if [[ "$(id -u)" == 0 ]] && ! id "$PG_USER" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    # A stale cluster from an interrupted run: stop it first.
    if [[ -f "$dir/data/postmaster.pid" ]]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then chown "$PG_USER" "$dir"; fi
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U taskq --auth-local=trust --auth-host=trust \
      --locale=C -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # Password authentication for every role but the test superuser.
    {
      echo "local all all trust"
      echo "host all taskq 127.0.0.1/32 trust"
      echo "host all all 127.0.0.1/32 md5"
    } >"$dir/data/pg_hba.conf"
    for attempt in 1 2 3 4 5; do
      port=$(free_port)
      if as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
          -o "-h 127.0.0.1 -p $port -k $dir $durability -c max_connections=200" \
          start >/dev/null; then
        break
      fi
      port=""
    done
    if [[ -z "$port" ]]; then
      echo "taskq: could not start PostgreSQL; see $dir/server.log" >&2
      cat "$dir/server.log" >&2 || true
      exit 1
    fi
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U taskq taskq
    echo "host=127.0.0.1 port=$port user=taskq dbname=taskq" >"$dir/conninfo"
    echo "taskq: PostgreSQL test cluster on 127.0.0.1:$port in $dir"
    ;;
  stop)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start DIR [--durable] | stop DIR" >&2
    exit 2
    ;;
esac
