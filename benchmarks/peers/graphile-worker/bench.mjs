// graphile-worker (pinned in package.json) measured against the PostgreSQL server that taskq's
// benchmark uses, in the same run, with the same workload (issue 11):
//
//   scripts/pg_test_cluster.sh start /tmp/pg-durable --durable
//   TASKQ_PG_CONNINFO="$(cat /tmp/pg-durable/conninfo)" \
//     bash benchmarks/peers/run_graphile_worker.sh [--json] [--quick]
//   scripts/pg_test_cluster.sh stop /tmp/pg-durable
//
// The workload, phase by phase, beside its counterpart in benchmarks/postgres_bench.cpp:
//
//   graphile.end_to_end.concN     tasks/s  20,000 no-op jobs pre-filled with addJobs (5,000 per
//                                          call, as taskq's phase pre-fills with postgres::enqueue
//                                          in batches of 5,000), then the clock starts, one worker
//                                          (run()) starts with concurrency N, and the clock stops
//                                          when the jobs table is empty, i.e. every completion is
//                                          committed (taskq: when every task's status is
//                                          completed). The worker's start-up (pool, migration
//                                          check, LISTEN) is inside the clock, as the worker
//                                          processes' start-up is in taskq's. (Issue 11 sets
//                                          20,000 for every system; postgres_bench.cpp drains
//                                          30,000, 5,000 with --quick.)
//   graphile.end_to_end           tasks/s  the best of the concurrencies above.
//   graphile.enqueue.bulk         jobs/s   50,000 jobs, addJobs with 1,000 per call (taskq:
//                                          pg.enqueue.batch1000).
//   graphile.enqueue.single       jobs/s   3,000 jobs, addJob awaited one after the other, as a
//                                          web handler adds them (taskq: pg.enqueue.single).
//   graphile.enqueue_to_start.p50 ms       a running worker (best concurrency, same options);
//   graphile.enqueue_to_start.p99 ms       500 jobs added one by one at 100/s, each carrying its
//                                          enqueue time; the task records start minus enqueue
//                                          time on the same clock (taskq: pg.enqueue_to_start).
//
// Every phase runs in a fresh graphile-worker schema (gw_bench_<phase>_<pid>_<n>, the `schema`
// option), dropped afterwards. The worker runs as graphile-worker's performance page recommends
// for throughput: preset.worker.localQueue.size = 500 (jobs fetched and locked 500 at a time),
// preset.worker.completeJobBatchDelay = 0 and failJobBatchDelay = 0 (completions batched),
// maxPoolSize = max(10, concurrency + 2) (the value the option's documentation recommends; the
// pool opens connections only on demand). The effective values are read back from the resolved
// preset (the "pool:create" event) and printed on stderr with what they did: how many
// local-queue fetches, the most connections the pool held, and the server's transactions per job
// during the drain (a completion per transaction would be at least 1; batched completes are far
// fewer).
//
// --json prints one {"name":...,"value":...,"unit":...} object per line (as taskq's benchmarks,
// benchmarks/bench_report.hpp); --quick makes every size 5 times smaller.
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import process from "node:process";
import { setTimeout as sleep } from "node:timers/promises";

import pg from "pg";
import { Logger, makeWorkerUtils, run } from "graphile-worker";

const args = process.argv.slice(2);
for (const a of args) {
  if (a !== "--json" && a !== "--quick") {
    console.error(`bench.mjs: unknown argument '${a}' (expected --json and/or --quick)`);
    process.exit(2);
  }
}
const json = args.includes("--json");
const quick = args.includes("--quick");
const scale = (n) => (quick ? Math.round(n / 5) : n);

// --- output, formatted as benchmarks/bench_report.hpp does (printf %g) ------------------------

function formatG(value, precision) {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return "0";
  const exponent = Math.floor(Math.log10(Math.abs(Number(value.toPrecision(precision)))));
  if (exponent < -4 || exponent >= precision) {
    let [mantissa, exp] = value.toExponential(precision - 1).split("e");
    if (mantissa.includes(".")) mantissa = mantissa.replace(/\.?0+$/, "");
    const sign = exp[0] === "-" ? "-" : "+";
    const digits = exp.replace(/^[+-]/, "").padStart(2, "0");
    return `${mantissa}e${sign}${digits}`;
  }
  let fixed = value.toFixed(Math.max(0, precision - 1 - exponent));
  if (fixed.includes(".")) fixed = fixed.replace(/\.?0+$/, "");
  return fixed;
}

