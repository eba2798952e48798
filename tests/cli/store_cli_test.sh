#!/bin/sh
# CTest: the taskq tool's file-store commands end to end (exit codes, output, the lock).
#   store_cli_test.sh TASKQ_BINARY WORK_DIR
set -u
T="$1"
W="$2"
rm -rf "$W" && mkdir -p "$W"
D="$W/store"
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_rc() { want=$1; shift; "$@" >"$W/out" 2>"$W/err"; rc=$?; [ "$rc" = "$want" ] || { cat "$W/out" "$W/err" >&2; fail "rc $rc (want $want): $*"; }; }

expect_rc 1 "$T" list "$D";                      grep -q "no such store directory" "$W/err" || fail "missing dir message"
expect_rc 1 "$T" enqueue "$D" --type t;          grep -q "no such store directory" "$W/err" || fail "enqueue without --create"
expect_rc 2 "$T" enqueue "$D" --create;          grep -q "needs --type" "$W/err" || fail "usage message"
expect_rc 2 "$T" enqueue "$D" --create --type t --payload '{bad'
expect_rc 2 "$T" list "$D" --bogus
expect_rc 0 "$T" enqueue "$D" --create --type mail --payload '{"to":"a"}' --priority 2
ID=$(cat "$W/out")
[ ${#ID} = 36 ] || fail "id printed: $ID"
printf '{"n":1}\n{"n":2}\n{"n":3}\n' > "$W/in"
"$T" enqueue "$D" --type bulk --queue q2 --stdin < "$W/in" > "$W/ids" || fail "stdin enqueue"
[ "$(wc -l < "$W/ids")" = 3 ] || fail "3 ids from --stdin"
expect_rc 0 "$T" list "$D";                      [ "$(wc -l < "$W/out")" = 5 ] || fail "list rows"
expect_rc 0 "$T" list "$D" --queue q2 --json;    grep -q '"n":2' "$W/out" || fail "list --json"
expect_rc 0 "$T" list "$D" --status pending --type mail --limit 1; grep -q "$ID" "$W/out" || fail "list filters"
expect_rc 0 "$T" show "$D" "$ID";                grep -q 'payload: *{"to":"a"}' "$W/out" || fail "show"
expect_rc 1 "$T" show "$D" 00000000-0000-0000-0000-000000000000; grep -q "no task with id" "$W/err" || fail "unknown id"
expect_rc 0 "$T" cancel "$D" "$ID";              grep -q "cancelled" "$W/out" || fail "cancel"
expect_rc 1 "$T" cancel "$D" "$ID";              grep -q "$ID" "$W/err" || fail "cancel twice"
expect_rc 0 "$T" retry "$D" "$ID" --json;        grep -q '"status":"pending"' "$W/out" || fail "retry"
expect_rc 0 "$T" stats "$D";                     grep -q "queue q2" "$W/out" || fail "stats"
expect_rc 0 "$T" stats "$D" --json;              grep -q '"pending":4' "$W/out" || fail "stats --json"
expect_rc 0 "$T" prune "$D" --older-than 1h;     grep -q "pruned 0" "$W/out" || fail "prune"
expect_rc 2 "$T" prune "$D" --older-than soon
expect_rc 0 "$T" verify "$D";                    grep -q "^ok: " "$W/out" || fail "verify"
expect_rc 0 "$T" schedules "$D";                 grep -q "^NAME " "$W/out" || fail "schedules header"
expect_rc 0 "$T" schedules "$D" --json;          grep -q '^\[\]$' "$W/out" || fail "schedules --json (none)"
expect_rc 1 "$T" schedules "$W/nowhere";         grep -q "no such store directory" "$W/err" || fail "schedules missing dir"

# While another process holds the lock: reads work, writes say why they cannot.
if command -v flock >/dev/null; then
  flock "$D/LOCK" sleep 2 &
  HOLDER=$!
  sleep 0.3
  expect_rc 0 "$T" list "$D"
  expect_rc 0 "$T" stats "$D"
  expect_rc 0 "$T" verify "$D"
  expect_rc 1 "$T" enqueue "$D" --type t;        grep -q "needs the store's lock" "$W/err" || fail "locked message"
  expect_rc 1 "$T" cancel "$D" "$ID";            grep -q "locked" "$W/err" || fail "locked cancel"
  kill $HOLDER 2>/dev/null
  wait $HOLDER 2>/dev/null
fi

# Corruption in the middle of the journal: verify names the file and offset.
SEG=$(ls "$D"/journal-*.log | head -1)
printf '\377' | dd of="$SEG" bs=1 seek=60 conv=notrunc 2>/dev/null
expect_rc 1 "$T" verify "$D";                    grep -q "byte offset" "$W/err" || fail "verify corruption"
expect_rc 1 "$T" verify "$D" --json;             grep -q '"ok":false' "$W/out" || fail "verify --json"
echo "store CLI: all checks passed"
