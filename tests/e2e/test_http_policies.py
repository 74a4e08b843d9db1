"""Signed requests, retryableStatuses, captureResponse and activeDeadlineSeconds through the real API
server and the operator as a process, against a target on loopback. Signatures are verified with the
`standardwebhooks` package, as a target verifies them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook

from devtools.operator_process import OperatorProcess
from tests.e2e.jobs import apply, get, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e

SIGNING_KEY = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def http_job(url: str, http: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "target": {"http": {"url": url, **(http or {})}},
        "backoff": {"initialSeconds": 0.2, "maxSeconds": 1},
    } | spec


def signing(secret: str = "signing") -> dict[str, Any]:
    return {"signing": {"secretKeyRef": {"name": secret, "key": "key"}}}


@pytest.fixture(scope="module")
def signing_secret(control_plane: Any, namespace: str) -> str:
    control_plane.kubectl(
        "create", "secret", "generic", "signing", "-n", namespace, f"--from-literal=key={SIGNING_KEY}"
    )
    return SIGNING_KEY


def test_a_signed_request_and_its_retry_verify_each_with_a_fresh_timestamp(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess, signing_secret: str
) -> None:
    backoff = {"initialSeconds": 1.5, "maxSeconds": 2, "jitter": False}  # the timestamp is in seconds
    spec = http_job(target.url("/fail/1"), signing(), nullifier="signed-1", backoff=backoff)
    apply(control_plane, namespace, {"signed": spec})
    job = wait_phase(control_plane, namespace, "signed", "Completed")
    first, retry = target.calls_for("signed-1")
    verifier = Webhook(signing_secret)
    for call in (first, retry):
        assert verifier.verify(call.raw, call.headers) == job["spec"]["payload"]
        assert call.headers["webhook-id"] == job["metadata"]["uid"]
    assert int(retry.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert (first.headers["Relay-Attempt"], retry.headers["Relay-Attempt"]) == ("1", "2")

    events = control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    encoded = signing_secret.removeprefix("whsec_")
    for seen in (json.dumps(get(control_plane, namespace, "signed")), events, operator.logs()):
        assert encoded not in seen


def test_a_missing_signing_secret_dead_letters_without_a_request(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    apply(
        control_plane,
        namespace,
        {"unsigned": http_job(target.url("/ok"), signing("absent"), nullifier="ns-1")},
    )
    job = wait_phase(control_plane, namespace, "unsigned", "DeadLettered")
    assert job["status"]["lastError"].startswith("SecretNotFound: target.http.signing: ")
    assert "absent" in job["status"]["deadLetter"]["message"]
    assert target.calls_for("ns-1") == []


def test_retryable_statuses_replace_the_default_list(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    apply(
        control_plane,
        namespace,
        {
            "conflict": http_job(
                target.url("/status/409"), {"retryableStatuses": [409]}, nullifier="rs-409", maxAttempts=2
            ),
            "unavailable": http_job(
                target.url("/status/503"), {"retryableStatuses": [409]}, nullifier="rs-503", maxAttempts=2
            ),
        },
    )
    conflict = wait_phase(control_plane, namespace, "conflict", "DeadLettered")
    unavailable = wait_phase(control_plane, namespace, "unavailable", "DeadLettered")
    assert (conflict["status"]["deadLetter"]["reason"], conflict["status"]["attempts"]) == (
        "AttemptsExhausted",
        2,
    )
    assert (unavailable["status"]["deadLetter"]["reason"], unavailable["status"]["attempts"]) == (
        "PermanentFailure",
        1,
    )
    assert (len(target.calls_for("rs-409")), len(target.calls_for("rs-503"))) == (2, 1)


async def ledger_result(dsn: str, name: str) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT j.result, a.result AS attempt_result FROM jobs j JOIN attempts a ON a.job_uid = j.uid"
            " WHERE j.name = $1",
            name,
        )
    finally:
        await connection.close()
    assert row is not None
    return json.loads(row["result"]), json.loads(row["attempt_result"])


def test_a_captured_answer_is_in_status_and_ledger_and_never_longer_than_asked(
    control_plane: Any,
    namespace: str,
    target: Target,
    operator: OperatorProcess,
    operator_env: dict[str, str],
) -> None:
    apply(
        control_plane,
        namespace,
        {
            "captured": http_job(target.url("/ok"), {"captureResponse": {"maxBytes": 5}}, nullifier="cap-1"),
            "whole": http_job(target.url("/ok"), {"captureResponse": {"maxBytes": 4096}}, nullifier="cap-2"),
        },
    )
    captured = wait_phase(control_plane, namespace, "captured", "Completed")
    whole = wait_phase(control_plane, namespace, "whole", "Completed")
    assert captured["status"]["result"] == {"httpStatus": 200, "body": '{"ok"'}
    assert json.loads(whole["status"]["result"]["body"]) == {"ok": True}
    kept = asyncio.run(ledger_result(operator_env["RELAY_DATABASE_URL"], "captured"))
    assert kept == ({"httpStatus": 200, "body": '{"ok"'},) * 2


def test_a_retry_that_would_start_after_the_active_deadline_dead_letters_at_once(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    backoff = {"initialSeconds": 30, "maxSeconds": 30, "jitter": False}
    spec = http_job(
        target.url("/status/503"), nullifier="dl-1", backoff=backoff, maxAttempts=5, activeDeadlineSeconds=20
    )
    apply(control_plane, namespace, {"deadline": spec})
    job = wait_phase(control_plane, namespace, "deadline", "DeadLettered")
    assert job["status"]["attempts"] == 1 and len(target.calls_for("dl-1")) == 1
    dead = job["status"]["deadLetter"]
    assert dead["reason"] == "DeadlineExceeded"
    assert "would start after spec.activeDeadlineSeconds runs out at" in dead["message"]
    failed = {c["type"]: c for c in job["status"]["conditions"]}["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")


def test_a_job_suspended_past_its_active_deadline_dead_letters_when_resumed(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    # The retry is due 8 s after the first attempt, within the 10 s deadline: the job is suspended
    # in that window (a wide one, for a loaded machine), and resumed after the deadline.
    backoff = {"initialSeconds": 8, "maxSeconds": 8, "jitter": False}
    spec = http_job(
        target.url("/status/503"), nullifier="dl-2", backoff=backoff, maxAttempts=5, activeDeadlineSeconds=10
    )
    apply(control_plane, namespace, {"late": spec})
    wait_phase(control_plane, namespace, "late", "Retrying")
    patch = ["patch", "rj/late", "-n", namespace, "--type=merge", "-p"]
    control_plane.kubectl(*patch, '{"spec":{"suspend":true}}')
    wait_phase(control_plane, namespace, "late", "Suspended")
    (first,) = target.calls_for("dl-2")
    time.sleep(max(0.0, first.at + 11 - time.monotonic()))
    control_plane.kubectl(*patch, '{"spec":{"suspend":false}}')
    job = wait_phase(control_plane, namespace, "late", "DeadLettered")
    assert job["status"]["deadLetter"]["reason"] == "DeadlineExceeded"
    assert (
        "attempt 2 was not started: spec.activeDeadlineSeconds ran out at"
        in (job["status"]["deadLetter"]["message"])
    )
    assert len(target.calls_for("dl-2")) == 1


def create(kube: Any, ns: str, name: str, spec: dict[str, Any]) -> Any:
    body = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": name}, "spec": spec}
    return kube.kubectl(
        "create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(body), check=False
    )


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ({"activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds must be a positive number of seconds"),
        ({"activeDeadlineSeconds": -30}, "spec.activeDeadlineSeconds must be a positive number of seconds"),
        ({"http": {"captureResponse": {"maxBytes": 5000}}}, "maxBytes must be from 1 to 4096"),
        ({"http": {"captureResponse": {"maxBytes": 0}}}, "maxBytes must be from 1 to 4096"),
        ({"http": {"retryableStatuses": [503, 99]}}, "must hold HTTP statuses from 100 to 599"),
        ({"http": {"retryableStatuses": [600]}}, "must hold HTTP statuses from 100 to 599"),
        ({"http": {"retryableStatuses": list(range(500, 551))}}, "must have at most 50 items"),
        ({"http": {"signing": {"secretKeyRef": {"name": "s"}}}}, "spec.target.http.signing.secretKeyRef.key"),
    ],
    ids=["deadline-0", "deadline-negative", "capture-large", "capture-0", "status-99", "status-600",
         "statuses-51", "signing-no-key"],
)  # fmt: skip
def test_the_api_server_refuses_bad_values_naming_the_field(
    control_plane: Any, namespace: str, spec: dict[str, Any], said: str
) -> None:
    http = {"url": "http://127.0.0.1:9/", **spec.pop("http", {})}
    result = create(control_plane, namespace, "refused", {"target": {"http": http}, **spec})
    assert result.returncode != 0 and said in result.stderr, result.stderr


def test_the_active_deadline_is_immutable(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    spec = http_job(target.url("/ok"), nullifier="dl-fixed", activeDeadlineSeconds=60, suspend=True)
    apply(control_plane, namespace, {"fixed": spec})
    result = control_plane.kubectl(
        "patch", "rj/fixed", "-n", namespace, "--type=merge", "-p", '{"spec":{"activeDeadlineSeconds":600}}',
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "spec.activeDeadlineSeconds is immutable" in result.stderr, result.stderr


def test_the_signed_sample_is_accepted(control_plane: Any, namespace: str) -> None:
    sample = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "signed.yaml"
    result = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))
    assert "relayjob.relay.dev/invoice-paid-981 created (server dry run)" in result.stdout
