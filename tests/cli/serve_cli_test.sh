#!/usr/bin/env bash
# CTest: `taskq serve` over a file store: usage errors, the API and /metrics over HTTP on
# loopback, a write through the API; and read-only serving while another process holds it.
#   serve_cli_test.sh TASKQ_BINARY WORK_DIR
set -u
T="$1"
W="$2"
rm -rf "$W" && mkdir -p "$W"
D="$W/store"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$T" serve >/dev/null 2>"$W/err"; [ $? = 2 ] || fail "usage rc"
grep -q "usage: taskq serve" "$W/err" || fail "usage text"
"$T" serve "$D" --listen 0.0.0.0:8080 2>"$W/err"; [ $? = 2 ] || fail "non-loopback rc"
grep -q "must be a loopback address" "$W/err" || fail "non-loopback message"
"$T" serve "$D" --listen 127.0.0.1:notaport 2>"$W/err"; [ $? = 2 ] || fail "bad port rc"
"$T" serve "$D/missing" --listen 127.0.0.1:0 2>"$W/err"; [ $? = 1 ] || fail "missing store rc"
grep -q "no such store directory" "$W/err" || fail "missing store message"

"$T" enqueue "$D" --create --type mail --payload '{"to":"ops@example.com"}' >"$W/id" || fail "enqueue"
ID=$(cat "$W/id")

start() {  # start ARGS... -> sets PORT
  "$T" serve "$@" >"$W/serve.out" 2>"$W/serve.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$W/serve.out" && break; sleep 0.1; done
  PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$W/serve.out")
  [ -n "$PORT" ] || { cat "$W/serve.err"; fail "serve did not start"; }
}

start "$D" --listen 127.0.0.1:0 --token tok
curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/api/tasks" | grep -q 401 || fail "token required"
H="Authorization: Bearer tok"
curl -sf -H "$H" "http://127.0.0.1:$PORT/api/tasks?type=mail" | grep -q "$ID" || fail "list over HTTP"
curl -sf -H "$H" "http://127.0.0.1:$PORT/api/tasks/$ID" | grep -q 'ops@example.com' || fail "show over HTTP"
curl -sf -H "$H" -X POST "http://127.0.0.1:$PORT/api/tasks/$ID/cancel" | grep -q '"status":"cancelled"' || fail "cancel over HTTP"
curl -sf -H "$H" "http://127.0.0.1:$PORT/metrics" | grep -q '^taskq_file_journal_syncs_total ' || fail "file metrics"
curl -sf "http://127.0.0.1:$PORT/" | grep -q '<title>taskq</title>' || fail "dashboard"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null; pids=()
"$T" show "$D" "$ID" | grep -q "cancelled" || fail "cancel was durable"

# Held by another process: served read-only.
"$T" serve "$D" --listen 127.0.0.1:0 >"$W/holder.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$W/holder.out" && break; sleep 0.1; done
start "$D" --listen 127.0.0.1:0
grep -q "serving it read-only" "$W/serve.err" || fail "read-only note"
curl -sf "http://127.0.0.1:$PORT/api/tasks/$ID" | grep -q '"status":"cancelled"' || fail "read-only read"
code=$(curl -s -o "$W/body" -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/api/tasks/$ID/retry")
[ "$code" = 403 ] || fail "read-only refuses writes ($code)"
grep -q "read-only" "$W/body" || fail "read-only message"
echo "serve CLI: all checks passed"
