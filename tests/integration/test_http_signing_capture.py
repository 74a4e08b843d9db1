"""`target.http.signing`, `retryableStatuses` and `captureResponse` against real HTTP servers on
loopback. Signatures are checked with the `standardwebhooks` package, as a target checks them."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
import uuid
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from controller.model.jobs import AttemptContext, JobRef, Outcome
from controller.model.spec import RelayJobSpec
from tests.integration.conftest import RecordingCluster
from tests.integration.test_http_executor import executor, ok, serving

pytestmark = pytest.mark.integration

SIGNING_KEY = "whsec_" + base64.b64encode(os.urandom(32)).decode()
REF = JobRef(uid=uuid.uuid4(), namespace="team-a", name="notify")


def context(url: str, attempt: int = 1, method: str = "POST", **http: Any) -> AttemptContext:
    spec = RelayJobSpec.model_validate(
        {"target": {"http": {"url": url, "method": method, **http}}, "payload": {"order": 42, "text": "ü東"}}
    )
    return AttemptContext(ref=REF, spec=spec, attempt=attempt, idempotency_key="key-1")


def signed(url: str, attempt: int = 1, method: str = "POST", **http: Any) -> AttemptContext:
    ref = {"secretKeyRef": {"name": "hook", "key": "signing"}}
    return context(url, attempt, method, signing=ref, **http)


def cluster_with(value: str) -> RecordingCluster:
    cluster = RecordingCluster()
    cluster.secrets[("team-a", "hook")] = {"signing": value}
    return cluster


async def test_each_attempt_is_signed_with_its_own_timestamp_and_the_jobs_id() -> None:
    async with serving(ok) as server, executor(cluster_with(SIGNING_KEY + "\n")) as http:
        first = await http.execute(signed(server.url("/hook"), attempt=1))
        await asyncio.sleep(1.1)  # the timestamp is in whole seconds
        second = await http.execute(signed(server.url("/hook"), attempt=2))
        bodiless = await http.execute(signed(server.url("/hook"), method="GET"))
    assert [r.outcome for r in (first, second, bodiless)] == [Outcome.SUCCEEDED] * 3
    verifier = Webhook(SIGNING_KEY)
    for seen in server.seen:
        verifier.verify(seen.raw, seen.headers, json_parse=False)  # raises unless valid and recent
    stamps = [int(s.headers["webhook-timestamp"]) for s in server.seen]
    assert stamps[1] > stamps[0] and abs(stamps[0] - time.time()) < 60
    assert {s.headers["webhook-id"] for s in server.seen} == {str(REF.uid)}
    assert server.seen[2].raw == b""


async def test_a_signature_made_with_another_key_does_not_verify() -> None:
    async with serving(ok) as server, executor(cluster_with(SIGNING_KEY)) as http:
        await http.execute(signed(server.url()))
    (seen,) = server.seen
    other = Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(Exception, match="No matching signature"):
        other.verify(seen.raw, seen.headers, json_parse=False)


async def test_a_signing_key_that_is_missing_or_not_a_key_fails_before_any_request() -> None:
    async with serving(ok) as server:
        async with executor(RecordingCluster()) as http:
            missing = await http.execute(signed(server.url()))
        async with executor(cluster_with("hunter2 is my password!")) as http:
            not_a_key = await http.execute(signed(server.url()))
        async with executor(cluster_with("whsec_")) as http:
            empty = await http.execute(signed(server.url()))
    assert (missing.outcome, missing.reason) == (Outcome.PERMANENT, "SecretNotFound")
    assert "target.http.signing" in missing.message
    assert (not_a_key.outcome, not_a_key.reason) == (Outcome.PERMANENT, "InvalidSigningKey")
    assert "Secret team-a/hook key 'signing'" in not_a_key.message
    assert "hunter2" not in not_a_key.message and "password" not in not_a_key.message
    assert empty.reason == "InvalidSigningKey"
    assert server.seen == []


async def test_signature_headers_cannot_be_given_when_the_operator_signs() -> None:
    async with serving(ok) as server, executor(cluster_with(SIGNING_KEY)) as http:
        given = await http.execute(signed(server.url(), headers={"Webhook-Signature": "v1,forged"}))
        unsigned = await http.execute(context(server.url(), headers={"webhook-id": "mine"}))
    assert (given.outcome, given.reason) == (Outcome.PERMANENT, "InvalidHeaderName")
    assert "target.http.signing" in given.message
    assert unsigned.outcome is Outcome.SUCCEEDED
    (seen,) = server.seen
    assert seen.headers["webhook-id"] == "mine"


async def test_retryable_statuses_replace_the_default_list() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=int(request.path.strip("/")))

    async with serving(answer) as server, executor() as http:
        listed = await http.execute(context(server.url("/404"), retryableStatuses=[404, 409]))
        unlisted = await http.execute(context(server.url("/503"), retryableStatuses=[404, 409]))
        none_listed = await http.execute(context(server.url("/429"), retryableStatuses=[]))
        default = await http.execute(context(server.url("/503")))
    assert (listed.outcome, listed.reason) == (Outcome.RETRYABLE, "HTTP404")
    assert (unlisted.outcome, unlisted.reason) == (Outcome.PERMANENT, "HTTP503")
    assert none_listed.outcome is Outcome.PERMANENT
    assert default.outcome is Outcome.RETRYABLE


async def test_a_connection_error_stays_retryable_whatever_the_list() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with executor() as http:
        result = await http.execute(context(f"http://127.0.0.1:{port}/", retryableStatuses=[]))
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "ConnectionError")


async def test_capture_keeps_at_most_max_bytes_of_the_body_as_text() -> None:
    sent = b'{"id":"\xff\xfe",' + "ü東".encode() + b"x" * 5000

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=sent, status=int(request.path.strip("/")), content_type="text/plain")

    async with serving(answer) as server, executor() as http:
        # 12 bytes: up to the middle of the 2-byte ü, which is dropped rather than half-shown.
        cut = await http.execute(context(server.url("/200"), captureResponse={"maxBytes": 12}))
        most = await http.execute(context(server.url("/200"), captureResponse={"maxBytes": 4096}))
        failed = await http.execute(context(server.url("/404"), captureResponse={"maxBytes": 8}))
        uncaptured = await http.execute(context(server.url("/200")))
    assert cut.result == {"httpStatus": 200, "body": '{"id":"\ufffd\ufffd",'}
    assert most.result["body"] == sent[:4096].decode(errors="replace")
    assert (failed.outcome, failed.result) == (
        Outcome.PERMANENT,
        {"httpStatus": 404, "body": '{"id":"\ufffd'},
    )
    assert uncaptured.result == {"httpStatus": 200}
