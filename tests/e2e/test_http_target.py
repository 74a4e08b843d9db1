"""What a target receives and what it cannot make the operator do, through the real API server and
the operator as a process: the body is the payload, identity is in headers, a Secret saved by an
editor is sent as meant, a nonsense Retry-After on a success changes nothing, and a deny-listed
address is never connected to. Every target listens on a loopback address."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.operator_process import OperatorProcess
from tests.e2e.jobs import apply, wait_phase
from tests.support.target import Target, ThreadedTarget

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def denied() -> Iterator[Target]:
    with ThreadedTarget(host="127.0.0.2") as served:
        yield served


@pytest.fixture(scope="module")
def guarded_operator(
    operator_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {**operator_env, "RELAY_HTTP_DENY_CIDRS": "127.0.0.2/32"}
    process = OperatorProcess(env, Path(tmp_path_factory.mktemp("operator")) / "operator.log").start()
    yield process
    assert process.stop() == 0, process.logs()[-3000:]


def http_job(url: str, **spec: Any) -> dict[str, Any]:
    return {"target": {"http": {"url": url}}, "backoff": {"initialSeconds": 0.2, "maxSeconds": 1}} | spec


def test_the_target_receives_the_payload_as_the_relayjob_holds_it(
    control_plane: Any, namespace: str, target: Target, guarded_operator: OperatorProcess
) -> None:
    payload = {"order": 42, "far": 1e300, "tiny": 1e-300, "text": "ü東😀", "list": [True, None, 0.5]}
    apply(
        control_plane, namespace, {"body": http_job(target.url("/ok"), payload=payload, nullifier="body-1")}
    )
    job = wait_phase(control_plane, namespace, "body", "Completed")
    (call,) = target.calls_for("body-1")
    assert json.loads(call.raw) == job["spec"]["payload"] == payload
    assert b"1e+300" in call.raw and b'"job"' not in call.raw
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Relay-Job-Namespace"] == namespace and call.headers["Relay-Job-Name"] == "body"
    assert call.headers["Relay-Job-Uid"] == job["metadata"]["uid"] and call.headers["Relay-Attempt"] == "1"


def test_a_secret_created_from_a_file_ending_in_a_newline_is_sent_without_it(
    control_plane: Any, namespace: str, target: Target, guarded_operator: OperatorProcess, tmp_path: Path
) -> None:
    saved = tmp_path / "token"
    saved.write_text("Bearer from-an-editor\n")
    control_plane.kubectl(
        "create", "secret", "generic", "hook", "-n", namespace, f"--from-file=token={saved}"
    )
    spec = http_job(target.url("/ok"), nullifier="secret-1")
    spec["target"]["http"]["headersFrom"] = [
        {"name": "Authorization", "secretKeyRef": {"name": "hook", "key": "token"}}
    ]
    apply(control_plane, namespace, {"secret": spec})
    job = wait_phase(control_plane, namespace, "secret", "Completed")
    (call,) = target.calls_for("secret-1")
    assert call.headers["Authorization"] == "Bearer from-an-editor"
    assert job["status"]["attempts"] == 1


def test_a_nonsense_retry_after_on_a_success_completes_with_one_call(
    control_plane: Any, namespace: str, target: Target, guarded_operator: OperatorProcess
) -> None:
    apply(
        control_plane,
        namespace,
        {"superscript": http_job(target.url("/ok-retry-after/%C2%B2"), nullifier="sup-1", maxAttempts=3)},
    )
    job = wait_phase(control_plane, namespace, "superscript", "Completed")
    assert len(target.calls_for("sup-1")) == 1 and job["status"]["attempts"] == 1


def test_a_deny_listed_address_is_never_connected_to(
    control_plane: Any, namespace: str, denied: Target, guarded_operator: OperatorProcess
) -> None:
    apply(control_plane, namespace, {"denied": http_job(denied.url("/ok"), maxAttempts=3)})
    job = wait_phase(control_plane, namespace, "denied", "DeadLettered")
    assert job["status"]["attempts"] == 1
    assert "TargetForbidden" in job["status"]["lastError"]
    assert "127.0.0.2 is in RELAY_HTTP_DENY_CIDRS" in job["status"]["deadLetter"]["message"]
    assert denied.calls == []
