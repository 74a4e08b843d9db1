"""How many attempts the worker may open now, and how much work it takes ahead of its slots.

The worker runs at most `concurrency` attempts at once. While jobs finish fast it opens attempts a
little ahead of the free slots (prefetch), or every slot would wait for a durable commit between
two short jobs: as much work as the running jobs get through in PREFETCH_HORIZON_SECONDS, judged by
a moving average of attempt durations. The price: a crash counts an attempt for the jobs opened
ahead in its last ~PREFETCH_HORIZON_SECONDS, which had not started yet (they are re-queued like the
jobs in flight).

Guarantees: `prefetch()` is 0 while attempts take PREFETCH_HORIZON_SECONDS or longer, and never
more than `claim_batch`; `free()` is `concurrency + prefetch() - open_count`, where `open_count`
counts each attempt from `opened` to `closed` (running, or waiting for a slot). No I/O.
"""

from __future__ import annotations

import asyncio

# Lease ahead of the free slots only as much work as the running jobs get through in this long
# (judged by recent attempt durations): a job leased ahead waits at most about that long to start.
PREFETCH_HORIZON_SECONDS = 0.1
# The weight of the newest attempt's duration in the moving average.
SMOOTHING = 0.1


class Capacity:
    def __init__(self, *, concurrency: int, claim_batch: int) -> None:
        self.concurrency = concurrency
        self.claim_batch = claim_batch
        self.open_count = 0
        self.job_seconds = 1.0  # moving average of attempt durations; no prefetch until it is short
        self._room = asyncio.Event()  # an opened attempt closed

    def prefetch(self) -> int:
        """Attempts to open beyond the free slots: what the running jobs finish in the horizon."""
        if self.job_seconds >= PREFETCH_HORIZON_SECONDS:
            return 0
        ahead = int(self.concurrency * PREFETCH_HORIZON_SECONDS / max(self.job_seconds, 1e-4))
        return min(self.claim_batch, ahead)

    def free(self) -> int:
        """Attempts that may still be opened: the slots, plus the work taken ahead, minus those open."""
        return self.concurrency + self.prefetch() - self.open_count

    def opened(self, n: int) -> None:
        self.open_count += n

    def closed(self, n: int = 1) -> None:
        """`n` opened attempts ended, or were never started: their room goes to new ones."""
        self.open_count -= n
        self._room.set()

    def took(self, seconds: float) -> None:
        """An attempt ran to its end in `seconds`."""
        self.job_seconds += (seconds - self.job_seconds) * SMOOTHING

    async def wait_for_room(self) -> None:
        """Until an opened attempt closes, or `wake` is called."""
        self._room.clear()
        await self._room.wait()

    def wake(self) -> None:
        self._room.set()
