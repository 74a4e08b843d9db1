"""What reconciliation costs the API server, counted by the real API server: the live set of
RelayJobs comes from the watch, so an idle operator lists none per reconcile interval, and a
starting one lists them once: kopf's start-up list also serves the first sweep."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.jobs import apply, get, wait_all

pytestmark = pytest.mark.e2e


def relayjob_lists(control_plane: Any) -> float:
    """LIST requests for RelayJobs the API server has served so far (all clients)."""
    text = control_plane.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels.get("resource") == "relayjobs":
                total += sample.value if labels.get("verb") == "LIST" else 0.0
    return total


def test_an_idle_operator_lists_no_relayjobs_per_reconcile_interval(
    control_plane: Any, namespace: str, start_operator: Any
) -> None:
    apply(control_plane, namespace, {f"done-{i}": {"target": {"noop": {}}} for i in range(20)})
    start_operator("idle", RELAY_RECONCILE_INTERVAL_SECONDS="1")
    wait_all(control_plane, namespace, "Completed", 20, timeout=60)
    time.sleep(2.0)  # the start-up list and first passes are behind us
    before = relayjob_lists(control_plane)
    time.sleep(6.0)  # six reconcile intervals
    assert relayjob_lists(control_plane) - before == 0


async def _deleted(dsn: str, uid: str) -> bool:
    connection = await asyncpg.connect(dsn)
    try:
        return bool(
            await connection.fetchval("SELECT deleted_at IS NOT NULL FROM jobs WHERE uid = $1::uuid", uid)
        )
    finally:
        await connection.close()


def test_a_starting_operator_lists_relayjobs_once_and_still_cancels_what_vanished(
    control_plane: Any, namespace: str, start_operator: Any, operator_env: dict[str, str]
) -> None:
    """The first sweep cancels the ledger jobs whose RelayJob was deleted while no operator ran,
    against kopf's own start-up list; it made a second list of its own before (two LISTs)."""
    apply(control_plane, namespace, {"kept": {"target": {"noop": {}}}, "vanished": {"target": {"noop": {}}}})
    first = start_operator("first")
    wait_all(control_plane, namespace, "Completed", 2, timeout=60)
    uid = get(control_plane, namespace, "vanished")["metadata"]["uid"]
    first.kill()
    control_plane.kubectl("delete", "-n", namespace, "rj/vanished", "--wait=true")
    dsn = operator_env["RELAY_DATABASE_URL"]
    assert not asyncio.run(_deleted(dsn, uid))
    before = relayjob_lists(control_plane)
    start_operator("second", RELAY_RECONCILE_INTERVAL_SECONDS="1")
    deadline = time.monotonic() + 30
    while not asyncio.run(_deleted(dsn, uid)):
        assert time.monotonic() < deadline, "the job of the vanished RelayJob was not cancelled in 30 s"
        time.sleep(0.5)
    time.sleep(3.0)  # three reconcile intervals more
    assert relayjob_lists(control_plane) - before == 1
