"""Our side of the core-queue benchmark, in a process of its own like each peer's worker.

    python -m bench.relay_core REDIS_URL DATABASE_URL JOBS CONCURRENCY [PREFIX] [LAYOUT]

N no-op RelayJobs are admitted in bulk (ledger rows + queue entries, as admission leaves them),
then the operator's background loops start exactly as `relayjob-operator run` starts them, minus
kopf: worker (claim, execute, settle with its ledger writes), status writer, event poster and
maintenance loops. The Kubernetes API is a stand-in that accepts every write. The clock runs from the
start of the loops until the last job's outcome is recorded in the ledger and in Redis.

LAYOUT places the jobs in RelayQueues (`LAYOUTS`): `plain` (the default) in the namespace's
implicit default queue; `queues10` spread over ten queues of equal weight; `nonbinding` in one queue
whose limits (concurrency, rate) are configured but far above what the drain reaches, so each claim
pays for checking them; `limited` in an unlimited queue beside a queue limited to
LIMITED_PER_SECOND starts/s holding a tenth as many jobs again, timed until the unlimited queue
drains (the limited queue's jobs are then still waiting, as they should be).

Prints one JSON line: {"peer": "relayjob", "jobs", "seconds", "jobs_per_s", ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from bench.processes import DrainCpu
from controller.adapters.queue import Placement
from controller.core.scoring import ready_score
from controller.model.jobs import JobRef
from controller.runtime.app import App
from controller.runtime.heap import keep_startup_objects
from controller.runtime.loop import run as run_loop
from controller.settings import Settings

T = TypeVar("T")
SEED_CHUNK = 5000
NOOP_SPEC: dict[str, Any] = {"target": {"noop": {}}}
NAMESPACE = "bench"
LIMITED_PER_SECOND = 50.0
UNBOUNDED = {"maxConcurrency": 10_000, "rateLimit": {"perSecond": 10_000, "burst": 10_000}}
# layout -> (the RelayQueues that exist: name -> spec, the queues the measured jobs go to)
LAYOUTS: dict[str, tuple[dict[str, dict[str, Any]], list[str]]] = {
    "plain": ({}, ["default"]),
    "queues10": ({f"q{i}": {} for i in range(10)}, [f"q{i}" for i in range(10)]),
    "nonbinding": ({"bounded": UNBOUNDED}, ["bounded"]),
    "limited": (
        {"unlimited": {}, "limited": {"rateLimit": {"perSecond": LIMITED_PER_SECOND, "burst": 1}}},
        ["unlimited"],
    ),
}


class AcceptingCluster:
    """The API server as the core bench sees it: every RelayJob exists, every write succeeds."""

    def __init__(self, queues: dict[str, dict[str, Any]] | None = None) -> None:
        self.uids: set[UUID] = set()
        self.status_writes = 0
        self.events = 0
        self.queues = {
            name: {"metadata": {"namespace": NAMESPACE, "name": name, "uid": str(uuid.uuid4())}, "spec": spec}
            for name, spec in (queues or {}).items()
        }

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        self.status_writes += 1
        return True

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.events += 1

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise KeyError(key)

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]:
        return set(self.uids)

    async def delete_job(self, ref: JobRef) -> bool:
        return False

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        return True

    async def list_queues(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        return list(self.queues.values())

    async def get_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.queues.get(name) if namespace == NAMESPACE else None

    async def patch_queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.status_writes += 1
        return True

    async def post_queue_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.events += 1

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def seed(
    app: App,
    cluster: AcceptingCluster,
    jobs: int,
    queues: Sequence[str] = ("default",),
    first: int = 0,
    spec: dict[str, Any] = NOOP_SPEC,
) -> None:
    """Admit `jobs` jobs of `spec` (no-ops by default) the way admission records them, dealt round
    the `queues` in turn: a Queued ledger row each, placed in its queue's ready set by score."""
    now_ms = int(time.time() * 1000)
    for start in range(first, first + jobs, SEED_CHUNK):
        uids = [uuid.uuid4() for _ in range(start, min(first + jobs, start + SEED_CHUNK))]
        cluster.uids.update(uids)
        names = [f"bench-{i}" for i in range(start, start + len(uids))]
        in_queue = [queues[i % len(queues)] for i in range(start, start + len(uids))]
        rows = await app.pool.fetch(
            "INSERT INTO jobs (uid, namespace, name, generation, spec, phase, max_attempts,"
            " reason, message, queued_at, queue)"
            " SELECT u, $4, n, 1, $3::jsonb || jsonb_build_object('queue', q), 'Queued', 5, 'Admitted',"
            " 'queued', now(), q"
            " FROM unnest($1::uuid[], $2::text[], $5::text[]) AS t(u, n, q) RETURNING uid, seq, queue",
            uids,
            names,
            spec,
            NAMESPACE,
            in_queue,
        )
        placements = [
            Placement(str(r["uid"]), ready_score(0, r["seq"]), 0, f"{NAMESPACE}/{r['queue']}") for r in rows
        ]
        await app.queue.place(placements, now_ms)


