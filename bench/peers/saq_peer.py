"""SAQ as its users run it: pre-enqueue N no-op jobs, then time one worker draining them.

    python -m bench.peers.saq_peer REDIS_URL JOBS CONCURRENCY

Prints one JSON line like arq_peer. Completion is counted in SAQ's `after_process` hook, which
runs once the job's final state is written back to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from saq import Queue, Worker

ENQUEUE_WINDOW = 500


async def noop(ctx: Any) -> None:
    return None


async def main(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    queue = Queue.from_url(url)
    await queue.connect()
    for start in range(0, jobs, ENQUEUE_WINDOW):
        await asyncio.gather(
            *(queue.enqueue("noop") for _ in range(start, min(jobs, start + ENQUEUE_WINDOW)))
        )
    done = 0
    finished = asyncio.Event()

    async def after(ctx: Any) -> None:
        nonlocal done
        done += 1
        if done >= jobs:
            finished.set()

    worker = Worker(queue, functions=[("noop", noop)], concurrency=concurrency, after_process=after)
    began = time.perf_counter()
    task = asyncio.create_task(worker.start())
    await finished.wait()
    seconds = time.perf_counter() - began
    task.cancel()
    with contextlib.suppress(BaseException):
        await worker.stop()
    await queue.disconnect()
    return {"peer": "saq", "jobs": done, "seconds": seconds, "jobs_per_s": jobs / seconds}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result), flush=True)
