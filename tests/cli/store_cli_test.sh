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

# Hostile input. Deep JSON on --stdin: refused naming the line (it crashed with SIGSEGV).
{ printf '\n\n'; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; echo; } > "$W/deep"
expect_rc 1 "$T" enqueue "$D" --type t --stdin < "$W/deep"
grep -q "stdin line 3: payload is nested deeper than 64 levels" "$W/err" || fail "deep payload"
# A huge bad line is not echoed in full, and its line number is named.
{ printf '{'; head -c 10000000 /dev/zero | tr '\0' 'x'; echo; } > "$W/huge"
expect_rc 1 "$T" enqueue "$D" --type t --stdin < "$W/huge"
grep -q "stdin line 1: payload is not valid JSON: {xxx.*(10000001 bytes)" "$W/err" || fail "huge line"
[ "$(wc -c < "$W/err")" -lt 1000 ] || fail "huge line echoed in full"
# Durations: the library's own message; a delay that would wrap into the past is refused.
expect_rc 2 "$T" enqueue "$D" --type t --delay garbage
grep -q "invalid duration 'garbage' (expected e.g." "$W/err" || fail "duration message"
expect_rc 1 "$T" enqueue "$D" --type t --delay 100000d
grep -q "'delay' must not exceed" "$W/err" || fail "delay overflow refused"
# --older-than beyond the clock's reach saturates: it prunes nothing (it used to prune all).
expect_rc 0 "$T" enqueue "$D" --type gone
expect_rc 0 "$T" cancel "$D" "$(cat "$W/out" | cut -d' ' -f1)"
expect_rc 0 "$T" prune "$D" --older-than 100000d; grep -q "pruned 0" "$W/out" || fail "prune saturates"
# A directory that is not a store is refused, not shown as an empty store.
mkdir -p "$W/notstore" && echo x > "$W/notstore/file"
expect_rc 1 "$T" verify "$W/notstore";           grep -q "not a taskq store" "$W/err" || fail "verify non-store"
expect_rc 1 "$T" list "$W/notstore";             grep -q "not a taskq store" "$W/err" || fail "list non-store"

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
