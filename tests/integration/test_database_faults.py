"""PostgreSQL connections broken under the operator's loops: every job still completes and the
background work never stops. The fault suite restarts the whole server; these break single
connections, which is quicker and reaches states a restart only hits by luck."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.runtime.retry import until_done
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running, with_database

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


def unanswered_once(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`method`, whose first call takes effect but whose answer is lost with the connection: the
    COMMIT went through, the reply never arrived."""
    calls = 0

    async def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await method(*args, **kwargs)
        if calls == 1:
            await asyncio.sleep(0.5)  # long enough for the status writer to show what came before
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return result

    return call


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Statuses written at once, so a job's Processing is shown before its outcome is recorded."""
    return settings.model_copy(update={"status_quiet_seconds": 0.0})


async def all_completed(app: App, cluster: RecordingCluster, uids: list[Any]) -> bool:
    # Read past the ledger object: its methods are the ones these tests break.
    rows = {r["uid"]: r["phase"] for r in await app.pool.fetch("SELECT uid, phase FROM jobs")}
    return all(rows.get(u) == Phase.COMPLETED.value for u in uids) and all(
        cluster.status.get(u, {}).get("phase") == "Completed" for u in uids
    )


async def run_with(app: App, cluster: RecordingCluster, method: str, fault: Callable[..., Any]) -> None:
    setattr(app.ledger, method, fault(getattr(app.ledger, method)))
    refs = [new_ref(f"job-{i}") for i in range(JOBS)]
    async with running(app) as running_app:
        for ref in refs:
            await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
        await eventually(lambda: all_completed(running_app, cluster, [r.uid for r in refs]))


@pytest.mark.parametrize("method", ["start_attempts", "record_outcomes", "get_many", "versions", "waiting"])
async def test_a_corrupted_pooled_connection_is_waited_out(
    app: App, cluster: RecordingCluster, method: str
) -> None:
    await run_with(app, cluster, method, broken_once)


@pytest.mark.parametrize("method", ["start_attempts", "record_outcomes"])
async def test_a_commit_whose_answer_was_lost_is_not_lost(
    app: App, cluster: RecordingCluster, method: str
) -> None:
    """Retrying a record of outcomes that did commit is fenced out by its own outcome: the worker must see
    that the ledger holds its outcome, not a lost race, or the job never leaves `leased` and its
    status never shows Completed (the storm test below found this)."""
    await run_with(app, cluster, method, unanswered_once)


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


async def test_sessions_terminated_mid_run(
    app: App, cluster: RecordingCluster, database_url: str, postgres_server: Any
) -> None:
    refs = [new_ref(f"job-{i}") for i in range(JOBS * 3)]
    # The administrator (or failover) acts on the server itself, not through a pooler in front.
    server = with_database(postgres_server.dsn, urlsplit(database_url).path.lstrip("/"))
    async with running(app) as running_app:
        async with terminating_backends(server, every=0.05) as killed:
            for ref in refs:
                body = cluster.body(ref, {"target": {"noop": {}}})
                # As the watch handler does: admission waits out a broken connection.
                await until_done(lambda b=body: app.admissions.observe(b), "admission", app.metrics)
            await asyncio.sleep(1)
        assert killed[0] > 0
        await eventually(lambda: all_completed(running_app, cluster, [r.uid for r in refs]), timeout=60)
