#!/usr/bin/env bash
# Installs what is missing, builds taskq and runs every test.
#   scripts/test.sh              Release build in build/ (tests, examples, tool, benchmarks)
#   scripts/test.sh --sanitize   AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
# The options are passed on every call, so a build/ that scripts/quickstart.sh (or anything
# else) configured before still gets the whole suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
all=(-DTASKQ_BUILD_TESTS=ON -DTASKQ_BUILD_EXAMPLES=ON -DTASKQ_BUILD_TOOL=ON)
if [ "${1:-}" = "--sanitize" ]; then
  build=$root/build-asan
  # -O1 with line tables: readable sanitizer reports, asserts on, and the quickest of the
  # optimised builds to compile (the sanitizer stage is most of CI's time on 2 cores).
  bash "$root/scripts/build.sh" "$build" "${all[@]}" -DTASKQ_SANITIZE=address,undefined \
    -DTASKQ_BUILD_BENCHMARKS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
  build=$root/build
  bash "$root/scripts/build.sh" "$build" "${all[@]}" -DTASKQ_SANITIZE= -DTASKQ_BUILD_BENCHMARKS=ON
fi
ctest --test-dir "$build" --output-on-failure --timeout 600
