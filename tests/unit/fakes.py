"""Small typed in-memory fakes of the adapters, for unit tests of the runtime without servers.

Each fake keeps just enough state to check a guarantee, and takes injected failures: `fail("ack",
error)` makes the next `ack` raise `error` (before doing anything), `hold("renew")` makes `renew`
wait until `resume("renew")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from controller.adapters.ledger import NewJob, OutcomeRecord, StartBatch
from controller.adapters.queue import Claimed, Placement
from controller.core.transitions import HELD_RETRY
from controller.model.jobs import AttemptContext, ExecutionResult, JobRef, JobRow, Outcome
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def job_row(phase: Phase = Phase.QUEUED, attempts: int = 0, **spec: Any) -> JobRow:
    """A ledger row of a noop job; `spec` holds RelayJob spec fields (`maxAttempts=1`...)."""
    parsed = RelayJobSpec.model_validate({"target": {"noop": {}}, **spec})
    return JobRow(
        ref=JobRef(uid=uuid.uuid4(), namespace="ns", name="job"),
        seq=1,
        phase=phase,
        spec_or_none=parsed,
        generation=1,
        nullifier=None,
        attempts=attempts,
        retries=max(0, attempts - 1),
        max_attempts=parsed.max_attempts,
        next_attempt_at=None,
        last_error=None,
        result=None,
        reason=None,
        message=None,
        redrive_token=None,
        created_at=NOW,
        queued_at=NOW,
        started_at=None,
        finished_at=None,
    )


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once `check()` holds; fail the test if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def in_background(loop: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `loop` as a task for the length of the block; it is cancelled and awaited after it."""
    task = asyncio.create_task(loop)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Faults:
    """Failures and pauses injected into a fake's methods, by method name."""

    def __init__(self) -> None:
        self._errors: dict[str, deque[BaseException]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []

    def fail(self, method: str, *errors: BaseException) -> None:
        self._errors.setdefault(method, deque()).extend(errors)

    def hold(self, method: str) -> None:
        self._gates[method] = asyncio.Event()
        self.entered[method] = asyncio.Event()

    def resume(self, method: str) -> None:
        self._gates.pop(method).set()

    async def _enter(self, method: str) -> None:
        self.calls.append(method)
        gate = self._gates.get(method)
        if gate is not None:
            self.entered[method].set()
            await gate.wait()
        errors = self._errors.get(method)
        if errors:
            raise errors.popleft()


class FakeQueue(Faults):
    """The Redis side: `ready` in claim order, `leased` uid -> deadline (epoch ms), `delayed` and
    `dead` uid -> epoch ms."""

    def __init__(self, ready: Iterable[str] = ()) -> None:
        super().__init__()
        self.ready: deque[str] = deque(ready)
        self.leased: dict[str, int] = {}
        self.delayed: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self.claims: list[int] = []  # how many each claim asked for
        self.placed: list[list[Placement]] = []  # each placement's items

    async def place(self, items: Sequence[Placement], now_ms: int, only_missing: bool = False) -> int:
        await self._enter("place")
        self.placed.append(list(items))
        self.ready.extend(item.uid for item in items)
        return len(items)

    async def claim(self, n: int, now_ms: int, lease_ms: int) -> Claimed:
        await self._enter("claim")
        self.claims.append(n)
        uids = [self.ready.popleft() for _ in range(min(n, len(self.ready)))]
        self.leased.update(dict.fromkeys(uids, now_ms + lease_ms))
        return Claimed(uids, {}, {})

    async def renew(self, uids: Iterable[str], deadline_ms: int) -> None:
        uids = list(uids)
        await self._enter("renew")
        self.leased.update(dict.fromkeys(uids, deadline_ms))  # a plain ZADD: re-creates a lease

    async def ack(
        self,
        done: Sequence[str] = (),
        retry: Sequence[tuple[str, int]] = (),
        dead: Sequence[tuple[str, int]] = (),
    ) -> None:
        await self._enter("ack")
        for uid in [*done, *(u for u, _ in retry), *(u for u, _ in dead)]:
            self.leased.pop(uid, None)
        self.delayed.update(dict(retry))
        self.dead.update(dict(dead))

    async def nack(self, uids: Sequence[str]) -> None:
        await self._enter("nack")
        for uid in uids:
            if self.leased.pop(uid, None) is not None:
                self.ready.appendleft(uid)

    async def remove(self, uids: Iterable[str]) -> None:
        uids = list(uids)
        await self._enter("remove")
        for uid in uids:
            self.leased.pop(uid, None)
            self.delayed.pop(uid, None)
            self.dead.pop(uid, None)
            if uid in self.ready:
                self.ready.remove(uid)


class FakeLedger(Faults):
    """The ledger's rows, and the transitions the worker, the status writer and the intake apply."""

    def __init__(self, rows: Iterable[JobRow] = ()) -> None:
        super().__init__()
        self.rows: dict[UUID, JobRow] = {r.ref.uid: r for r in rows}
        self.recorded: list[OutcomeRecord] = []
        self.written: dict[UUID, int] = {}  # status versions recorded as written
        self.admitted: list[list[NewJob]] = []
        self.lose_answer = False  # record_outcomes commits, then the connection dies before the answer

    def _update(self, row: JobRow, **changes: Any) -> JobRow:
        changed = row.model_copy(update={**changes, "version": row.version + 1})
        self.rows[row.ref.uid] = changed
        return changed

    async def start_attempts(self, uids: Sequence[str]) -> StartBatch:
        await self._enter("start_attempts")
        batch = StartBatch(started=[], exhausted=[], suspended=[], stale=[])
        for uid in uids:
            row = self.rows.get(UUID(uid))
            if row is None or row.deleted or not row.phase.active:
                batch.stale.append(uid)
            elif row.phase is Phase.PROCESSING and row.suspend:
                batch.suspended.append(self._update(row, phase=Phase.SUSPENDED, reason=Reason.SUSPENDED))
            elif row.phase is Phase.PROCESSING and row.attempts >= row.max_attempts:
                batch.exhausted.append(
                    self._update(
                        row,
                        phase=Phase.DEAD_LETTERED,
                        reason=Reason.ATTEMPTS_EXHAUSTED,
                        message=f"{row.attempts} of {row.max_attempts} attempts used; its lease was lost",
                    )
                )
            else:
                batch.started.append(
                    self._update(row, phase=Phase.PROCESSING, attempts=row.attempts + 1, started_at=NOW)
                )
        return batch

    async def record_outcomes(
        self, items: Sequence[OutcomeRecord], specs: Mapping[UUID, RelayJobSpec]
    ) -> list[JobRow]:
        await self._enter("record_outcomes")
        rows = []
        for item in items:
            row = self.rows.get(item.uid)
            if row is None or row.deleted or row.fence != item.fence or row.phase is not Phase.PROCESSING:
                continue  # fenced out
            self.recorded.append(item)
            held = row.suspend and item.phase is HELD_RETRY[0]
            rows.append(
                self._update(
                    row,
                    phase=HELD_RETRY[1] if held else item.phase,
                    reason=HELD_RETRY[2] if held else item.reason,
                    message=item.message,
                    next_attempt_at=item.next_attempt_at,
                    last_error=item.error,
                )
            )
        if self.lose_answer:
            self.lose_answer = False
            raise ConnectionResetError("injected: the answer to COMMIT was lost")
        return rows

    async def get_many(self, uids: Iterable[UUID]) -> dict[UUID, JobRow]:
        uids = list(uids)
        await self._enter("get_many")
        return {uid: self.rows[uid] for uid in uids if uid in self.rows}

    async def versions(self, uids: Iterable[UUID]) -> dict[UUID, int]:
        uids = list(uids)
        await self._enter("versions")
        return {uid: self.rows[uid].version for uid in uids if uid in self.rows}

    async def statuses_written(self, written: Mapping[UUID, int]) -> dict[UUID, int]:
        await self._enter("statuses_written")
        for uid, version in written.items():
            self.written[uid] = max(version, self.written.get(uid, 0))
        return {uid: self.rows[uid].version for uid in written if uid in self.rows}

    async def admit_many(self, jobs: Sequence[NewJob]) -> dict[UUID, JobRow]:
        jobs = list(jobs)
        await self._enter("admit_many")
        self.admitted.append(jobs)
        created = {}
        for job in jobs:
            if job.ref.uid in self.rows:
                continue
            row = job_row(job.phase).model_copy(update={"ref": job.ref, "spec_or_none": job.spec})
            self.rows[job.ref.uid] = created[job.ref.uid] = row
        return created


class FakeStatus:
    """The status writer as the worker sees it: every row offered, in order."""

    def __init__(self) -> None:
        self.offered: list[JobRow] = []

    def offer(self, rows: Iterable[JobRow]) -> None:
        self.offered.extend(rows)


class FakeCallbacks(FakeStatus):
    """The callbacks as the worker sees them: every row offered, in order."""


class FakeEvents:
    def __init__(self) -> None:
        self.posted: list[tuple[UUID, str, str, str]] = []

    def post(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.posted.append((ref.uid, kind, reason, message))


class FakeCluster(Faults):
    """The API server: the status document each RelayJob holds, and which RelayJobs exist."""

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[UUID, dict[str, Any]] = {}
        self.patches = 0
        self.gone: set[UUID] = set()

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        await self._enter("patch_status")
        self.patches += 1
        if ref.uid in self.gone:
            return False
        self.status[ref.uid] = status
        return True

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        await self._enter("post_event")

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("not used")

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]:
        raise AssertionError("not used")

    async def delete_job(self, ref: JobRef) -> bool:
        raise AssertionError("not used")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class ScriptedExecutor:
    """An executor whose attempts end as told: after `seconds`, with `result` or raising `error`;
    while `gate` is set up (`hold()`), attempts wait for `go()` first."""

    def __init__(
        self,
        result: ExecutionResult | None = None,
        seconds: float = 0.0,
        error: Exception | None = None,
    ) -> None:
        self.result = result or ExecutionResult(outcome=Outcome.SUCCEEDED, reason="OK", message="done")
        self.seconds = seconds
        self.error = error
        self.seen: list[AttemptContext] = []
        self.gate: asyncio.Event | None = None

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def go(self) -> None:
        assert self.gate is not None
        self.gate.set()

    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        self.seen.append(ctx)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return self.result

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def recursion_budget(frames: int) -> Iterator[None]:
    """Python's recursion limit set `frames` above the current stack: what decoding may use."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(len(traceback.extract_stack()) + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)
