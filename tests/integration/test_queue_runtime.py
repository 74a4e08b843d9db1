"""RelayQueues as the runtime keeps them: existence (QueueNotFound), defaults, reconcile and status,
against real Redis and PostgreSQL and a real HTTP target (the API server is `RecordingCluster`)."""

from __future__ import annotations

import asyncio

import pytest

from controller.model.jobs import JobRef
from controller.model.phases import Phase, Reason
from controller.runtime.app import App
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running, submit_http
from tests.support.target import Target

pytestmark = pytest.mark.integration
FAST = {"initialSeconds": 0.1, "maxSeconds": 0.2, "multiplier": 2, "jitter": False}


async def until(app: App, ref: JobRef, phase: Phase, reason: str | None = None) -> None:
    async def reached() -> bool:
        row = await app.ledger.get(ref.uid)
        return row is not None and row.phase is phase and (reason is None or row.reason == reason)

    await eventually(reached, timeout=30)


async def test_a_job_naming_a_missing_queue_waits_with_a_reason_and_starts_once_it_exists(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    async with running(app):
        ref = await submit_http(app, cluster, target.url("/ok"), "waits", queue="later")
        row = await app.ledger.get(ref.uid)
        assert row is not None and (row.phase, row.reason) == (Phase.QUEUED, Reason.QUEUE_NOT_FOUND)
        assert "RelayQueue 'later' does not exist" in (row.message or "")
        await asyncio.sleep(0.5)
        assert target.calls == []
        await app.queues.observe(cluster.queue("later", {}))
        await until(app, ref, Phase.COMPLETED)
    await app.events.drain()
    assert any(e[0] == ref and e[2] == Reason.QUEUE_NOT_FOUND for e in cluster.events)
    assert cluster.first_written(ref, Phase.QUEUED.value)["conditions"]


async def test_a_queue_read_from_the_api_server_before_its_watch_event_is_found(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    """`kubectl apply` of a queue and its jobs: the jobs' watch may deliver first."""
    cluster.queue("early", {"defaults": {"maxAttempts": 2, "backoff": FAST}})
    async with running(app):
        ref = await submit_http(app, cluster, target.url("/status/500"), "early", queue="early")
        await until(app, ref, Phase.DEAD_LETTERED)
    row = await app.ledger.get(ref.uid)
    assert row is not None and row.attempts == 2 and row.reason != Reason.QUEUE_NOT_FOUND


async def test_queue_defaults_fill_only_what_a_job_leaves_out(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    await app.queues.observe(
        cluster.queue("d", {"defaults": {"maxAttempts": 2, "backoff": FAST, "ttlSecondsAfterFinished": 60}})
    )
    async with running(app):
        defaulted = await submit_http(app, cluster, target.url("/status/500"), "defaulted", queue="d")
        own = await submit_http(app, cluster, target.url("/status/500"), "own", queue="d", maxAttempts=3)
        await until(app, defaulted, Phase.DEAD_LETTERED)
        await until(app, own, Phase.DEAD_LETTERED)
        # A later generation (a new priority) keeps the defaults the job was admitted with.
        await app.queues.observe(cluster.queue("d", {"defaults": {"maxAttempts": 9}}, generation=2))
        await app.admissions.observe(
            cluster.body(
                defaulted,
                {"target": {"http": {"url": target.url("/status/500")}}, "queue": "d", "priority": 5},
                generation=2,
            )
        )
    first, second = await app.ledger.get(defaulted.uid), await app.ledger.get(own.uid)
    assert first is not None and second is not None
    assert (first.attempts, second.attempts) == (2, 3)
    assert first.max_attempts == 2 and first.priority == 5
    assert first.spec.ttl_seconds_after_finished == 60
    await app.events.drain()
    assert not [e for e in cluster.events if e[2] == Reason.SPEC_CHANGE_IGNORED]


async def test_deleting_a_queue_leaves_its_jobs_waiting_and_recreating_it_runs_them(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    await app.queues.observe(cluster.queue("p", {"paused": True}))
    async with running(app):
        refs = [await submit_http(app, cluster, target.url("/ok"), f"j{i}", queue="p") for i in range(3)]
        await asyncio.sleep(0.3)
        del cluster.queues[("default", "p")]
        await app.queues.forget("default", "p")
        for ref in refs:
            await until(app, ref, Phase.QUEUED, Reason.QUEUE_NOT_FOUND)
        assert target.calls == []
        await app.queues.observe(cluster.queue("p", {}))
        for ref in refs:
            await until(app, ref, Phase.COMPLETED)


async def test_reconcile_finds_queues_created_and_deleted_while_no_event_came(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    async with running(app):
        ref = await submit_http(app, cluster, target.url("/ok"), "orphan", queue="quiet")
        cluster.queue("quiet", {})  # created while the watch was down: no observe
        await app.queues.reconcile()
        await until(app, ref, Phase.COMPLETED)
        await app.queues.observe(cluster.queue("gone", {"paused": True}))
        waiting = await submit_http(app, cluster, target.url("/ok"), "stranded", queue="gone")
        del cluster.queues[("default", "gone")]  # deleted while the watch was down
        await app.queues.reconcile()
        await until(app, waiting, Phase.QUEUED, Reason.QUEUE_NOT_FOUND)
        await asyncio.sleep(0.3)
    assert [c.key for c in target.calls] == [str(ref.uid)]


async def test_queue_status_counts_jobs_and_says_paused(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    await app.queues.observe(cluster.queue("s", {"paused": True}))
    async with running(app):
        for i in range(4):
            await submit_http(app, cluster, target.url("/ok"), f"s{i}", queue="s")
        dead = await submit_http(app, cluster, target.url("/status/404"), "dead", queue="s", maxAttempts=1)
        await app.queues.write_statuses()
        status = cluster.queue_status[("default", "s")]
        assert (status["ready"], status["running"], status["deadLettered"]) == (5, 0, 0)
        assert status["conditions"][0]["type"] == "Paused" and status["conditions"][0]["status"] == "True"
        await app.queues.observe(cluster.queue("s", {}, generation=2))
        await until(app, dead, Phase.DEAD_LETTERED)

        async def all_called() -> bool:
            return len(target.calls) == 5

        await eventually(all_called, timeout=30)
        await app.queues.write_statuses()
    status = cluster.queue_status[("default", "s")]
    assert (status["ready"], status["running"], status["deadLettered"]) == (0, 0, 1)
    assert status["conditions"][0]["status"] == "False" and status["observedGeneration"] == 2
    assert status["dispatchedPerSecond"] > 0
    await app.events.drain()
    assert [e[2] for e in cluster.queue_events] == [Reason.QUEUE_RESUMED]


async def test_a_job_that_waited_for_its_queue_takes_the_queues_defaults_when_it_appears(
    app: App, cluster: RecordingCluster, target: Target
) -> None:
    async with running(app):
        waited = await submit_http(app, cluster, target.url("/status/500"), "waited", queue="late")
        own = await submit_http(app, cluster, target.url("/status/500"), "own", queue="late", maxAttempts=3)
        defaults = {"maxAttempts": 2, "backoff": FAST, "ttlSecondsAfterFinished": 600}
        await app.queues.observe(cluster.queue("late", {"defaults": defaults}))
        await until(app, waited, Phase.DEAD_LETTERED)
        await until(app, own, Phase.DEAD_LETTERED)
    first, second = await app.ledger.get(waited.uid), await app.ledger.get(own.uid)
    assert first is not None and second is not None
    assert (first.attempts, second.attempts) == (2, 3)
    assert first.spec.ttl_seconds_after_finished == 600 and first.spec.backoff.max_seconds == 0.2


async def test_a_queue_behind_a_backlog_of_20000_finishes_before_a_fifth_of_the_backlog(
    app: App, cluster: RecordingCluster
) -> None:
    """Issue 18's fairness bar, end to end through admission, claims, attempts and the ledger."""
    for name in ("bulk", "small"):
        await app.queues.observe(cluster.queue(name, {}))
    noop = {"target": {"noop": {}}}
    backlog = [new_ref(f"a{i}") for i in range(20_000)]
    for start in range(0, len(backlog), 1000):
        chunk = backlog[start : start + 1000]
        await asyncio.gather(
            *(app.admissions.observe(cluster.body(r, noop | {"queue": "bulk"})) for r in chunk)
        )
    small = [new_ref(f"b{i}") for i in range(10)]
    await asyncio.gather(*(app.admissions.observe(cluster.body(r, noop | {"queue": "small"})) for r in small))
    async with running(app):
        for ref in small:
            await until(app, ref, Phase.COMPLETED)
        finished = await app.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE queue = 'bulk' AND phase = $1", Phase.COMPLETED.value
        )
    assert finished < len(backlog) / 5, f"{finished} of the backlog finished first"
