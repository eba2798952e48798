// taskq — the umbrella header: everything a host application usually needs.
#pragma once

#include <taskq/backend.hpp>
#include <taskq/backends/file/store.hpp>
#include <taskq/backends/memory/backend.hpp>
#include <taskq/backends/memory/queue.hpp>
#include <taskq/backends/memory/store.hpp>
#include <taskq/client.hpp>
#include <taskq/clock.hpp>
#include <taskq/cron.hpp>
#include <taskq/duration.hpp>
#include <taskq/error.hpp>
#include <taskq/executor.hpp>
#include <taskq/leader.hpp>
#include <taskq/metrics.hpp>
#include <taskq/queue.hpp>
#include <taskq/run_promise.hpp>
#include <taskq/schedule.hpp>
#include <taskq/scheduler.hpp>
#include <taskq/store.hpp>
#include <taskq/task.hpp>
#include <taskq/task_context.hpp>
#include <taskq/worker.hpp>
