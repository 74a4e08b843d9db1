"""What reconciliation costs the API server, counted by the real API server: the live set of
RelayJobs comes from the watch, so an idle operator lists none per reconcile interval."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.jobs import apply, wait_all

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
