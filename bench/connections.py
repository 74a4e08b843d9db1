"""Section 3, connection discipline: OPS queue operations at concurrency C against redis-server,
through our pool and through a naive connection-per-operation client (the seed incident).

Redis' own counters are the measure: `total_connections_received` before and after, and the peak
of `connected_clients` sampled every 10 ms during the run (less the bench's one sampling connection).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import redis.asyncio as aioredis

from bench.env import PYTHON, ROOT, log


async def _measure(url: str, argv: list[str], timeout: float) -> dict[str, Any]:
    monitor = aioredis.Redis.from_url(url, single_connection_client=True)
    try:
        before = await monitor.info("stats")
        base = int((await monitor.info("clients"))["connected_clients"])
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        peak = base
        waiter = asyncio.create_task(proc.communicate())
        while not waiter.done():
            peak = max(peak, int((await monitor.info("clients"))["connected_clients"]))
            await asyncio.wait([waiter], timeout=0.01)
        stdout, stderr = await asyncio.wait_for(waiter, timeout)
        after = await monitor.info("stats")
    finally:
        await monitor.aclose()
    if proc.returncode != 0:
        raise RuntimeError(f"connection client failed: {stderr.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    figures["conn_delta"] = int(after["total_connections_received"]) - int(
        before["total_connections_received"]
    )
    figures["peak_clients"] = peak - base
    return figures


def run(redis_url: str, ops: int, concurrency: int, pool_max: int, naive_deadline: float) -> dict[str, Any]:
    out: dict[str, Any] = {"ops": ops, "concurrency": concurrency, "pool_max": pool_max}
    for mode, deadline in (("relayjob", 600.0), ("naive", naive_deadline)):
        argv = [
            PYTHON,
            "-m",
            "bench.conn_client",
            mode,
            redis_url,
            str(ops),
            str(concurrency),
            str(pool_max),
            str(deadline),
        ]
        figures = asyncio.run(_measure(redis_url, argv, timeout=deadline + 120))
        log(
            f"connections {mode}: {figures['ops_done']} ops in {figures['seconds']:.1f}s,"
            f" conn delta {figures['conn_delta']}, peak clients {figures['peak_clients']},"
            f" errors {figures['errors']}"
        )
        out[mode] = {
            "conn_delta": figures["conn_delta"],
            "peak_clients": figures["peak_clients"],
            "errors": figures["errors"],
            "ops_done": figures["ops_done"],
            "seconds": round(figures["seconds"], 2),
            "ops_per_s": round(figures["ops_per_s"], 1),
            "hit_eaddrnotavail": figures["hit_eaddrnotavail"],
            "deadline_hit": figures["deadline_hit"],
            "error_kinds": figures["error_kinds"],
        }
    return out
