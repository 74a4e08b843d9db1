"""The ledger against a real PostgreSQL: migrations, admission, fencing and nullifiers."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import asyncpg
import pytest

from controller.adapters import ledger as ledger_mod
from controller.adapters.ledger import Ledger, NewJob, OutcomeRecord, RedriveVerdict
from controller.model.jobs import FencingToken, SpecChange
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.model.spec import RelayJobSpec
from tests.integration.conftest import VIA_PGBOUNCER, new_ref, succeeded

pytestmark = pytest.mark.integration

RAW = {"target": {"noop": {}}, "maxAttempts": 3}
# PostgreSQL's JSON parser recurses, and stops at its stack depth limit (max_stack_depth, 2 MB).
DEEPER_THAN_POSTGRES_PARSES = 30_000


@pytest.fixture
async def pool(database_url: str) -> asyncpg.Pool:
    pool = await ledger_mod.connect(database_url, 1, 20, 10)
    await ledger_mod.migrate(pool)
    yield pool
    await pool.close()


async def admit(ledger: Ledger, raw: dict = RAW, name: str = "job") -> ledger_mod.Admission:
    spec = RelayJobSpec.model_validate(raw)
    return await ledger.admit(
        NewJob(new_ref(name), spec, raw, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None)
    )


async def finish(
    ledger: Ledger, uid: uuid.UUID, phase: Phase, outcome: AttemptOutcome, attempt: int = 1
) -> None:
    """Record attempt `attempt` of run 1 as `phase`, as the worker does after an execution."""
    reason = Reason.SUCCEEDED if phase is Phase.COMPLETED else Reason.PERMANENT_FAILURE
    item = OutcomeRecord(
        uid=uid, fence=FencingToken(1, attempt), phase=phase, reason=reason, message=outcome, outcome=outcome
    )
    await ledger.record_outcomes([item], {uid: RelayJobSpec.model_validate(RAW)})


async def test_migrations_run_twice_without_harm(database_url: str) -> None:
    pool = await ledger_mod.connect(database_url, 1, 2, 10)
    try:
        first = await ledger_mod.migrate(pool)
        second = await ledger_mod.migrate(pool)
        assert first and second == []
        count = await pool.fetchval("SELECT count(*) FROM relay_schema_migrations")
        assert count == len(ledger_mod.migration_files())
    finally:
        await pool.close()


async def test_concurrent_migrations_serialise(database_url: str) -> None:
    pools = [await ledger_mod.connect(database_url, 1, 2, 10) for _ in range(3)]
    try:
        results = await asyncio.gather(*(ledger_mod.migrate(p) for p in pools))
        assert sorted(len(r) for r in results) == [0, 0, len(ledger_mod.migration_files())]
    finally:
        for p in pools:
            await p.close()


async def test_admission_is_idempotent_by_uid(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    first = await admit(ledger)
    spec = RelayJobSpec.model_validate(RAW)
    job = NewJob(first.row.ref, spec, RAW, 1, Phase.QUEUED, Reason.ADMITTED, "q", None)
    again = await ledger.admit(job)
    assert first.created and not again.created
    assert again.row.seq == first.row.seq


async def test_outcomes_are_fenced_by_attempt(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger)).row
    uid = str(row.ref.uid)
    first = (await ledger.start_attempts([uid])).started[0]
    # The first worker froze; its lease expired and another worker re-claimed the job.
    second = (await Ledger(pool, "w2").start_attempts([uid])).started[0]
    assert (first.attempts, second.attempts) == (1, 2)

    def done(attempt: int) -> OutcomeRecord:
        return OutcomeRecord(
            uid=row.ref.uid,
            fence=FencingToken(1, attempt),
            phase=Phase.COMPLETED,
            reason=Reason.SUCCEEDED,
            message="ok",
            outcome=AttemptOutcome.SUCCEEDED,
        )

    assert await ledger.record_outcomes([done(1)], {row.ref.uid: row.spec}) == []
    recorded = await ledger.record_outcomes([done(2)], {row.ref.uid: row.spec})
    assert [r.phase for r in recorded] == [Phase.COMPLETED]
    assert (
        await ledger.record_outcomes([done(2)], {row.ref.uid: row.spec}) == []
    )  # and nobody overwrites the recorded outcome
    attempts = await ledger.attempts_of(row.ref.uid)
    assert [(a["attempt"], a["outcome"], a["worker"]) for a in attempts] == [
        (1, "lost", "w1"),
        (2, "succeeded", "w2"),
    ]


async def test_lease_lost_on_last_attempt_dead_letters(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 1})).row
    uid = str(row.ref.uid)
    await ledger.start_attempts([uid])
    batch = await ledger.start_attempts([uid])
    assert batch.started == [] and [r.phase for r in batch.exhausted] == [Phase.DEAD_LETTERED]
    assert batch.exhausted[0].reason == "AttemptsExhausted"


async def test_stale_ids_are_reported(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    ghost = str(new_ref().uid)
    batch = await ledger.start_attempts([ghost])
    assert batch.stale == [ghost]


def new_job(raw: dict = RAW, name: str = "job") -> NewJob:
    spec = RelayJobSpec.model_validate(raw)
    return NewJob(new_ref(name), spec, raw, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None)


async def test_admit_many_creates_only_what_is_new(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    held = await admit(ledger, {"target": {"noop": {}}, "nullifier": "n-many"}, "holder")
    fresh = [new_job(name=f"fresh-{i}") for i in range(3)]
    rival = new_job({"target": {"noop": {}}, "nullifier": "n-many"}, "rival")
    again = NewJob(held.row.ref, held.row.spec, {}, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None)
    created = await ledger.admit_many([*fresh, rival, again])
    assert set(created) == {job.ref.uid for job in fresh}
    for job in fresh:
        row = created[job.ref.uid]
        assert (row.ref, row.phase, row.max_attempts, row.spec) == (job.ref, Phase.QUEUED, 3, job.spec)
        assert row.queued_at is not None
    # What the batch left out is decided one by one, as before.
    assert (await ledger.admit(rival)).row.reason == "NullifierInUse"
    assert not (await ledger.admit(again)).created


async def test_admit_many_refuses_a_batch_it_cannot_store_whole(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    # More than the ledger's int4 column holds: only a CRD without the int32 format lets it through.
    unstorable = {"target": {"noop": {}}, "ttlSecondsAfterFinished": 2**40}
    with pytest.raises(ledger_mod.UNSTORABLE):
        await ledger.admit_many([new_job(name="good"), new_job(unstorable, "bad")])
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_nullifier_race_has_one_winner(pool: asyncpg.Pool) -> None:
    raw = {"target": {"noop": {}}, "nullifier": "spend:42"}
    ledgers = [Ledger(pool, f"w{i}") for i in range(20)]
    results = await asyncio.gather(*(admit(lg, raw, f"j{i}") for i, lg in enumerate(ledgers)))
    phases = [r.row.phase for r in results]
    assert phases.count(Phase.QUEUED) == 1
    assert phases.count(Phase.REJECTED) == 19
    assert {r.row.reason for r in results if r.row.phase is Phase.REJECTED} == {"NullifierInUse"}


async def test_nullifier_released_by_dead_letter_and_spent_by_completion(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    raw = {"target": {"noop": {}}, "nullifier": "n-1", "maxAttempts": 1}
    holder = (await admit(ledger, raw, "a")).row
    await ledger.start_attempts([str(holder.ref.uid)])
    await finish(ledger, holder.ref.uid, Phase.DEAD_LETTERED, AttemptOutcome.PERMANENT)
    second = (await admit(ledger, raw, "b")).row
    assert second.phase is Phase.QUEUED
    await ledger.start_attempts([str(second.ref.uid)])
    await finish(ledger, second.ref.uid, Phase.COMPLETED, AttemptOutcome.SUCCEEDED)
    third = (await admit(ledger, raw, "c")).row
    assert (third.phase, third.reason) == (Phase.REJECTED, "NullifierSpent")
    # A dead-lettered holder cannot be re-driven while another job has spent its nullifier.
    refused = await ledger.redrive(holder.ref.uid, "r1")
    assert refused.verdict is RedriveVerdict.NULLIFIER_HELD
    assert refused.row is not None and refused.row.phase is Phase.DEAD_LETTERED


async def test_redrive_resets_attempts_and_keeps_history(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 1})).row
    await ledger.start_attempts([str(row.ref.uid)])
    await finish(ledger, row.ref.uid, Phase.DEAD_LETTERED, AttemptOutcome.PERMANENT)
    done = await ledger.redrive(row.ref.uid, "token-1")
    assert done.verdict is RedriveVerdict.REDRIVEN and done.row is not None
    assert (done.row.phase, done.row.attempts, done.row.run) == (Phase.QUEUED, 0, 2)
    assert (await ledger.redrive(row.ref.uid, "token-1")).verdict is RedriveVerdict.SEEN_BEFORE
    await ledger.start_attempts([str(row.ref.uid)])
    history = await ledger.attempts_of(row.ref.uid)
    assert [(a["run"], a["attempt"]) for a in history] == [(1, 1), (2, 1)]


async def test_cancel_releases_reserved_nullifier(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    raw = {"target": {"noop": {}}, "nullifier": "gone"}
    row = (await admit(ledger, raw, "a")).row
    cancelled = await ledger.cancel(row.ref.uid)
    assert cancelled is not None and cancelled.phase is Phase.CANCELLED
    assert (await admit(ledger, raw, "b")).row.phase is Phase.QUEUED


async def test_refusal_is_recorded_even_when_the_spec_cannot_be(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    deep: dict = {}
    for _ in range(DEEPER_THAN_POSTGRES_PARSES):
        deep = {"k": deep}
    raw = {"target": {"noop": {}}, "payload": deep}
    refusal = ledger_mod.Refusal(Reason.INVALID_SPEC, "spec.payload nests too deep")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(DEEPER_THAN_POSTGRES_PARSES + 1000)  # for json.dumps of the spec
    try:
        admission = await ledger.refuse(new_ref("deep"), raw, 1, refusal)
    finally:
        sys.setrecursionlimit(limit)
    assert admission.row.phase is Phase.REJECTED and admission.row.spec_or_none is None


def _rows_handled(plan: dict) -> float:
    """Rows produced by every node of an EXPLAIN ANALYZE plan, counting each re-scan."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    return own + sum(_rows_handled(child) for child in plan.get("Plans", []))


