"""The PostgreSQL ledger: the source of truth for jobs, attempts and nullifiers.

Every state change is one conditional UPDATE: outcomes are fenced by (run, attempt) so a worker
that lost its lease cannot overwrite what the worker that re-claimed the job recorded, and the
partial unique index on held nullifiers decides double-spend races.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any
from uuid import UUID

import asyncpg

from controller.core.transitions import (
    ACTIVE,
    HELD_RETRY,
    HELD_RETRY_NOTE,
    WAITING,
    queue_found_message,
    queue_missing_message,
)
from controller.model.jobs import FencingToken, JobRef, JobRow, SpecChange
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.model.queues import QueueDefaults, QueueRef
from controller.model.spec import DEFAULT_QUEUE, RelayJobSpec

# Errors about a value PostgreSQL cannot hold: a property of the job, not of the server's health.
UNSTORABLE = (asyncpg.DataError, asyncpg.exceptions.ProgramLimitExceededError)
_MIGRATION_LOCK = 0x72656C6179  # "relay": serialises migrations across replicas starting at once


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # `spec` is json, not jsonb, so that it keeps numbers as written (see migration 0003). It comes
    # back as its text: pydantic parses and validates it in one pass (`_parse_spec`), for a third
    # less than `json.loads` and a validation of the result.
    await conn.set_type_codec("json", encoder=json.dumps, decoder=str, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's release hook. asyncpg's default sends `CLOSE ALL; UNLISTEN *; RESET ALL` and
    `pg_advisory_unlock_all()` on every release: a round trip, and statements for PostgreSQL to
    run, per use of the pool. Our sessions keep nothing between uses: no SET, LISTEN, cursors or
    session locks (behind PgBouncer in transaction mode they could not); asyncpg still rolls back
    an open transaction."""


async def connect(
    dsn: str, min_size: int, max_size: int, timeout: float, *, prepared_statements: bool = False
) -> asyncpg.Pool:
    """The process's one asyncpg pool; opening a connection gives up after `timeout` seconds.

    By default it works behind PgBouncer in transaction mode, where consecutive transactions of
    one client connection may run on different server sessions: no start-up parameters (PgBouncer
    refuses them) and no named prepared statements (they live in one session). Every statement is
    then prepared unnamed, and PostgreSQL plans an unnamed statement for the values it is given.

    `prepared_statements` (a direct connection only) keeps each statement prepared per connection,
    saving a round trip per statement. Batch statements must then still be planned for their batch:
    a cached generic plan assumes ten rows per array parameter, and joined batches of hundreds by
    rescanning one side per row of the other (a settle of 250 jobs took 70 ms instead of 5)."""
    options: dict[str, Any] = (
        {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
        if prepared_statements
        else {"statement_cache_size": 0}
    )
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        timeout=timeout,
        command_timeout=60,
        reset=_keep_session,
        **options,
    )
    assert pool is not None
    return pool


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("controller.adapters") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply missing migrations in order, in one transaction; returns the names applied.

    Replicas starting at once serialise on a transaction-level advisory lock, released by the
    commit: a session-level lock would outlive its transaction on a server session that PgBouncer
    hands to another client, and its unlock could run on a session that does not hold it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS relay_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM relay_schema_migrations")}
        applied: list[str] = []
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO relay_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    return applied


# A job's spec is written once, at admission, and never updated, so its parsed form can be kept by
# uid. Only small specs are kept, and only the most recently used: the hot path reads the same job
# three times within a second (attempt opened, outcome recorded, status written), and validating
# the spec is most of the cost of turning a row into a JobRow.
SPEC_CACHE_SIZE = 4096
SPEC_CACHE_MAX_CHARS = 2048  # of the spec's JSON text
# An OrderedDict, not a dict: a dict's oldest key is found by walking the emptied slots in front of
# it (`next(iter(...))`), which grows with the evictions since its last resize.
_specs: OrderedDict[UUID, RelayJobSpec] = OrderedDict()


def _parse_spec(record: asyncpg.Record) -> RelayJobSpec | None:
    if record["phase"] == Phase.REJECTED.value:
        try:
            return RelayJobSpec.model_validate_json(record["spec"])
        except ValueError:
            return None
    return RelayJobSpec.model_validate_json(record["spec"])


