"""The PostgreSQL ledger: the source of truth for jobs, attempts and nullifiers.

Every state change is one conditional UPDATE: outcomes are fenced by (run, attempt) so a worker
that lost its lease cannot overwrite what the worker that re-claimed the job recorded, and the
partial unique index on held nullifiers decides double-spend races.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any
from uuid import UUID

import asyncpg

from controller.model.jobs import JobRef, JobRow, SpecChange
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec

ACTIVE = (Phase.QUEUED.value, Phase.RETRYING.value, Phase.PROCESSING.value)
# Errors about a value PostgreSQL cannot hold: a property of the job, not of the server's health.
UNSTORABLE = (asyncpg.DataError, asyncpg.exceptions.ProgramLimitExceededError)
_MIGRATION_LOCK = 0x72656C6179  # "relay": serialises migrations across replicas starting at once


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # `spec` is json, not jsonb, so that it keeps numbers as written (see migration 0003).
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's release hook. asyncpg's default sends `CLOSE ALL; UNLISTEN *; RESET ALL` and
    `pg_advisory_unlock_all()` on every release: a round trip, and statements for PostgreSQL to
    run, per use of the pool. Our sessions keep nothing between uses: no SET, LISTEN or cursors,
    and `migrate` releases its lock itself; asyncpg still rolls back an open transaction."""


async def connect(dsn: str, min_size: int, max_size: int, timeout: float) -> asyncpg.Pool:
    """The process's one asyncpg pool; opening a connection gives up after `timeout` seconds."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # Plan each batch statement for the batch it is given: a cached generic plan assumes
        # ten rows per array parameter, and joined batches of hundreds by rescanning one side
        # per row of the other (a settle of 250 jobs took 70 ms instead of 5).
        server_settings={"plan_cache_mode": "force_custom_plan"},
        timeout=timeout,
        command_timeout=60,
        reset=_keep_session,
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
    """Apply missing migrations in order, each in its own transaction; returns the names applied."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS relay_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM relay_schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO relay_schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(name)
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
            except BaseException:
                # Not released (a broken or cancelled session): close the session, and the lock
                # with it, rather than hand a locked connection back to the pool.
                conn.terminate()
                raise
    return applied


# A job's spec is written once, at admission, and never updated, so its parsed form can be kept by
# uid. Only small specs are kept, and only the most recently used: the hot path reads the same job
# three times within a second (attempt opened, outcome recorded, status written), and validating
# the spec is most of the cost of turning a row into a JobRow.
SPEC_CACHE_SIZE = 4096
SPEC_CACHE_MAX_PAYLOAD = 1024
_specs: dict[UUID, RelayJobSpec] = {}


def _parse_spec(record: asyncpg.Record) -> RelayJobSpec | None:
    if record["phase"] == Phase.REJECTED.value:
        try:
            return RelayJobSpec.model_validate(record["spec"])
        except ValueError:
            return None
    return RelayJobSpec.model_validate(record["spec"])


def _spec(record: asyncpg.Record) -> RelayJobSpec | None:
    uid = record["uid"]
    spec = _specs.pop(uid, None)
    if spec is None:
        spec = _parse_spec(record)
        if spec is None or spec.payload_size() > SPEC_CACHE_MAX_PAYLOAD:
            return spec
        if len(_specs) >= SPEC_CACHE_SIZE:
            del _specs[next(iter(_specs))]
    _specs[uid] = spec  # (re)inserted last: the dict's order is least recently used first
    return spec


# Every column a JobRow is built from, but the spec: statements whose caller already holds the
# parsed spec return these, so the spec is neither sent back nor decoded again.
_ROW_COLUMNS = (
    "uid", "namespace", "name", "seq", "phase", "generation", "nullifier", "attempts", "retries",
    "max_attempts", "next_attempt_at", "last_error", "result", "reason", "message",
    "redrive_token", "created_at", "queued_at", "started_at", "finished_at", "run", "version",
    "deleted_at", "priority", "suspend",
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
            "run": record["run"],
            "version": record["version"],
            "deleted": record["deleted_at"] is not None,
            "priority": record["priority"],
            "suspend": record["suspend"],
        }
    )


