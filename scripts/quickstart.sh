#!/usr/bin/env bash
# Installs what is missing, builds taskq and runs the main example.
# Builds only the example's targets in build/, and leaves the directory's other options as a
# later scripts/test.sh needs them (that command configures the tests itself anyway).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
bash "$root/scripts/build.sh" "$root/build" -DTASKQ_BUILD_EXAMPLES=ON --target 01_quickstart
"$root/build/examples/01_quickstart"
