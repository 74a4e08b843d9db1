"""arq as its users run it: pre-enqueue N no-op jobs, then time one worker draining them.

    python -m bench.peers.arq_peer REDIS_URL JOBS CONCURRENCY

Prints one JSON line: {"peer": "arq", "jobs": N, "seconds": s, "jobs_per_s": r}. Worker settings
are arq's defaults except `max_jobs` (its concurrency) and `poll_delay`: arq's default 0.5 s poll
caps a drain at about 200 jobs/s at concurrency 10, which measures the setting, not the queue;
at 10 ms it is the fastest arq its users can configure.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from arq import Worker, create_pool
from arq.connections import RedisSettings

ENQUEUE_WINDOW = 500


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def main(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings)
    for start in range(0, jobs, ENQUEUE_WINDOW):
        await asyncio.gather(
            *(pool.enqueue_job("noop") for _ in range(start, min(jobs, start + ENQUEUE_WINDOW)))
        )
    await pool.aclose()
    worker = Worker(
        functions=[noop], redis_settings=settings, max_jobs=concurrency, handle_signals=False, poll_delay=0.01
    )
    began = time.perf_counter()
    task = asyncio.create_task(worker.async_run())
    while worker.jobs_complete < jobs or worker.tasks:
        if task.done():
            task.result()
            raise RuntimeError("arq worker stopped early")
        await asyncio.sleep(0.002)
    seconds = time.perf_counter() - began
    task.cancel()
    await worker.close()
    return {"peer": "arq", "jobs": worker.jobs_complete, "seconds": seconds, "jobs_per_s": jobs / seconds}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result), flush=True)
