"""What the worker's stages need of Redis, the ledger, the status writer and the Event poster.

Narrow protocols: `adapters.queue.Queue`, `adapters.ledger.Ledger`, `runtime.status.StatusWriter`
and `runtime.events.EventPoster` satisfy them, and so do the unit tests' in-memory fakes. Uids are
strings where Redis holds them and UUIDs where the ledger does; times in Redis are epoch ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol
from uuid import UUID

from controller.adapters.ledger import OutcomeRecord, StartBatch
from controller.adapters.queue import Claimed
from controller.model.jobs import JobRef, JobRow
from controller.model.spec import RelayJobSpec


class WorkQueue(Protocol):
    """The Redis side: leases taken, renewed, acked (outcome applied), nacked (handed back) or removed."""

    async def claim(self, n: int, now_ms: int, lease_ms: int) -> Claimed: ...

    async def renew(self, uids: Iterable[str], deadline_ms: int) -> None: ...

    async def ack(
        self,
        done: Sequence[str] = (),
        retry: Sequence[tuple[str, int]] = (),
        dead: Sequence[tuple[str, int]] = (),
    ) -> None: ...

    async def nack(self, uids: Sequence[str]) -> None: ...

    async def remove(self, uids: Iterable[str]) -> None: ...


class WorkLedger(Protocol):
    """The ledger side: attempts opened, outcomes recorded, rows read back."""

    async def start_attempts(self, uids: Sequence[str]) -> StartBatch: ...

    async def record_outcomes(
        self, items: Sequence[OutcomeRecord], specs: Mapping[UUID, RelayJobSpec]
    ) -> list[JobRow]: ...

    async def get_many(self, uids: Iterable[UUID]) -> dict[UUID, JobRow]: ...


class StatusSink(Protocol):
    """Takes rows the ledger returned from a transition, to write them to their RelayJobs."""

    def offer(self, rows: Iterable[JobRow]) -> None: ...


class CallbackSink(Protocol):
    """Takes rows the ledger returned from a transition, to create the callbacks finished ones owe."""

    def offer(self, rows: Iterable[JobRow]) -> None: ...


class EventSink(Protocol):
    """Posts a Kubernetes Event about a job, rate-limited; never raises."""

    def post(self, ref: JobRef, kind: str, reason: str, message: str) -> None: ...