def _parse_or_none(spec: dict[str, Any]) -> RelayJobSpec | None:
    try:
        return RelayJobSpec.model_validate(spec)
    except ValueError:
        return None


def _spec(record: asyncpg.Record) -> RelayJobSpec | None:
    uid = record["uid"]
    spec = _specs.get(uid)
    if spec is not None:
        _specs.move_to_end(uid)  # the order is least recently used first
        return spec
    spec = _parse_spec(record)
    if spec is None or len(record["spec"]) > SPEC_CACHE_MAX_CHARS:
        return spec
    _specs[uid] = spec
    if len(_specs) > SPEC_CACHE_SIZE:
        _specs.popitem(last=False)
    return spec


# Every column a JobRow is built from, but the spec: statements whose caller already holds the
# parsed spec return these, so the spec is neither sent back nor decoded again.
_ROW_COLUMNS = (
    "uid", "namespace", "name", "seq", "phase", "generation", "nullifier", "attempts", "retries",
    "max_attempts", "next_attempt_at", "last_error", "result", "reason", "message",
    "redrive_token", "created_at", "queued_at", "started_at", "finished_at", "run", "version",
    "deleted_at", "priority", "suspend", "queue", "deadline_at",
)  # fmt: skip


def to_row(record: asyncpg.Record, spec: RelayJobSpec | None = None) -> JobRow:
    """A ledger row as the runtime sees it; `spec` is the job's parsed spec when the caller has it
    (the record then need not carry one). (Reconciliation's pass over every active job reads
    `Waiting` records instead, so it neither pays for rows nor pushes specs out of the cache.)

    Validated by pydantic's core from a plain dict: with the spec already parsed, that is cheaper
    than `model_construct`, whose Python loop over the fields was the largest single cost of the
    worker's hot path."""
    return JobRow.model_validate(
        {
            "ref": {"uid": record["uid"], "namespace": record["namespace"], "name": record["name"]},
            "seq": record["seq"],
            "phase": record["phase"],
            "spec_or_none": spec if spec is not None else _spec(record),
            "generation": record["generation"],
            "nullifier": record["nullifier"],
            "attempts": record["attempts"],
            "retries": record["retries"],
            "max_attempts": record["max_attempts"],
            "next_attempt_at": record["next_attempt_at"],
            "last_error": record["last_error"],
            "result": record["result"],
            "reason": record["reason"],
            "message": record["message"],
            "redrive_token": record["redrive_token"],
            "created_at": record["created_at"],
            "queued_at": record["queued_at"],
            "started_at": record["started_at"],
            "finished_at": record["finished_at"],
            "deadline_at": record["deadline_at"],
            "run": record["run"],
            "version": record["version"],
            "deleted": record["deleted_at"] is not None,
            "priority": record["priority"],
            "suspend": record["suspend"],
            "queue": record["queue"],
        }
    )


def _statement(name: str) -> str:
    return (resources.files("controller.adapters") / "sql" / f"{name}.sql").read_text()


# Every statement the ledger runs, loaded once. Each transition's file is named after it
# (core.transitions) and takes its phases, reasons and attempt outcomes as parameters.
SQL = {
    name: _statement(name)
    for name in (
        "admit", "admit_many", "attempts_of", "cancel", "cancel_attempts", "find_queue", "follow",
        "get", "get_many", "live_uids", "lose_queue", "nullifier_holder", "oldest_ready",
        "queue_counts", "queue_waiters", "queues_awaited", "record", "redrive", "redrive_ignored",
        "prune", "redrive_lock", "redrive_seen", "refuse", "shown", "start", "statuses_behind",
        "statuses_written", "ttl_due", "versions", "waiting",
    )
}  # fmt: skip
ACTIVE_PHASES = [p.value for p in ACTIVE]
FINISHED_PHASES = [Phase.COMPLETED.value, Phase.DEAD_LETTERED.value, Phase.REJECTED.value]
START_PHASES = (
    Phase.PROCESSING, Reason.STARTED, Phase.DEAD_LETTERED, Reason.ATTEMPTS_EXHAUSTED, Phase.SUSPENDED,
    Reason.SUSPENDED, AttemptOutcome.LOST, Reason.LEASE_EXPIRED, AttemptOutcome.RUNNING,
    Reason.DEADLINE_EXCEEDED,
)  # fmt: skip
HELD_FROM, HELD_PHASE, HELD_REASON = HELD_RETRY
RECORD_PHASES = (
    HELD_FROM, HELD_PHASE, HELD_REASON, HELD_RETRY_NOTE, Phase.PROCESSING, Phase.COMPLETED,
    Phase.DEAD_LETTERED, AttemptOutcome.RUNNING,
)  # fmt: skip


