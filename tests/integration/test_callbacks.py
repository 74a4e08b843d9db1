"""Callback jobs on real PostgreSQL and Redis: created right after the outcome by the process that
recorded it, and, when that process stopped in between, by maintenance, once."""

from __future__ import annotations

from typing import Any

import pytest

from controller.model.jobs import JobRef
from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running, succeeded

pytestmark = pytest.mark.integration

HOOK = {"http": {"url": "http://127.0.0.1:9/hook"}}


def spec(**callbacks: Any) -> dict[str, Any]:
    return {"target": {"noop": {}}, "payload": {"order": 7}, **callbacks}


async def recorded_callbacks(app: App) -> list[tuple[str, int, str, str | None]]:
    rows = await app.pool.fetch("SELECT name, run, kind, refusal FROM callbacks ORDER BY name")
    return [(r["name"], r["run"], r["kind"], r["refusal"]) for r in rows]


async def complete_without_callbacks(app: App, cluster: RecordingCluster, ref: JobRef) -> None:
    """What a process does before it stops: admit the job, run it and record its outcome, and no
    more; then time passes beyond the replica's own window for creating the callback."""
    await app.admissions.observe(cluster.body(ref, spec(onCompletion=HOOK)))
    (started,) = (await app.ledger.start_attempts([str(ref.uid)])).started
    (row,) = await app.ledger.record_outcomes([succeeded(started)], {ref.uid: started.spec})
    assert row.phase is Phase.COMPLETED
    aged = "UPDATE jobs SET finished_at = now() - interval '1 minute' WHERE uid = $1"
    await app.pool.execute(aged, ref.uid)


async def test_a_completed_job_gets_its_callback_job_with_the_outcome_at_once(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("paid")
    async with running(app):
        await app.admissions.observe(cluster.body(ref, spec(onCompletion=HOOK, onFailure=HOOK)))
        await eventually(lambda: _created(cluster, "paid-on-completion"), timeout=15)
        # Recorded right after it was created: owed no more, so maintenance leaves it alone.
        await eventually(lambda: _recorded(app), timeout=15)
    body = cluster.created[(ref.namespace, "paid-on-completion")]
    assert body["metadata"]["ownerReferences"][0]["uid"] == str(ref.uid)
    payload = body["spec"]["payload"]
    assert (payload["phase"], payload["reason"], payload["attempts"]) == ("Completed", "Succeeded", 1)
    assert payload["job"] == {"namespace": ref.namespace, "name": "paid", "uid": str(ref.uid)}
    assert body["spec"]["target"] == HOOK
    assert len(cluster.created) == 1  # Completed: no failure callback
    assert await recorded_callbacks(app) == [("paid-on-completion", 1, "onCompletion", None)]


async def _created(cluster: RecordingCluster, name: str) -> bool:
    return any(n == name for _, n in cluster.created)


async def _recorded(app: App) -> bool:
    return bool(await recorded_callbacks(app))


async def test_a_callback_left_owed_by_a_stopped_process_is_created_once_by_maintenance(
    app: App, settings: Settings, cluster: RecordingCluster
) -> None:
    ref = new_ref("orphan")
    await complete_without_callbacks(app, cluster, ref)
    assert cluster.created == {}
    assert await app.callbacks.sweep() == 1
    assert list(cluster.created) == [(ref.namespace, "orphan-on-completion")]
    assert await recorded_callbacks(app) == [("orphan-on-completion", 1, "onCompletion", None)]
    # Nothing is owed any more: not to this process, nor to another replica on the same ledger.
    assert await app.callbacks.sweep() == 0
    other = await App.assemble(settings, cluster, "other-replica")
    try:
        assert await other.callbacks.sweep() == 0
    finally:
        await other.close()
    assert len(cluster.created) == 1


async def test_a_callback_created_but_not_recorded_before_a_stop_is_not_created_again(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("halfway")
    await complete_without_callbacks(app, cluster, ref)
    first = {"metadata": {"name": "halfway-on-completion"}, "spec": {"created": "before the stop"}}
    cluster.created[(ref.namespace, "halfway-on-completion")] = first
    assert await app.callbacks.sweep() == 1
    assert cluster.created == {(ref.namespace, "halfway-on-completion"): first}
    assert await recorded_callbacks(app) == [("halfway-on-completion", 1, "onCompletion", None)]
    assert not [e for e in cluster.events if e[2] == "CallbackCreated"]


async def test_maintenance_leaves_a_callback_just_owed_to_the_replica_that_recorded_it(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("fresh")
    await complete_without_callbacks(app, cluster, ref)
    await app.pool.execute("UPDATE jobs SET finished_at = now() WHERE uid = $1", ref.uid)
    assert await app.callbacks.sweep() == 0
    assert cluster.created == {}


async def test_maintenance_leaves_the_callbacks_of_namespaces_it_does_not_watch(
    app: App, settings: Settings, cluster: RecordingCluster
) -> None:
    ref = new_ref("theirs", namespace="team-b")
    await complete_without_callbacks(app, cluster, ref)
    other = await App.assemble(settings.model_copy(update={"namespaces": ["team-a"]}), cluster, "a")
    try:
        assert await other.callbacks.sweep() == 0
    finally:
        await other.close()
    assert cluster.created == {}
    assert await app.callbacks.sweep() == 1
