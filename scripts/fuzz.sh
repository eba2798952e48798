#!/usr/bin/env bash
# Builds the journal reader's libFuzzer target with clang in build-fuzz/ and runs it for a
# bounded time on a generated seed corpus (a few valid journals and snapshots).
#   scripts/fuzz.sh [SECONDS]     default 60
# Crash reproducers, if any, are written to build-fuzz/fuzz-artifacts/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
seconds=${1:-60}

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DTASKQ_BUILD_FUZZERS=ON -DTASKQ_BUILD_TESTS=OFF -DTASKQ_BUILD_EXAMPLES=OFF \
  -DTASKQ_BUILD_BENCHMARKS=OFF -DTASKQ_BUILD_TOOL=OFF >/dev/null
cmake --build "$build" --target taskq_journal_fuzz --parallel 2

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
