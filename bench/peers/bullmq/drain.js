// BullMQ as its users run it: pre-enqueue N jobs, then time one Worker draining them.
//
//   node drain.js REDIS_URL JOBS CONCURRENCY [TARGET_URL]
//
// Without TARGET_URL the jobs are no-ops. With it, each job POSTs its data to TARGET_URL with
// Node's global fetch, whose undici Agent keeps connections alive and reuses them, reads the
// answer, and throws on a status other than 2xx, which fails the job (BullMQ's default: one attempt).
//
// Prints one JSON line: {"peer": "bullmq", "jobs", "errors", "seconds", "jobs_per_s"}. Options are
// BullMQ's defaults except `concurrency`; a job counts once its 'completed' (or 'failed') event fired.
'use strict';
const { Queue, Worker } = require('bullmq');

function relay(target) {
  return async (job) => {
    const response = await fetch(target, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(job.data),
    });
    // Read to the end, so the connection goes back to the Agent's pool.
    await response.arrayBuffer();
    if (!response.ok) throw new Error(`${target} answered ${response.status}`);
  };
}

async function main() {
  const [url, jobsArg, concArg, target] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  const concurrency = Number(concArg);
  const u = new URL(url);
  const connection = { host: u.hostname, port: Number(u.port || 6379), db: Number((u.pathname || '/0').slice(1) || 0) };
  const name = 'bench';
  const queue = new Queue(name, { connection });
  for (let start = 0; start < jobs; start += 1000) {
    const batch = [];
    for (let i = start; i < Math.min(jobs, start + 1000); i++) batch.push({ name: target ? 'http' : 'noop', data: {} });
    await queue.addBulk(batch);
  }
  const processor = target ? relay(target) : async () => undefined;
  let done = 0;
  let failed = 0;
  let began = 0;
  const finished = new Promise((resolve) => {
    const worker = new Worker(name, processor, { connection, concurrency, autorun: false });
    const settle = () => {
      if (done + failed === jobs) resolve(worker);
    };
    worker.on('completed', () => { done += 1; settle(); });
    worker.on('failed', () => { failed += 1; settle(); });
    worker.on('error', (err) => { console.error(err); });
    began = performance.now();
    worker.run();
  });
  const worker = await finished;
  const seconds = (performance.now() - began) / 1000;
  await worker.close();
  await queue.close();
  console.log(JSON.stringify({ peer: 'bullmq', jobs: done, errors: failed, seconds, jobs_per_s: done / seconds }));
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
