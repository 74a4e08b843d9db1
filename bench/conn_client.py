"""One side of the connection-discipline benchmark, in a process of its own.

    python -m bench.conn_client {relayjob|naive} REDIS_URL OPS CONCURRENCY POOL_MAX DEADLINE_S

`relayjob` drives the operator's own Queue (its one bounded, blocking pool) with a mix of place,
claim and settle calls; `naive` does the same Redis work the way the seed incident's relay did,
with a new connection per operation. Both stop at OPS operations or DEADLINE_S seconds. Prints one
JSON line: {"ops_done", "seconds", "errors", "error_kinds"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from controller.adapters.queue import Placement, Queue, connect


async def main(
    mode: str, url: str, ops: int, concurrency: int, pool_max: int, deadline: float
) -> dict[str, Any]:
    prefix = f"conn{uuid.uuid4().hex[:6]}"
    client = connect(url, pool_max, timeout=30.0)
    queue = Queue(client, prefix)
    errors: Counter[str] = Counter()
    done = 0
    issued = 0
    stop_at = time.monotonic() + deadline

    async def ours(i: int) -> None:
        uid = f"job-{i // 3}"
        if i % 3 == 0:
            await queue.place([Placement(uid, i, 0, "bench/default")], int(time.time() * 1000))
        elif i % 3 == 1:
            await queue.claim(1, int(time.time() * 1000), 15000)
        else:
            await queue.ack(done=[uid])

    async def naive(i: int) -> None:
        conn = aioredis.Redis.from_url(url, single_connection_client=True, socket_connect_timeout=5)
        try:
            uid = f"job-{i // 3}"
            if i % 3 == 0:
                await conn.zadd(f"{prefix}:ready", {uid: i})
            elif i % 3 == 1:
                await conn.zpopmin(f"{prefix}:ready", 1)
            else:
                await conn.zrem(f"{prefix}:leased", uid)
        finally:
            await conn.aclose()

    op = ours if mode == "relayjob" else naive

    async def lane() -> None:
        nonlocal done, issued
        while issued < ops and time.monotonic() < stop_at:
            i = issued
            issued += 1
            try:
                await op(i)
                done += 1
            except Exception as error:  # counted, reported by kind: that is the measurement
                errors[f"{type(error).__name__}: {str(error)[:120]}"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    await client.aclose()
    return {
        "mode": mode,
        "ops_done": done,
        "ops_attempted": issued,
        "seconds": seconds,
        "ops_per_s": done / seconds,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "hit_eaddrnotavail": any("assign requested address" in k for k in errors),
        "deadline_hit": issued < ops,
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    result = asyncio.run(main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5])))
    print(json.dumps(result), flush=True)
