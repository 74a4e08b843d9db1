"""The http executor's pure rules: statuses, Retry-After, headers, the body, and the egress decision.

The egress decision is proved here on the addresses it protects (cloud metadata, link-local): a pure
function, so no test ever opens a connection towards them.
"""

from __future__ import annotations

import json
import uuid
from ipaddress import ip_network

import pytest
from pydantic import ValidationError

from controller.adapters.executors.egress import EgressGuard, EgressPolicy, egress_refusal
from controller.adapters.executors.http import Answer, HttpConfig, classify_status, judge
from controller.adapters.executors.request import (
    header_name_problem,
    header_value_problem,
    request_body,
    request_headers,
    trim_line_end,
)
from controller.adapters.executors.retry_after import DELTA_SECONDS_LIMIT, parse_retry_after
from controller.model.jobs import AttemptContext, JobRef, Outcome
from controller.model.spec import RelayJobSpec
from controller.settings import Settings, describe_error

NOW = 1767225600.0  # Thu, 01 Jan 2026 00:00:00 GMT


def test_status_classes() -> None:
    assert classify_status(204) is Outcome.SUCCEEDED
    for code in (408, 429, 500, 503, 999):
        assert classify_status(code) is Outcome.RETRYABLE
    for code in (400, 401, 404, 409, 422, 101):
        assert classify_status(code) is Outcome.PERMANENT


def test_retry_after_delta_seconds_are_ascii_digits_only() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(" 12\t") == 12
    assert parse_retry_after("0007") == 7
    assert parse_retry_after(None) is None
    for ignored in (
        "²",
        "\u0661\u0662",
        "\u0661",
        "-1",
        "+5",
        "1e9",
        "12.5",
        "0x10",
        "1 2",
        "soon",
        "",
        "\u00a012",
    ):
        assert parse_retry_after(ignored) is None, ignored


def test_retry_after_huge_numbers_stay_finite() -> None:
    assert parse_retry_after("9" * 8000) == DELTA_SECONDS_LIMIT
    assert parse_retry_after(str(2**31 + 1)) == DELTA_SECONDS_LIMIT
    assert parse_retry_after("0" * 30 + "5") == 5


def test_retry_after_http_dates_in_each_form() -> None:
    for form in (
        "Thu, 01 Jan 2026 00:00:10 GMT",
        "Thursday, 01-Jan-26 00:00:10 GMT",
        "Thu Jan  1 00:00:10 2026",
    ):
        assert parse_retry_after(form, now=NOW) == 10, form
    assert parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", now=NOW) == 0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) == DELTA_SECONDS_LIMIT


def test_retry_after_dates_that_are_not_http_dates_are_ignored() -> None:
    for ignored in (
        "Thu, 01 Jan 99999 00:00:10 GMT",  # beyond what a date holds
        "Thu, 01 Jan 2026 25:00:10 GMT",
        "Thu, \u0660\u0661 Jan 2026 00:00:10 GMT",  # Arabic-Indic digits in a date
        "2026-01-01T00:00:10Z",
        "1 Jan 2026",
    ):
        assert parse_retry_after(ignored, now=NOW) is None, ignored


def test_retry_after_on_a_success_is_never_read() -> None:
    for value in ("²", "9" * 8000, "60"):
        result = judge("POST http://t/", Answer(200, None, value))
        assert result.outcome is Outcome.SUCCEEDED and result.retry_after_seconds is None


def test_retry_after_counts_on_a_retryable_answer() -> None:
    assert judge("POST http://t/", Answer(503, None, "3")).retry_after_seconds == 3
    assert judge("POST http://t/", Answer(429, None, "²")).retry_after_seconds is None


def test_redirect_is_permanent_and_names_its_location_without_credentials() -> None:
    result = judge("POST http://t/", Answer(302, "https://user:pw@elsewhere.example/x?token=abc", None))
    assert result.outcome is Outcome.PERMANENT and result.reason == "Redirect"
    assert "302" in result.message and "elsewhere.example/x" in result.message
    assert "pw" not in result.message and "abc" not in result.message
    assert judge("POST http://t/", Answer(307, None, None)).reason == "Redirect"


def test_secret_values_lose_one_trailing_newline() -> None:
    assert trim_line_end("token\n") == "token"
    assert trim_line_end("token\r\n") == "token"
    assert trim_line_end("token\n\n") == "token\n"
    assert trim_line_end("token") == "token"


def test_header_values_with_control_characters_are_refused_without_showing_them() -> None:
    assert header_value_problem("Bearer abc\tdef é 東") is None
    for value, shown in (
        ("hunter2\nX-Injected: 1", "U+000A"),
        ("hunter2\r", "U+000D"),
        ("hunter2\x00", "U+0000"),
        ("hunter2\x7f", "U+007F"),
        ("hunter2\x85", "U+0085"),
        ("hunter2\n\n", "U+000A"),
    ):
        problem = header_value_problem(trim_line_end(value))
        assert problem is not None and shown in problem and "hunter2" not in problem
    assert header_value_problem(b"\xff\xfe".decode(errors="surrogateescape")) == "is not valid UTF-8 text"


