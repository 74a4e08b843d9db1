"""The state machine: what an attempt's outcome does to a job, and what the user sees of each state.

Every function here is pure. The worker asks `after_attempt` what to record; the status writer asks
`status_document` what to show. The ledger applies the decision, fenced by attempt number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.core.backoff import retry_delay
from controller.model.jobs import ExecutionResult, JobRow, Outcome
from controller.model.phases import Phase, Reason

MAX_ERROR_CHARS = 512


@dataclass(frozen=True)
class Decision:
    """What to record after an attempt: the next phase and its explanation."""

    phase: Phase
    reason: str
    message: str
    next_attempt_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def after_attempt(
    row: JobRow,
    attempt: int,
    result: ExecutionResult,
    now: datetime,
    rand: Callable[[], float] | None = None,
) -> Decision:
    """Decide the phase that follows attempt number `attempt` of `row`."""
    if result.outcome is Outcome.SUCCEEDED:
        return Decision(
            Phase.COMPLETED,
            Reason.SUCCEEDED,
            result.message or "attempt succeeded",
            result=result.result,
        )
    error = clip(f"{result.reason}: {result.message}" if result.message else result.reason)
    if result.outcome is Outcome.PERMANENT:
        return Decision(
            Phase.DEAD_LETTERED,
            Reason.PERMANENT_FAILURE,
            error,
            result=result.result or None,
            error=error,
        )
    if attempt >= row.spec.max_attempts:
        message = clip(f"{attempt} of {row.spec.max_attempts} attempts failed; last: {error}")
        return Decision(
            Phase.DEAD_LETTERED,
            Reason.ATTEMPTS_EXHAUSTED,
            message,
            result=result.result or None,
            error=error,
        )
    kwargs = {} if rand is None else {"rand": rand}
    delay = retry_delay(row.spec.backoff, row.retries, result.retry_after_seconds, **kwargs)
    return Decision(
        Phase.RETRYING,
        Reason.RETRY_SCHEDULED,
        clip(f"attempt {attempt} failed ({error}); retrying in {delay:.1f}s"),
        next_attempt_at=now + timedelta(seconds=delay),
        error=error,
    )


def lease_lost_decision(row: JobRow) -> Decision | None:
    """A re-claimed job whose earlier attempt died with its worker: dead-letter if none are left."""
    if row.attempts >= row.spec.max_attempts:
        return Decision(
            Phase.DEAD_LETTERED,
            Reason.ATTEMPTS_EXHAUSTED,
            f"{row.attempts} of {row.spec.max_attempts} attempts used; the last one lost its lease "
            "(worker died or froze)",
            error="LeaseExpired: the worker running the attempt stopped renewing its lease",
        )
    return None


def cut_off_decision(row: JobRow, grace_seconds: float, now: datetime) -> Decision:
    """An attempt still running when the operator's shutdown grace ran out was stopped with its outcome
    unknown. It counts, as a lost lease does (the target may have acted on it), but the next attempt is
    due at once: the target did not fail, the operator went away, and another replica is waiting."""
    what = f"attempt {row.attempts} was stopped after the operator's {grace_seconds:g}s shutdown grace"
    error = f"{Reason.SHUTDOWN_GRACE_EXCEEDED}: {what}"
    if row.attempts >= row.spec.max_attempts:
        return Decision(
            Phase.DEAD_LETTERED,
            Reason.ATTEMPTS_EXHAUSTED,
            clip(f"{row.attempts} of {row.spec.max_attempts} attempts used; {what}"),
            error=error,
        )
    return Decision(
        Phase.RETRYING,
        Reason.SHUTDOWN_GRACE_EXCEEDED,
        f"{what}; retrying at once",
        next_attempt_at=now,
        error=error,
    )


def _condition(
    ctype: str, status: bool, reason: str, message: str, at: datetime, generation: int
) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _utc(at),
        "observedGeneration": generation,
    }


def _utc(value: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times (several per status document,
    so without strftime, which costs several times as much)."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def conditions_for(row: JobRow, now: datetime) -> list[dict[str, Any]]:
    """`Succeeded` and `Failed` as batch/v1 Job has them, so `kubectl wait` works the same way."""
    at = row.finished_at or now
    gen = row.generation
    reason = row.reason or row.phase.value
    message = row.message or ""
    if row.phase is Phase.COMPLETED:
        return [
            _condition("Succeeded", True, reason, message, at, gen),
            _condition("Failed", False, reason, message, at, gen),
        ]
    if row.phase in (Phase.DEAD_LETTERED, Phase.REJECTED):
        return [
            _condition("Succeeded", False, reason, message, at, gen),
            _condition("Failed", True, reason, message, at, gen),
        ]
    since = row.queued_at or row.created_at
    return [
        _condition("Succeeded", False, reason, message, since, gen),
        _condition("Failed", False, reason, message, since, gen),
    ]


def status_agrees(status: Mapping[str, Any], row: JobRow) -> bool:
    """Whether a RelayJob's `.status` shows what the ledger row says, in the fields a user acts on
    (phase, attempts, observed generation, and the conditions `kubectl wait` reads)."""
    if (
        status.get("phase") != row.phase.value
        or status.get("attempts") != row.attempts
        or status.get("observedGeneration") != row.generation
    ):
        return False
    shown = {c.get("type"): c.get("status") for c in status.get("conditions") or () if isinstance(c, dict)}
    expected = {c["type"]: c["status"] for c in conditions_for(row, row.created_at)}
    return shown == expected


def status_document(row: JobRow, now: datetime) -> dict[str, Any]:
    """The whole `.status` of a RelayJob for a ledger row; the status writer sends it as one patch."""
    status: dict[str, Any] = {
        "phase": row.phase.value,
        "reason": row.reason,
        "message": row.message,
        "attempts": row.attempts,
        "retries": row.retries,
        "observedGeneration": row.generation,
        "nullifier": row.nullifier,
        "queuedAt": _utc(row.queued_at) if row.queued_at else None,
        "startedAt": _utc(row.started_at) if row.started_at else None,
        "completedAt": _utc(row.finished_at) if row.finished_at and row.phase is Phase.COMPLETED else None,
        "nextAttemptAt": _utc(row.next_attempt_at)
        if row.next_attempt_at and row.phase in (Phase.RETRYING, Phase.QUEUED)
        else None,
        "lastError": row.last_error,
        "result": row.result,
        "redriveToken": row.redrive_token,
        "conditions": conditions_for(row, now),
        "deadLetter": {
            "reason": row.reason,
            "message": row.message,
            "at": _utc(row.finished_at or now),
            "attempts": row.attempts,
        }
        if row.phase is Phase.DEAD_LETTERED
        else None,
    }
    return status
