#!/usr/bin/env bash
# graphile-worker measured on the same PostgreSQL server as taskq's benchmark (issue 11): the
# workload is described at the top of graphile-worker/bench.mjs.
#
#   scripts/pg_test_cluster.sh start /tmp/pg-durable --durable
#   TASKQ_PG_CONNINFO="$(cat /tmp/pg-durable/conninfo)" \
#     bash benchmarks/peers/run_graphile_worker.sh [--json] [--quick]
#   scripts/pg_test_cluster.sh stop /tmp/pg-durable
#
# Installs the pinned node packages (npm ci from package-lock.json) into
# graphile-worker/node_modules when they are missing or not the pinned versions, then runs
# bench.mjs with the arguments given.
# Needs node (18 or later) and npm, which reach the npm registry for the first install only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/graphile-worker"
if [[ -z "${TASKQ_PG_CONNINFO:-}" ]]; then
  echo "set TASKQ_PG_CONNINFO (scripts/pg_test_cluster.sh start DIR writes DIR/conninfo)" >&2
  exit 2
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "taskq: $tool not found; run scripts/deps.sh" >&2
    exit 1
  fi
done
# Installed when missing, or when the installed graphile-worker or pg is not the pinned one.
installed_matches_pins() {
  (cd "$here" && node --input-type=module -e '
    import { readFileSync } from "node:fs";
    const pins = JSON.parse(readFileSync("package.json", "utf8")).dependencies;
    for (const [name, version] of Object.entries(pins)) {
      const got = JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8")).version;
      if (got !== version) process.exit(1);
    }' 2>/dev/null)
}
if ! installed_matches_pins; then
  (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
fi
exec node "$here/bench.mjs" "$@"
