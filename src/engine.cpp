// The engine translation unit: the backend composition, run promises, task contexts,
// executors, metrics, the outcome rules, the client and the worker. One translation unit (Asio
// is heavy to compile), one file per concept under src/engine/.
#include <taskq/client.hpp>
#include <taskq/detail/deadline_heap.hpp>
#include <taskq/detail/emplace.hpp>
#include <taskq/detail/input_limits.hpp>
#include <taskq/detail/outcome.hpp>
#include <taskq/detail/worker_admission.hpp>
#include <taskq/detail/worker_drain.hpp>
#include <taskq/executor.hpp>
#include <taskq/prometheus.hpp>
#include <taskq/worker.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>

#include <fmt/format.h>

#include <array>
#include <bit>
#include <list>
#include <random>
#include <unordered_map>
#include <unordered_set>

// In dependency order (each part uses the ones above it).
// clang-format off
#include "engine/blocking.ipp"
#include "engine/store.ipp"
#include "engine/backend.ipp"
#include "engine/run_promise.ipp"
#include "engine/task_context.ipp"
#include "engine/executor.ipp"
#include "engine/metrics.ipp"
#include "engine/outcome.ipp"
#include "engine/client.ipp"
#include "engine/worker.ipp"
// clang-format on
