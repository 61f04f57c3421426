// Graphile Worker no-op benchmark on PostgreSQL. Usage:
//   node graphile_bench.mjs URL N C PROBE
// Enqueues N jobs with addJobs (chunks of 1,000), then runs one worker pool (concurrency C)
// with the batching its performance docs recommend for throughput (a local queue, batched
// completions), counting 'job:success' events until N. Then, idle, sends PROBE jobs one at
// a time (enqueue call -> job:success). Prints one `peer=... key=value` line.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { run, makeWorkerUtils, Logger } from 'graphile-worker';

const [url, n, c, probe] = process.argv.slice(2);
const N = Number(n), C = Number(c), PROBE = Number(probe);
const CHUNK = 1000;
const rssMb = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
const pct = (s, p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];

// Quiet: its default logger prints a line per job on stdout.
const logger = new Logger(() => () => {});
const utils = await makeWorkerUtils({ connectionString: url, logger });
await utils.migrate();
const e0 = performance.now();
for (let i = 0; i < N; i += CHUNK) {
  const m = Math.min(CHUNK, N - i);
  await utils.addJobs(Array.from({ length: m }, (_, j) => ({ identifier: 'noop', payload: { i: i + j } })));
}
const enqueueS = (performance.now() - e0) / 1000;

let phase = 'bulk', done = 0, firstMs = 0;
let drained; const drainedP = new Promise((r) => { drained = r; });
const probeDone = new Map(); let wake = null;
const w0 = performance.now();
const runner = await run({
  connectionString: url,
  concurrency: C,
  noHandleSignals: true,
  logger,
  pollInterval: 1000,
  taskList: { noop: async () => {}, probe: async () => {} },
  preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
});
runner.events.on('job:success', ({ job }) => {
  const now = performance.now();
  if (phase === 'bulk') {
    done++;
    if (done === 1) firstMs = now - w0;
    if (done === N) drained(now);
  } else {
    probeDone.set(String(job.id), now);
    if (wake) wake();
  }
});
const drainS = (await drainedP - w0) / 1000;
phase = 'probe';
const lat = [];
for (let i = 0; i < PROBE; i++) {
  const t = performance.now();
  const job = await utils.addJob('probe', { i });
  while (!probeDone.has(String(job.id))) await new Promise((r) => { wake = r; });
  lat.push(probeDone.get(String(job.id)) - t);
}
lat.sort((a, b) => a - b);
await runner.stop();
await utils.release();
console.log([
  'peer=graphile-worker-postgres', `n=${N}`, `c=${C}`,
  `enqueue_per_s=${Math.round(N / enqueueS)}`, `process_per_s=${Math.round(N / drainS)}`,
  `enqueue_s=${enqueueS.toFixed(3)}`, `drain_s=${drainS.toFixed(3)}`, `first_done_ms=${firstMs.toFixed(1)}`,
  `p50_latency_ms=${pct(lat, 0.5).toFixed(2)}`, `p99_latency_ms=${pct(lat, 0.99).toFixed(2)}`,
  `worker_rss_mb=${rssMb().toFixed(1)}`, `rss_mb=${rssMb().toFixed(1)}`,
  `version=graphile-worker-0.17.3`, `node=${process.version}`,
].join(' '));
process.exit(0);
