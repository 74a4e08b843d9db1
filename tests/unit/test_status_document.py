from datetime import UTC, datetime, timedelta

from controller.core.status import status_document
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from tests.unit.fakes import job_row

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def row(**changes: object) -> JobRow:
    base = job_row(Phase.PROCESSING, attempts=1, maxAttempts=3, backoff={"jitter": False})
    return base.model_copy(update={"retries": 0, "started_at": NOW, **changes})


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


def test_a_condition_the_outcome_leaves_false_keeps_the_time_it_became_false() -> None:
    queued, finished = NOW - timedelta(minutes=5), NOW - timedelta(minutes=1)
    for phase, flipped, unchanged in (
        (Phase.COMPLETED, "Succeeded", "Failed"),
        (Phase.DEAD_LETTERED, "Failed", "Succeeded"),
    ):
        doc = status_document(row(phase=phase, queued_at=queued, finished_at=finished), NOW)
        cond = {c["type"]: c for c in doc["conditions"]}
        assert cond[flipped]["status"] == "True"
        assert cond[flipped]["lastTransitionTime"] == "2026-11-27T11:59:00Z"
        assert cond[unchanged]["status"] == "False"
        assert cond[unchanged]["lastTransitionTime"] == "2026-11-27T11:55:00Z"


def test_times_are_rfc3339_utc_seconds_whatever_the_offset() -> None:
    from datetime import timezone

    from controller.core.status import _utc

    for offset in (0, 2, -5, 14):
        at = datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=offset)))
        assert _utc(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
