#!/bin/sh
# CTest: `taskq worker` end to end on a file store: tasks run as child processes, SIGTERM
# drains, and a worker killed with SIGKILL leaves no child running and loses no task (the
# task runs again after a restart).
#   worker_cli_test.sh TASKQ_BINARY WORK_DIR
set -u
T="$1"
W="$2"
rm -rf "$W" && mkdir -p "$W"
D="$W/store"
fail() { echo "FAIL: $*" >&2; for f in "$W"/*.err; do echo "--- $f" >&2; cat "$f" >&2; done; exit 1; }
# Polls a condition for up to 20 s (the bound only turns a hang into a failure).
wait_for() { i=0; while ! eval "$1"; do i=$((i+1)); [ $i -gt 400 ] && return 1; sleep 0.05; done; }
alive() { kill -0 "$1" 2>/dev/null; }

# Usage errors.
"$T" worker "$D" --exec true 2>"$W/usage.err"; [ $? = 2 ] || fail "missing --type is a usage error"
grep -q "needs --type" "$W/usage.err" || fail "usage message names --type"
"$T" worker "$D" --type t --concurrency 0 --exec true 2>"$W/usage.err"; [ $? = 2 ] || fail "bad --concurrency"
grep -q "concurrency" "$W/usage.err" || fail "message names --concurrency"

# A task that succeeds, with --json lines on stderr, then SIGTERM drains and exits 0.
"$T" enqueue "$D" --create --type echo --payload '{"n":7}' > "$W/id1" || fail enqueue
"$T" worker "$D" --type echo --json --exec sh -c 'read -r p; echo "{\"taskq\":\"result\",\"result\":$p}"' \
  2>"$W/w1.err" &
WPID=$!
wait_for 'grep -qs "\"event\":\"succeeded\"" "$W/w1.err"' || fail "json succeeded line"
grep -q '"event":"started"' "$W/w1.err" || fail "json started line"
kill -TERM $WPID
wait $WPID; [ $? = 0 ] || fail "SIGTERM exit code"
"$T" show "$D" "$(cat "$W/id1")" > "$W/show1" || fail show
grep -q '"n":7' "$W/show1" || fail "result stored"

# SIGKILL of the worker while its child runs: the child dies (parent-death signal), the task
# is not lost and runs again after a restart.
"$T" enqueue "$D" --type slow --payload '{}' > "$W/id2" || fail enqueue
MARK="$W/first-run-done"
"$T" worker "$D" --type slow --exec sh -c '
  if [ -e "$1" ]; then echo "{\"taskq\":\"result\",\"result\":\"attempt $TASKQ_ATTEMPT\"}"; exit 0; fi
  touch "$1"; echo $$ > "$1.pid"; exec sleep 1000' child "$MARK" 2>"$W/w2.err" &
WPID=$!
wait_for '[ -s "$MARK.pid" ]' || fail "child started"
CHILD=$(cat "$MARK.pid")
alive "$CHILD" || fail "child running"
kill -KILL $WPID
wait $WPID 2>/dev/null
wait_for '! alive "$CHILD"' || fail "child $CHILD still running after SIGKILL of the worker"
"$T" worker "$D" --type slow --exec sh -c '
  if [ -e "$1" ]; then echo "{\"taskq\":\"result\",\"result\":\"attempt $TASKQ_ATTEMPT\"}"; exit 0; fi
  touch "$1"; exec sleep 1000' child "$MARK" 2>"$W/w3.err" &
WPID=$!
wait_for 'grep -qs "succeeded" "$W/w3.err"' || fail "task ran again after restart"
kill -TERM $WPID
wait $WPID; [ $? = 0 ] || fail "SIGTERM exit code after restart"
"$T" show "$D" "$(cat "$W/id2")" > "$W/show2" || fail show
grep -q 'status: *succeeded' "$W/show2" || fail "task succeeded"
grep -q '"attempt 2"' "$W/show2" || fail "second attempt's result"

# A second signal stops at once: the running task returns to pending, its attempt not counted.
"$T" enqueue "$D" --type hang --payload '{}' > "$W/id3" || fail enqueue
"$T" worker "$D" --type hang --drain-timeout 1h --exec sh -c 'echo $$ > "$1"; exec sleep 1000' child "$W/hang.pid" \
  2>"$W/w4.err" &
WPID=$!
wait_for '[ -s "$W/hang.pid" ]' || fail "hang child started"
kill -TERM $WPID
wait_for 'grep -qs draining "$W/w4.err"' || fail "drain message"
kill -TERM $WPID
wait $WPID; [ $? = 0 ] || fail "second signal exit code"
alive "$(cat "$W/hang.pid")" && fail "hang child still running"
"$T" show "$D" "$(cat "$W/id3")" > "$W/show3" || fail show
grep -q 'status: *pending' "$W/show3" || fail "task back to pending"
grep -q 'attempt: *0 of' "$W/show3" || fail "the interrupted attempt is not counted"
echo ok
