import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.admission import Refused, admit
from controller.core.transitions import (
    EDGES,
    HELD_RETRY,
    Transition,
    admitted,
    after_attempt,
    can,
    cut_off,
)
from controller.model.jobs import ExecutionResult, JobRow, Outcome
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.model.spec import RelayJobSpec
from tests.unit.fakes import job_row

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def row(**changes: object) -> JobRow:
    base = job_row(Phase.PROCESSING, attempts=1, maxAttempts=3, backoff={"jitter": False})
    return base.model_copy(update={"retries": 0, "started_at": NOW, **changes})


def result(outcome: Outcome, **kw: object) -> ExecutionResult:
    return ExecutionResult.model_validate({"outcome": outcome, "reason": "HTTP503"} | kw)


def test_success_completes() -> None:
    d = after_attempt(row(), 1, result(Outcome.SUCCEEDED, result={"httpStatus": 200}), NOW)
    assert d.phase is Phase.COMPLETED and d.result == {"httpStatus": 200}


def test_retryable_schedules_backoff() -> None:
    d = after_attempt(row(retries=2), 3 - 1, result(Outcome.RETRYABLE), NOW)
    assert d.phase is Phase.RETRYING and d.reason == Reason.RETRY_SCHEDULED
    assert d.next_attempt_at == NOW + timedelta(seconds=4)


def test_retry_after_is_honoured() -> None:
    d = after_attempt(row(), 1, result(Outcome.RETRYABLE, retry_after_seconds=9), NOW)
    assert d.next_attempt_at == NOW + timedelta(seconds=9)


def test_last_attempt_dead_letters() -> None:
    d = after_attempt(row(attempts=3), 3, result(Outcome.RETRYABLE, message="boom"), NOW)
    assert d.phase is Phase.DEAD_LETTERED and d.reason == Reason.ATTEMPTS_EXHAUSTED
    assert "3 of 3" in d.message


def test_permanent_failure_dead_letters_at_once() -> None:
    d = after_attempt(row(), 1, result(Outcome.PERMANENT, reason="HTTP400"), NOW)
    assert d.phase is Phase.DEAD_LETTERED and d.reason == Reason.PERMANENT_FAILURE


# The table, read as a graph: what may follow what.
def _successors(phase: Phase | None) -> set[Phase]:
    return {t for edge in EDGES.values() if phase in edge.sources for t in edge.targets}


def test_every_phase_but_cancelled_is_reached_from_admission_and_pending_is_gone() -> None:
    seen: set[Phase] = set()
    frontier = _successors(None)
    while frontier:
        seen |= frontier
        frontier = {n for p in frontier for n in _successors(p)} - seen
    assert seen == set(Phase)


def test_nothing_leaves_completed_rejected_or_cancelled_and_dead_letters_leave_only_by_redrive() -> None:
    for phase in (Phase.COMPLETED, Phase.REJECTED, Phase.CANCELLED):
        assert _successors(phase) == set()
    leaving = [t for t, e in EDGES.items() if Phase.DEAD_LETTERED in e.sources]
    assert leaving == [Transition.REDRIVE]


def test_dead_lettering_has_exactly_four_paths() -> None:
    into = {t for t, e in EDGES.items() if Phase.DEAD_LETTERED in e.targets}
    assert into == {Transition.RECORD, Transition.EXHAUST, Transition.EXPIRE, Transition.CUT_OFF}


@pytest.mark.parametrize("transition", list(Transition))
@pytest.mark.parametrize("source", [None, *Phase])
@pytest.mark.parametrize("target", list(Phase))
def test_can_follows_the_table(transition: Transition, source: Phase | None, target: Phase) -> None:
    edge = EDGES[transition]
    assert can(transition, source, target) == (source in edge.sources and target in edge.targets)


@given(
    outcome=st.sampled_from(list(Outcome)),
    attempt=st.integers(1, 5),
    retry_after=st.none() | st.floats(0, 10**6),
)
def test_an_attempts_outcome_is_a_record_transition(
    outcome: Outcome, attempt: int, retry_after: float | None
) -> None:
    decision = after_attempt(
        row(attempts=attempt),
        attempt,
        result(outcome, retry_after_seconds=retry_after),
        NOW,
        rand=lambda: 0.5,
    )
    assert can(Transition.RECORD, Phase.PROCESSING, decision.phase)
    assert decision.reason in EDGES[Transition.RECORD].reasons


@given(attempts=st.integers(1, 3))
def test_a_cut_off_is_a_cut_off_transition(attempts: int) -> None:
    decision = cut_off(row(attempts=attempts), 25, NOW)
    assert can(Transition.CUT_OFF, Phase.PROCESSING, decision.phase)
    assert decision.reason in EDGES[Transition.CUT_OFF].reasons


@given(suspend=st.booleans(), delay=st.none() | st.integers(0, 3600), queue_found=st.booleans())
def test_admission_enters_through_admit(suspend: bool, delay: int | None, queue_found: bool) -> None:
    raw: dict[str, object] = {"target": {"noop": {}}, "suspend": suspend}
    if delay is not None:
        raw["delaySeconds"] = delay
    decision = admitted(RelayJobSpec.model_validate(raw), NOW, NOW, queue_found)
    assert can(Transition.ADMIT, None, decision.phase)
    assert decision.reason in EDGES[Transition.ADMIT].reasons
    assert (decision.next_attempt_at is not None) == bool(delay)


def test_a_job_whose_queue_is_missing_is_admitted_queued_with_the_reason_and_keeps_its_delay() -> None:
    spec = RelayJobSpec.model_validate({"target": {"noop": {}}, "queue": "bulk", "delaySeconds": 60})
    decision = admitted(spec, NOW, NOW, queue_found=False)
    assert (decision.phase, decision.reason) == (Phase.QUEUED, Reason.QUEUE_NOT_FOUND)
    assert "'bulk'" in decision.message and decision.next_attempt_at is not None


