"""arq as its users run it: pre-enqueue N jobs, then time one worker draining them.

    python -m bench.peers.arq_peer REDIS_URL JOBS CONCURRENCY [TARGET_URL]

Without TARGET_URL the jobs are no-ops. With it, each job POSTs to TARGET_URL through one
aiohttp session the worker opens at start-up (`on_startup`, as arq's documentation does it), with
aiohttp's default pool (100 connections, kept alive); a status other than 2xx fails the job.

Prints one JSON line: {"peer": "arq", "jobs", "errors", "seconds", "jobs_per_s"}. Worker settings
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

import aiohttp
from arq import Worker, create_pool
from arq.connections import RedisSettings

ENQUEUE_WINDOW = 500


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def relay(ctx: dict[str, Any], url: str) -> None:
    session: aiohttp.ClientSession = ctx["session"]
    async with session.post(url, json={}) as response:
        await response.read()
        response.raise_for_status()


async def open_session(ctx: dict[str, Any]) -> None:
    ctx["session"] = aiohttp.ClientSession()


async def close_session(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def main(url: str, jobs: int, concurrency: int, target: str | None = None) -> dict[str, Any]:
    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings)
    args = ("relay", target) if target else ("noop",)
    for start in range(0, jobs, ENQUEUE_WINDOW):
        await asyncio.gather(
            *(pool.enqueue_job(*args) for _ in range(start, min(jobs, start + ENQUEUE_WINDOW)))
        )
    await pool.aclose()
    worker = Worker(
        functions=[noop, relay],
        redis_settings=settings,
        max_jobs=concurrency,
        handle_signals=False,
        poll_delay=0.01,
        on_startup=open_session,
        on_shutdown=close_session,
    )
    began = time.perf_counter()
    task = asyncio.create_task(worker.async_run())
    while worker.jobs_complete + worker.jobs_failed < jobs or worker.tasks:
        if task.done():
            task.result()
            raise RuntimeError("arq worker stopped early")
        await asyncio.sleep(0.002)
    seconds = time.perf_counter() - began
    task.cancel()
    await worker.close()
    done = worker.jobs_complete
    return {
        "peer": "arq",
        "jobs": done,
        "errors": worker.jobs_failed,
        "seconds": seconds,
        "jobs_per_s": done / seconds,
    }


if __name__ == "__main__":
    argv = sys.argv[1:]
    result = asyncio.run(main(argv[0], int(argv[1]), int(argv[2]), argv[3] if len(argv) > 3 else None))
    print(json.dumps(result), flush=True)