def test_header_names_must_be_tokens_and_not_the_operators() -> None:
    assert header_name_problem("X-Api-Key") is None
    for bad in ("X Api", "X:Api", "X-Ä", "", "X\nY"):
        assert header_name_problem(bad) is not None, bad
    for ours in ("content-length", "Transfer-Encoding", "relay-job-uid", "IDEMPOTENCY-KEY", "Relay-Attempt"):
        assert "set by the operator" in (header_name_problem(ours) or ""), ours


def test_the_body_is_the_payload_with_its_numbers_as_held() -> None:
    payload = json.loads(
        '{"big": 123456789012345678901234567890, "e": 1e300, "f": 0.1, "s": "ü東😀", "n": null}'
    )
    body = request_body("POST", payload)
    assert body == '{"big":123456789012345678901234567890,"e":1e+300,"f":0.1,"s":"ü東😀","n":null}'.encode()
    assert json.loads(body) == payload
    assert request_body("GET", payload) is None and request_body("DELETE", payload) is None
    assert request_body("PATCH", {}) == b"{}"
    with pytest.raises(ValueError):
        request_body("POST", {"x": float("nan")})


def test_identity_headers_win_and_content_type_is_set_for_a_body() -> None:
    ref = JobRef(uid=uuid.uuid4(), namespace="team-a", name="notify")
    spec = RelayJobSpec.model_validate({"target": {"http": {"url": "http://t/"}}})
    ctx = AttemptContext(ref=ref, spec=spec, attempt=3, idempotency_key="order-42")
    headers = request_headers(ctx, {"X-Api-Key": "k"}, has_body=True)
    assert headers["Idempotency-Key"] == "order-42" and headers["Relay-Attempt"] == "3"
    assert headers["Relay-Job-Namespace"] == "team-a" and headers["Relay-Job-Name"] == "notify"
    assert headers["Relay-Job-Uid"] == str(ref.uid) and headers["Content-Type"] == "application/json"
    assert "Content-Type" not in request_headers(ctx, {}, has_body=False)
    own = request_headers(ctx, {"content-type": "application/cloudevents+json"}, has_body=True)
    assert own.getall("Content-Type") == ["application/cloudevents+json"]


def test_metadata_and_link_local_addresses_are_refused_by_default() -> None:
    default = EgressPolicy()
    for address in (
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",  # the IPv4 metadata address, reached over IPv6
    ):
        refusal = egress_refusal(address, default)
        assert refusal is not None and "link-local or cloud metadata" in refusal, address
    for address in ("127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "93.184.216.34", "fd00:ec2::253"):
        assert egress_refusal(address, default) is None, address
    # No setting re-opens them: an allow-list naming them is still overruled.
    everything = EgressPolicy(allow=(ip_network("0.0.0.0/0"), ip_network("::/0")))
    assert egress_refusal("169.254.169.254", everything) is not None


def test_deny_list_adds_and_allow_list_narrows_and_deny_wins() -> None:
    policy = EgressPolicy(deny=(ip_network("127.0.0.2/32"),), allow=(ip_network("127.0.0.0/30"),))
    assert egress_refusal("127.0.0.1", policy) is None
    assert "RELAY_HTTP_DENY_CIDRS (127.0.0.2/32)" in (egress_refusal("127.0.0.2", policy) or "")
    assert "outside RELAY_HTTP_ALLOW_CIDRS" in (egress_refusal("127.0.0.5", policy) or "")
    assert "outside RELAY_HTTP_ALLOW_CIDRS" in (egress_refusal("::1", policy) or "")
    assert egress_refusal("::ffff:127.0.0.1", policy) is None


def test_the_socket_factory_refuses_before_any_socket_exists() -> None:
    guard = EgressGuard(EgressPolicy())
    with guard.watching() as refused, pytest.raises(OSError, match="cloud metadata"):
        guard.socket((2, 1, 6, "", ("169.254.169.254", 80)))
    assert refused and "169.254.169.254" in refused[0]
    sock = guard.socket((2, 1, 6, "", ("127.0.0.1", 80)))
    sock.close()


def test_egress_settings_are_parsed_and_named_when_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_HTTP_DENY_CIDRS", " 127.0.0.2/32, fd00::/8 ,")
    monkeypatch.setenv("RELAY_HTTP_ALLOW_CIDRS", "127.0.0.1")
    config = HttpConfig.from_settings(Settings())
    assert config.egress.deny == (ip_network("127.0.0.2/32"), ip_network("fd00::/8"))
    assert config.egress.allow == (ip_network("127.0.0.1/32"),)
    for name, value in (("RELAY_HTTP_DENY_CIDRS", "10.0.0.1/8"), ("RELAY_HTTP_ALLOW_CIDRS", "metadata")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError) as caught:
            Settings()
        assert name in describe_error(caught.value) and value in describe_error(caught.value)
        monkeypatch.setenv(name, "")
