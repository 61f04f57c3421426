// pg-boss no-op benchmark on PostgreSQL. Usage:
//   node pgboss_bench.mjs URL N C PROBE
// Enqueues N jobs with insert (chunks of 1,000), then starts C workers (`work`, one
// polling fetcher each; pg-boss 10 runs work() handlers concurrently this way) fetching in
// batches of 100 and polling every 0.5 s (its minimum), counting jobs as each batch's
// handler returns (pg-boss completes them right after) until N. Then, idle, sends PROBE
// jobs one at a time (send call -> handler return). Prints one `peer=... key=value` line.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import PgBoss from 'pg-boss';

const [url, n, c, probe] = process.argv.slice(2);
const N = Number(n), C = Number(c), PROBE = Number(probe);
const CHUNK = 1000;
const rssMb = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
const pct = (s, p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];

const boss = new PgBoss({ connectionString: url, schema: 'pgboss', max: C + 4 });
boss.on('error', (e) => console.error('pg-boss error', e.message));
await boss.start();
await boss.createQueue('noop');
await boss.createQueue('probe');
const e0 = performance.now();
for (let i = 0; i < N; i += CHUNK) {
  const m = Math.min(CHUNK, N - i);
  await boss.insert(Array.from({ length: m }, (_, j) => ({ name: 'noop', data: { i: i + j } })));
}
const enqueueS = (performance.now() - e0) / 1000;

let done = 0, firstMs = 0;
let drained; const drainedP = new Promise((r) => { drained = r; });
const w0 = performance.now();
for (let w = 0; w < C; w++) {
  await boss.work('noop', { batchSize: 100, pollingIntervalSeconds: 0.5 }, async (jobs) => {
    done += jobs.length;
    if (firstMs === 0) firstMs = performance.now() - w0;
    if (done >= N) drained(performance.now());
  });
}
const drainS = (await drainedP - w0) / 1000;
const probeDone = new Map(); let wake = null;
await boss.work('probe', { batchSize: 1, pollingIntervalSeconds: 0.5 }, async (jobs) => {
  for (const job of jobs) probeDone.set(job.id, performance.now());
  if (wake) wake();
});
const lat = [];
for (let i = 0; i < PROBE; i++) {
  const t = performance.now();
  const id = await boss.send('probe', { i });
  while (!probeDone.has(id)) await new Promise((r) => { wake = r; });
  lat.push(probeDone.get(id) - t);
}
lat.sort((a, b) => a - b);
await boss.stop({ graceful: false, wait: false });
console.log([
  'peer=pg-boss-postgres', `n=${N}`, `c=${C}`,
  `enqueue_per_s=${Math.round(N / enqueueS)}`, `process_per_s=${Math.round(N / drainS)}`,
  `enqueue_s=${enqueueS.toFixed(3)}`, `drain_s=${drainS.toFixed(3)}`, `first_done_ms=${firstMs.toFixed(1)}`,
  `p50_latency_ms=${pct(lat, 0.5).toFixed(2)}`, `p99_latency_ms=${pct(lat, 0.99).toFixed(2)}`,
  `worker_rss_mb=${rssMb().toFixed(1)}`, `rss_mb=${rssMb().toFixed(1)}`,
  `version=pg-boss-10.4.2`, `node=${process.version}`,
].join(' '));
process.exit(0);