def completed(app: App) -> float:
    return float(app.metrics.jobs.labels("completed")._value.get())


def ended(app: App) -> float:
    """Jobs that reached their final outcome: completed, or dead-lettered once their attempts failed."""
    return completed(app) + float(app.metrics.jobs.labels("dead_lettered")._value.get())


async def check_drained(app: App, jobs: int, queues: Sequence[str] = ("default",)) -> int:
    """The ledger's count of Completed jobs in `queues`, once it is sure all `jobs` are, and Redis
    holds none of them ready or leased: a drain that fell short must not print a rate."""
    finished = int(
        await app.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE phase = 'Completed' AND queue = ANY($1::text[])", list(queues)
        )
    )
    left = await _left(app, queues)
    if finished != jobs or left:
        raise RuntimeError(f"drain incomplete: ledger {finished} of {jobs} completed, redis holds {left}")
    return finished


async def wait_drained(app: App, loops: asyncio.Task[None], jobs: int, queues: Sequence[str]) -> None:
    """Until `jobs` final outcomes are recorded in the ledger and Redis holds no job of `queues`
    ready or leased; the operator's `loops` stopping first is an error."""
    while ended(app) < jobs:
        if loops.done():
            loops.result()
            raise RuntimeError("the operator's loops stopped early")
        await asyncio.sleep(0.002)
    # Outcomes are counted once the ledger has them; the drain ends when Redis has them too.
    while True:
        if not await _left(app, queues):
            return
        await asyncio.sleep(0.002)


async def _left(app: App, queues: Sequence[str]) -> int:
    """Jobs of `queues` ready or leased in Redis."""
    depths = await app.queue.queue_depths()
    found = [depths.get(f"{NAMESPACE}/{q}") for q in queues]
    return sum(d.ready + d.running for d in found if d is not None)


async def main(
    redis_url: str, database_url: str, jobs: int, concurrency: int, prefix: str, layout: str = "plain"
) -> dict[str, Any]:
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=prefix,
        concurrency=concurrency,
        http_port=0,
    )
    specs, measured = LAYOUTS[layout]
    cluster = AcceptingCluster(specs)
    app = await App.assemble(settings, cluster, f"bench-{prefix}")
    try:
        for body in cluster.queues.values():
            await app.queues.observe(body)
        await seed(app, cluster, jobs, measured)
        beside = [name for name in specs if name not in measured]
        if beside:
            await seed(app, cluster, jobs // 10, beside, first=jobs)
        depth = await app.queue.depth()
        assert depth.ready == jobs + (jobs // 10 if beside else 0), depth
        keep_startup_objects()  # as `relayjob-operator run` does before it starts the loops
        cpu = DrainCpu()
        cpu.start()
        began = time.perf_counter()
        task = asyncio.create_task(app.run())
        await wait_drained(app, task, jobs, measured)
        seconds = time.perf_counter() - began
        cpu_ms = cpu.stop(jobs)
        beside_started = await _started(app, beside)
        # Status writes still in the coalescing window are not part of the drain, but we say how
        # many the stand-in API server saw, to show that the writer kept up.
        status_at_end = cluster.status_writes
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        finished = await check_drained(app, jobs, measured)
    finally:
        await app.close()
    out: dict[str, Any] = {
        "peer": "relayjob",
        "layout": layout,
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        # The worker process's own CPU (user + system) per job during the drain: on a shared
        # machine, the figure that other processes' load does not move.
        "cpu_ms_per_job": cpu_ms["client"],
        # ... and that of every process the drain kept busy ("client" is the worker).
        "cpu_ms_per_job_by_process": cpu_ms,
        "ledger_completed": finished,
        "status_writes_during_drain": status_at_end,
    }
    if beside:
        # The limited queue's starts during the drain: its limit must hold beside a busy queue.
        out["beside_started_per_s"] = beside_started / seconds
    return out


async def _started(app: App, queues: Sequence[str]) -> int:
    """Jobs of `queues` that have started an attempt (or finished)."""
    if not queues:
        return 0
    return int(
        await app.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE attempts > 0 AND queue = ANY($1::text[])", list(queues)
        )
    )


def run_as_operator(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop `relayjob-operator run` picks (settings.event_loop)."""
    return run_loop(main, os.environ.get("RELAY_EVENT_LOOP", Settings.model_fields["event_loop"].default))


if __name__ == "__main__":
    args = sys.argv[1:]
    out = run_as_operator(
        main(
            args[0],
            args[1],
            int(args[2]),
            int(args[3]),
            args[4] if len(args) > 4 else "benchcore",
            args[5] if len(args) > 5 else "plain",
        )
    )
    print(json.dumps(out), flush=True)
