"""Routine operations on a RelayJob after it was created, through the real API server: edits (only
priority, suspend and ttlSecondsAfterFinished may change, as for batch/v1 Job), suspend while an
attempt runs, re-drive values across a restart, and a status that another client overwrote."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import pytest

from devtools.operator_process import OperatorProcess
from tests.e2e.jobs import apply, events, get, wait_all, wait_for, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e

FAST = {"initialSeconds": 0.2, "maxSeconds": 0.5, "jitter": False}


@pytest.fixture
def namespace(control_plane: Any) -> str:
    name = f"chg-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def patch(kube: Any, ns: str, name: str, spec: dict[str, Any], check: bool = True) -> Any:
    body = json.dumps({"spec": spec})
    return kube.kubectl("patch", "-n", ns, f"rj/{name}", "--type=merge", "-p", body, check=check)


def metric(op: OperatorProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_immutable_fields_are_refused_and_allowed_ones_are_observed(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    op = start_operator("edits")
    apply(
        control_plane,
        namespace,
        {"waiting": {"target": {"http": {"url": target.url("/ok")}}, "payload": {"v": 1}, "suspend": True}},
    )
    wait_phase(control_plane, namespace, "waiting", "Suspended")
    for field, value in (
        ("payload", {"v": 2}),
        ("target", {"http": {"url": target.url("/status/500")}}),
        ("maxAttempts", 9),
        ("nullifier", "late"),
        ("backoff", {"maxSeconds": 5}),
    ):
        refused = patch(control_plane, namespace, "waiting", {field: value}, check=False)
        assert refused.returncode != 0, f"spec.{field} was changed"
        assert f"spec.{field} is immutable" in refused.stderr and "create a new RelayJob" in refused.stderr
    patch(control_plane, namespace, "waiting", {"priority": 7, "suspend": False})
    done = wait_phase(control_plane, namespace, "waiting", "Completed")
    generation = done["metadata"]["generation"]
    assert generation == 2
    assert done["status"]["observedGeneration"] == generation
    assert {c["observedGeneration"] for c in done["status"]["conditions"]} == {generation}
    [call] = target.calls_for(done["metadata"]["uid"])
    assert call.path == "/ok"
    # The user's edits are the operator's to show, not a status to repair.
    assert metric(op, "relayjob_status_repairs_total") == 0


def test_a_new_priority_moves_a_waiting_job_ahead(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("priority", RELAY_CONCURRENCY="1")
    slow = {"target": {"http": {"url": target.url("/delay/1500")}}}
    # The first job holds the only slot while the others are created and `late` is raised: on a
    # loaded machine two kubectl calls took longer than 1.5 s, and a low job got the slot first.
    apply(control_plane, namespace, {"first": {"target": {"http": {"url": target.url("/delay/6000")}}}})
    wait_for("the first job to run", lambda: get(control_plane, namespace, "first").get("status"))
    apply(control_plane, namespace, {f"low-{i}": slow for i in range(3)} | {"late": slow})
    patch(control_plane, namespace, "late", {"priority": 100})
    phase = get(control_plane, namespace, "first")["status"]["phase"]
    assert phase != "Completed", "late was raised after the first job ended: nothing to tell"
    items = wait_all(control_plane, namespace, "Completed", 5, timeout=60)
    uids = {i["metadata"]["uid"]: i["metadata"]["name"] for i in items}
    order = [uids[c.key] for c in sorted(target.calls, key=lambda c: c.at) if c.key in uids]
    assert order[:2] == ["first", "late"], order


def test_a_new_ttl_counts_from_completion(control_plane: Any, namespace: str, start_operator: Any) -> None:
    start_operator("ttl")
    apply(control_plane, namespace, {"kept": {"target": {"noop": {}}}})
    wait_phase(control_plane, namespace, "kept", "Completed")
    time.sleep(3)
    patch(control_plane, namespace, "kept", {"ttlSecondsAfterFinished": 2})
    # Completed more than 2 s ago: due at once, not 2 s after the edit.
    wait_for(
        "rj/kept to be deleted",
        lambda: control_plane.kubectl("get", "-n", namespace, "rj/kept", check=False).returncode != 0,
        timeout=5,
    )


def test_suspend_during_an_attempt_lets_it_finish_and_starts_no_other(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("suspend")
    spec = {"target": {"http": {"url": target.url("/slow/3000/503")}}, "maxAttempts": 4, "backoff": FAST}
    apply(control_plane, namespace, {"paused": spec})
    uid = get(control_plane, namespace, "paused")["metadata"]["uid"]
    wait_for("attempt 1 to reach the target", lambda: target.calls_for(uid), timeout=30)
    time.sleep(1.5)
    patch(control_plane, namespace, "paused", {"suspend": True})
    held = wait_phase(control_plane, namespace, "paused", "Suspended", timeout=30)
    assert held["status"]["attempts"] == 1
    assert "not retried while spec.suspend is true" in held["status"]["message"]
    time.sleep(4)
    assert len(target.calls_for(uid)) == 1
    assert get(control_plane, namespace, "paused")["status"]["observedGeneration"] == 2
    patch(control_plane, namespace, "paused", {"suspend": False})
    dead = wait_phase(control_plane, namespace, "paused", "DeadLettered", timeout=60)
    assert dead["status"]["attempts"] == 4
    assert len(target.calls_for(uid)) == 4


def test_a_redrive_value_acts_at_most_once_across_restarts(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    first = start_operator("before")
    # Two 5 s backoffs: the early value must land while the job is still Retrying, even when
    # kubectl polls slowly on a loaded machine.
    slow_backoff = {"initialSeconds": 5, "maxSeconds": 5, "jitter": False}
    spec = {"target": {"http": {"url": target.url("/status/503")}}, "maxAttempts": 3, "backoff": slow_backoff}
    apply(control_plane, namespace, {"dlq": spec})
    uid = get(control_plane, namespace, "dlq")["metadata"]["uid"]
    wait_phase(control_plane, namespace, "dlq", "Retrying")
    control_plane.kubectl("annotate", "-n", namespace, "rj/dlq", "relay.dev/redrive=early", "--overwrite")
    ignored = wait_for(
        "a RedriveIgnored Event",
        lambda: [e for e in events(control_plane, namespace, "dlq") if e["reason"] == "RedriveIgnored"],
    )
    assert "not DeadLettered" in ignored[0]["message"]
    wait_phase(control_plane, namespace, "dlq", "DeadLettered", timeout=60)
    assert len(target.calls_for(uid)) == 3
    first.stop()
    second = start_operator("after")
    time.sleep(8)  # more than a reconcile interval: every RelayJob has been seen again
    assert get(control_plane, namespace, "dlq")["status"]["phase"] == "DeadLettered"
    assert len(target.calls_for(uid)) == 3
    control_plane.kubectl("annotate", "-n", namespace, "rj/dlq", "relay.dev/redrive=late", "--overwrite")
    wait_for("the re-drive to run", lambda: len(target.calls_for(uid)) == 6, timeout=60)
    assert second.probe("/healthz") == 200


def test_a_status_written_by_another_client_is_rewritten(
    control_plane: Any, namespace: str, start_operator: Any
) -> None:
    op = start_operator("repair")
    n = 20
    apply(control_plane, namespace, {f"ok-{i}": {"target": {"noop": {}}} for i in range(n)})
    wait_all(control_plane, namespace, "Completed", n, timeout=60)
    time.sleep(2)
    # Our own status events come back through the watch: the happy path costs one write per job.
    assert metric(op, "relayjob_status_writes_total") == n
    assert metric(op, "relayjob_status_repairs_total") == 0
    control_plane.kubectl(
        "patch", "-n", namespace, "rj/ok-0", "--subresource=status", "--type=merge",
        "-p", '{"status":{"phase":"Retrying","attempts":0,"conditions":[]}}',
    )  # fmt: skip
    waited = control_plane.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "rj/ok-0", "--timeout=15s", check=False
    )
    assert waited.returncode == 0, waited.stderr
    repaired = get(control_plane, namespace, "ok-0")["status"]
    assert (repaired["phase"], repaired["attempts"]) == ("Completed", 1)
    assert metric(op, "relayjob_status_repairs_total") == 1
