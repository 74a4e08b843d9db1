"""The watch brings every status patch the operator makes back to it. `Admissions.unchanged` tells
kopf's watch decoding which RelayJob events need no handling, so that they become bookmarks; on
real Redis and PostgreSQL. (kopf's side: tests/integration/test_kopf_decoding.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from controller.runtime.app import App
from tests.integration.conftest import RecordingCluster, new_ref

pytestmark = pytest.mark.integration

NOOP: dict[str, Any] = {"target": {"noop": {}}}


async def test_only_an_event_observe_would_do_nothing_for_is_unchanged(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("echo")
    assert not app.admissions.unchanged(cluster.body(ref, NOOP)), "never seen: admission is due"
    await app.admissions.observe(cluster.body(ref, NOOP))
    assert app.admissions.unchanged(cluster.body(ref, NOOP))
    assert not app.admissions.unchanged(cluster.body(ref, {**NOOP, "priority": 3}, generation=2))
    assert not app.admissions.unchanged(cluster.body(ref, NOOP, annotations={"relay.dev/redrive": "x"}))
    overwritten = cluster.body(ref, NOOP)
    overwritten["metadata"]["managedFields"] = [
        {"manager": "kubectl-patch", "subresource": "status", "fieldsV1": {"f:status": {}}}
    ]
    assert not app.admissions.unchanged(overwritten), "another client's status is repaired"
    await app.admissions.forget(ref.uid)
    assert not app.admissions.unchanged(cluster.body(ref, NOOP))
    assert not app.admissions.unchanged({"metadata": {"name": "no-uid"}})
