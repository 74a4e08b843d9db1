"""Fixtures for the integration tier: real redis-server and PostgreSQL, a fresh database and key
prefix per test, and the operator's parts assembled on them.

The Kubernetes API is out of scope here (that is the e2e tier): `RecordingCluster` stands in for
it and records the status documents and Events the runtime would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest

from controller.adapters.ledger import OutcomeRecord
from controller.model.jobs import JobRef, JobRow
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.runtime.app import App
from controller.settings import Settings
from tests.support.target import Target


class RecordingCluster:
    """In-memory stand-in for the API server: RelayJobs that exist, and what was written to them."""

    def __init__(self) -> None:
        self.jobs: dict[UUID, JobRef] = {}
        self.status: dict[UUID, dict[str, Any]] = {}
        self.patches: dict[UUID, int] = {}
        self.written: dict[UUID, list[dict[str, Any]]] = {}
        self.events: list[tuple[JobRef, str, str, str]] = []
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.created: dict[tuple[str, str], dict[str, Any]] = {}
        self.queues: dict[tuple[str, str], dict[str, Any]] = {}
        self.queue_status: dict[tuple[str, str], dict[str, Any]] = {}
        self.queue_events: list[tuple[str, str, str, str]] = []

    def body(
        self,
        ref: JobRef,
        spec: dict[str, Any],
        generation: int = 1,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.jobs[ref.uid] = ref
        return {
            "metadata": {
                "uid": str(ref.uid),
                "namespace": ref.namespace,
                "name": ref.name,
                "generation": generation,
                "annotations": annotations or {},
                "creationTimestamp": None,
            },
            "spec": spec,
            "status": self.status.get(ref.uid, {}),
        }

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        if ref.uid not in self.jobs:
            return False
        self.status[ref.uid] = {k: v for k, v in status.items() if v is not None}
        self.patches[ref.uid] = self.patches.get(ref.uid, 0) + 1
        self.written.setdefault(ref.uid, []).append(self.status[ref.uid])
        return True

    def first_written(self, ref: JobRef, phase: str) -> dict[str, Any]:
        """The first status written with `phase`, however briefly the job stayed in it.

        Raises StopIteration when no status with that phase was written.
        """
        return next(s for s in self.written.get(ref.uid, []) if s.get("phase") == phase)

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.events.append((ref, kind, reason, message))

    def queue(
        self, name: str, spec: dict[str, Any], namespace: str = "default", generation: int = 1
    ) -> dict[str, Any]:
        """Create (or replace) a RelayQueue; returns its body as a watch would deliver it."""
        known = self.queues.get((namespace, name))
        uid = known["metadata"]["uid"] if known else str(uuid.uuid4())
        body = {
            "metadata": {"uid": uid, "namespace": namespace, "name": name, "generation": generation},
            "spec": spec,
        }
        self.queues[(namespace, name)] = body
        return body

    async def list_queues(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        wanted = set(namespaces)
        return [b for (ns, _), b in self.queues.items() if not wanted or ns in wanted]

    async def get_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.queues.get((namespace, name))

    async def patch_queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        if (namespace, name) not in self.queues:
            return False
        self.queue_status[(namespace, name)] = status
        return True

    async def post_queue_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.queue_events.append((ref.name, kind, reason, message))

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        from controller.model.jobs import SecretNotFound

        try:
            return self.secrets[(namespace, name)][key]
        except KeyError:
            raise SecretNotFound(f"Secret {namespace}/{name} key {key} not found") from None

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]:
        return set(self.jobs)

    async def delete_job(self, ref: JobRef) -> bool:
        return self.jobs.pop(ref.uid, None) is not None

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Records the RelayJob created; False (AlreadyExists) for a name created before."""
        key = (namespace, body["metadata"]["name"])
        if key in self.created:
            return False
        self.created[key] = body
        return True

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class SameStore(RecordingCluster):
    """An API server that answers differently from `inner` but holds the same RelayJobs, statuses
    and patch counts: what it changes is visible to the app built on `inner`, and the reverse."""

    def __init__(self, inner: RecordingCluster) -> None:
        self.__dict__ = inner.__dict__


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


# `make test` runs the ledger's and the runtime's integration modules a second time with this
# set: the database is then reached through PgBouncer in transaction mode, as many users run it.
VIA_PGBOUNCER = os.environ.get("RELAY_TEST_VIA_PGBOUNCER") == "1"


@pytest.fixture
async def database_url(postgres_server: Any, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A database of its own for each test, so tests never see each other's jobs; reached through
    PgBouncer when RELAY_TEST_VIA_PGBOUNCER=1."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    front = request.getfixturevalue("pgbouncer_server") if VIA_PGBOUNCER else postgres_server
    yield with_database(front.dsn_for(postgres_server.database), name)
    admin = await asyncpg.connect(postgres_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def fast_settings(redis_url: str, database_url: str, key_prefix: str, **overrides: Any) -> Settings:
    """Settings with the short leases and intervals the integration tests wait on."""
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=key_prefix,
        lease_seconds=3,
        reconcile_interval_seconds=2,
        status_flush_seconds=0.05,
        poll_interval_seconds=0.05,
        http_port=0,
        **overrides,
    )


@pytest.fixture
def settings(redis_server: Any, database_url: str, key_prefix: str) -> Settings:
    return fast_settings(redis_server.url, database_url, key_prefix)


@pytest.fixture
def cluster() -> RecordingCluster:
    return RecordingCluster()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A real HTTP target on a loopback port (tests/support/target.py)."""
    server = await Target().start()
    yield server
    await server.stop()


async def submit_http(app: App, cluster: RecordingCluster, url: str, name: str, **spec: Any) -> JobRef:
    """Admit a RelayJob named `name` calling `url`, with the further spec fields `spec`."""
    ref = new_ref(name)
    await app.admissions.observe(cluster.body(ref, {"target": {"http": {"url": url}}} | spec))
    return ref


@pytest.fixture
async def app(settings: Settings, cluster: RecordingCluster) -> AsyncIterator[App]:
    application = await App.assemble(settings, cluster, "test-worker")
    yield application
    await application.close()


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    """The app's background loops, as `relayjob-operator run` starts them (minus kopf)."""
    task = asyncio.create_task(app.run())
    try:
        yield app
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


def new_ref(name: str = "job", namespace: str = "default") -> JobRef:
    return JobRef(uid=uuid.uuid4(), namespace=namespace, name=name)


def succeeded(row: JobRow) -> OutcomeRecord:
    """The outcome a worker records when the attempt `row` opened succeeded."""
    return OutcomeRecord(
        uid=row.ref.uid,
        fence=row.fence,
        phase=Phase.COMPLETED,
        reason=Reason.SUCCEEDED,
        message="ok",
        outcome=AttemptOutcome.SUCCEEDED,
    )
