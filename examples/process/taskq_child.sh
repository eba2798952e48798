#!/bin/sh
# A taskq process_executor child in POSIX sh: the protocol in a few functions.
# Run it with `taskq worker DIR --type shout --exec ./taskq_child.sh` (or process_command).
#
#   stdin   the task's payload, one line of JSON
#   env     TASKQ_TASK_ID, TASKQ_TASK_TYPE, TASKQ_ATTEMPT
#   stdout  one JSON object per line: progress, log, result, error; anything else is logged
#   exit    0 success, 75 retry later, 65 permanent failure, other codes retried

# JSON string quoting for sh (backslash, quote, control characters dropped).
taskq_quote() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
taskq_progress() { printf '{"taskq":"progress","progress":%s}\n' "$1"; }  # $1: JSON
taskq_log() { printf '{"taskq":"log","message":%s}\n' "$(taskq_quote "$1")"; }
taskq_result() { printf '{"taskq":"result","result":%s}\n' "$1"; }         # $1: JSON
taskq_fail() { printf '{"taskq":"error","message":%s}\n' "$(taskq_quote "$1")"; exit "${2:-75}"; }

payload=$(cat)
taskq_log "task $TASKQ_TASK_ID ($TASKQ_TASK_TYPE), attempt $TASKQ_ATTEMPT"
taskq_progress '{"done":0}'
# (sed is enough for this flat example payload; use jq for real JSON.)
text=$(printf '%s' "$payload" | sed -n 's/.*"text" *: *"\([^"]*\)".*/\1/p')
[ -n "$text" ] || taskq_fail "payload has no \"text\" string" 65
echo "this line is not protocol: it goes to the run log"
taskq_progress '{"done":1}'
taskq_result "{\"shouted\":$(taskq_quote "$(printf '%s' "$text" | tr '[:lower:]' '[:upper:]')")}"
