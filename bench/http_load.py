"""The HTTP target measured alone: N POSTs at concurrency C from one aiohttp session with a pool
of C connections, no queue around them. What it reaches is what the target serves at least, the
figure the section's systems are compared against to show the target is not what limits them.

    python -m bench.http_load TARGET_URL REQUESTS CONCURRENCY

Prints one JSON line: {"peer": "target-alone", "jobs", "errors", "seconds", "jobs_per_s"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


async def main(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    pending = iter(range(requests))
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in pending:  # one iterator shared by every client: each request is sent once
            try:
                async with session.post(url, data=b"{}") as response:
                    await response.read()
                    errors += response.status != 200
            except aiohttp.ClientError:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    done = requests - errors
    return {
        "peer": "target-alone",
        "jobs": done,
        "errors": errors,
        "seconds": seconds,
        "jobs_per_s": done / seconds,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))), flush=True)
