#!/usr/bin/env bash
# CPU cost of one task, end to end on the memory backends, counted by valgrind's callgrind:
# instructions are the same on a busy machine as on an idle one, unlike seconds.
#
#   benchmarks/instructions_per_task.sh [BENCH_BINARY] [--json]
#
# Runs taskq_engine_bench's end-to-end phases at two sizes under callgrind and prints the
# marginal instructions per task, (I(n2) - I(n1)) / (n2 - n1), so start-up and shut-down cancel
# out; a bare asio::thread_pool job through a mutex-protected map is measured the same way
# as the baseline. Takes a few minutes (valgrind runs the program about 50x slower).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bench=${1:-$here/../build/benchmarks/taskq_engine_bench}
json=0
[ "${2:-}" = "--json" ] && json=1
[ "${1:-}" = "--json" ] && { json=1; bench=$here/../build/benchmarks/taskq_engine_bench; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
n1=${TASKQ_IPT_N1:-20000}
n2=${TASKQ_IPT_N2:-60000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

instructions() {  # phase tasks -> total instructions of the whole process (every thread)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out.%p" "$bench" --only "$1" --tasks "$2" \
    >/dev/null 2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
  local total
  total=$(grep -h '^totals:' "$tmp"/out.* | awk '{s += $2} END {print s}')
  rm -f "$tmp"/out.*
  echo "$total"
}

report() {  # name value unit
  if ((json)); then
    printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3"
  else
    printf '%-58s %14s %s\n' "$1" "$2" "$3"
  fi
}

declare -A per_task
for phase in batch.baseline batch.noop batch.noop_coro single.noop features.noop; do
  a=$(instructions "$phase" "$n1")
  b=$(instructions "$phase" "$n2")
  per_task[$phase]=$(( (b - a) / (n2 - n1) ))
  report "instructions_per_task.$phase" "${per_task[$phase]}" "instructions"
done
ratio=$(awk -v t="${per_task[batch.noop]}" -v b="${per_task[batch.baseline]}" \
  'BEGIN {printf "%.1f", t / b}')
report "instructions_per_task.batch.noop.ratio_to_baseline" "$ratio" "x"
