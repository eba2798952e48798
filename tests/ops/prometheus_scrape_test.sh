#!/usr/bin/env bash
# A real Prometheus (Debian's) scrapes taskq's /metrics on loopback; the test reads a taskq
# series back through Prometheus's HTTP API, and promtool accepts the exposition.
#   prometheus_scrape_test.sh DEMO_BINARY WORK_DIR
set -euo pipefail
demo=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

"$demo" --seconds 150 >"$work/demo.out" 2>"$work/demo.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$work/demo.out" && break; sleep 0.1; done
port=$(sed -n 's/^listening on //p' "$work/demo.out")
[ -n "$port" ] || { echo "demo did not start"; cat "$work/demo.err"; exit 1; }

# promtool lints the exposition (names, units, help, types).
curl -sf "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
echo "promtool check metrics: ok ($(grep -c '^taskq_' "$work/metrics.txt") samples)"

pport=$(free_port)
cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: taskq
    static_configs:
      - targets: ['127.0.0.1:$port']
YML
promtool check config "$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)

query='taskq_tasks_succeeded_total{queue="default",type="ok"}'
for i in $(seq 120); do
  out=$(curl -sf --get "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$query" || true)
  if echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
r = d["data"]["result"]
sys.exit(0 if d["status"] == "success" and r and float(r[0]["value"][1]) >= 5 else 1)' 2>/dev/null; then
    echo "prometheus returned: $out"
    # The scrape target is healthy and a gauge and a histogram came through too.
    up=$(curl -sf --get "http://127.0.0.1:$pport/api/v1/query" --data-urlencode 'query=up{job="taskq"}')
    echo "$up" | grep -q '"1"\]' || { echo "target not up: $up"; exit 1; }
    for q in 'taskq_tasks{status="succeeded"}' 'taskq_task_duration_seconds_count' 'taskq_queue_tasks{state="delayed"}'; do
      r=$(curl -sf --get "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$q")
      echo "$r" | grep -q '"result":\[{' || { echo "no series for $q: $r"; exit 1; }
    done
    echo "1 passed, 0 failed"
    exit 0
  fi
  sleep 0.5
done
echo "Prometheus never returned $query"; cat "$work/prometheus.log"; exit 1
