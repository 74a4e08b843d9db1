"""Lifecycle phases and the reasons that explain them, as users read them in `kubectl get/describe`."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    QUEUED = "Queued"
    PROCESSING = "Processing"
    RETRYING = "Retrying"
    COMPLETED = "Completed"
    DEAD_LETTERED = "DeadLettered"
    REJECTED = "Rejected"
    SUSPENDED = "Suspended"
    # Ledger only: the RelayJob was deleted before it finished; no status is ever written for it.
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES

    @property
    def active(self) -> bool:
        """Waiting for or holding an attempt: the phases the queue must contain."""
        return self in (Phase.QUEUED, Phase.PROCESSING, Phase.RETRYING)


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.DEAD_LETTERED, Phase.REJECTED, Phase.CANCELLED})


class AttemptOutcome(StrEnum):
    """How one attempt ended, as the ledger's `attempts` table records it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    LOST = "lost"  # its worker stopped renewing the lease, or it was cut off at shutdown
    CANCELLED = "cancelled"


class Reason(StrEnum):
    ADMITTED = "Admitted"
    DELAYED = "Delayed"
    SUSPENDED = "Suspended"
    STARTED = "Started"
    SUCCEEDED = "Succeeded"
    RETRY_SCHEDULED = "RetryScheduled"
    ATTEMPTS_EXHAUSTED = "AttemptsExhausted"
    PERMANENT_FAILURE = "PermanentFailure"
    LEASE_EXPIRED = "LeaseExpired"
    SHUTDOWN_GRACE_EXCEEDED = "ShutdownGraceExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    PAYLOAD_TOO_DEEP = "PayloadTooDeep"
    UNKNOWN_EXECUTOR = "UnknownExecutor"
    NULLIFIER_IN_USE = "NullifierInUse"
    NULLIFIER_SPENT = "NullifierSpent"
    REDRIVEN = "Redriven"
    REDRIVE_IGNORED = "RedriveIgnored"
    RESUMED = "Resumed"
    CANCELLED = "Cancelled"
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    QUEUE_NOT_FOUND = "QueueNotFound"
    QUEUE_FOUND = "QueueFound"
    QUEUE_PAUSED = "QueuePaused"
    QUEUE_RESUMED = "QueueResumed"
