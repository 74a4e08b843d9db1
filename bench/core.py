"""Section 1, the core queue: us and the peers draining the same pre-queued no-op jobs on the same
redis-server, at the same concurrency, each worker in a process of its own.

Runs are interleaved (us, BullMQ, arq, SAQ, then again) and each system keeps its best run: the
machine is shared, and the best of several is the figure least disturbed by its neighbours.

The first concurrency's rounds also run `bench.relay_floor`, our hot path's statements with no
per-job work around them: the ceiling a durable ledger has on this machine, measured beside the
figures it bounds. It has no executor, so it has no concurrency of its own.
"""

from __future__ import annotations

from typing import Any

from bench.env import BENCH, PEER_PYTHON, PYTHON, Servers, flush_redis, log, run_json

SYSTEMS = ("relayjob", "bullmq", "arq", "saq")


def _command(system: str, servers: Servers, jobs: int, concurrency: int, dsn: str) -> list[str]:
    url = servers.redis_url
    if system == "relayjob":
        return [PYTHON, "-m", "bench.relay_core", url, dsn, str(jobs), str(concurrency)]
    if system == "floor":
        return [PYTHON, "-m", "bench.relay_floor", url, dsn, str(jobs)]
    if system == "bullmq":
        return ["node", str(BENCH / "peers" / "bullmq" / "drain.js"), url, str(jobs), str(concurrency)]
    return [PEER_PYTHON, "-m", f"bench.peers.{system}_peer", url, str(jobs), str(concurrency)]


def run(servers: Servers, jobs: int, concurrencies: tuple[int, ...], rounds: int) -> dict[str, Any]:
    by_concurrency: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    floor: list[float] = []
    for concurrency in concurrencies:
        systems = (*SYSTEMS, "floor") if concurrency == concurrencies[0] else SYSTEMS
        seen: dict[str, list[float]] = {s: [] for s in systems}
        for round_no in range(rounds):
            for system in systems:
                flush_redis(servers.redis_url)
                dsn = servers.new_database("core") if system in ("relayjob", "floor") else ""
                try:
                    figures = run_json(_command(system, servers, jobs, concurrency, dsn), timeout=900)
                finally:
                    if dsn:
                        servers.drop_database(dsn)
                if int(figures["jobs"]) < jobs:
                    raise RuntimeError(f"{system} finished only {figures['jobs']} of {jobs} jobs")
                rate = float(figures["jobs_per_s"])
                seen[system].append(rate)
                log(
                    f"core c={concurrency} round {round_no + 1}/{rounds}: {system:8s} {rate:8.0f} jobs/s"
                    f" ({figures['seconds']:.2f}s)"
                )
        flush_redis(servers.redis_url)
        floor += seen.pop("floor", [])
        by_concurrency[str(concurrency)] = {s: round(max(v), 1) for s, v in seen.items()}
        runs[str(concurrency)] = {s: [round(x, 1) for x in v] for s, v in seen.items()}
    return {
        "jobs": jobs,
        "by_concurrency": by_concurrency,
        "runs": runs,
        "rounds": rounds,
        "floor": {"jobs_per_s": round(max(floor), 1), "runs": [round(x, 1) for x in floor]},
    }