def test_losing_and_finding_a_queue_only_ever_leaves_a_job_queued() -> None:
    assert EDGES[Transition.LOSE_QUEUE].targets == {Phase.QUEUED}
    assert EDGES[Transition.FIND_QUEUE].sources == {Phase.QUEUED} == EDGES[Transition.FIND_QUEUE].targets
    assert Phase.PROCESSING not in EDGES[Transition.LOSE_QUEUE].sources


@pytest.mark.parametrize(
    "raw",
    [
        {"target": {}},
        {"target": {"noop": {}}, "payload": {"x": "a" * 70_000}},
        {"target": {"vendor": {}}},
        {"target": {"noop": {}}, "priority": 101},
    ],
)
def test_refusals_are_refuse_transitions(raw: dict[str, object]) -> None:
    verdict = admit(raw, 64 * 1024, {"noop", "http"})
    assert isinstance(verdict, Refused)
    assert verdict.reason in EDGES[Transition.REFUSE].reasons


def test_the_ledger_writes_only_what_the_table_allows() -> None:
    from controller.adapters import ledger

    start_targets = EDGES[Transition.START].targets | EDGES[Transition.EXHAUST].targets
    start_targets |= EDGES[Transition.HOLD].targets | EDGES[Transition.EXPIRE].targets
    phases = {p for p in ledger.START_PHASES if isinstance(p, Phase)}
    assert phases <= start_targets
    assert Reason.DEADLINE_EXCEEDED in ledger.START_PHASES
    assert EDGES[Transition.EXPIRE].reasons == {Reason.DEADLINE_EXCEEDED}
    held_from, held_to, held_reason = HELD_RETRY
    assert can(Transition.RECORD, Phase.PROCESSING, held_from)
    assert can(Transition.RECORD, Phase.PROCESSING, held_to)
    assert held_reason in EDGES[Transition.RECORD].reasons


def deadline_row(deadline_in: float) -> JobRow:
    spec = {"maxAttempts": 5, "activeDeadlineSeconds": 60, "backoff": {"jitter": False, "initialSeconds": 10}}
    base = job_row(Phase.PROCESSING, attempts=1, **spec)
    return base.model_copy(
        update={"retries": 0, "started_at": NOW, "deadline_at": NOW + timedelta(seconds=deadline_in)}
    )


def test_a_retry_due_before_the_active_deadline_is_scheduled() -> None:
    decision = after_attempt(deadline_row(10), 1, result(Outcome.RETRYABLE), NOW)
    assert decision.phase is Phase.RETRYING
    assert decision.next_attempt_at == NOW + timedelta(seconds=10)


def test_a_retry_that_would_start_after_the_active_deadline_dead_letters_now() -> None:
    decision = after_attempt(
        deadline_row(9.5), 1, result(Outcome.RETRYABLE, message="POST http://t/ answered 503"), NOW
    )
    assert (decision.phase, decision.reason) == (Phase.DEAD_LETTERED, Reason.DEADLINE_EXCEEDED)
    assert decision.next_attempt_at is None
    assert decision.message == (
        "attempt 1 failed (HTTP503: POST http://t/ answered 503); its retry, due in 10.0s, would start"
        " after spec.activeDeadlineSeconds runs out at 2026-11-27T12:00:09Z"
    )
    assert decision.error == "HTTP503: POST http://t/ answered 503"
    assert can(Transition.RECORD, Phase.PROCESSING, decision.phase)
    assert decision.reason in EDGES[Transition.RECORD].reasons


def test_a_retry_after_beyond_the_active_deadline_dead_letters_too() -> None:
    decision = after_attempt(deadline_row(30), 1, result(Outcome.RETRYABLE, retry_after_seconds=40), NOW)
    assert decision.reason is Reason.DEADLINE_EXCEEDED


def test_the_active_deadline_changes_nothing_for_a_success_or_a_permanent_failure() -> None:
    assert after_attempt(deadline_row(-5), 1, result(Outcome.SUCCEEDED), NOW).phase is Phase.COMPLETED
    permanent = after_attempt(deadline_row(-5), 1, result(Outcome.PERMANENT), NOW)
    assert permanent.reason is Reason.PERMANENT_FAILURE


SQL_FOLDER = Path(__file__).parents[2] / "controller" / "adapters"
STATE_WORDS = {p.value for p in Phase} | {r.value for r in Reason} | {o.value for o in AttemptOutcome}


def test_no_phase_reason_or_outcome_literal_is_left_in_adapter_sql() -> None:
    """Every phase, reason and attempt outcome reaches SQL as a parameter from core's enums, so the
    state machine is read in one place. (Migrations are history: they keep what they said.)"""
    sources = [*SQL_FOLDER.glob("sql/*.sql"), *SQL_FOLDER.glob("*.py"), *SQL_FOLDER.glob("executors/*.py")]
    assert len([s for s in sources if s.suffix == ".sql"]) >= 20
    found = {
        f"{source.name}: '{word}'"
        for source in sources
        for word in re.findall(r"'([A-Za-z]+)'", source.read_text())
        if word in STATE_WORDS
    }
    assert found == set()


def test_a_delayed_job_says_when_in_utc() -> None:

    spec = RelayJobSpec.model_validate({"target": {"noop": {}}, "notBefore": "2030-01-01T10:00:00+05:00"})
    decision = admitted(spec, NOW, NOW)
    assert decision.message == "not before 2030-01-01T05:00:00Z"
    assert decision.next_attempt_at == datetime(2030, 1, 1, 5, tzinfo=UTC)
