"""The pure parts of signing, retryableStatuses and captureResponse, and their bounds in the model."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from controller.adapters.executors.http import Answer, captured_text, classify_status, judge
from controller.adapters.executors.signing import signature_headers, signing_key_problem
from controller.model.jobs import Outcome
from controller.model.spec import RelayJobSpec

KEY = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_a_given_list_replaces_the_default_retryable_statuses() -> None:
    assert classify_status(404, [404]) is Outcome.RETRYABLE
    assert classify_status(503, [404]) is Outcome.PERMANENT
    assert classify_status(429, []) is Outcome.PERMANENT
    assert classify_status(204, [204]) is Outcome.SUCCEEDED  # 2xx succeeds whatever the list
    assert classify_status(503) is Outcome.RETRYABLE and classify_status(404) is Outcome.PERMANENT


def test_the_body_is_in_the_result_only_when_captured() -> None:
    answer = Answer(503, None, "7", b"busy")
    captured = judge("POST http://t/", answer, [503], capture=True)
    assert captured.result == {"httpStatus": 503, "body": "busy"} and captured.retry_after_seconds == 7
    assert judge("POST http://t/", answer).result == {"httpStatus": 503}


@pytest.mark.parametrize(
    ("kept", "text"),
    [
        (b"plain", "plain"),
        (b"\xff\xfeok", "\ufffd\ufffdok"),
        ("ü東".encode()[:4], "ü"),  # the cut split 東: dropped, not shown as a replacement
        (b"", ""),
    ],
)
def test_captured_bytes_become_text(kept: bytes, text: str) -> None:
    assert captured_text(kept) == text


@pytest.mark.parametrize("key", [KEY, KEY.removeprefix("whsec_"), KEY.rstrip("=")])
def test_signing_keys_the_library_accepts(key: str) -> None:
    assert signing_key_problem(key) is None


@pytest.mark.parametrize("key", ["hunter2 is my password!", "whsec_", "whsec_%%%", "whsec_a"])
def test_what_is_not_a_signing_key_is_described_not_shown(key: str) -> None:
    problem = signing_key_problem(key)
    assert problem is not None and "hunter2" not in problem and "%" not in problem


def test_signature_headers_verify_with_standardwebhooks() -> None:
    now = datetime.now(UTC)
    body = '{"order":42,"text":"ü東"}'.encode()
    headers = signature_headers(KEY, "6f9a", body, now)
    assert headers["webhook-id"] == "6f9a" and headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert Webhook(KEY).verify(body, headers) == {"order": 42, "text": "ü東"}
    Webhook(KEY).verify(b"", signature_headers(KEY, "6f9a", None, now), json_parse=False)


def test_a_timestamp_in_another_zone_signs_the_same_instant() -> None:
    now = datetime.now(UTC)
    elsewhere = now.astimezone(timezone(timedelta(hours=-5)))
    assert signature_headers(KEY, "id", b"{}", elsewhere) == signature_headers(KEY, "id", b"{}", now)


def spec(http: dict[str, Any] | None = None, **fields: Any) -> RelayJobSpec:
    return RelayJobSpec.model_validate({"target": {"http": {"url": "http://t/", **(http or {})}}, **fields})


@pytest.mark.parametrize(
    ("http", "fields"),
    [
        ({"retryableStatuses": [99]}, {}),
        ({"retryableStatuses": [600]}, {}),
        ({"retryableStatuses": list(range(500, 551))}, {}),
        ({"captureResponse": {"maxBytes": 0}}, {}),
        ({"captureResponse": {"maxBytes": 4097}}, {}),
        ({"captureResponse": {}}, {}),
        ({"signing": {"secretKeyRef": {"name": "s"}}}, {}),
        ({}, {"activeDeadlineSeconds": 0}),
        ({}, {"activeDeadlineSeconds": 2**31}),
    ],
)
def test_the_model_refuses_what_the_crd_refuses(http: dict[str, Any], fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(http, **fields)


def test_the_new_fields_parse() -> None:
    parsed = spec(
        {
            "signing": {"secretKeyRef": {"name": "s", "key": "k"}},
            "retryableStatuses": [409, 503],
            "captureResponse": {"maxBytes": 4096},
        },
        activeDeadlineSeconds=300,
    )
    http = parsed.target.http
    assert http is not None and http.signing is not None and http.capture_response is not None
    assert (http.signing.secret_key_ref.name, http.retryable_statuses) == ("s", [409, 503])
    assert (http.capture_response.max_bytes, parsed.active_deadline_seconds) == (4096, 300)
