"""Which fields of a new generation the operator honours, and when a status disagrees with the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from controller.core.changes import MUTABLE_FIELDS, follow, ignored_message
from controller.core.status import status_agrees, status_document
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.model.spec import RelayJobSpec
from tests.unit.fakes import job_row

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RAW = {"target": {"http": {"url": "http://127.0.0.1:9/"}}, "payload": {"n": 1}, "maxAttempts": 3}


def test_mutable_fields_are_taken_from_the_new_generation() -> None:
    admitted = RelayJobSpec.model_validate(RAW)
    raw = RAW | {"priority": 40, "suspend": True, "ttlSecondsAfterFinished": 60}
    followed = follow(admitted, raw, 3)
    assert (followed.change.generation, followed.change.priority) == (3, 40)
    assert (followed.change.suspend, followed.change.ttl_seconds) == (True, 60)
    assert followed.ignored == ()


def test_changed_immutable_fields_are_named_and_not_applied() -> None:
    admitted = RelayJobSpec.model_validate(RAW)
    raw = RAW | {"payload": {"n": 2}, "target": {"http": {"url": "http://127.0.0.1:8/"}}, "priority": 5}
    followed = follow(admitted, raw, 2)
    assert followed.ignored == ("payload", "target")
    assert followed.change.priority == 5
    message = ignored_message(followed.ignored)
    assert message.startswith("spec.payload, spec.target changed after creation")
    assert "create a new RelayJob" in message


def test_an_invalid_generation_changes_nothing_but_the_generation() -> None:
    admitted = RelayJobSpec.model_validate(RAW | {"priority": 9})
    followed = follow(admitted, {"target": {}, "priority": 500}, 4)
    assert (followed.change.generation, followed.change.priority) == (4, 9)
    assert followed.ignored == ("priority", "target")


@given(
    priority=st.integers(-100, 100),
    suspend=st.booleans(),
    ttl=st.none() | st.integers(0, 2**31 - 1),
)
def test_editing_only_mutable_fields_ignores_nothing(priority: int, suspend: bool, ttl: int | None) -> None:
    admitted = RelayJobSpec.model_validate(RAW)
    edit: dict[str, object] = {"priority": priority, "suspend": suspend}
    if ttl is not None:
        edit["ttlSecondsAfterFinished"] = ttl
    assert set(edit) <= MUTABLE_FIELDS
    followed = follow(admitted, RAW | edit, 2)
    assert followed.ignored == ()
    assert (followed.change.priority, followed.change.suspend, followed.change.ttl_seconds) == (
        priority,
        suspend,
        ttl,
    )


def _row(phase: Phase, attempts: int, generation: int = 1) -> JobRow:
    done = job_row(phase, attempts=attempts, **RAW).model_copy(
        update={"generation": generation, "reason": "Succeeded", "message": "ok", "started_at": NOW}
    )
    return done.model_copy(update={"finished_at": NOW if phase is Phase.COMPLETED else None})


def test_the_status_the_ledger_writes_agrees_with_it() -> None:
    for phase in Phase:
        row = _row(phase, 2, generation=3)
        assert status_agrees(status_document(row, datetime.now(UTC)), row)


def test_an_overwritten_status_disagrees() -> None:
    row = _row(Phase.COMPLETED, 1)
    written = status_document(row, datetime.now(UTC))
    assert not status_agrees(written | {"phase": "Retrying"}, row)
    assert not status_agrees(written | {"attempts": 0}, row)
    assert not status_agrees(written | {"conditions": []}, row)
    assert not status_agrees(written | {"observedGeneration": 0}, row)
    assert not status_agrees({}, row)
