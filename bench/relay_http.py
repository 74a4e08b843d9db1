"""Our side of the HTTP section, in a process of its own like each peer's worker.

    python -m bench.relay_http REDIS_URL DATABASE_URL TARGET_URL JOBS CONCURRENCY

N RelayJobs with `target.http` (POST to TARGET_URL) are admitted in bulk and drained by the
operator's loops exactly as `bench.relay_core` drains no-op jobs: the real worker, its http
executor with the pool the operator configures, the ledger writes, the status writer, a stand-in
API server. The clock runs from the start of the loops until the last outcome is recorded in the
ledger and in Redis. Then the ledger says how long each attempt took from its start (written when
the job was claimed) to its recorded outcome, and how many attempts did not succeed (a job whose
attempts all fail ends dead-lettered: the run still ends, with those errors counted).

Prints one JSON line: {"peer": "relayjob", "jobs", "seconds", "jobs_per_s", "p50_s", "p99_s",
"errors", "error_reasons", "pool_max"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from bench.relay_core import AcceptingCluster, run_as_operator, seed, wait_drained
from controller.adapters.executors.http import HttpConfig
from controller.runtime.app import App
from controller.runtime.heap import keep_startup_objects
from controller.settings import Settings

PERCENTILES = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p50,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p99
FROM attempts WHERE finished_at IS NOT NULL
"""
FAILED_ATTEMPTS = """
SELECT coalesce(reason, outcome) AS reason, count(*) AS n FROM attempts
WHERE outcome <> 'succeeded' GROUP BY 1
"""


async def main(redis_url: str, database_url: str, target: str, jobs: int, concurrency: int) -> dict[str, Any]:
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        key_prefix="benchhttp",
        concurrency=concurrency,
        http_port=0,
    )
    cluster = AcceptingCluster()
    app = await App.assemble(settings, cluster, "bench-http")
    try:
        await seed(app, cluster, jobs, spec={"target": {"http": {"url": target, "method": "POST"}}})
        keep_startup_objects()  # as `relayjob-operator run` does before it starts the loops
        began, cpu_began = time.perf_counter(), time.process_time()
        task = asyncio.create_task(app.run())
        await wait_drained(app, task, jobs, ["default"])
        seconds = time.perf_counter() - began
        cpu_seconds = time.process_time() - cpu_began
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        finished = int(await app.pool.fetchval("SELECT count(*) FROM jobs WHERE phase = 'Completed'"))
        latency = await app.pool.fetchrow(PERCENTILES)
        failed = {str(r["reason"]): int(r["n"]) for r in await app.pool.fetch(FAILED_ATTEMPTS)}
    finally:
        await app.close()
    return {
        "peer": "relayjob",
        "jobs": finished,
        "seconds": seconds,
        "jobs_per_s": finished / seconds,
        "cpu_ms_per_job": cpu_seconds * 1000 / jobs,
        "p50_s": float(latency["p50"]),
        "p99_s": float(latency["p99"]),
        "errors": sum(failed.values()),
        "error_reasons": failed,
        "pool_max": HttpConfig.from_settings(settings).max_connections,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    out = run_as_operator(main(args[0], args[1], args[2], int(args[3]), int(args[4])))
    print(json.dumps(out), flush=True)
