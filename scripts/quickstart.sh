#!/usr/bin/env bash
# Installs what is missing, builds taskq and runs the main example.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
bash "$root/scripts/build.sh" "$root/build" -DTASKQ_BUILD_TESTS=OFF -DTASKQ_BUILD_BENCHMARKS=OFF
"$root/build/examples/01_quickstart"
