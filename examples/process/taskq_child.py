#!/usr/bin/env python3
"""A taskq process_executor child in Python: the protocol as four functions.

Run it with `taskq worker DIR --type shout --exec ./taskq_child.py` (or process_command).

  stdin   the task's payload, one line of JSON
  env     TASKQ_TASK_ID, TASKQ_TASK_TYPE, TASKQ_ATTEMPT
  stdout  one JSON object per line: progress, log, result, error; anything else is logged
  exit    0 success, 75 retry later, 65 permanent failure, other codes retried
"""
import json
import os
import sys

EX_TEMPFAIL, EX_DATAERR = 75, 65


def _send(kind, **fields):
    print(json.dumps({"taskq": kind, **fields}), flush=True)


def progress(value):
    _send("progress", progress=value)


def log(message):
    _send("log", message=str(message))


def result(value):
    _send("result", result=value)


def fail(message, code=EX_TEMPFAIL):
    _send("error", message=str(message))
    sys.exit(code)


def main():
    payload = json.loads(sys.stdin.readline() or "null")
    log(f"task {os.environ['TASKQ_TASK_ID']} ({os.environ['TASKQ_TASK_TYPE']}), "
        f"attempt {os.environ['TASKQ_ATTEMPT']}")
    progress({"done": 0})
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        fail('payload has no "text" string', EX_DATAERR)
    print("this line is not protocol: it goes to the run log")
    progress({"done": 1})
    result({"shouted": payload["text"].upper()})


if __name__ == "__main__":
    main()