@dataclass(frozen=True)
class Shown:
    """A job as a listed RelayJob is compared with it: what admission followed last (generation,
    re-drive value) and what its status must show (phase, attempts)."""

    uid: UUID
    generation: int
    redrive_token: str | None
    phase: Phase
    attempts: int


@dataclass(frozen=True)
class Waiting:
    """An active job as reconciliation sees it."""

    uid: UUID
    namespace: str
    queue: str
    seq: int
    priority: int
    phase: Phase
    next_attempt_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None

    @property
    def queue_id(self) -> str:
        return QueueRef(self.namespace, self.queue).id


@dataclass(frozen=True)
class NewJob:
    """A RelayJob seen for the first time, as admission decided to record it."""

    ref: JobRef
    spec: RelayJobSpec
    raw_spec: dict[str, Any]
    generation: int
    phase: Phase
    reason: Reason
    message: str
    next_attempt_at: datetime | None


def _new_job_values(job: NewJob, spec: object) -> tuple[object, ...]:
    """The parameters of admit.sql / admit_many.sql for `job`, with its spec as the statement
    takes it, and the phase whose jobs are stamped `queued_at`."""
    return (
        job.ref.uid,
        job.ref.namespace,
        job.ref.name,
        job.generation,
        spec,
        job.phase.value,
        job.spec.nullifier,
        "reserved" if job.spec.nullifier else None,
        job.spec.max_attempts,
        job.next_attempt_at,
        job.reason.value,
        job.message,
        job.spec.ttl_seconds_after_finished,
        job.spec.priority,
        job.spec.suspend,
    )


@dataclass(frozen=True)
class Admission:
    row: JobRow
    created: bool


