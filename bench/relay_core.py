"""Our side of the core-queue benchmark, in a process of its own like each peer's worker.

    python -m bench.relay_core REDIS_URL DATABASE_URL JOBS CONCURRENCY [PREFIX]

N no-op RelayJobs are admitted in bulk (ledger rows + queue entries, as admission leaves them),
then the operator's background loops start exactly as `relayjob-operator run` starts them, minus
kopf: worker (claim, execute, settle with its ledger writes), status writer, event poster and
maintenance loops. The Kubernetes API is a stand-in that accepts every write. The clock runs from the
start of the loops until the last job's outcome is recorded in the ledger and in Redis.

Prints one JSON line: {"peer": "relayjob", "jobs", "seconds", "jobs_per_s", ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from controller.adapters.queue import Placement
from controller.core.scoring import ready_score
from controller.model.jobs import JobRef
from controller.runtime.app import App
from controller.runtime.heap import keep_startup_objects
from controller.settings import Settings

SEED_CHUNK = 5000
NOOP_SPEC: dict[str, Any] = {"target": {"noop": {}}}


class AcceptingCluster:
    """The API server as the core bench sees it: every RelayJob exists, every write succeeds."""

    def __init__(self) -> None:
        self.uids: set[UUID] = set()
        self.status_writes = 0
        self.events = 0

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

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def seed(app: App, cluster: AcceptingCluster, jobs: int) -> None:
    """Admit `jobs` no-op jobs the way admission records them: a Queued ledger row each, placed
    in the ready set by score."""
    now_ms = int(time.time() * 1000)
    for start in range(0, jobs, SEED_CHUNK):
        uids = [uuid.uuid4() for _ in range(start, min(jobs, start + SEED_CHUNK))]
        cluster.uids.update(uids)
        names = [f"bench-{i}" for i in range(start, start + len(uids))]
        rows = await app.pool.fetch(
            "INSERT INTO jobs (uid, namespace, name, generation, spec, phase, max_attempts,"
            " reason, message, queued_at)"
            " SELECT u, 'bench', n, 1, $3::jsonb, 'Queued', 5, 'Admitted', 'queued', now()"
            " FROM unnest($1::uuid[], $2::text[]) AS t(u, n) RETURNING uid, seq",
            uids,
            names,
            NOOP_SPEC,
        )
        await app.queue.place([Placement(str(r["uid"]), ready_score(0, r["seq"]), 0) for r in rows], now_ms)


def completed(app: App) -> float:
    return float(app.metrics.jobs.labels("completed")._value.get())


async def check_drained(app: App, jobs: int) -> int:
    """The ledger's count of Completed jobs, once it is sure all `jobs` are, and Redis holds none
    of them ready or leased: a drain that fell short must not print a rate."""
    finished = int(await app.pool.fetchval("SELECT count(*) FROM jobs WHERE phase = 'Completed'"))
    depth = await app.queue.depth()
    if finished != jobs or depth.ready or depth.leased:
        raise RuntimeError(f"drain incomplete: ledger {finished} of {jobs} completed, redis {depth}")
    return finished


async def main(redis_url: str, database_url: str, jobs: int, concurrency: int, prefix: str) -> dict[str, Any]:
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=prefix,
        concurrency=concurrency,
        http_port=0,
    )
    cluster = AcceptingCluster()
    app = await App.assemble(settings, cluster, f"bench-{prefix}")
    try:
        await seed(app, cluster, jobs)
        depth = await app.queue.depth()
        assert depth.ready == jobs, depth
        keep_startup_objects()  # as `relayjob-operator run` does before it starts the loops
        began = time.perf_counter()
        task = asyncio.create_task(app.run())
        while completed(app) < jobs:
            if task.done():
                task.result()
                raise RuntimeError("the operator's loops stopped early")
            await asyncio.sleep(0.002)
        # Outcomes are counted once the ledger has them; the drain ends when Redis has them too.
        while True:
            depth = await app.queue.depth()
            if not (depth.leased or depth.ready):
                break
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - began
        # Status writes still in the coalescing window are not part of the drain, but we say how
        # many the stand-in API server saw, to show that the writer kept up.
        status_at_end = cluster.status_writes
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        finished = await check_drained(app, jobs)
    finally:
        await app.close()
    return {
        "peer": "relayjob",
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "ledger_completed": finished,
        "status_writes_during_drain": status_at_end,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    out = asyncio.run(
        main(args[0], args[1], int(args[2]), int(args[3]), args[4] if len(args) > 4 else "benchcore")
    )
    print(json.dumps(out), flush=True)
