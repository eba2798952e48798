#!/usr/bin/env bash
# Starts the demo application and drives its dashboard in Debian's chromium.
#   run.sh DEMO_BINARY ARTIFACT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=$1
art=$2
rm -rf "$art"
mkdir -p "$art"
bash "$here/../../scripts/browser_deps.sh"
"$demo" --seconds 240 >"$art/demo.out" 2>"$art/demo.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^listening on' "$art/demo.out" && break; sleep 0.1; done
port=$(sed -n 's/^listening on //p' "$art/demo.out")
[ -n "$port" ] || { echo "demo did not start"; cat "$art/demo.err"; exit 1; }
cd "$here"
TASKQ_URL="http://127.0.0.1:$port/" TASKQ_ARTIFACTS="$art" node dashboard.test.mjs
