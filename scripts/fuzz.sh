#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for a bounded time on a
# generated seed corpus: the journal reader (valid journals and snapshots as seeds), the
# file store's record-body replay (valid body sequences as seeds), the JSON depth guard and
# the direct record reader (stored records as seeds).
#   scripts/fuzz.sh [SECONDS]     default 60, per target
# Crash reproducers, if any, are written to build-fuzz/fuzz-artifacts/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
seconds=${1:-60}

# -O1 with line tables, as libFuzzer recommends: quick to compile, readable crash reports.
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DTASKQ_BUILD_FUZZERS=ON -DTASKQ_BUILD_TESTS=OFF -DTASKQ_BUILD_EXAMPLES=OFF \
  -DTASKQ_BUILD_BENCHMARKS=OFF -DTASKQ_BUILD_TOOL=OFF -DTASKQ_WITH_POSTGRES=OFF >/dev/null
cmake --build "$build" --target taskq_journal_fuzz taskq_store_fuzz taskq_json_depth_fuzz \
  taskq_record_text_fuzz --parallel 2

corpus=$build/journal-corpus
artifacts=$build/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
# Seeds in the fuzz input layout: one selector byte (even: segment, odd: snapshot), then a
# file image encoded exactly as include/taskq/backends/file/journal.hpp documents.
python3 - "$corpus" <<'PY'
import struct, sys, os
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
def image(kind, ident, records):
    h = b"TASKQJNL" + struct.pack("<IIQI", 1, kind, ident, 0)
    out = h + struct.pack("<I", crc32c(h))
    for body in records:
        crc = crc32c(struct.pack("<QQI", ident, len(out), len(body)) + body)
        out += struct.pack("<II", len(body), crc) + body
    return out
seeds = {
    "empty-segment": b"\x00" + image(1, 1, []),
    "segment": b"\x00" + image(1, 1, [b"alpha", b"", b"\x00\x01\x02", b"x" * 200]),
    "segment-7": b"\x00" + image(1, 7, [b'{"id":"t1","type":"email"}'] * 5),
    "snapshot": b"\x01" + image(2, 3, [b"state-1", b"state-2"]),
    "torn": b"\x00" + image(1, 1, [b"complete", b"cut short"])[:-4],
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
PY

"$build/tests/fuzz/taskq_journal_fuzz" -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus"

# Seeds for the body replay: sequences of bodies (2-byte length + body) encoded as
# docs/file-format.md ("Record bodies") documents.
store_corpus=$build/store-corpus
mkdir -p "$store_corpus"
python3 - "$store_corpus" <<'PY'
import struct, sys, os, json
def var(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80]); v >>= 7
    return out + bytes([v])
def i64(v): return var(((v << 1) ^ (v >> 63)) & (2**64 - 1))
def s(x): x = x.encode() if isinstance(x, str) else x; return var(len(x)) + x
def js(v): return b"\x00" if v is None else b"\x01" + s(json.dumps(v, separators=(",", ":")))
def f64(d): return struct.pack("<d", d)
def opt_tp(t): return b"\x00" if t is None else b"\x01" + i64(t)
T = 1_767_225_600_000_000_000  # 2026-01-01 in nanoseconds
def record(id, status=0, attempt=0, key="", labels=(), log=(), payload=None):
    p = js({"to": "a@b"}) if payload is None else b"\x01" + s(payload)
    out = s(id) + s("email") + s("default") + p + js(None) + i64(0) + i64(T)
    out += i64(3) + i64(10**9) + i64(3600 * 10**9) + f64(2.0) + f64(0.2) + i64(0)
    out += var(len(labels)) + b"".join(s(k) + s(v) for k, v in labels)
    out += s("") + s(key) + b"\x00" + opt_tp(None) + bytes([status]) + i64(attempt)
    out += js(None) + js(None) + s("") + var(len(log)) + b"".join(i64(t) + s(m) for t, m in log)
    out += i64(T) + i64(T) + opt_tp(None) + opt_tp(None) + opt_tp(None) + b"\x00"
    return out
def insert(seq, rec): return b"\x01" + var(seq) + rec
def claim(id): return b"\x02" + s(id) + i64(T + 1000)
def update(id, frm, to, attempt):
    return (b"\x03" + var(0) + s(id) + bytes([frm]) + b"\x01" + i64(attempt) + bytes([to]) +
            i64(T + 2000) + b"\x01" + js({"ok": True}) + b"\x00" + b"\x00" + b"\x00" +
            b"\x00" + b"\x00" + b"\x00")
