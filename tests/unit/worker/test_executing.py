"""One attempt under its slot and timeout: every end is named, and counted once."""

from __future__ import annotations

import asyncio

from controller.adapters.metrics import Metrics
from controller.model.jobs import Outcome
from controller.model.phases import AttemptOutcome, Phase
from controller.runtime.worker.capacity import Capacity
from controller.runtime.worker.executing import Attempts, EndedAttempt
from controller.runtime.worker.leases import Leases
from tests.unit.fakes import FakeQueue, ScriptedExecutor, job_row


class Stage:
    """Attempts with the parts around them: the ended attempts it hands on, its capacity and leases."""

    def __init__(self, executor: ScriptedExecutor, concurrency: int = 4) -> None:
        self.ended: list[EndedAttempt] = []
        self.capacity = Capacity(concurrency=concurrency, claim_batch=8)
        self.leases = Leases(queue=FakeQueue(), metrics=Metrics(), lease_seconds=30)
        self.attempts = Attempts(
            executors={"noop": executor},
            concurrency=concurrency,
            capacity=self.capacity,
            leases=self.leases,
            ended=self.ended.append,
            metrics=Metrics(),
        )

    def start(self, n: int = 1, **spec: object) -> None:
        for _ in range(n):
            row = job_row(Phase.PROCESSING, attempts=1, **spec)
            self.leases.hold([str(row.ref.uid)])
            self.capacity.opened(1)
            self.attempts.start(row)

    async def settle(self) -> None:
        await asyncio.gather(*self.attempts.running, return_exceptions=True)


async def test_an_attempt_that_runs_hands_on_the_executor_result_and_frees_its_room() -> None:
    stage = Stage(ScriptedExecutor())
    stage.start(timeoutSeconds=5)
    await stage.settle()
    (ended,) = stage.ended
    assert ended.result is not None and ended.outcome is AttemptOutcome.SUCCEEDED
    assert stage.capacity.open_count == 0 and stage.capacity.job_seconds < 1.0


async def test_an_attempt_past_its_timeout_is_retryable_with_reason_timeout() -> None:
    stage = Stage(ScriptedExecutor(seconds=5))
    stage.start(timeoutSeconds=0.05)
    await stage.settle()
    (ended,) = stage.ended
    assert ended.result is not None
    assert (ended.result.outcome, ended.result.reason) == (Outcome.RETRYABLE, "Timeout")
    assert ended.result.message == "no result within 0.05s"


async def test_an_executor_that_raises_is_retryable_and_named() -> None:
    stage = Stage(ScriptedExecutor(error=RuntimeError("no\n  route")))
    stage.start()
    await stage.settle()
    (ended,) = stage.ended
    assert ended.result is not None
    assert (ended.result.outcome, ended.result.reason) == (Outcome.RETRYABLE, "ExecutorError")
    assert ended.result.message == "executor 'noop' raised RuntimeError: no route"


async def test_a_cut_off_attempt_is_handed_on_without_a_result_to_be_recorded() -> None:
    executor = ScriptedExecutor()
    executor.hold()
    stage = Stage(executor)
    stage.start()
    await asyncio.sleep(0.01)
    stage.attempts.cut_off(stage.attempts.running)
    await stage.settle()
    (ended,) = stage.ended
    assert ended.result is None and ended.outcome is AttemptOutcome.LOST
    assert stage.capacity.open_count == 0
    assert stage.capacity.job_seconds == 1.0  # its duration says nothing of how long jobs take


async def test_a_cancelled_attempt_is_not_recorded_and_its_lease_is_left_to_lapse() -> None:
    executor = ScriptedExecutor()
    executor.hold()
    stage = Stage(executor)
    stage.start()
    await asyncio.sleep(0.01)
    (uid,) = [ctx.ref.uid for ctx in executor.seen]
    assert stage.attempts.cancel(uid)
    await stage.settle()
    assert stage.ended == [] and stage.leases.held == frozenset()
    assert stage.capacity.open_count == 0
    assert not stage.attempts.cancel(uid)


async def test_no_more_attempts_run_at_once_than_there_are_slots() -> None:
    executor = ScriptedExecutor()
    executor.hold()
    stage = Stage(executor, concurrency=2)
    stage.start(5)
    await asyncio.sleep(0.01)
    assert len(executor.seen) == 2 and len(stage.attempts.running) == 5
    executor.go()
    await stage.settle()
    assert len(stage.ended) == 5