function report(name, value, unit) {
  if (json) {
    process.stdout.write(JSON.stringify({ name, value: Number(formatG(value, 6)), unit }) + "\n");
  } else {
    process.stdout.write(`${name.padEnd(58)} ${formatG(value, 4).padStart(14)} ${unit}\n`);
  }
}

function note(text) {
  process.stderr.write(`graphile-worker bench: ${text}\n`);
}

// --- connection string: libpq keyword/value (or a URI) to what `pg` accepts --------------------

/// Parses a libpq "keyword = value ..." string (values bare or single-quoted with \' and \\
/// escapes) into a postgres:// URL; a postgres:// or postgresql:// URI is returned as it is.
function conninfoToUrl(conninfo) {
  const text = conninfo.trim();
  if (/^postgres(ql)?:\/\//.test(text)) return text;
  const params = {};
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i])) ++i;
  };
  while (true) {
    skipSpace();
    if (i >= text.length) break;
    const keyStart = i;
    while (i < text.length && /[A-Za-z_]/.test(text[i])) ++i;
    const key = text.slice(keyStart, i);
    skipSpace();
    if (!key || text[i] !== "=") {
      throw new Error(`TASKQ_PG_CONNINFO: expected "keyword = value" at character ${keyStart + 1}`);
    }
    ++i;
    skipSpace();
    let value = "";
    if (text[i] === "'") {
      ++i;
      while (i < text.length && text[i] !== "'") {
        if (text[i] === "\\" && i + 1 < text.length) ++i;
        value += text[i++];
      }
      if (text[i] !== "'") throw new Error(`TASKQ_PG_CONNINFO: unterminated quoted value of '${key}'`);
      ++i;
    } else {
      while (i < text.length && !/\s/.test(text[i])) {
        if (text[i] === "\\" && i + 1 < text.length) ++i;
        value += text[i++];
      }
    }
    params[key] = value;
  }
  const query = new URLSearchParams();
  let host = params.host ?? params.hostaddr ?? "";
  for (const [key, value] of Object.entries(params)) {
    switch (key) {
      case "host":
      case "hostaddr":
      case "port":
      case "user":
      case "password":
      case "dbname":
        break;
      case "sslmode":
      case "application_name":
      case "connect_timeout":
      case "options":
        query.set(key, value);
        break;
      default:
        throw new Error(`TASKQ_PG_CONNINFO: keyword '${key}' is not supported by this benchmark`);
    }
  }
  if (params.port && !/^\d+$/.test(params.port)) {
    throw new Error(`TASKQ_PG_CONNINFO: port '${params.port}' is not a number`);
  }
  let port = params.port ? `:${params.port}` : "";
  if (host.startsWith("/")) {
    // A Unix socket directory: pg takes it (and the port) as query parameters.
    query.set("host", host);
    if (params.port) query.set("port", params.port);
    host = "";
    port = "";
  } else if (host.includes(":")) {
    host = `[${host}]`; // an IPv6 address
  }
  let auth = "";
  if (params.user !== undefined) {
    auth = encodeURIComponent(params.user);
    if (params.password !== undefined) auth += ":" + encodeURIComponent(params.password);
    auth += "@";
  }
  const db = params.dbname ? encodeURIComponent(params.dbname) : "";
  const q = query.toString();
  return `postgres://${auth}${host}${port}/${db}${q ? "?" + q : ""}`;
}

const conninfo = process.env.TASKQ_PG_CONNINFO;
if (!conninfo) {
  console.error("set TASKQ_PG_CONNINFO (scripts/pg_test_cluster.sh start DIR writes DIR/conninfo)");
  process.exit(2);
}
let connectionString;
try {
  connectionString = conninfoToUrl(conninfo);
} catch (e) {
  console.error(e.message);
  process.exit(2);
}

// graphile-worker's own log lines (info: "Worker connected...") would mix with the figures:
// only warnings and errors, on stderr.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") note(`[${level}] ${message}`);
});

// --- schemas ---------------------------------------------------------------------------------

const liveSchemas = new Set();
let schemaCount = 0;

