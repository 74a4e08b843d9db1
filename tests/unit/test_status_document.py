from datetime import UTC, datetime, timedelta
from uuid import uuid4

from controller.core.status import status_document
from controller.model.jobs import ExecutionResult, JobRef, JobRow, Outcome
from controller.model.phases import Phase
from controller.model.spec import RelayJobSpec

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def row(**changes: object) -> JobRow:
    base = JobRow(
        ref=JobRef(uid=uuid4(), namespace="ns", name="job"),
        seq=1,
        phase=Phase.PROCESSING,
        spec_or_none=RelayJobSpec.model_validate(
            {"target": {"noop": {}}, "maxAttempts": 3, "backoff": {"jitter": False}}
        ),
        generation=1,
        nullifier=None,
        attempts=1,
        retries=0,
        max_attempts=3,
        next_attempt_at=None,
        last_error=None,
        result=None,
        reason=None,
        message=None,
        redrive_token=None,
        created_at=NOW,
        queued_at=NOW,
        started_at=NOW,
        finished_at=None,
    )
    return base.model_copy(update=changes)


def result(outcome: Outcome, **kw: object) -> ExecutionResult:
    return ExecutionResult.model_validate({"outcome": outcome, "reason": "HTTP503"} | kw)


def test_status_of_completed_job_has_conditions_for_kubectl_wait() -> None:
    doc = status_document(row(phase=Phase.COMPLETED, finished_at=NOW, reason="Succeeded"), NOW)
    cond = {c["type"]: c for c in doc["conditions"]}
    assert cond["Succeeded"]["status"] == "True" and cond["Failed"]["status"] == "False"
    assert doc["completedAt"] == "2026-11-27T12:00:00Z"
    assert doc["deadLetter"] is None


def test_status_of_dead_letter() -> None:
    doc = status_document(
        row(
            phase=Phase.DEAD_LETTERED,
            finished_at=NOW,
            attempts=3,
            reason="AttemptsExhausted",
            message="3 of 3",
        ),
        NOW,
    )
    assert doc["deadLetter"] == {
        "reason": "AttemptsExhausted",
        "message": "3 of 3",
        "at": "2026-11-27T12:00:00Z",
        "attempts": 3,
    }
    cond = {c["type"]: c for c in doc["conditions"]}
    assert cond["Failed"]["status"] == "True"


def test_times_are_rfc3339_utc_seconds_whatever_the_offset() -> None:
    from datetime import timezone

    from controller.core.status import _utc

    for offset in (0, 2, -5, 14):
        at = datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=offset)))
        assert _utc(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
