#!/usr/bin/env bash
# Installs what is missing, builds taskq and runs every test.
#   scripts/test.sh              release build (RelWithDebInfo) in build/
#   scripts/test.sh --sanitize   AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
if [ "${1:-}" = "--sanitize" ]; then
  build=$root/build-asan
  bash "$root/scripts/build.sh" "$build" -DTASKQ_SANITIZE=address,undefined -DTASKQ_BUILD_BENCHMARKS=OFF
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
  build=$root/build
  bash "$root/scripts/build.sh" "$build"
fi
ctest --test-dir "$build" --output-on-failure --timeout 600