async def _plans_as_run(pool: asyncpg.Pool, sql: str, args: tuple, times: int) -> list[dict]:
    """The plans of `sql` run `times` times on one connection (prepared, as the ledger runs it),
    each run rolled back. auto_explain hands them back as notices; EXPLAIN would plan afresh."""
    plans: list[dict] = []

    def keep(_: object, notice: asyncpg.PostgresLogMessage) -> None:
        plan = json.loads(notice.message.split("\n", 1)[1])
        if plan["Query Text"] == sql:
            plans.append(plan)

    async with pool.acquire() as conn:
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            " SET auto_explain.log_analyze = on; SET auto_explain.log_format = json;"
            " SET auto_explain.log_level = notice"
        )
        conn.add_log_listener(keep)
        try:
            for _ in range(times):
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.fetch(sql, *args)
                finally:
                    await tx.rollback()
        finally:
            conn.remove_log_listener(keep)
            await conn.execute("RESET ALL")
    assert len(plans) == times
    return plans


# Prepared statements (RELAY_DB_PREPARED_STATEMENTS) need PostgreSQL itself, not a pooler.
@pytest.fixture(params=[False] if VIA_PGBOUNCER else [False, True], ids=lambda p: f"prepared={p}")
async def either_pool(database_url: str, request: pytest.FixtureRequest) -> asyncpg.Pool:
    pool = await ledger_mod.connect(database_url, 1, 4, 10, prepared_statements=request.param)
    await ledger_mod.migrate(pool)
    yield pool
    await pool.close()