# Open the next attempt of each claimed job (see `Ledger.start_attempts`). One statement, so one
# round trip and one commit: its sub-statements share the lock taken by `claimed` and see the same
# snapshot, and they touch disjoint rows. `claimed` finds rows by primary key alone: with the phase
# test beside it, the planner may walk the partial index of active jobs instead, whose dead entries
# (one per attempt since the last vacuum) made every batch cost more than the one before.
START_ATTEMPTS = (
    "WITH claimed AS ("
    "   SELECT uid, phase, attempts, max_attempts, run, deleted_at, suspend FROM jobs"
    "   WHERE uid = ANY($1::uuid[]) FOR UPDATE),"
    " live AS ("
    "   SELECT * FROM claimed WHERE deleted_at IS NULL AND phase = ANY($2::text[])),"
    " lost AS ("
    "   UPDATE attempts a SET outcome = 'lost', reason = 'LeaseExpired',"
    "   message = 'the worker stopped renewing its lease', finished_at = now()"
    "   FROM live l WHERE l.phase = 'Processing' AND a.job_uid = l.uid AND a.run = l.run"
    "   AND a.outcome = 'running'),"
    " started AS ("
    "   UPDATE jobs j SET phase = 'Processing', attempts = j.attempts + 1,"
    "   started_at = now(), next_attempt_at = NULL, reason = 'Started',"
    "   message = 'attempt ' || (j.attempts + 1) || ' started',"
    "   version = j.version + 1, updated_at = now()"
    "   FROM live l WHERE j.uid = l.uid AND NOT l.suspend"
    "   AND NOT (l.phase = 'Processing' AND l.attempts >= l.max_attempts)"
    "   RETURNING j.*),"
    # Suspended while its attempt ran, and that attempt's worker died: no further attempt.
    " suspended AS ("
    "   UPDATE jobs j SET phase = 'Suspended', reason = 'Suspended',"
    "   message = 'attempt ' || j.attempts || ' lost its lease; no further attempt while"
    " spec.suspend is true', next_attempt_at = NULL,"
    "   version = j.version + 1, updated_at = now()"
    "   FROM live l WHERE j.uid = l.uid AND l.suspend"
    "   AND NOT (l.phase = 'Processing' AND l.attempts >= l.max_attempts)"
    "   RETURNING j.*),"
    " opened AS ("
    "   INSERT INTO attempts (job_uid, run, attempt, worker)"
    "   SELECT uid, run, attempts, $3 FROM started),"
    " exhausted AS ("
    "   UPDATE jobs j SET phase = 'DeadLettered', reason = 'AttemptsExhausted',"
    "   message = j.attempts || ' of ' || j.max_attempts || ' attempts used; the last one"
    " lost its lease (its worker died or froze)',"
    "   last_error = 'LeaseExpired: the worker running the attempt stopped renewing"
    " its lease', finished_at = now(), nullifier_state = NULL,"
    "   version = j.version + 1, updated_at = now()"
    "   FROM live l WHERE j.uid = l.uid"
    "   AND l.phase = 'Processing' AND l.attempts >= l.max_attempts"
    "   RETURNING j.*)"
    " SELECT 'started' AS kind, * FROM started UNION ALL SELECT 'exhausted', * FROM exhausted"
    " UNION ALL SELECT 'suspended', * FROM suspended"
)

