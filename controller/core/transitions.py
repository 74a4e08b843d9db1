"""The job's state machine: every phase a job can enter, from which phases, and why.

`EDGES` is the whole table. Each `Transition` names one step; the functions below decide the steps
that need a decision (admission's first phase, an attempt's outcome, an attempt cut off at
shutdown). The ledger applies every step as one statement under the job's row lock
(`adapters/sql/<transition>.sql`), with the phases, reasons and attempt outcomes given as
parameters from this module, so no phase is written anywhere else.

    transition  from                          to                          decided in / run by
    admit       (new)                         Queued, Suspended           admitted / runtime.admission, intake
    lose_queue  Queued, Retrying              Queued (QueueNotFound)      runtime.queues (queue deleted)
    find_queue  Queued (QueueNotFound)        Queued (QueueFound)         runtime.queues (queue created)
    refuse      (new)                         Rejected                    core.admission / runtime.admission
    start       Queued, Retrying, Processing  Processing                  ledger / worker, after a claim
    exhaust     Processing (lease lost)       DeadLettered                ledger / worker, after a claim
    expire      Queued, Retrying, Processing  DeadLettered                ledger / worker, after a claim
    hold        Processing (lease lost)       Suspended                   ledger / worker, after a claim
    record      Processing                    Completed, Retrying,        after_attempt / worker, settling
                                              DeadLettered, Suspended
    cut_off     Processing                    Retrying, DeadLettered      cut_off / worker, drain
    suspend     Queued, Retrying              Suspended                   core.changes / runtime.admission
    resume      Suspended                     Queued                      core.changes / runtime.admission
    redrive     DeadLettered                  Queued                      ledger / runtime.admission
    cancel      Queued, Retrying, Processing, Cancelled (a finished job   ledger / runtime.admission, deletion
                Suspended                     keeps its phase)

A job is dead-lettered in four places, and only there: `record` (a permanent failure, the last
attempt failed, or its retry would start after the active deadline), `exhaust` (the last attempt's
worker died), `expire` (claimed after its active deadline) and `cut_off` (the last attempt was
stopped at shutdown). Nothing leaves Completed, Rejected or Cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from controller.core.backoff import retry_delay
from controller.model.jobs import ExecutionResult, JobRow, Outcome
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec

MAX_ERROR_CHARS = 512


class Transition(StrEnum):
    ADMIT = "admit"
    REFUSE = "refuse"
    START = "start"
    EXHAUST = "exhaust"
    EXPIRE = "expire"
    HOLD = "hold"
    RECORD = "record"
    CUT_OFF = "cut_off"
    SUSPEND = "suspend"
    RESUME = "resume"
    REDRIVE = "redrive"
    CANCEL = "cancel"
    LOSE_QUEUE = "lose_queue"
    FIND_QUEUE = "find_queue"


@dataclass(frozen=True)
class Edge:
    """Where a transition may start (`None`: a job the ledger does not hold yet), where it may end,
    and the reasons it gives."""

    sources: frozenset[Phase | None]
    targets: frozenset[Phase]
    reasons: frozenset[Reason]


def _edge(sources: Iterable[Phase | None], targets: Iterable[Phase], reasons: Iterable[Reason]) -> Edge:
    return Edge(frozenset(sources), frozenset(targets), frozenset(reasons))


WAITING = {Phase.QUEUED, Phase.RETRYING}
ACTIVE = frozenset({Phase.QUEUED, Phase.RETRYING, Phase.PROCESSING})

EDGES: dict[Transition, Edge] = {
    Transition.ADMIT: _edge(
        {None},
        {Phase.QUEUED, Phase.SUSPENDED},
        {Reason.ADMITTED, Reason.DELAYED, Reason.SUSPENDED, Reason.QUEUE_NOT_FOUND},
    ),
    # A job whose RelayQueue is gone waits as Queued (its backoff, if any, still counts in Redis)
    # until a queue of that name exists again; nothing claims it meanwhile.
    Transition.LOSE_QUEUE: _edge(WAITING, {Phase.QUEUED}, {Reason.QUEUE_NOT_FOUND}),
    Transition.FIND_QUEUE: _edge({Phase.QUEUED}, {Phase.QUEUED}, {Reason.QUEUE_FOUND}),
    Transition.REFUSE: _edge(
        {None},
        {Phase.REJECTED},
        {
            Reason.INVALID_SPEC,
            Reason.PAYLOAD_TOO_LARGE,
            Reason.UNKNOWN_EXECUTOR,
            Reason.NULLIFIER_IN_USE,
            Reason.NULLIFIER_SPENT,
        },
    ),
    # Processing here means the lease of the attempt running was lost: its worker died or froze.
    Transition.START: _edge({*WAITING, Phase.PROCESSING}, {Phase.PROCESSING}, {Reason.STARTED}),
    Transition.EXHAUST: _edge({Phase.PROCESSING}, {Phase.DEAD_LETTERED}, {Reason.ATTEMPTS_EXHAUSTED}),
    # spec.activeDeadlineSeconds: no attempt starts after it (a lost lease's job included).
    Transition.EXPIRE: _edge({*WAITING, Phase.PROCESSING}, {Phase.DEAD_LETTERED}, {Reason.DEADLINE_EXCEEDED}),
    Transition.HOLD: _edge({Phase.PROCESSING}, {Phase.SUSPENDED}, {Reason.SUSPENDED}),
    Transition.RECORD: _edge(
        {Phase.PROCESSING},
        {Phase.COMPLETED, Phase.RETRYING, Phase.DEAD_LETTERED, Phase.SUSPENDED},
        {
            Reason.SUCCEEDED,
            Reason.RETRY_SCHEDULED,
            Reason.PERMANENT_FAILURE,
            Reason.ATTEMPTS_EXHAUSTED,
            Reason.DEADLINE_EXCEEDED,
            Reason.SUSPENDED,
        },
    ),
    Transition.CUT_OFF: _edge(
        {Phase.PROCESSING},
        {Phase.RETRYING, Phase.DEAD_LETTERED},
        {Reason.SHUTDOWN_GRACE_EXCEEDED, Reason.ATTEMPTS_EXHAUSTED},
    ),
    Transition.SUSPEND: _edge(WAITING, {Phase.SUSPENDED}, {Reason.SUSPENDED}),
    Transition.RESUME: _edge({Phase.SUSPENDED}, {Phase.QUEUED}, {Reason.RESUMED}),
    Transition.REDRIVE: _edge({Phase.DEAD_LETTERED}, {Phase.QUEUED}, {Reason.REDRIVEN}),
    # A job deleted after it finished keeps its phase: the ledger still tells how it ended.
    Transition.CANCEL: _edge({*ACTIVE, Phase.SUSPENDED}, {Phase.CANCELLED}, {Reason.CANCELLED}),
}


def can(transition: Transition, source: Phase | None, target: Phase) -> bool:
    """Whether `transition` may take a job from `source` to `target`."""
    edge = EDGES[transition]
    return source in edge.sources and target in edge.targets


@dataclass(frozen=True)
class Decision:
    """What to record: the next phase and its explanation."""

    phase: Phase
    reason: Reason
    message: str
    next_attempt_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


def queue_missing_message(queue: str) -> str:
    return f"RelayQueue {queue!r} does not exist in this namespace: the job waits until it does"


def queue_found_message(queue: str) -> str:
    return f"RelayQueue {queue!r} exists: the job waits for its turn in it"


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def admitted(spec: RelayJobSpec, created: datetime, now: datetime, queue_found: bool = True) -> Decision:
    """`admit`: the first phase of a job whose spec was accepted. `created` is the RelayJob's
    creationTimestamp, from which `delaySeconds` counts; `queue_found` says whether the RelayQueue
    the job names exists (the namespace's `default` always does)."""
    start = spec.earliest_start(created)
    later = start if start > now else None
    if spec.suspend:  # resumed, it still waits for notBefore / delaySeconds
        return Decision(Phase.SUSPENDED, Reason.SUSPENDED, "spec.suspend is true", later)
    if not queue_found:
        return Decision(Phase.QUEUED, Reason.QUEUE_NOT_FOUND, queue_missing_message(spec.queue), later)
    if later is not None:
        shown = later.astimezone(UTC)
        return Decision(Phase.QUEUED, Reason.DELAYED, f"not before {shown:%Y-%m-%dT%H:%M:%SZ}", later)
    return Decision(Phase.QUEUED, Reason.ADMITTED, "queued")


def after_attempt(
    row: JobRow,
    attempt: int,
    result: ExecutionResult,
    now: datetime,
    rand: Callable[[], float] | None = None,
) -> Decision:
    """`record`: the phase that follows attempt number `attempt` of `row`. (The ledger holds a
    retry back as Suspended instead when the job was suspended meanwhile; see `held_retry`.)"""
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
    retry_at = now + timedelta(seconds=delay)
    if row.deadline_at is not None and retry_at > row.deadline_at:
        # A retry that could never start: dead-lettered now rather than when it is claimed.
        deadline = row.deadline_at.astimezone(UTC)
        return Decision(
            Phase.DEAD_LETTERED,
            Reason.DEADLINE_EXCEEDED,
            clip(
                f"attempt {attempt} failed ({error}); its retry, due in {delay:.1f}s, would start after "
                f"spec.activeDeadlineSeconds runs out at {deadline:%Y-%m-%dT%H:%M:%SZ}"
            ),
            result=result.result or None,
            error=error,
        )
    return Decision(
        Phase.RETRYING,
        Reason.RETRY_SCHEDULED,
        clip(f"attempt {attempt} failed ({error}); retrying in {delay:.1f}s"),
        next_attempt_at=retry_at,
        error=error,
    )


def cut_off(row: JobRow, grace_seconds: float, now: datetime) -> Decision:
    """`cut_off`: an attempt still running when the operator's shutdown grace ran out was stopped
    with its outcome unknown. It counts, as a lost lease does (the target may have acted on it),
    but the next attempt is due at once: the target did not fail, the operator went away, and
    another replica is waiting."""
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


# What `record` turns a retry into when the job was suspended while its attempt ran: decided
# under the row lock (the suspension may land while the outcome is being recorded), so the
# ledger applies it, with these values.
HELD_RETRY = (Phase.RETRYING, Phase.SUSPENDED, Reason.SUSPENDED)
HELD_RETRY_NOTE = "; not retried while spec.suspend is true"