def heartbeat(id): return b"\x04" + s(id) + i64(1) + i64(T + 1500) + b"\x01" + js(0.5)
def log(id): return b"\x05" + s(id) + i64(T + 1600) + s("half way")
def cancel(id): return b"\x06" + s(id) + i64(T + 1700)
def remove(*ids): return b"\x07" + var(len(ids)) + b"".join(s(i) for i in ids)
def pause(q, on): return b"\x08" + s(q) + bytes([on])
sched = {"v": 1, "name": "nightly", "task": {"type": "report", "queue": "default",
         "payload": None, "metadata": None, "priority": 0, "delay": 0, "max_attempts": 25,
         "retry": {"initial_delay": 1000000, "max_delay": 3600000000, "multiplier": 2.0,
                   "jitter": 0.2}, "timeout": 0, "labels": {}, "concurrency_key": "",
         "unique_key": "", "unique_for": "active", "id": ""},
         "cron": "30 2 * * *", "time_zone": "UTC", "every": 0, "anchor": 0,
         "overlap": "allow", "max_concurrency": 0, "catch_up": "run_once",
         "max_catch_up": 100, "misfire_grace": 60000000, "paused": False,
         "last_run_id": "", "cursor": 1767225600000000}
def sched_save(): return b"\x09" + s(json.dumps(sched))
def sched_remove(): return b"\x0a" + s("nightly")
def seq(*bodies): return b"".join(struct.pack("<H", len(b)) + b for b in bodies)
seeds = {
    "lifecycle": seq(insert(1, record("a")), claim("a"), heartbeat("a"), log("a"),
                     update("a", 1, 2, 1)),
    "cancel-remove": seq(insert(1, record("a", key="k", labels=[("x", "y")])),
                         insert(2, record("b")), cancel("a"), remove("a", "b")),
    "running-snapshot": seq(insert(7, record("r", status=1, attempt=1, log=[(T, "x")])),
                            pause("default", 1), pause("other", 1), pause("other", 0)),
    "schedules": seq(sched_save(), sched_save(), sched_remove()),
    # Nested deeper than json_depth_ceiling (512): refused as invalid_record, not a crash.
    "deep-payload": seq(insert(1, record("d", payload="[" * 600 + "]" * 600))),
    "deep-schedule": seq(b"\x09" + s('{"v":1,"name":"n","task":' + "[" * 600 + "]" * 600 + "}")),
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
PY

"$build/tests/fuzz/taskq_store_fuzz" -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$artifacts/store-" "$store_corpus"

# Seeds for the JSON depth guard: a limit byte, then text (shallow, at the limit, deep, broken,
# brackets inside strings).
json_corpus=$build/json-corpus
mkdir -p "$json_corpus"
python3 - "$json_corpus" <<'PY'
import sys, os
seeds = {
    "scalar": b"\x40" + b"42",
    "object": b"\x40" + b'{"a":[1,{"b":null}],"c":"[[{"}',
    "at-limit": b"\x03" + b"[[[1]]]",
    "over-limit": b"\x03" + b"[[[[1]]]]",
    "deep": b"\x40" + b"[" * 1500 + b"]" * 1500,
    "escapes": b"\x02" + b'["\\\"[[[", {"k\\":"]]"}]',
    "broken": b"\x40" + b'[1, {"a": ]',
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
PY

"$build/tests/fuzz/taskq_json_depth_fuzz" -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$artifacts/json-" "$json_corpus"

# Seeds for the direct record reader: records as taskq stores them, in another layout, and
# with escapes, non-ASCII strings and a deep payload.
record_corpus=$build/record-corpus
mkdir -p "$record_corpus"
python3 - "$record_corpus" <<'PY'
import sys, os, json
rec = {"attempt": 1, "available_at": 1796181858394180, "cancel_requested": False,
       "concurrency_key": "", "created_at": 1796181858394180, "finished_at": 1796181871974016,
       "heartbeat_at": 1796181871828931, "id": "01a234c8-185a-71ee-88a2-af087acbaece",
       "labels": {"user": "7"}, "last_error": "", "log": [{"at": 1, "message": "retry"}],
       "max_attempts": 25, "metadata": None, "payload": {"to": "a@b", "n": [1, 2.5]},
       "priority": 0, "progress": None, "queue": "default", "result": None,
       "retry": {"initial_delay": 1000000, "jitter": 0.2, "max_delay": 3600000000,
                 "multiplier": 2.0},
       "started_at": 1796181871828931, "status": "succeeded", "timeout": 0, "type": "noop",
       "unique_for": "active", "unique_key": "", "updated_at": 1796181871974016, "v": 1}
compact = json.dumps(rec, separators=(",", ":"), sort_keys=True)
seeds = {
    "stored": compact,
    "spaced": json.dumps(rec, indent=1),
    "escapes": compact.replace('"last_error":""', '"last_error":"a \\"b\\" \\n \\u0001"'),
    "unicode": compact.replace('"type":"noop"', '"type":"n\\u00e9"'),
    "deep": compact.replace('"result":null', '"result":' + "[" * 600 + "]" * 600),
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "w") as f:
        f.write(data)
PY

"$build/tests/fuzz/taskq_record_text_fuzz" -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$artifacts/record-" "$record_corpus"