# Record a batch of outcomes, fenced by (run, attempt) (see `Ledger.settle`). One statement: the
# jobs update and the attempts update commit together. Rows are found by primary key alone and
# fenced afterwards, under their row locks, as in START_ATTEMPTS; `recorded` hands each outcome on
# to `closed`, so the batch is not joined a second time.
SETTLE = (
    "WITH given AS ("
    "   SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::text[],"
    "   $6::text[], $7::timestamptz[], $8::text[], $9::text[], $10::text[])"
    "   AS g(uid, run, attempt, phase, reason, message, next_at, result, error, outcome)),"
    " held AS ("
    "   SELECT uid, run, attempts, phase, deleted_at, suspend FROM jobs WHERE uid = ANY($1::uuid[])"
    "   FOR UPDATE),"
    " u AS ("
    "   SELECT g.uid, g.run, g.attempt, g.next_at, g.result, g.error, g.outcome,"
    "   g.reason AS given_reason, g.message AS given_message,"
    # A retry decided for a job suspended while its attempt ran is held back instead ($11..$13).
    "   CASE WHEN h.suspend AND g.phase = 'Retrying' THEN $11 ELSE g.phase END AS phase,"
    "   CASE WHEN h.suspend AND g.phase = 'Retrying' THEN $12 ELSE g.reason END AS reason,"
    "   CASE WHEN h.suspend AND g.phase = 'Retrying' THEN g.message || $13"
    "     ELSE g.message END AS message"
    "   FROM given g JOIN held h ON h.uid = g.uid AND h.run = g.run"
    "   AND h.attempts = g.attempt AND h.phase = 'Processing' AND h.deleted_at IS NULL),"
    " recorded AS ("
    "   UPDATE jobs j SET phase = u.phase, reason = u.reason, message = u.message,"
    "   next_attempt_at = u.next_at, result = COALESCE(u.result::jsonb, j.result),"
    "   last_error = CASE WHEN u.phase = 'Completed' THEN NULL"
    "     ELSE COALESCE(u.error, j.last_error) END,"
    "   retries = j.retries + CASE WHEN u.phase = 'Retrying' THEN 1 ELSE 0 END,"
    "   finished_at = CASE WHEN u.phase IN ('Completed', 'DeadLettered') THEN now() END,"
    "   nullifier_state = CASE"
    "     WHEN j.nullifier_state IS NULL THEN NULL"
    "     WHEN u.phase = 'Completed' THEN 'spent'"
    "     WHEN u.phase = 'DeadLettered' THEN NULL"
    "     ELSE j.nullifier_state END,"
    "   version = j.version + 1, updated_at = now()"
    "   FROM u WHERE j.uid = u.uid"
    f"   RETURNING {', '.join(f'j.{c}' for c in _ROW_COLUMNS)},"
    "   u.outcome AS a_outcome, u.given_reason AS a_reason, u.given_message AS a_message,"
    "   u.result AS a_result),"
    " closed AS ("
    "   UPDATE attempts a SET outcome = r.a_outcome, reason = r.a_reason,"
    "   message = r.a_message, result = r.a_result::jsonb, finished_at = now()"
    "   FROM recorded r WHERE a.job_uid = r.uid AND a.run = r.run AND a.attempt = r.attempts"
    "   AND a.outcome = 'running')"
    f" SELECT {', '.join(_ROW_COLUMNS)} FROM recorded"
)


@dataclass(frozen=True)
class Waiting:
    """An active job as reconciliation sees it."""

    uid: UUID
    seq: int
    priority: int
    phase: Phase
    next_attempt_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None


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


_NEW_JOB_COLUMNS = (
    "uid, namespace, name, generation, spec, phase, nullifier, nullifier_state, max_attempts,"
    " next_attempt_at, reason, message, ttl_seconds, priority, suspend"
)


def _new_job_values(job: NewJob, spec: object) -> tuple[object, ...]:
    """The values of `_NEW_JOB_COLUMNS` for `job`, with its spec as the statement takes it."""
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
    attempt lost its lease, rows suspended instead of started, and ids with no active row."""

    started: list[JobRow]
    exhausted: list[JobRow]
    suspended: list[JobRow]
    stale: list[str]


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
class Settle:
    """One attempt's recorded outcome, fenced by the (run, attempt) it belongs to."""

    uid: UUID
    run: int
    attempt: int
    phase: Phase
    reason: str
    message: str
    outcome: str
    next_attempt_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


_TOUCH = "version = version + 1, updated_at = now()"
SUSPENDED_RETRY_NOTE = "; not retried while spec.suspend is true"


