#!/usr/bin/env bash
# Installs the browser test's npm tooling (playwright-core, pinned by
# tests/browser/package-lock.json) into tests/browser/node_modules. The browser itself is
# Debian's chromium (scripts/deps.sh); no browser is downloaded.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/tests/browser
if [ -f "$dir/node_modules/playwright-core/package.json" ] &&
   grep -q '"version": "1.64.1"' "$dir/node_modules/playwright-core/package.json"; then
  exit 0
fi
cd "$dir"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --ignore-scripts
