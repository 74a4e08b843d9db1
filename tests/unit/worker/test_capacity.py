"""How much the worker opens at once: the slots, plus the prefetch while attempts are short."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from controller.runtime.worker.capacity import PREFETCH_HORIZON_SECONDS, Capacity


@given(
    concurrency=st.integers(1, 10_000),
    claim_batch=st.integers(1, 10_000),
    durations=st.lists(st.floats(0.0, 100.0), max_size=50),
)
def test_prefetch_never_exceeds_claim_batch(
    concurrency: int, claim_batch: int, durations: list[float]
) -> None:
    capacity = Capacity(concurrency=concurrency, claim_batch=claim_batch)
    for seconds in durations:
        capacity.took(seconds)
        assert 0 <= capacity.prefetch() <= claim_batch


def test_no_work_is_taken_ahead_until_attempts_are_known_to_be_short() -> None:
    capacity = Capacity(concurrency=10, claim_batch=64)
    assert capacity.prefetch() == 0 and capacity.free() == 10  # a fresh worker assumes 1 s jobs
    for _ in range(100):
        capacity.took(0.01)
    assert capacity.prefetch() == 64  # 10 slots x 0.1 s / 0.01 s = 100, capped by the claim batch
    for _ in range(100):
        capacity.took(2 * PREFETCH_HORIZON_SECONDS)
    assert capacity.prefetch() == 0


def test_free_counts_each_attempt_from_opened_to_closed() -> None:
    capacity = Capacity(concurrency=4, claim_batch=64)
    capacity.opened(3)
    assert capacity.free() == 1
    capacity.closed()
    capacity.closed(2)  # a batch that failed to open: never started
    assert capacity.free() == 4


async def test_a_closed_attempt_wakes_whoever_waits_for_room() -> None:
    capacity = Capacity(concurrency=1, claim_batch=1)
    capacity.opened(1)
    waiting = asyncio.create_task(capacity.wait_for_room())
    await asyncio.sleep(0)
    assert not waiting.done()
    capacity.closed()
    await asyncio.wait_for(waiting, 1)
