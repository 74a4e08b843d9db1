from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from controller.model.spec import RelayJobSpec, redact_url


def spec(**extra: object) -> RelayJobSpec:
    return RelayJobSpec.model_validate({"target": {"noop": {}}} | extra)


def test_defaults_follow_the_contract() -> None:
    s = spec()
    assert (s.priority, s.max_attempts, s.timeout_seconds, s.suspend) == (0, 5, 30.0, False)
    assert (s.backoff.initial_seconds, s.backoff.max_seconds, s.backoff.multiplier) == (1, 300, 2)
    assert s.backoff.jitter is True
    assert s.target.executor == "noop"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 101),
        ("priority", -101),
        ("maxAttempts", 0),
        ("maxAttempts", 101),
        ("nullifier", ""),
        ("nullifier", "has space"),
        ("nullifier", "x" * 129),
        ("timeoutSeconds", 0),
    ],
)
def test_bounds(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        spec(**{field: value})


def test_exactly_one_target() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        RelayJobSpec.model_validate({"target": {}})
    with pytest.raises(ValidationError, match="exactly one"):
        RelayJobSpec.model_validate({"target": {"noop": {}, "http": {"url": "http://x"}}})


def test_plugin_executor_names_are_kept() -> None:
    s = RelayJobSpec.model_validate({"target": {"sqs": {"queue": "q"}}})
    assert s.target.executor == "sqs"
    assert s.target.config_for("sqs") == {"queue": "q"}


def test_not_before_and_delay_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        spec(notBefore="2030-01-01T00:00:00Z", delaySeconds=5)


def test_earliest_start() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    assert spec().earliest_start(created) == created
    assert spec(delaySeconds=30).earliest_start(created) == created + timedelta(seconds=30)
    assert spec(notBefore="2030-01-01T00:00:00Z").earliest_start(created).year == 2030


def test_payload_size_counts_utf8_bytes() -> None:
    assert spec(payload={"k": "é"}).payload_size() == len('{"k":"é"}'.encode())


def test_redact_url_hides_credentials() -> None:
    shown = redact_url("https://user:s3cret@hooks.example/x?token=abc&page=2")
    assert "s3cret" not in shown and "abc" not in shown
    assert shown == "https://***@hooks.example/x?token=***&page=2"