async function adminQuery(sql, params) {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query("SET client_min_messages = warning");
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

/// A fresh graphile-worker schema, installed; returns its name and WorkerUtils on it.
async function fresh(what) {
  const schema = `gw_bench_${what}_${process.pid}_${schemaCount++}`;
  liveSchemas.add(schema);
  const utils = await makeWorkerUtils({ connectionString, schema, logger });
  await utils.migrate();
  return { schema, utils };
}

async function drop(schema) {
  await adminQuery(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  liveSchemas.delete(schema);
}

async function dropLeftovers() {
  for (const schema of [...liveSchemas]) {
    try {
      await drop(schema);
    } catch (e) {
      note(`could not drop schema ${schema}: ${e.message}`);
    }
  }
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    note(`${signal}: dropping the benchmark schemas`);
    dropLeftovers().finally(() => process.exit(130));
  });
}

// --- the worker ------------------------------------------------------------------------------

/// Starts a graphile-worker runner on `schema` with concurrency `concurrency` and the batching
/// options; `observed` collects what the worker reports about itself.
async function startWorker(schema, concurrency, taskList, observed) {
  const events = new EventEmitter();
  events.on("pool:create", ({ ctx }) => {
    const w = ctx.resolvedPreset.worker;
    observed.pgPool = ctx.pgPool;
    observed.effective = {
      schema: w.schema,
      concurrentJobs: w.concurrentJobs,
      maxPoolSize: w.maxPoolSize,
      "localQueue.size": w.localQueue?.size,
      completeJobBatchDelay: w.completeJobBatchDelay,
      failJobBatchDelay: w.failJobBatchDelay,
      pollInterval: w.pollInterval,
      preparedStatements: w.preparedStatements,
    };
  });
  events.on("localQueue:init", () => {
    observed.localQueue = true;
  });
  events.on("localQueue:getJobs:complete", ({ jobs }) => {
    observed.fetches = (observed.fetches ?? 0) + 1;
    observed.fetched = (observed.fetched ?? 0) + jobs.length;
  });
  // The pool's size, sampled: how many connections the worker really used.
  observed.peakConnections = 0;
  const sampler = setInterval(() => {
    observed.peakConnections = Math.max(observed.peakConnections, observed.pgPool?.totalCount ?? 0);
  }, 10);
  observed.sampler = sampler;
  events.on("pool:release", () => clearInterval(sampler));
  const listening = new Promise((resolve) => events.once("pool:listen:success", resolve));
  const runner = await run({
    noHandleSignals: true,
    taskList,
    crontab: "",
    preset: {
      worker: {
        connectionString,
        schema,
        logger,
        events,
        concurrentJobs: concurrency,
        maxPoolSize: Math.max(10, concurrency + 2),
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
  });
  return { runner, listening };
}

function describe(observed) {
  const e = observed.effective;
  if (!e) return "no pool:create event (options not observed)";
  const opts = Object.entries(e)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
  const lq = observed.localQueue
    ? `local queue on, ${observed.fetches ?? 0} fetches of ${observed.fetched ?? 0} jobs`
    : "local queue OFF";
  return `${opts}; ${lq}; at most ${observed.peakConnections} pool connections`;
}

async function transactionsCommitted() {
  const r = await adminQuery(
    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
  );
  return Number(r.rows[0].xact_commit);
}

// --- phases ----------------------------------------------------------------------------------

/// `n` no-op jobs pre-filled, then a worker with `concurrency` drains them; tasks/s.
async function endToEnd(n, concurrency) {
  const { schema, utils } = await fresh("e2e");
  for (let i = 0; i < n; i += 5000) {
    const specs = [];
    for (let k = i; k < Math.min(n, i + 5000); ++k) specs.push({ identifier: "noop", payload: {} });
    await utils.addJobs(specs);
  }
  await utils.release();
  const jobs = `"${schema}"._private_jobs`;
  const queued = Number((await adminQuery(`SELECT count(*) FROM ${jobs}`)).rows[0].count);
  if (queued !== n) throw new Error(`pre-fill: ${queued} jobs in ${schema}, expected ${n}`);
  await sleep(300); // let the closed connections' statistics reach pg_stat_database
  const commitsBefore = await transactionsCommitted();

  let ran = 0;
  let allRan;
  const allRanPromise = new Promise((resolve) => (allRan = resolve));
  const taskList = {
    noop: async () => {
      if (++ran === n) allRan();
    },
  };
  const poll = new pg.Client({ connectionString });
  await poll.connect();
  const observed = {};
  const t0 = performance.now();
  const { runner } = await startWorker(schema, concurrency, taskList, observed);
  // Wait for every task function to have run, then for every completion to be committed (the
  // count is polled only at the end, so the polling does not load the server while it drains).
  await allRanPromise;
  let polls = 0;
  while (true) {
    ++polls;
    const left = Number((await poll.query(`SELECT count(*) FROM ${jobs}`)).rows[0].count);
    if (left === 0) break;
    await sleep(5);
  }
  const seconds = (performance.now() - t0) / 1000;
  await runner.stop();
  clearInterval(observed.sampler);
  await poll.end();
  await sleep(300);
  const commits = (await transactionsCommitted()) - commitsBefore - polls - 1;
  note(
    `end_to_end conc${concurrency}: ${describe(observed)}; ` +
      `${formatG(commits / n, 3)} server transactions per job during the drain`,
  );
  await drop(schema);
  return n / seconds;
}

/// `n` jobs through addJobs, `batch` per call; jobs/s.
async function enqueueBulk(n, batch) {
  const { schema, utils } = await fresh("bulk");
  const t0 = performance.now();
  for (let i = 0; i < n; i += batch) {
    const specs = [];
    for (let k = i; k < Math.min(n, i + batch); ++k)
      specs.push({ identifier: "noop", payload: { n: k } });
    await utils.addJobs(specs);
  }
  const rate = n / ((performance.now() - t0) / 1000);
  await utils.release();
  await drop(schema);
  return rate;
}

/// `n` jobs through addJob, one awaited after the other; jobs/s.
async function enqueueSingle(n) {
  const { schema, utils } = await fresh("single");
  const t0 = performance.now();
  for (let i = 0; i < n; ++i) await utils.addJob("noop", { n: i });
  const rate = n / ((performance.now() - t0) / 1000);
  await utils.release();
  await drop(schema);
  return rate;
}

/// A running worker; `n` jobs added one by one at `perSecond`, each carrying its enqueue time;
/// returns the {p50, p99} of start minus enqueue time in ms.
async function enqueueToStart(n, perSecond, concurrency) {
  const { schema, utils } = await fresh("lat");
  const latencies = [];
  let allRan;
  const allRanPromise = new Promise((resolve) => (allRan = resolve));
  const taskList = {
    latency: async (payload) => {
      latencies.push(performance.now() - payload.t);
      if (latencies.length === n) allRan();
    },
  };
  const observed = {};
  const { runner, listening } = await startWorker(schema, concurrency, taskList, observed);
  await listening;
  await sleep(500); // as taskq's phase: let the worker settle before the first job
  const t0 = performance.now();
  for (let i = 0; i < n; ++i) {
    const due = t0 + (1000 * i) / perSecond;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    await utils.addJob("latency", { t: performance.now() });
  }
  await allRanPromise;
  await runner.stop();
  clearInterval(observed.sampler);
  await utils.release();
  note(`enqueue_to_start conc${concurrency}: ${describe(observed)}`);
  await drop(schema);
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return [at(0.5), at(0.99)];
}

// --- main ------------------------------------------------------------------------------------

async function main() {
  const e2e = scale(20000);
  let best = { rate: 0, concurrency: 0 };
  for (const concurrency of [10, 24, 50, 100, 200]) {
    const rate = await endToEnd(e2e, concurrency);
    report(`graphile.end_to_end.conc${concurrency}`, rate, "tasks/s");
    if (rate > best.rate) best = { rate, concurrency };
  }
  report("graphile.end_to_end", best.rate, "tasks/s");
  report("graphile.end_to_end.best_concurrency", best.concurrency, "concurrency");

  report("graphile.enqueue.bulk", await enqueueBulk(scale(50000), 1000), "jobs/s");
  report("graphile.enqueue.single", await enqueueSingle(scale(3000)), "jobs/s");

  const [p50, p99] = await enqueueToStart(scale(500), 100, best.concurrency);
  report("graphile.enqueue_to_start.p50", p50, "ms");
  report("graphile.enqueue_to_start.p99", p99, "ms");
}

main().catch(async (e) => {
  console.error(`graphile-worker bench failed: ${e.stack ?? e}`);
  await dropLeftovers();
  process.exit(1);
});