@dataclass(frozen=True)
class Refusal:
    """A job that never enters the queue; recorded so that the decision is durable and visible."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class StartBatch:
    """What opening attempts found: rows now Processing, rows dead-lettered because their last
    attempt lost its lease or their active deadline passed, rows suspended instead of started, and
    ids with no active row; and how long each started job had been ready to run, in seconds, where
    the ledger knows."""

    started: list[JobRow]
    exhausted: list[JobRow]
    suspended: list[JobRow]
    stale: list[str]
    waited: list[float] = field(default_factory=list)


class RedriveVerdict(StrEnum):
    REDRIVEN = "Redriven"
    NOT_DEAD_LETTERED = "NotDeadLettered"
    SEEN_BEFORE = "SeenBefore"
    NULLIFIER_HELD = "NullifierHeld"
    UNKNOWN_JOB = "UnknownJob"


@dataclass(frozen=True)
class Redrive:
    """What `Ledger.redrive` did with a value: the verdict, the row when it changed, and the phase
    the job was in when the value arrived."""

    verdict: RedriveVerdict
    row: JobRow | None
    phase: Phase | None = None


@dataclass(frozen=True)
class OutcomeRecord:
    """One attempt's outcome as the ledger records it, fenced by the attempt's fencing token."""

    uid: UUID
    fence: FencingToken
    phase: Phase
    reason: Reason | str
    message: str
    outcome: AttemptOutcome
    next_attempt_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


def start_arguments(uids: Sequence[str], worker: str) -> tuple[object, ...]:
    """The parameters of start.sql for the claimed `uids`, opened by `worker`."""
    return ([UUID(u) for u in uids], ACTIVE_PHASES, worker, *START_PHASES)


def record_arguments(items: Sequence[OutcomeRecord]) -> tuple[object, ...]:
    """The parameters of record.sql for a batch of outcomes: one array per column, then the
    phases, reasons and outcome the statement compares with."""
    return (
        [i.uid for i in items],
        [i.fence.run for i in items],
        [i.fence.attempt for i in items],
        [i.phase.value for i in items],
        [str(i.reason) for i in items],
        [i.message for i in items],
        [i.next_attempt_at for i in items],
        [json.dumps(i.result) if i.result is not None else None for i in items],
        [i.error for i in items],
        [i.outcome.value for i in items],
        *RECORD_PHASES,
    )


class Ledger:
    """The ledger's operations, each one statement (or one short transaction) on the pool.

    Rows come back as `JobRow`s; times are timezone-aware datetimes; a value PostgreSQL cannot
    store raises one of `UNSTORABLE`; a connection problem raises asyncpg's or OSError, which the
    callers retry (`runtime.retry.TRANSIENT`)."""

    def __init__(self, pool: asyncpg.Pool, worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id

    async def get(self, uid: UUID) -> JobRow | None:
        record = await self.pool.fetchrow(SQL["get"], uid)
        return to_row(record) if record else None

    async def get_many(self, uids: Iterable[UUID]) -> dict[UUID, JobRow]:
        records = await self.pool.fetch(SQL["get_many"], list(uids))
        return {r["uid"]: to_row(r) for r in records}

    async def shown(self, uids: Iterable[UUID]) -> dict[UUID, Shown]:
        """`Shown` for each of `uids` the ledger holds (deleted ones too), by uid: what a page of a
        RelayJob list is checked against, without the spec a `JobRow` parses."""
        records = await self.pool.fetch(SQL["shown"], list(uids))
        return {
            r["uid"]: Shown(r["uid"], r["generation"], r["redrive_token"], Phase(r["phase"]), r["attempts"])
            for r in records
        }

    async def admit_many(self, jobs: Sequence[NewJob]) -> dict[UUID, JobRow]:
        """Insert new jobs in one statement and return the rows it created. A job missing from
        the answer was recorded before, or its nullifier is held: `admit` settles each of those.

        A spec PostgreSQL cannot store fails the whole statement (UNSTORABLE); the caller then
        admits the jobs one by one, so only the bad one is refused."""
        if not jobs:
            return {}
        columns = zip(*(_new_job_values(job, json.dumps(job.raw_spec)) for job in jobs), strict=True)
        queues = [job.spec.queue for job in jobs]
        records = await self.pool.fetch(SQL["admit_many"], *columns, Phase.QUEUED.value, queues)
        specs = {job.ref.uid: job.spec for job in jobs}
        return {r["uid"]: to_row(r, specs[r["uid"]]) for r in records}

    async def admit(self, job: NewJob) -> Admission:
        """Insert the job once (idempotent by uid), reserving its nullifier if it has one.

        The reservation is the INSERT itself: the partial unique index refuses a second holder in
        the namespace, and the loser is recorded as `Rejected` with the holder's state as reason.
        """
        ref, spec, raw_spec, generation = job.ref, job.spec, job.raw_spec, job.generation
        async with self.pool.acquire() as conn:
            for _ in range(5):
                record = await conn.fetchrow(
                    SQL["admit"], *_new_job_values(job, raw_spec), Phase.QUEUED.value, spec.queue
                )
                if record is not None:
                    return Admission(to_row(record, spec), created=True)
                existing = await conn.fetchrow(SQL["get"], ref.uid)
                if existing is not None:
                    return Admission(to_row(existing), created=False)
                holder = await conn.fetchrow(SQL["nullifier_holder"], ref.namespace, spec.nullifier)
                if holder is None:
                    continue  # the holder released it between our two statements: try again
                spent = holder["nullifier_state"] == "spent"
                why = Reason.NULLIFIER_SPENT if spent else Reason.NULLIFIER_IN_USE
                # Nullifiers are per namespace, so the holder is in this job's namespace: naming it
                # tells the user nothing they may not read.
                text = (
                    f"nullifier {spec.nullifier!r} is "
                    f"{'already spent' if spent else 'reserved'} by RelayJob {holder['name']}"
                )
                return await self._record_refusal(conn, ref, raw_spec, generation, spec, why, text)
        raise RuntimeError(f"could not admit {ref}: nullifier {spec.nullifier!r} kept changing hands")

    async def refuse(
        self, ref: JobRef, raw_spec: dict[str, Any], generation: int, refusal: Refusal
    ) -> Admission:
        async with self.pool.acquire() as conn:
            return await self._record_refusal(
                conn, ref, raw_spec, generation, None, refusal.reason, refusal.message
            )

    async def _record_refusal(
        self,
        conn: asyncpg.Connection,
        ref: JobRef,
        raw_spec: dict[str, Any],
        generation: int,
        spec: RelayJobSpec | None,
        reason: Reason,
        message: str,
    ) -> Admission:
        values: tuple[object, ...] = (
            ref.uid,
            ref.namespace,
            ref.name,
            generation,
            raw_spec,
            spec.nullifier if spec else None,
            spec.max_attempts if spec else 1,
            reason.value,
            message,
            spec.ttl_seconds_after_finished if spec else None,
            Phase.REJECTED.value,
        )
        try:
            record = await conn.fetchrow(SQL["refuse"], *values)
        except UNSTORABLE as error:
            # The refusal must be recorded even when the spec itself cannot be (nesting beyond
            # PostgreSQL's stack, a number beyond a column): keep why instead of what.
            kept = {"unstored": f"the spec could not be stored: {type(error).__name__}"}
            record = await conn.fetchrow(SQL["refuse"], *values[:4], kept, *values[5:])
        if record is None:
            record = await conn.fetchrow(SQL["get"], ref.uid)
            return Admission(to_row(record), created=False)
        return Admission(to_row(record), created=True)

    async def start_attempts(self, uids: Sequence[str]) -> StartBatch:
        """Open the next attempt of each claimed job (uids as strings, as Redis holds them), in one
        transaction: transitions start, exhaust and hold (start.sql). Ids with no live, active
        ledger row are stale."""
        records = await self.pool.fetch(SQL["start"], *start_arguments(uids, self.worker_id))
        by_kind: dict[str, list[JobRow]] = {"started": [], "exhausted": [], "suspended": []}
        waited: list[float] = []
        for record in records:
            by_kind[record["kind"]].append(to_row(record))
            if record["waited_seconds"] is not None:
                # A retry's due time came from a worker's clock, which may run ahead of the server's.
                waited.append(max(0.0, record["waited_seconds"]))
        found = {str(r["uid"]) for r in records}
        return StartBatch(
            by_kind["started"],
            by_kind["exhausted"],
            by_kind["suspended"],
            [u for u in uids if u not in found],
            waited,
        )

    async def record_outcomes(
        self, items: Sequence[OutcomeRecord], specs: Mapping[UUID, RelayJobSpec]
    ) -> list[JobRow]:
        """Record outcomes (transition record, record.sql); returns the rows that took effect, with
        the specs the caller gave (a spec never changes, so it is not read back). A row missing
        from the answer was fenced out: another worker re-claimed that job, or it was deleted."""
        if not items:
            return []
        records = await self.pool.fetch(SQL["record"], *record_arguments(items))
        return [to_row(r, specs[r["uid"]]) for r in records]

    async def redrive(self, uid: UUID, value: str) -> Redrive:
        """Act on a `relay.dev/redrive` value: the first time the job carries it, and only then.

        Every value seen is recorded (table `redrives`), whatever the job's phase, so a value is
        acted on at most once across restarts and replicas. A dead-lettered job is re-queued
        (transition redrive); if another job of its namespace took its nullifier meanwhile, it
        stays dead-lettered and says why."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(SQL["redrive_lock"], uid)
            if current is None:
                return Redrive(RedriveVerdict.UNKNOWN_JOB, None)
            phase = Phase(current["phase"])
            dead = phase is Phase.DEAD_LETTERED
            if not await conn.fetchval(SQL["redrive_seen"], uid, value, dead):
                record = await conn.fetchrow(SQL["redrive_ignored"], uid, value, None)
                return Redrive(RedriveVerdict.SEEN_BEFORE, to_row(record), phase)
            if not dead:
                record = await conn.fetchrow(SQL["redrive_ignored"], uid, value, None)
                return Redrive(RedriveVerdict.NOT_DEAD_LETTERED, to_row(record), phase)
            try:
                async with conn.transaction():
                    record = await conn.fetchrow(
                        SQL["redrive"], uid, value, Phase.QUEUED.value, Reason.REDRIVEN.value
                    )
                return Redrive(RedriveVerdict.REDRIVEN, to_row(record), phase)
            except asyncpg.UniqueViolationError:
                why = "cannot re-drive: the nullifier is held by another RelayJob of this namespace"
                record = await conn.fetchrow(SQL["redrive_ignored"], uid, value, why)
                return Redrive(RedriveVerdict.NULLIFIER_HELD, to_row(record), phase)

    async def follow(self, uid: UUID, change: SpecChange) -> JobRow | None:
        """Apply a newer generation's mutable fields (follow.sql: transitions suspend and resume).
        Returns the new row, or None when the ledger has already acted on this generation (or
        the job is gone)."""
        record = await self.pool.fetchrow(
            SQL["follow"],
            uid,
            change.generation,
            change.priority,
            change.ttl_seconds,
            change.suspend,
            Phase.QUEUED.value,
            Phase.RETRYING.value,
            Phase.SUSPENDED.value,
            Reason.SUSPENDED.value,
            Reason.RESUMED.value,
        )
        return to_row(record) if record else None

    async def cancel(self, uid: UUID) -> JobRow | None:
        """The RelayJob is gone (transition cancel): close the job and its running attempt, and
        free a reserved (not spent) nullifier."""
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(SQL["cancel"], uid, Phase.CANCELLED.value, FINISHED_PHASES)
            await conn.execute(
                SQL["cancel_attempts"],
                uid,
                AttemptOutcome.CANCELLED.value,
                Reason.CANCELLED.value,
                AttemptOutcome.RUNNING.value,
            )
        return to_row(record) if record else None

    async def statuses_written(self, written: Mapping[UUID, int]) -> dict[UUID, int]:
        """Record the versions just patched onto RelayJobs, and return each job's current version.

        The newest recorded version wins: replicas race, and one whose older document lands last
        sees the newer version in the answer and writes again (see `StatusWriter.flush`)."""
        records = await self.pool.fetch(SQL["statuses_written"], list(written), list(written.values()))
        return {r["uid"]: r["version"] for r in records}

    async def statuses_behind(self, older_than: float, newer_than: float | None = None) -> list[UUID]:
        """Live jobs whose last transition, at least `older_than` seconds ago (and, when given, at
        most `newer_than`), never reached their RelayJob: the replica that recorded it stopped
        before its status patch, or every write of it failed."""
        records = await self.pool.fetch(SQL["statuses_behind"], older_than, newer_than)
        return [r["uid"] for r in records]

    async def versions(self, uids: Iterable[UUID]) -> dict[UUID, int]:
        """The current version of each job: enough to tell whether a row read earlier is stale."""
        records = await self.pool.fetch(SQL["versions"], list(uids))
        return {r["uid"]: r["version"] for r in records}

    async def waiting(self) -> list[Waiting]:
        """Every active job, with just what placing it in Redis needs: maintenance reads all of
        them, and building full rows (spec validation included) stalled the loop for seconds at
        tens of thousands of jobs."""
        records = await self.pool.fetch(SQL["waiting"], ACTIVE_PHASES)
        return [
            Waiting(
                r["uid"],
                r["namespace"],
                r["queue"],
                r["seq"],
                r["priority"],
                Phase(r["phase"]),
                r["next_attempt_at"],
                r["queued_at"],
                r["started_at"],
            )
            for r in records
        ]

    async def lose_queue(self, queue: QueueRef) -> list[JobRow]:
        """Transition lose_queue for every waiting job of `queue`, which no longer exists; returns
        the rows it changed (jobs already waiting for it are left as they are)."""
        records = await self.pool.fetch(
            SQL["lose_queue"],
            queue.namespace,
            queue.name,
            [p.value for p in WAITING],
            Phase.QUEUED.value,
            Reason.QUEUE_NOT_FOUND.value,
            queue_missing_message(queue.name),
        )
        return [to_row(r) for r in records]

    async def find_queue(
        self, queue: QueueRef, defaults: QueueDefaults, fallback_ttl: int | None = None
    ) -> list[JobRow]:
        """Transition find_queue for every job that waited for `queue`, which now exists: each
        gets the queue's `defaults` for the fields its spec leaves out (then `fallback_ttl`, the
        operator's, for a TTL neither sets), as a job admitted into the queue would have.

        The specs are filled here rather than in SQL: the ledger keeps them as `json` text, and
        PostgreSQL's jsonb would rewrite the numbers of their payloads."""
        async with self.pool.acquire() as conn, conn.transaction():
            waiters = await conn.fetch(
                SQL["queue_waiters"],
                queue.namespace,
                queue.name,
                Phase.QUEUED.value,
                Reason.QUEUE_NOT_FOUND.value,
            )
            if not waiters:
                return []
            filled = [defaults.fill(json.loads(r["spec"])) for r in waiters]
            for spec in filled:
                if spec.get("ttlSecondsAfterFinished") is None and fallback_ttl is not None:
                    spec["ttlSecondsAfterFinished"] = fallback_ttl
            parsed = [_parse_or_none(spec) for spec in filled]
            records = await conn.fetch(
                SQL["find_queue"],
                [r["uid"] for r in waiters],
                [json.dumps(spec) for spec in filled],
                Reason.QUEUE_FOUND.value,
                queue_found_message(queue.name),
                [p.max_attempts if p else 5 for p in parsed],
                [p.ttl_seconds_after_finished if p else None for p in parsed],
            )
        for r in records:
            _specs.pop(r["uid"], None)  # the cached parse is of the spec before its defaults
        return [to_row(r) for r in records]

    async def queues_awaited(self) -> dict[QueueRef, bool]:
        """Each non-default queue that waiting jobs name -> whether some of them wait for it as
        QueueNotFound (the ledger believes it missing)."""
        records = await self.pool.fetch(
            SQL["queues_awaited"],
            Reason.QUEUE_NOT_FOUND.value,
            [p.value for p in WAITING],
            DEFAULT_QUEUE,
        )
        found: dict[QueueRef, bool] = {}
        for r in records:
            ref = QueueRef(r["namespace"], r["queue"])
            found[ref] = found.get(ref, False) or bool(r["lost"])
        return found

    async def dead_lettered_by_queue(self, namespaces: Iterable[str]) -> dict[QueueRef, int]:
        """Live dead-lettered jobs per queue of `namespaces`."""
        records = await self.pool.fetch(SQL["queue_counts"], list(namespaces), Phase.DEAD_LETTERED.value)
        return {QueueRef(r["namespace"], r["queue"]): r["dead_lettered"] for r in records}

    async def oldest_ready_age(self) -> float:
        """Seconds since the oldest job ready to run (and not started) became ready; 0.0 when none is."""
        age = await self.pool.fetchval(
            SQL["oldest_ready"], [p.value for p in WAITING], Reason.QUEUE_NOT_FOUND.value
        )
        return max(0.0, age or 0.0)

    async def live_uids(self) -> set[UUID]:
        """Jobs the ledger believes have a RelayJob (not deleted), whatever their phase."""
        return {r["uid"] for r in await self.pool.fetch(SQL["live_uids"])}

    async def ttl_due(self, limit: int = 500) -> list[JobRow]:
        """At most `limit` finished jobs whose ttlSecondsAfterFinished has run out."""
        return [to_row(r) for r in await self.pool.fetch(SQL["ttl_due"], limit)]

    async def prune(self, retention_seconds: float, limit: int) -> int:
        """Forget at most `limit` jobs deleted and finished more than `retention_seconds` ago, with
        their attempts (prune.sql); returns how many went."""
        phases = [*FINISHED_PHASES, Phase.CANCELLED.value]
        status = await self.pool.execute(SQL["prune"], phases, retention_seconds, limit)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <n>"

    async def attempts_of(self, uid: UUID) -> list[dict[str, Any]]:
        """Every attempt of the job, in order, as the `attempts` table holds them."""
        return [dict(r) for r in await self.pool.fetch(SQL["attempts_of"], uid)]
