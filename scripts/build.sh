#!/usr/bin/env bash
# Configures and builds taskq.
#   scripts/build.sh [BUILD_DIR] [cmake args...] [--target TARGET]...
# The build type is Release (what a packager builds: -O3, warnings are errors); pass
# -DCMAKE_BUILD_TYPE=RelWithDebInfo for profiling. Every call configures the options it is
# given, so a build directory configured earlier with other options is brought in line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
cmake_args=()
targets=()
while (($#)); do
  if [ "$1" = "--target" ]; then
    targets+=(--target "$2")
    shift 2
  else
    cmake_args+=("$1")
    shift
  fi
done
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}" >/dev/null
cmake --build "$build" --parallel "$(nproc)" "${targets[@]}"