class Ledger:
    def __init__(self, pool: asyncpg.Pool, worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id

    async def get(self, uid: UUID) -> JobRow | None:
        record = await self.pool.fetchrow("SELECT * FROM jobs WHERE uid = $1", uid)
        return to_row(record) if record else None

    async def get_many(self, uids: Iterable[UUID]) -> dict[UUID, JobRow]:
        records = await self.pool.fetch("SELECT * FROM jobs WHERE uid = ANY($1::uuid[])", list(uids))
        return {r["uid"]: to_row(r) for r in records}

    async def admit_many(self, jobs: Sequence[NewJob]) -> dict[UUID, JobRow]:
        """Insert new jobs in one statement and return the rows it created. A job missing from
        the answer was recorded before, or its nullifier is held: `admit` settles each of those.

        A spec PostgreSQL cannot store fails the whole statement (UNSTORABLE); the caller then
        admits the jobs one by one, so only the bad one is refused."""
        if not jobs:
            return {}
        records = await self.pool.fetch(
            f"INSERT INTO jobs ({_NEW_JOB_COLUMNS}, queued_at)"
            " SELECT *, CASE WHEN phase = 'Queued' THEN now() END FROM unnest("
            " $1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[]::json[], $6::text[],"
            " $7::text[], $8::text[], $9::int[], $10::timestamptz[], $11::text[], $12::text[],"
            f" $13::int[], $14::int[], $15::bool[]) AS n({_NEW_JOB_COLUMNS})"
            " ON CONFLICT DO NOTHING RETURNING *",
            *zip(*(_new_job_values(job, json.dumps(job.raw_spec)) for job in jobs), strict=True),
        )
        specs = {job.ref.uid: job.spec for job in jobs}
        return {r["uid"]: to_row(r, specs[r["uid"]]) for r in records}

    async def admit(self, job: NewJob) -> Admission:
        """Insert the job once (idempotent by uid), reserving its nullifier if it has one.

        The reservation is the INSERT itself: the partial unique index refuses a second holder,
        and the loser is recorded as `Rejected` with the holder's state as the reason.
        """
        ref, spec, raw_spec, generation = job.ref, job.spec, job.raw_spec, job.generation
        async with self.pool.acquire() as conn:
            for _ in range(5):
                record = await conn.fetchrow(
                    f"INSERT INTO jobs ({_NEW_JOB_COLUMNS}, queued_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                    " CASE WHEN $6 = 'Queued' THEN now() END)"
                    " ON CONFLICT DO NOTHING RETURNING *",
                    *_new_job_values(job, raw_spec),
                )
                if record is not None:
                    return Admission(to_row(record, spec), created=True)
                existing = await conn.fetchrow("SELECT * FROM jobs WHERE uid = $1", ref.uid)
                if existing is not None:
                    return Admission(to_row(existing), created=False)
                holder = await conn.fetchrow(
                    "SELECT name, nullifier_state FROM jobs"
                    " WHERE namespace = $1 AND nullifier = $2 AND nullifier_state IS NOT NULL",
                    ref.namespace,
                    spec.nullifier,
                )
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
        values = (
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
        )
        sql = (
            "INSERT INTO jobs (uid, namespace, name, generation, spec, phase, nullifier,"
            " max_attempts, reason, message, finished_at, ttl_seconds)"
            " VALUES ($1, $2, $3, $4, $5, 'Rejected', $6, $7, $8, $9, now(), $10)"
            " ON CONFLICT (uid) DO NOTHING RETURNING *"
        )
        try:
            record = await conn.fetchrow(sql, *values)
        except UNSTORABLE as error:
            # The refusal must be recorded even when the spec itself cannot be (a NUL in a
            # string, nesting beyond PostgreSQL's stack): keep why instead of what.
            kept = {"unstored": f"the spec could not be stored: {type(error).__name__}"}
            record = await conn.fetchrow(sql, *values[:4], kept, *values[5:])
        if record is None:
            record = await conn.fetchrow("SELECT * FROM jobs WHERE uid = $1", ref.uid)
            return Admission(to_row(record), created=False)
        return Admission(to_row(record), created=True)

    async def start_attempts(self, uids: Sequence[str]) -> StartBatch:
        """Open the next attempt of each claimed job, in one transaction.

        A job still `Processing` here lost its lease (its worker died or froze): its open attempt
        is closed as `lost`, and if that was its last attempt the job is dead-lettered instead.
        Ids with no live, active ledger row are stale.
        """
        records = await self.pool.fetch(START_ATTEMPTS, [UUID(u) for u in uids], list(ACTIVE), self.worker_id)
        by_kind: dict[str, list[JobRow]] = {"started": [], "exhausted": [], "suspended": []}
        for record in records:
            by_kind[record["kind"]].append(to_row(record))
        found = {str(r["uid"]) for r in records}
        return StartBatch(
            by_kind["started"],
            by_kind["exhausted"],
            by_kind["suspended"],
            [u for u in uids if u not in found],
        )

    async def settle(self, items: Sequence[Settle], specs: Mapping[UUID, RelayJobSpec]) -> list[JobRow]:
        """Record outcomes; returns the rows that took effect, with the specs the caller gave (a
        spec never changes, so it is not read back). A row missing from the answer was fenced
        out: another worker re-claimed that job, or it was deleted meanwhile."""
        if not items:
            return []
        cols = (
            [i.uid for i in items],
            [i.run for i in items],
            [i.attempt for i in items],
            [i.phase.value for i in items],
            [i.reason for i in items],
            [i.message for i in items],
            [i.next_attempt_at for i in items],
            [json.dumps(i.result) if i.result is not None else None for i in items],
            [i.error for i in items],
            [i.outcome for i in items],
        )
        records = await self.pool.fetch(
            SETTLE, *cols, Phase.SUSPENDED.value, Reason.SUSPENDED.value, SUSPENDED_RETRY_NOTE
        )
        return [to_row(r, specs[r["uid"]]) for r in records]

    async def redrive(self, uid: UUID, value: str) -> Redrive:
        """Act on a `relay.dev/redrive` value: the first time the job carries it, and only then.

        Every value seen is recorded (table `redrives`), whatever the job's phase, so a value is
        acted on at most once across restarts and replicas. A dead-lettered job is re-queued with
        its attempts reset (earlier attempts stay recorded under the previous run) and its
        nullifier reserved again; if another job of its namespace took that nullifier meanwhile,
        the job stays dead-lettered and says why. Returns what happened (`Redrive.verdict`) and
        the row when it changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT phase FROM jobs WHERE uid = $1 AND deleted_at IS NULL FOR UPDATE", uid
            )
            if current is None:
                return Redrive(RedriveVerdict.UNKNOWN_JOB, None)
            phase = Phase(current["phase"])
            first = await conn.fetchval(
                "INSERT INTO redrives (job_uid, value, acted) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                uid,
                value,
                phase is Phase.DEAD_LETTERED,
            )
            if not first:
                record = await conn.fetchrow(
                    "UPDATE jobs SET redrive_token = $2 WHERE uid = $1 RETURNING *", uid, value
                )
                return Redrive(RedriveVerdict.SEEN_BEFORE, to_row(record), phase)
            if phase is not Phase.DEAD_LETTERED:
                record = await conn.fetchrow(
                    f"UPDATE jobs SET redrive_token = $2, {_TOUCH} WHERE uid = $1 RETURNING *", uid, value
                )
                return Redrive(RedriveVerdict.NOT_DEAD_LETTERED, to_row(record), phase)
            try:
                async with conn.transaction():
                    record = await conn.fetchrow(
                        f"UPDATE jobs SET phase = 'Queued', run = run + 1, attempts = 0, retries = 0,"
                        f" redrive_token = $2, reason = 'Redriven', message = 're-driven by annotation',"
                        f" next_attempt_at = NULL, finished_at = NULL, queued_at = now(),"
                        f" nullifier_state = CASE WHEN nullifier IS NULL THEN NULL ELSE 'reserved' END,"
                        f" {_TOUCH} WHERE uid = $1 RETURNING *",
                        uid,
                        value,
                    )
                return Redrive(RedriveVerdict.REDRIVEN, to_row(record), phase)
            except asyncpg.UniqueViolationError:
                record = await conn.fetchrow(
                    f"UPDATE jobs SET redrive_token = $2, message = 'cannot re-drive: nullifier '"
                    f" || nullifier || ' is held by another RelayJob of this namespace', {_TOUCH}"
                    f" WHERE uid = $1 RETURNING *",
                    uid,
                    value,
                )
                return Redrive(RedriveVerdict.NULLIFIER_HELD, to_row(record), phase)

    async def follow(self, uid: UUID, change: SpecChange) -> JobRow | None:
        """Apply a newer generation of the job's mutable fields (batch/v1 Job's model): priority,
        ttlSecondsAfterFinished and suspend. Suspending moves a waiting job (Queued, Retrying) to
        Suspended at once; a job Processing keeps running and is held after its attempt (see
        SETTLE and START_ATTEMPTS); resuming re-queues a Suspended job. Returns the new row, or
        None when the ledger has already acted on this generation (or the job is gone)."""
        record = await self.pool.fetchrow(
            "UPDATE jobs SET generation = $2, priority = $3, ttl_seconds = $4, suspend = $5,"
            " phase = CASE WHEN $5 AND phase IN ('Queued', 'Retrying') THEN 'Suspended'"
            "   WHEN NOT $5 AND phase = 'Suspended' THEN 'Queued' ELSE phase END,"
            " reason = CASE WHEN $5 AND phase IN ('Queued', 'Retrying') THEN 'Suspended'"
            "   WHEN NOT $5 AND phase = 'Suspended' THEN 'Resumed' ELSE reason END,"
            " message = CASE WHEN $5 AND phase IN ('Queued', 'Retrying') THEN 'spec.suspend is true'"
            "   WHEN NOT $5 AND phase = 'Suspended' THEN 'resumed: spec.suspend is false'"
            "   ELSE message END,"
            " queued_at = CASE WHEN NOT $5 AND phase = 'Suspended' THEN COALESCE(queued_at, now())"
            "   ELSE queued_at END,"
            f" {_TOUCH} WHERE uid = $1 AND deleted_at IS NULL AND generation < $2 RETURNING *",
            uid,
            change.generation,
            change.priority,
            change.ttl_seconds,
            change.suspend,
        )
        return to_row(record) if record else None

    async def cancel(self, uid: UUID) -> JobRow | None:
        """The RelayJob is gone: close the job, release a reserved (not spent) nullifier."""
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                f"UPDATE jobs SET deleted_at = now(),"
                f" phase = CASE WHEN phase IN ('Completed', 'DeadLettered', 'Rejected') THEN phase"
                f"   ELSE 'Cancelled' END,"
                f" nullifier_state = CASE WHEN nullifier_state = 'spent' THEN 'spent' END,"
                f" {_TOUCH} WHERE uid = $1 AND deleted_at IS NULL RETURNING *",
                uid,
            )
            await conn.execute(
                "UPDATE attempts SET outcome = 'cancelled', reason = 'Cancelled',"
                " message = 'RelayJob deleted', finished_at = now()"
                " WHERE job_uid = $1 AND outcome = 'running'",
                uid,
            )
        return to_row(record) if record else None

    async def statuses_written(self, written: Mapping[UUID, int]) -> dict[UUID, int]:
        """Record the versions just patched onto RelayJobs, and return each job's current version.

        The newest recorded version wins: replicas race, and one whose older document lands last
        sees the newer version in the answer and writes again (see `StatusWriter.flush`)."""
        records = await self.pool.fetch(
            "WITH w AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS w(uid, version)),"
            " recorded AS (UPDATE jobs j SET status_version = w.version FROM w"
            "   WHERE j.uid = w.uid AND j.status_version < w.version)"
            " SELECT j.uid, j.version FROM jobs j JOIN w ON j.uid = w.uid",
            list(written),
            list(written.values()),
        )
        return {r["uid"]: r["version"] for r in records}

    async def statuses_behind(self, older_than: float) -> list[UUID]:
        """Live jobs whose last transition, at least `older_than` seconds ago, never reached their
        RelayJob: the replica that recorded it stopped before its status patch."""
        records = await self.pool.fetch(
            "SELECT uid FROM jobs WHERE deleted_at IS NULL AND status_version < version"
            " AND updated_at < now() - make_interval(secs => $1)",
            older_than,
        )
        return [r["uid"] for r in records]

    async def versions(self, uids: Iterable[UUID]) -> dict[UUID, int]:
        """The current version of each job: enough to tell whether a row read earlier is stale."""
        records = await self.pool.fetch(
            "SELECT uid, version FROM jobs WHERE uid = ANY($1::uuid[])", list(uids)
        )
        return {r["uid"]: r["version"] for r in records}

    async def waiting(self) -> list[Waiting]:
        """Every active job, with just what placing it in Redis needs: reconciliation reads all
        of them, and building full rows (spec validation included) stalled the loop for seconds
        at tens of thousands of jobs."""
        records = await self.pool.fetch(
            "SELECT uid, seq, priority, phase,"
            " next_attempt_at, queued_at, started_at"
            " FROM jobs WHERE deleted_at IS NULL AND phase = ANY($1::text[])",
            list(ACTIVE),
        )
        return [
            Waiting(
                r["uid"],
                r["seq"],
                r["priority"],
                Phase(r["phase"]),
                r["next_attempt_at"],
                r["queued_at"],
                r["started_at"],
            )
            for r in records
        ]

    async def live_uids(self) -> set[UUID]:
        """Jobs the ledger believes have a RelayJob (not deleted), whatever their phase."""
        return {r["uid"] for r in await self.pool.fetch("SELECT uid FROM jobs WHERE deleted_at IS NULL")}

    async def ttl_due(self, limit: int = 500) -> list[JobRow]:
        records = await self.pool.fetch(
            "SELECT * FROM jobs WHERE ttl_seconds IS NOT NULL AND deleted_at IS NULL"
            " AND finished_at IS NOT NULL"
            " AND finished_at + make_interval(secs => ttl_seconds) <= now() LIMIT $1",
            limit,
        )
        return [to_row(r) for r in records]

    async def attempts_of(self, uid: UUID) -> list[dict[str, Any]]:
        records = await self.pool.fetch(
            "SELECT * FROM attempts WHERE job_uid = $1 ORDER BY run, attempt", uid
        )
        return [dict(r) for r in records]
