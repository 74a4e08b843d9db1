from controller.adapters.executors.http import classify_status, parse_retry_after
from controller.model.jobs import Outcome


def test_status_classes() -> None:
    assert classify_status(204) is Outcome.SUCCEEDED
    for code in (408, 429, 500, 503):
        assert classify_status(code) is Outcome.RETRYABLE
    for code in (400, 401, 404, 409, 422, 301):
        assert classify_status(code) is Outcome.PERMANENT


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    # Thu, 01 Jan 2026 00:00:10 GMT is ten seconds after the reference instant.
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0) == 10