async def test_batch_statements_stay_linear_in_the_batch(either_pool: asyncpg.Pool) -> None:
    """Opening or settling a batch of N jobs handles O(N) rows, however many jobs wait, with
    statements prepared unnamed (the default) or once per connection.

    Two plans handled far more: opening attempts walked the partial index of every active job,
    and after five runs PostgreSQL's generic plan for a settle (which assumes ten rows per array)
    joined the batch by re-scanning it once per row: N² rows, 70 ms instead of 5 for 300 jobs."""
    pool = either_pool
    n = 300
    ledger = Ledger(pool, "w1")
    spec = RelayJobSpec.model_validate(RAW)
    await pool.execute(
        "INSERT INTO jobs (uid, namespace, name, spec, phase, max_attempts, queued_at)"
        " SELECT gen_random_uuid(), 'backlog', 'job-' || i, '{}', 'Queued', 1, now()"
        " FROM generate_series(1, 20000) AS i"
    )
    uids = [(await admit(ledger, name=f"job-{i}")).row.ref.uid for i in range(n)]
    start_args = ledger_mod.start_arguments([str(u) for u in uids], "w1")
    for plan in await _plans_as_run(pool, ledger_mod.SQL["start"], start_args, 8):
        assert _rows_handled(plan["Plan"]) < 30 * n

    started = (await ledger.start_attempts([str(u) for u in uids])).started
    assert len(started) == n
    settle_args = ledger_mod.record_arguments([succeeded(r) for r in started])
    for plan in await _plans_as_run(pool, ledger_mod.SQL["record"], settle_args, 8):
        assert _rows_handled(plan["Plan"]) < 30 * n
    assert len(await ledger.record_outcomes([succeeded(r) for r in started], {u: spec for u in uids})) == n


