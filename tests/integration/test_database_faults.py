"""PostgreSQL connections broken under the operator's loops: every job still completes and the
background work never stops. The fault suite restarts the whole server; these break single
connections, which is quicker and reaches states a restart only hits by luck."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.runtime.retry import until_done
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration
JOBS = 60


def broken_once(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`method`, whose first call fails as asyncpg fails on a pooled connection that a server
    shutdown broke mid-operation (MagicStack/asyncpg#1069)."""
    calls = 0

    async def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        return await method(*args, **kwargs)

    return call


async def all_completed(app: App, cluster: RecordingCluster, uids: list[Any]) -> bool:
    # Read past the ledger object: its methods are the ones these tests break.
    rows = {r["uid"]: r["phase"] for r in await app.pool.fetch("SELECT uid, phase FROM jobs")}
    return all(rows.get(u) == Phase.COMPLETED.value for u in uids) and all(
        cluster.status.get(u, {}).get("phase") == "Completed" for u in uids
    )


@pytest.mark.parametrize("method", ["start_attempts", "settle", "get_many", "versions", "waiting"])
async def test_a_corrupted_pooled_connection_is_waited_out(
    app: App, cluster: RecordingCluster, method: str
) -> None:
    setattr(app.ledger, method, broken_once(getattr(app.ledger, method)))
    refs = [new_ref(f"job-{i}") for i in range(JOBS)]
    async with running(app) as running_app:
        for ref in refs:
            await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
        await eventually(lambda: all_completed(running_app, cluster, [r.uid for r in refs]))


@contextlib.asynccontextmanager
async def terminating_backends(dsn: str, every: float) -> AsyncIterator[list[int]]:
    """Terminate every other session on the database, again and again, as an administrator
    or a failover would; yields the running count of sessions killed."""
    killed = [0]
    admin = await asyncpg.connect(dsn)

    async def storm() -> None:
        while True:
            ended = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            killed[0] += len(ended)
            await asyncio.sleep(every)

    task = asyncio.create_task(storm())
    try:
        yield killed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await admin.close()


async def test_sessions_terminated_mid_run(app: App, cluster: RecordingCluster, database_url: str) -> None:
    refs = [new_ref(f"job-{i}") for i in range(JOBS * 3)]
    async with running(app) as running_app:
        async with terminating_backends(database_url, every=0.05) as killed:
            for ref in refs:
                body = cluster.body(ref, {"target": {"noop": {}}})
                # As the watch handler does: admission waits out a broken connection.
                await until_done(lambda b=body: app.admissions.observe(b), "admission", app.metrics)
            await asyncio.sleep(1)
        assert killed[0] > 0
        await eventually(lambda: all_completed(running_app, cluster, [r.uid for r in refs]), timeout=60)
