"""What the user sees of each state: a RelayJob's `.status` for a ledger row, and its conditions.

Pure. The status writer asks `status_document` what to show; admission asks `status_agrees`
whether what a RelayJob shows is still the ledger's. Transitions are in `core.transitions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from controller.model.jobs import JobRow
from controller.model.phases import Phase


def _condition(
    ctype: str, status: str, reason: str, message: str, at: str, generation: int
) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
        "observedGeneration": generation,
    }


def _utc(value: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times. Several go into every status
    document, on the worker's hot path: `isoformat` is C, where strftime or an f-string of the
    fields cost twice as much or more. (A naive time is taken to be UTC already.)"""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def conditions_for(row: JobRow, now: datetime) -> list[dict[str, Any]]:
    """`Succeeded` and `Failed` as batch/v1 Job has them, so `kubectl wait` works the same way.

    `lastTransitionTime` is when the condition's status last changed (Kubernetes API conventions):
    the one the outcome made True, since the job finished (or `now`); any other, False since the
    job was queued (re-driven counts), or created if it never was. The outcome leaves those False,
    so it does not move their time."""
    since_queued = _utc(row.queued_at or row.created_at)
    reason = row.reason or row.phase.value
    message = row.message or ""
    return [
        _condition(
            ctype,
            status,
            reason,
            message,
            _utc(row.finished_at or now) if status == "True" else since_queued,
            row.generation,
        )
        for ctype, status in condition_statuses(row.phase).items()
    ]


def condition_statuses(phase: Phase) -> dict[str, str]:
    """The `status` of each condition `conditions_for` gives a row in `phase`, by type."""
    if phase is Phase.COMPLETED:
        return {"Succeeded": "True", "Failed": "False"}
    if phase in (Phase.DEAD_LETTERED, Phase.REJECTED):
        return {"Succeeded": "False", "Failed": "True"}
    return {"Succeeded": "False", "Failed": "False"}


def status_agrees(status: Mapping[str, Any], row: JobRow) -> bool:
    """Whether a RelayJob's `.status` shows what the ledger row says, in the fields a user acts on
    (phase, attempts, observed generation, and the conditions `kubectl wait` reads)."""
    return status_shows(status, row.phase, row.attempts, row.generation)


def status_shows(status: Mapping[str, Any], phase: Phase, attempts: int, generation: int) -> bool:
    """`status_agrees` for a ledger row's phase, attempts and generation."""
    if (
        status.get("phase") != phase.value
        or status.get("attempts") != attempts
        or status.get("observedGeneration") != generation
    ):
        return False
    shown = {c.get("type"): c.get("status") for c in status.get("conditions") or () if isinstance(c, dict)}
    return shown == condition_statuses(phase)


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