async def test_redrive_value_seen_before_dead_letter_never_acts_later(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 1})).row
    early = await ledger.redrive(row.ref.uid, "early")
    assert (early.verdict, early.phase) == (RedriveVerdict.NOT_DEAD_LETTERED, Phase.QUEUED)
    await ledger.start_attempts([str(row.ref.uid)])
    await finish(ledger, row.ref.uid, Phase.DEAD_LETTERED, AttemptOutcome.PERMANENT)
    # The annotation still says "early" (as after a restart): it was recorded, so it does nothing.
    again = await ledger.redrive(row.ref.uid, "early")
    assert again.verdict is RedriveVerdict.SEEN_BEFORE
    assert again.row is not None and again.row.phase is Phase.DEAD_LETTERED
    assert (await ledger.redrive(row.ref.uid, "late")).verdict is RedriveVerdict.REDRIVEN
    values = await pool.fetch("SELECT value, acted FROM redrives ORDER BY seen_at")
    assert [(v["value"], v["acted"]) for v in values] == [("early", False), ("late", True)]


async def test_suspend_while_processing_holds_the_retry(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 4})).row
    await ledger.start_attempts([str(row.ref.uid)])
    change = SpecChange(generation=2, priority=0, ttl_seconds=None, suspend=True)
    followed = await ledger.follow(row.ref.uid, change)
    assert followed is not None and (followed.phase, followed.generation) == (Phase.PROCESSING, 2)
    retry = OutcomeRecord(
        uid=row.ref.uid, fence=FencingToken(1, 1), phase=Phase.RETRYING, reason=Reason.RETRY_SCHEDULED,
        message="attempt 1 failed", outcome=AttemptOutcome.RETRYABLE,
    )  # fmt: skip
    [held] = await ledger.record_outcomes([retry], {row.ref.uid: RelayJobSpec.model_validate(RAW)})
    assert (held.phase, held.reason) == (Phase.SUSPENDED, "Suspended")
    assert "not retried while spec.suspend is true" in (held.message or "")
    # Nothing starts while suspended, even if a stale queue entry names the job.
    batch = await ledger.start_attempts([str(row.ref.uid)])
    assert batch.started == [] and batch.stale == [str(row.ref.uid)]
    [attempt] = await ledger.attempts_of(row.ref.uid)
    assert (attempt["outcome"], attempt["reason"]) == ("retryable", "RetryScheduled")
    resumed = await ledger.follow(row.ref.uid, change.model_copy(update={"generation": 3, "suspend": False}))
    assert resumed is not None and (resumed.phase, resumed.reason) == (Phase.QUEUED, "Resumed")


