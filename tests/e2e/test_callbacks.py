"""Callbacks through the real API server, with the operator as a process: a finished job's
onCompletion / onFailure target receives the outcome from a RelayJob of its own, owned by the job,
created once whatever the restarts, and re-drivable like any job when its own target fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.jobs import apply, get, wait_for, wait_phase
from tests.support.target import Call, Target

pytestmark = pytest.mark.e2e


def hook(url: str, **http: Any) -> dict[str, Any]:
    return {"http": {"url": url, **http}}


def calls_of(target: Target, job: str) -> list[Call]:
    """The requests the RelayJob `job` sent."""
    return [c for c in target.calls if c.headers.get("Relay-Job-Name") == job]


def callback_jobs(kube: Any, ns: str, job: str) -> list[dict[str, Any]]:
    out = kube.kubectl("get", "rj", "-n", ns, "-l", f"relay.dev/callback-of={job}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def wait_callback(kube: Any, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    """The callback job `name` once it exists (it is created after its job finished) and is in `phase`."""
    job = name.rsplit("-on-", 1)[0]

    def created() -> bool:
        return name in {j["metadata"]["name"] for j in callback_jobs(kube, ns, job)}

    wait_for(f"callback job {name}", created, timeout=timeout)
    return wait_phase(kube, ns, name, phase, timeout=timeout)


async def _execute(dsn: str, sql: str, *args: Any) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


def test_a_completed_job_tells_its_outcome_to_its_on_completion_target(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("completion")
    spec = {
        "target": {"http": {"url": target.url("/ok")}},
        "payload": {"order": 42},
        "onCompletion": hook(target.url("/ok")),
        "onFailure": hook(target.url("/ok")),
    }
    apply(control_plane, namespace, {"paid": spec})
    job = wait_phase(control_plane, namespace, "paid", "Completed")
    callback = wait_for("the callback job", lambda: callback_jobs(control_plane, namespace, "paid"))
    (callback,) = callback  # Completed: the completion callback only
    assert callback["metadata"]["name"] == "paid-on-completion"
    assert callback["metadata"]["labels"]["relay.dev/callback"] == "onCompletion"
    (owner,) = callback["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("RelayJob", "paid", job["metadata"]["uid"])
    assert owner["controller"] is False
    assert "onCompletion" not in callback["spec"] and "onFailure" not in callback["spec"]
    wait_phase(control_plane, namespace, "paid-on-completion", "Completed")
    (call,) = calls_of(target, "paid-on-completion")
    assert call.body == {
        "phase": "Completed",
        "reason": "Succeeded",
        "message": job["status"]["message"],
        "attempts": 1,
        "result": job["status"]["result"],
        "completedAt": job["status"]["completedAt"],
        "job": {"namespace": namespace, "name": "paid", "uid": job["metadata"]["uid"]},
    }


def test_a_dead_lettered_job_calls_on_failure_and_a_failed_callback_can_be_redriven(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("failure")
    # The callback's target fails its first call with 503, which this callback does not retry: its
    # job is dead-lettered, as any job, and a re-drive delivers it.
    spec = {
        "target": {"http": {"url": target.url("/status/404")}},
        "onCompletion": hook(target.url("/ok")),
        "onFailure": hook(target.url("/fail/1"), retryableStatuses=[]),
    }
    apply(control_plane, namespace, {"doomed": spec})
    job = wait_phase(control_plane, namespace, "doomed", "DeadLettered")
    dead = wait_callback(control_plane, namespace, "doomed-on-failure", "DeadLettered")
    assert dead["status"]["deadLetter"]["reason"] == "PermanentFailure"
    (call,) = calls_of(target, "doomed-on-failure")
    assert call.body["phase"] == "DeadLettered" and call.body["reason"] == "PermanentFailure"
    assert call.body["attempts"] == 1 and call.body["job"]["uid"] == job["metadata"]["uid"]
    assert "HTTP404" in call.body["message"]
    control_plane.kubectl(
        "annotate", "-n", namespace, "rj/doomed-on-failure", "relay.dev/redrive=1", "--overwrite"
    )
    wait_phase(control_plane, namespace, "doomed-on-failure", "Completed")
    assert [c.body for c in calls_of(target, "doomed-on-failure")] == [call.body, call.body]
    # A callback job has no callbacks: a failed one tells nobody, and nothing chains.
    assert [j["metadata"]["name"] for j in callback_jobs(control_plane, namespace, "doomed")] == [
        "doomed-on-failure"
    ]
    assert callback_jobs(control_plane, namespace, "doomed-on-failure") == []


def test_a_restart_creates_a_callback_once_and_creates_one_a_kill_left_owed(
    control_plane: Any, namespace: str, target: Target, start_operator: Any, operator_env: dict[str, str]
) -> None:
    first = start_operator("before")
    spec = {"target": {"noop": {}}, "onCompletion": hook(target.url("/ok"))}
    apply(control_plane, namespace, {"once": spec, "owed": spec})
    for name in ("once", "owed"):
        wait_callback(control_plane, namespace, f"{name}-on-completion", "Completed")
    created = get(control_plane, namespace, "once-on-completion")["metadata"]["uid"]
    first.kill()
    # What a SIGKILL between recording "owed" Completed and creating its callback leaves behind:
    # the outcome in the ledger, no callback recorded there, and no callback job.
    control_plane.kubectl("delete", "-n", namespace, "rj/owed-on-completion", "--wait=true")
    asyncio.run(
        _execute(
            operator_env["RELAY_DATABASE_URL"],
            "DELETE FROM callbacks WHERE job_uid = $1::uuid",
            get(control_plane, namespace, "owed")["metadata"]["uid"],
        )
    )
    start_operator("after")
    recreated = wait_callback(control_plane, namespace, "owed-on-completion", "Completed")
    assert recreated["spec"]["payload"]["job"]["name"] == "owed"
    # The callback that was delivered is neither created again nor sent again.
    assert get(control_plane, namespace, "once-on-completion")["metadata"]["uid"] == created
    assert len(calls_of(target, "once-on-completion")) == 1
    assert len(calls_of(target, "owed-on-completion")) == 2  # before the kill, and once recreated


def test_the_callbacks_sample_is_accepted(control_plane: Any, namespace: str) -> None:
    sample = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "callbacks.yaml"
    result = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))
    assert "relayjob.relay.dev/charge-order-77 created (server dry run)" in result.stdout


def test_a_callback_cannot_be_changed_after_creation(
    control_plane: Any, namespace: str, target: Target
) -> None:
    spec = {"target": {"noop": {}}, "suspend": True, "onFailure": hook(target.url("/ok"))}
    apply(control_plane, namespace, {"fixed": spec})
    for change in ({"onFailure": hook(target.url("/other"))}, {"onCompletion": hook(target.url("/ok"))}):
        field = next(iter(change))
        result = control_plane.kubectl(
            "patch", "rj/fixed", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": change}),
            check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert f"spec.{field} is immutable" in result.stderr, result.stderr


def test_a_bad_callback_url_is_refused_naming_the_callback(control_plane: Any, namespace: str) -> None:
    spec = {"target": {"noop": {}}, "onCompletion": hook("ftp://example.com/x")}
    job = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": "bad"}, "spec": spec}
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(job), check=False
    )
    assert result.returncode != 0
    assert "onCompletion.http.url must start with http:// or https://" in result.stderr, result.stderr
