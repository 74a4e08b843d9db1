"""The contract's semantics through the real API server, with operators as real processes:
SIGKILL mid-flight, two replicas, re-drive, suspend, delete and TTL via kubectl."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.e2e.jobs import apply, get, wait_all, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(control_plane: Any) -> str:
    """A namespace per test: no clean-up between tests (deleting 500 RelayJobs takes minutes)."""
    name = f"sem-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def test_sigkill_mid_flight_then_restart(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    n = 60
    url = target.url("/hang-first/10")
    apply(
        control_plane,
        namespace,
        {f"kill-{i}": {"target": {"http": {"url": url}}, "timeoutSeconds": 60} for i in range(n)},
    )
    first = start_operator("first")
    deadline = time.monotonic() + 60
    while len(target.calls) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(target.calls) == 10, first.logs()[-2000:]  # all ten slots hang on their attempt
    first.kill()  # SIGKILL with attempts in flight: nothing recorded, leases left behind
    start_operator("second")
    items = wait_all(control_plane, namespace, "Completed", n, timeout=120)
    calls = target.by_key()
    for item in items:
        uid, attempts = item["metadata"]["uid"], item["status"]["attempts"]
        # Each attempt reached the target at most once: executions never exceed attempts.
        assert calls[uid] <= attempts
        assert calls[uid] >= 1
    hung = [i for i in items if i["status"]["attempts"] == 2]
    assert len(hung) == 10  # the ten killed in flight: lease expired, re-queued, counted


def test_two_replicas_share_500_jobs(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    target.calls.clear()
    n = 500
    a = start_operator("a", RELAY_STANDALONE="false", RELAY_PEERING_PRIORITY="10")
    b = start_operator("b", RELAY_STANDALONE="false", RELAY_PEERING_PRIORITY="5")
    apply(
        control_plane,
        namespace,
        {f"rep-{i}": {"target": {"http": {"url": target.url("/ok")}}} for i in range(n)},
    )
    items = wait_all(control_plane, namespace, "Completed", n, timeout=180)
    by_key = target.by_key()
    assert len(by_key) == n
    # At-least-once: a lease that expired under load is a new attempt, never an uncounted one.
    assert all(by_key[i["metadata"]["uid"]] <= i["status"]["attempts"] for i in items)
    workers = {
        json.loads(line).get("identity")
        for p in (a, b)
        for line in p.logs().splitlines()
        if '"operator started"' in line
    }
    assert len(workers) == 2


def test_redrive_suspend_delete_and_ttl(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    op = start_operator("semantics")
    fast = {"initialSeconds": 0.2, "maxSeconds": 1, "jitter": False}
    apply(
        control_plane,
        namespace,
        {
            "dead": {
                "target": {"http": {"url": target.url("/status/500")}},
                "maxAttempts": 2,
                "backoff": fast,
            },
            "held": {"target": {"noop": {}}, "suspend": True},
            "gone": {"target": {"noop": {}}, "delaySeconds": 3600},
            "brief": {"target": {"noop": {}}, "ttlSecondsAfterFinished": 2},
        },
    )
    dead = wait_phase(control_plane, namespace, "dead", "DeadLettered")
    assert dead["status"]["deadLetter"]["attempts"] == 2
    assert dead["status"]["deadLetter"]["reason"] == "AttemptsExhausted"
    failed = control_plane.kubectl(
        "wait", "-n", namespace, "--for=condition=Failed", "rj/dead", "--timeout=5s", check=False
    )
    assert failed.returncode == 0, failed.stderr
    reasons = json.loads(
        control_plane.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=dead", "-o", "json"
        ).stdout
    )
    assert "DeadLettered" in {e["reason"] for e in reasons["items"]}

    calls_before = len(target.calls_for(dead["metadata"]["uid"]))
    control_plane.kubectl("annotate", "-n", namespace, "rj/dead", "relay.dev/redrive=1", "--overwrite")
    deadline = time.monotonic() + 30
    while (status := get(control_plane, namespace, "dead")["status"]).get("redriveToken") != "1" or status[
        "phase"
    ] != "DeadLettered":
        assert time.monotonic() < deadline, f"re-drive did not run: {status}"
        time.sleep(0.3)
    # Re-queued with attempts reset: two more attempts ran, and it dead-lettered again.
    assert status["attempts"] == 2
    assert len(target.calls_for(dead["metadata"]["uid"])) == calls_before + 2

    wait_phase(control_plane, namespace, "held", "Suspended")
    control_plane.kubectl(
        "patch", "-n", namespace, "rj/held", "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_phase(control_plane, namespace, "held", "Completed")

    wait_phase(control_plane, namespace, "gone", "Queued")
    control_plane.kubectl("delete", "-n", namespace, "rj/gone")

    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "-n", namespace, "rj/brief", check=False).returncode == 0:
        assert time.monotonic() < deadline, "ttlSecondsAfterFinished did not delete rj/brief"
        time.sleep(0.5)
    assert op.probe("/healthz") == 200