async def test_lost_lease_of_a_suspended_job_starts_no_attempt(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 4})).row
    await ledger.start_attempts([str(row.ref.uid)])
    await ledger.follow(row.ref.uid, SpecChange(generation=2, priority=0, ttl_seconds=None, suspend=True))
    batch = await ledger.start_attempts([str(row.ref.uid)])  # re-claimed after the lease lapsed
    assert batch.started == [] and [r.phase for r in batch.suspended] == [Phase.SUSPENDED]
    [attempt] = await ledger.attempts_of(row.ref.uid)
    assert attempt["outcome"] == "lost"


async def test_follow_applies_each_generation_once(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger)).row
    change = SpecChange(generation=2, priority=50, ttl_seconds=60, suspend=False)
    followed = await ledger.follow(row.ref.uid, change)
    assert followed is not None
    assert (followed.priority, followed.generation, followed.phase) == (50, 2, Phase.QUEUED)
    assert await ledger.follow(row.ref.uid, change) is None
    assert [w.priority for w in await ledger.waiting()] == [50]


async def test_spec_keeps_numbers_as_the_relayjob_holds_them(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    raw = {"target": {"noop": {}}, "payload": {"big": 1e300, "tiny": 5e-324, "int": 2**62, "pi": 3.14}}
    row = (await admit(ledger, raw)).row
    ledger_mod._specs.clear()  # read the spec back from PostgreSQL, not from the parse cache
    again = await ledger.get(row.ref.uid)
    assert again is not None
    sent = json.dumps(again.spec.payload)
    assert sent == '{"big": 1e+300, "tiny": 5e-324, "int": 4611686018427387904, "pi": 3.14}'


async def test_nullifiers_are_scoped_to_the_namespace(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    raw = {"target": {"noop": {}}, "nullifier": "order-1"}
    spec = RelayJobSpec.model_validate(raw)

    async def admit_in(namespace: str, name: str) -> ledger_mod.Admission:
        ref = new_ref(name, namespace)
        return await ledger.admit(NewJob(ref, spec, raw, 1, Phase.QUEUED, Reason.ADMITTED, "q", None))

    a, b = await admit_in("tenant-a", "first"), await admit_in("tenant-b", "second")
    assert (a.row.phase, b.row.phase) == (Phase.QUEUED, Phase.QUEUED)
    rival = await admit_in("tenant-b", "rival")
    assert (rival.row.phase, rival.row.reason) == (Phase.REJECTED, "NullifierInUse")
    assert rival.row.message == "nullifier 'order-1' is reserved by RelayJob second"
    assert "tenant-a" not in (rival.row.message or "") and "first" not in (rival.row.message or "")


async def test_recording_status_versions_leaves_rows_on_their_pages(pool: asyncpg.Pool) -> None:
    """The status writer's record of the version it patched (the third write of every job's row
    on the hot path) is a HOT update for most jobs: the new row version stays on its page and no
    index entry is written. Jobs go through the worker's steps in its batch sizes first.

    With `jobs` pages filled to 100% it moved 80% of rows to other pages (PostgreSQL's default
    fillfactor, before migration 0009): 114 of 600 stayed; 574 at 70%."""
    ledger = Ledger(pool, "w1")
    spec = RelayJobSpec.model_validate(RAW)
    jobs = [
        NewJob(new_ref(f"job-{i}"), spec, RAW, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None)
        for i in range(600)
    ]
    uids = list(await ledger.admit_many(jobs))
    stayed = 0
    for at in range(0, len(uids), 60):
        batch = [str(u) for u in uids[at : at + 60]]
        started = (await ledger.start_attempts(batch)).started
        recorded = await ledger.record_outcomes(
            [succeeded(r) for r in started], {r.ref.uid: spec for r in started}
        )
        pages = await _pages(pool, [r.ref.uid for r in recorded])
        await ledger.statuses_written({r.ref.uid: r.version for r in recorded})
        after = await _pages(pool, list(pages))
        stayed += sum(after[uid] == page for uid, page in pages.items())
    assert stayed >= 0.8 * len(uids), f"{stayed} of {len(uids)} status-version updates kept their page"


async def _pages(pool: asyncpg.Pool, uids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The heap page holding each job's current row version."""
    records = await pool.fetch(
        "SELECT uid, (ctid::text::point)[0]::bigint AS page FROM jobs WHERE uid = ANY($1::uuid[])", uids
    )
    return {r["uid"]: r["page"] for r in records}
