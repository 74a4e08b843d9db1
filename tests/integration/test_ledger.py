"""The ledger against a real PostgreSQL: migrations, admission, fencing and nullifiers."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from controller.adapters import ledger as ledger_mod
from controller.adapters.ledger import Ledger, NewJob, Settle
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec
from tests.integration.conftest import new_ref, succeeded

pytestmark = pytest.mark.integration

RAW = {"target": {"noop": {}}, "maxAttempts": 3}


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


async def finish(ledger: Ledger, uid: uuid.UUID, phase: Phase, outcome: str, attempt: int = 1) -> None:
    """Record attempt `attempt` of run 1 as `phase`, as the worker does after an execution."""
    reason = "Succeeded" if phase is Phase.COMPLETED else "PermanentFailure"
    item = Settle(
        uid=uid, run=1, attempt=attempt, phase=phase, reason=reason, message=outcome, outcome=outcome
    )
    await ledger.settle([item], {uid: RelayJobSpec.model_validate(RAW)})


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

    def done(attempt: int) -> Settle:
        return Settle(
            uid=row.ref.uid,
            run=1,
            attempt=attempt,
            phase=Phase.COMPLETED,
            reason="Succeeded",
            message="ok",
            outcome="succeeded",
        )

    assert await ledger.settle([done(1)], {row.ref.uid: row.spec}) == []
    recorded = await ledger.settle([done(2)], {row.ref.uid: row.spec})
    assert [r.phase for r in recorded] == [Phase.COMPLETED]
    assert (
        await ledger.settle([done(2)], {row.ref.uid: row.spec}) == []
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
    unstorable = {"target": {"http": {"url": "http://127.0.0.1:9/", "headers": {"X-A": "a\x00b"}}}}
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
    await finish(ledger, holder.ref.uid, Phase.DEAD_LETTERED, "permanent")
    second = (await admit(ledger, raw, "b")).row
    assert second.phase is Phase.QUEUED
    await ledger.start_attempts([str(second.ref.uid)])
    await finish(ledger, second.ref.uid, Phase.COMPLETED, "succeeded")
    third = (await admit(ledger, raw, "c")).row
    assert (third.phase, third.reason) == (Phase.REJECTED, "NullifierSpent")
    # A dead-lettered holder cannot be re-driven while another job has spent its nullifier.
    assert (await ledger.redrive(holder.ref.uid, "r1")).phase is Phase.DEAD_LETTERED


async def test_redrive_resets_attempts_and_keeps_history(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool, "w1")
    row = (await admit(ledger, {"target": {"noop": {}}, "maxAttempts": 1})).row
    await ledger.start_attempts([str(row.ref.uid)])
    await finish(ledger, row.ref.uid, Phase.DEAD_LETTERED, "permanent")
    redriven = await ledger.redrive(row.ref.uid, "token-1")
    assert redriven is not None
    assert (redriven.phase, redriven.attempts, redriven.run) == (Phase.QUEUED, 0, 2)
    assert await ledger.redrive(row.ref.uid, "token-1") is None
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
    raw = {"target": {"noop": {}}, "payload": {"x": "nul\x00"}}
    refusal = ledger_mod.Refusal(Reason.INVALID_SPEC, "spec.payload contains a NUL character")
    admission = await ledger.refuse(new_ref("nul"), raw, 1, refusal)
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


async def test_batch_statements_stay_linear_in_the_batch(pool: asyncpg.Pool) -> None:
    """Opening or settling a batch of N jobs handles O(N) rows, however many jobs wait.

    Two plans handled far more: opening attempts walked the partial index of every active job,
    and after five runs PostgreSQL's generic plan for a settle (which assumes ten rows per array)
    joined the batch by re-scanning it once per row: N² rows, 70 ms instead of 5 for 300 jobs."""
    n = 300
    ledger = Ledger(pool, "w1")
    spec = RelayJobSpec.model_validate(RAW)
    await pool.execute(
        "INSERT INTO jobs (uid, namespace, name, spec, phase, max_attempts, queued_at)"
        " SELECT gen_random_uuid(), 'backlog', 'job-' || i, '{}', 'Queued', 1, now()"
        " FROM generate_series(1, 20000) AS i"
    )
    uids = [(await admit(ledger, name=f"job-{i}")).row.ref.uid for i in range(n)]
    start_args = (uids, list(ledger_mod.ACTIVE), "w1")
    for plan in await _plans_as_run(pool, ledger_mod.START_ATTEMPTS, start_args, 8):
        assert _rows_handled(plan["Plan"]) < 30 * n

    started = (await ledger.start_attempts([str(u) for u in uids])).started
    assert len(started) == n
    settle_args = (
        [r.ref.uid for r in started],
        [r.run for r in started],
        [r.attempts for r in started],
        ["Completed"] * n,
        ["Succeeded"] * n,
        ["ok"] * n,
        [None] * n,
        [None] * n,
        [None] * n,
        ["succeeded"] * n,
    )
    for plan in await _plans_as_run(pool, ledger_mod.SETTLE, settle_args, 8):
        assert _rows_handled(plan["Plan"]) < 30 * n
    assert len(await ledger.settle([succeeded(r) for r in started], {u: spec for u in uids})) == n
