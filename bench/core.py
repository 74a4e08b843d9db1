"""Section 1, the core queue: us and the peers draining the same pre-queued no-op jobs on the same
redis-server, at the same concurrency, each worker in a process of its own.

Runs are interleaved (us, BullMQ, arq, SAQ, then again) and each system keeps its best run: the
machine is shared, and the best of several is the figure least disturbed by its neighbours.

BullMQ runs three times a round: on that redis-server, which keeps nothing on disk, and on one with
`appendonly yes` and `appendfsync always` (`bullmq_aof_always`: every job's moves are on disk before
Redis answers, as our ledger's are) or `everysec` (`bullmq_aof_everysec`: a second's work can be
lost). The first is BullMQ's default; `always` is the comparison at equal durability.

`run_queues` (section "queues") drains the same jobs through RelayQueues, us alone: ten queues of
equal weight, one queue with limits configured but not binding, and an unlimited queue beside a
rate-limited one, each beside the plain run (the namespace's implicit queue) in the same rounds.
Its figures are what fair dispatch and the limits cost per claim.

The first concurrency's rounds also run `bench.relay_floor`, our hot path's statements with no
per-job work around them: the ceiling a durable ledger has on this machine, measured beside the
figures it bounds. It has no executor, so it has no concurrency of its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench.env import AOF_MODES, BENCH, PEER_PYTHON, PYTHON, Servers, flush_redis, log, run_json
from bench.processes import SERVER_PIDS_ENV
from bench.relay_core import LIMITED_PER_SECOND

SYSTEMS = ("relayjob", "bullmq", *(f"bullmq_aof_{mode}" for mode in AOF_MODES), "arq", "saq")
QUEUE_LAYOUTS = ("plain", "nonbinding", "queues10", "limited")


def _redis_url(system: str, servers: Servers) -> str:
    if system.startswith("bullmq_aof_"):
        return servers.aof_url(system.removeprefix("bullmq_aof_"))
    return servers.redis_url


def _command(system: str, servers: Servers, jobs: int, concurrency: int, dsn: str) -> list[str]:
    url = _redis_url(system, servers)
    if system == "relayjob":
        return [PYTHON, "-m", "bench.relay_core", url, dsn, str(jobs), str(concurrency)]
    if system == "floor":
        return [PYTHON, "-m", "bench.relay_floor", url, dsn, str(jobs)]
    if system.startswith("bullmq"):
        return ["node", str(BENCH / "peers" / "bullmq" / "drain.js"), url, str(jobs), str(concurrency)]
    return [PEER_PYTHON, "-m", f"bench.peers.{system}_peer", url, str(jobs), str(concurrency)]


def _server_pids(servers: Servers) -> dict[str, str]:
    """What our drains need to say what each server spent on them (`bench.processes.DrainCpu`)."""
    pids = {"postgres": servers.postgres.pid, "redis": servers.sandbox.redis.pid}
    return {SERVER_PIDS_ENV: json.dumps(pids)}


def run(servers: Servers, jobs: int, concurrencies: tuple[int, ...], rounds: int) -> dict[str, Any]:
    """Each system's best rate by concurrency, every run's rate, and for our drains and the floor
    the CPU per job of each process in their best run (`cpu_ms_per_job`)."""
    by_concurrency: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    floor: list[float] = []
    cpu: dict[str, dict[str, dict[str, float]]] = {}
    floor_cpu: dict[str, float] = {}
    for concurrency in concurrencies:
        systems = (*SYSTEMS, "floor") if concurrency == concurrencies[0] else SYSTEMS
        seen: dict[str, list[float]] = {s: [] for s in systems}
        fastest: dict[str, tuple[float, dict[str, float]]] = {}  # system -> (rate, CPU) of its best run
        for round_no in range(rounds):
            for system in systems:
                flush_redis(_redis_url(system, servers))
                dsn = servers.new_database("core") if system in ("relayjob", "floor") else ""
                env = _server_pids(servers) if dsn else None
                try:
                    figures = run_json(
                        _command(system, servers, jobs, concurrency, dsn), timeout=900, env=env
                    )
                finally:
                    if dsn:
                        servers.drop_database(dsn)
                if int(figures["jobs"]) < jobs:
                    raise RuntimeError(f"{system} finished only {figures['jobs']} of {jobs} jobs")
                rate = float(figures["jobs_per_s"])
                seen[system].append(rate)
                if "cpu_ms_per_job_by_process" in figures and rate > fastest.get(system, (0.0, {}))[0]:
                    fastest[system] = (rate, figures["cpu_ms_per_job_by_process"])
                log(
                    f"core c={concurrency} round {round_no + 1}/{rounds}: {system:19s} {rate:8.0f} jobs/s"
                    f" ({figures['seconds']:.2f}s)"
                )
        for url in {servers.redis_url, *(servers.aof_url(mode) for mode in AOF_MODES)}:
            flush_redis(url)
        floor += seen.pop("floor", [])
        if "floor" in fastest:
            floor_cpu = fastest.pop("floor")[1]
        cpu[str(concurrency)] = {system: figures for system, (_, figures) in fastest.items()}
        by_concurrency[str(concurrency)] = {s: round(max(v), 1) for s, v in seen.items()}
        runs[str(concurrency)] = {s: [round(x, 1) for x in v] for s, v in seen.items()}
    return {
        "jobs": jobs,
        "by_concurrency": by_concurrency,
        "runs": runs,
        "rounds": rounds,
        "floor": {
            "jobs_per_s": round(max(floor), 1),
            "runs": [round(x, 1) for x in floor],
            "cpu_ms_per_job": floor_cpu,
        },
        "cpu_ms_per_job": cpu,
        "cores": os.cpu_count(),
    }


def run_queues(servers: Servers, jobs: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Our drain through RelayQueues (`bench.relay_core` LAYOUTS), the layouts interleaved round
    by round and each keeping its best run."""
    seen: dict[str, list[float]] = {layout: [] for layout in QUEUE_LAYOUTS}
    beside: list[float] = []
    for round_no in range(rounds):
        for layout in QUEUE_LAYOUTS:
            flush_redis(servers.redis_url)
            dsn = servers.new_database("queues")
            command = [PYTHON, "-m", "bench.relay_core", servers.redis_url, dsn, str(jobs), str(concurrency)]
            try:
                figures = run_json([*command, "benchcore", layout], timeout=900)
            finally:
                servers.drop_database(dsn)
            rate = float(figures["jobs_per_s"])
            seen[layout].append(rate)
            if "beside_started_per_s" in figures:
                beside.append(float(figures["beside_started_per_s"]))
            log(
                f"queues c={concurrency} round {round_no + 1}/{rounds}: {layout:10s} {rate:8.0f} jobs/s"
                f" ({figures['seconds']:.2f}s)"
            )
    flush_redis(servers.redis_url)
    best = {layout: round(max(rates), 1) for layout, rates in seen.items()}
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s": best,
        "runs": {layout: [round(x, 1) for x in rates] for layout, rates in seen.items()},
        "rounds": rounds,
        # Best against best: what configured limits that never bind cost each claim.
        "nonbinding_vs_plain": round(best["nonbinding"] / best["plain"], 3),
        "queues10_vs_plain": round(best["queues10"] / best["plain"], 3),
        "limited_per_s": {"limit": LIMITED_PER_SECOND, "observed": [round(x, 2) for x in beside]},
    }
