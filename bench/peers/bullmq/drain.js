// BullMQ as its users run it: pre-enqueue N no-op jobs, then time one Worker draining them.
//
//   node drain.js REDIS_URL JOBS CONCURRENCY
//
// Prints one JSON line: {"peer": "bullmq", "jobs", "seconds", "jobs_per_s"}. Options are BullMQ's
// defaults except `concurrency`; a job counts once its 'completed' event fired (moved to completed).
'use strict';
const { Queue, Worker } = require('bullmq');

async function main() {
  const [url, jobsArg, concArg] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  const concurrency = Number(concArg);
  const u = new URL(url);
  const connection = { host: u.hostname, port: Number(u.port || 6379), db: Number((u.pathname || '/0').slice(1) || 0) };
  const name = 'bench';
  const queue = new Queue(name, { connection });
  for (let start = 0; start < jobs; start += 1000) {
    const batch = [];
    for (let i = start; i < Math.min(jobs, start + 1000); i++) batch.push({ name: 'noop', data: {} });
    await queue.addBulk(batch);
  }
  let done = 0;
  let began = 0;
  const finished = new Promise((resolve) => {
    const worker = new Worker(name, async () => undefined, { connection, concurrency, autorun: false });
    worker.on('completed', () => {
      done += 1;
      if (done === jobs) resolve(worker);
    });
    worker.on('error', (err) => { console.error(err); });
    began = performance.now();
    worker.run();
  });
  const worker = await finished;
  const seconds = (performance.now() - began) / 1000;
  await worker.close();
  await queue.close();
  console.log(JSON.stringify({ peer: 'bullmq', jobs: done, seconds, jobs_per_s: jobs / seconds }));
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
