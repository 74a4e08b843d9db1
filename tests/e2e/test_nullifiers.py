"""Nullifiers belong to a namespace: two tenants may use the same string independently, a race
inside one namespace still has exactly one winner, and a rejection names nothing of another
namespace (DESIGN.md, "Nullifiers" and "Tenancy and security")."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.e2e.jobs import apply, get, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(control_plane: Any) -> str:
    """Two tenants' namespaces, comma-separated as RELAY_NAMESPACES takes them."""
    names = [f"tenant-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        control_plane.kubectl("create", "namespace", name)
    return ",".join(names)


def test_nullifiers_are_per_namespace_and_rejections_name_only_their_own(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    tenant_a, tenant_b = namespace.split(",")
    op = start_operator("tenants")
    apply(control_plane, tenant_a, {"holder-in-a": {"nullifier": "order-1", "target": {"noop": {}}}})
    apply(control_plane, tenant_b, {"other": {"nullifier": "order-1", "target": {"noop": {}}}})
    wait_phase(control_plane, tenant_a, "holder-in-a", "Completed")
    wait_phase(control_plane, tenant_b, "other", "Completed")

    # A race of 20 inside one namespace: exactly one execution.
    url = target.url("/ok")
    racers = {f"race-{i}": {"nullifier": "race-1", "target": {"http": {"url": url}}} for i in range(20)}
    apply(control_plane, tenant_b, racers)
    phases = [wait_terminal(control_plane, tenant_b, name) for name in racers]
    assert phases.count("Completed") == 1 and phases.count("Rejected") == 19
    assert len(target.calls_for("race-1")) == 1

    apply(control_plane, tenant_b, {"late": {"nullifier": "order-1", "target": {"noop": {}}}})
    late = wait_phase(control_plane, tenant_b, "late", "Rejected")
    assert late["status"]["reason"] == "NullifierSpent"
    assert late["status"]["message"] == "nullifier 'order-1' is already spent by RelayJob other"
    said = json.dumps(late["status"])
    said += control_plane.kubectl(
        "get", "events", "-n", tenant_b, "--field-selector", "involvedObject.name=late", "-o", "json"
    ).stdout
    said += "\n".join(line for line in op.logs().splitlines() if '"late"' in line)
    assert "NullifierSpent" in said
    assert tenant_a not in said and "holder-in-a" not in said


def wait_terminal(kube: Any, ns: str, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (phase := get(kube, ns, name).get("status", {}).get("phase")) not in ("Completed", "Rejected"):
        assert time.monotonic() < deadline, f"{name} is {phase}"
        time.sleep(0.3)
    return str(phase)
