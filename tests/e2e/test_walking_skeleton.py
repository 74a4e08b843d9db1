"""A RelayJob from `kubectl apply` to Completed, with kubectl as the only client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devtools.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e


def relayjob(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": name}, "spec": spec}
    )


def test_noop_job_completes_and_kubectl_wait_returns(
    control_plane: Any, operator: OperatorProcess, namespace: str
) -> None:
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=relayjob("hello", {"target": {"noop": {}}, "payload": {"greeting": "hi"}}),
    )
    waited = control_plane.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=60s", "rj/hello", check=False
    )
    assert waited.returncode == 0, waited.stderr + operator.logs()[-3000:]
    status = json.loads(control_plane.kubectl("get", "-n", namespace, "rj/hello", "-o", "json").stdout)[
        "status"
    ]
    assert status["phase"] == "Completed" and status["attempts"] == 1
    assert status["completedAt"] and status["observedGeneration"] == 1
    table = control_plane.kubectl("get", "-n", namespace, "rj").stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "ATTEMPTS", "PRIORITY", "AGE"]
    assert table.splitlines()[1].split()[:4] == ["hello", "Completed", "1", "0"]
    wide = control_plane.kubectl("get", "-n", namespace, "rj", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-3:] == ["NULLIFIER", "NEXT-ATTEMPT", "LAST-ERROR"]
    events = control_plane.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=hello", "-o", "json"
    ).stdout
    assert "Completed" in {e["reason"] for e in json.loads(events)["items"]}


def test_many_jobs_complete(control_plane: Any, operator: OperatorProcess, namespace: str) -> None:
    docs = "\n---\n".join(
        relayjob(f"batch-{i}", {"target": {"noop": {}}, "priority": i % 3}) for i in range(40)
    )
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=docs)
    waited = control_plane.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=90s", "rj", "--all", check=False
    )
    assert waited.returncode == 0, waited.stderr + operator.logs()[-3000:]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"target": {"noop": {}}, "priority": 500}, "spec.priority"),
        ({"target": {"noop": {}, "http": {"url": "https://example.invalid/"}}}, "spec.target"),
        ({"payload": {}}, "spec.target"),
    ],
    ids=["priority-500", "two-targets", "no-target"],
)
def test_invalid_relayjob_is_refused_by_kubectl_apply(
    control_plane: Any, namespace: str, spec: dict[str, Any], field: str
) -> None:
    result = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=relayjob("invalid", spec), check=False
    )
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def test_operator_exposes_probes_and_metrics(operator: OperatorProcess) -> None:
    assert operator.probe("/healthz") == 200
    assert operator.probe("/readyz") == 200
    text = operator.metrics()
    assert 'relayjob_jobs_total{outcome="completed"}' in text
    assert "relayjob_queue_depth" in text


def test_log_lines_about_jobs_name_the_job(operator: OperatorProcess) -> None:
    completed = [r for r in operator.log_records() if r.get("msg") == "job completed"]
    assert completed, "no structured 'job completed' lines"
    assert all({"namespace", "name", "uid"} <= set(r["job"]) for r in completed)
