"""From a RelayJob as the watch delivers it to a ledger row, a queue entry and a status.

`observe` is idempotent by uid and cheap for objects already seen at this generation, because the
watch also delivers our own status patches. `forget` handles deletion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from controller.adapters.ledger import UNSTORABLE, Admission, Ledger, NewJob, Refusal
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Placement, Queue
from controller.core.admission import Admitted, admit
from controller.core.scoring import ready_score
from controller.model.jobs import JobRef, JobRow
from controller.model.phases import Phase, Reason
from controller.runtime.events import EventPoster
from controller.runtime.intake import Intake
from controller.runtime.logs import job_fields
from controller.runtime.status import StatusWriter
from controller.runtime.worker import Worker

log = logging.getLogger("relayjob.admission")
REDRIVE_ANNOTATION = "relay.dev/redrive"


def placement_for(uid: UUID, priority: int, seq: int, next_attempt_at: datetime | None) -> Placement:
    """Where the ledger says a waiting job belongs in Redis."""
    return Placement(
        uid=str(uid),
        score=ready_score(priority, seq),
        ready_at_ms=int(next_attempt_at.timestamp() * 1000) if next_attempt_at else 0,
    )


def placement(row: JobRow) -> Placement:
    return placement_for(row.ref.uid, row.spec.priority, row.seq, row.next_attempt_at)


def _created(meta: Mapping[str, Any]) -> datetime:
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return datetime.now(UTC)


class Admissions:
    def __init__(
        self,
        ledger: Ledger,
        queue: Queue,
        worker: Worker,
        status: StatusWriter,
        events: EventPoster,
        metrics: Metrics,
        payload_limit: int,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.worker = worker
        self.status = status
        self.events = events
        self.metrics = metrics
        self.payload_limit = payload_limit
        self._seen: dict[UUID, tuple[int, str | None, bool]] = {}
        self.intake = Intake(ledger, queue, placement, self._placed)

    async def observe(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        ref = JobRef(uid=UUID(meta["uid"]), namespace=meta["namespace"], name=meta["name"])
        spec = dict(body.get("spec") or {})
        generation = int(meta.get("generation") or 1)
        redrive = (meta.get("annotations") or {}).get(REDRIVE_ANNOTATION)
        suspend = bool(spec.get("suspend", False))
        key = (generation, redrive, suspend)
        if self._seen.get(ref.uid) == key:
            return
        # A uid this process has never seen is most likely new: admission's INSERT is idempotent
        # by uid and returns the existing row otherwise, so a read first would only cost a round trip.
        row = await self.ledger.get(ref.uid) if ref.uid in self._seen else None
        created = False
        if row is None:
            row, created = await self._admit(ref, spec, generation, _created(meta))
        if not created:
            row = await self._follow(row, redrive, suspend)
            status = body.get("status") or {}
            if status.get("phase") != row.phase.value or status.get("attempts") != row.attempts:
                self.status.mark([ref.uid])
        self._seen[ref.uid] = key

    async def _admit(
        self, ref: JobRef, raw: dict[str, Any], generation: int, created: datetime
    ) -> tuple[JobRow, bool]:
        """Record the job (or find it recorded); True when this call created its ledger row."""
        verdict = admit(raw, self.payload_limit, self.worker.executors.keys())
        placed = False  # by the intake, which places and shows the rows it creates itself
        if not isinstance(verdict, Admitted):
            admission = await self.ledger.refuse(
                ref, raw, generation, Refusal(verdict.reason, verdict.message)
            )
        else:
            spec = verdict.spec
            start = spec.earliest_start(created)
            now = datetime.now(UTC)
            if spec.suspend:
                phase, reason, message = Phase.SUSPENDED, Reason.SUSPENDED, "spec.suspend is true"
            elif start > now:
                phase, reason, message = (
                    Phase.QUEUED,
                    Reason.DELAYED,
                    f"not before {start:%Y-%m-%dT%H:%M:%SZ}",
                )
            else:
                phase, reason, message = Phase.QUEUED, Reason.ADMITTED, "queued"
            job = NewJob(ref, spec, raw, generation, phase, reason, message, start if start > now else None)
            recorded = await self.intake.record(job)
            if recorded is not None:
                admission, placed = Admission(recorded, created=True), True
            else:
                try:
                    admission = await self.ledger.admit(job)
                except UNSTORABLE as error:
                    why = f"spec cannot be stored in the ledger: {error}"
                    admission = await self.ledger.refuse(
                        ref, raw, generation, Refusal(Reason.INVALID_SPEC, why)
                    )
        row = admission.row
        if admission.created:
            if row.phase is Phase.REJECTED:
                self.metrics.jobs.labels("rejected").inc()
                log.warning("job rejected: %s", row.message, extra=job_fields(ref) | {"reason": row.reason})
                self.events.post(ref, "Warning", row.reason or "Rejected", row.message or "rejected")
            else:
                log.info("job admitted", extra=job_fields(ref) | {"phase": row.phase.value})
        if not placed:
            if row.phase is Phase.QUEUED and not row.deleted:
                await self.queue.place([placement(row)], int(time.time() * 1000))
            self._placed([row])
        return row, admission.created

    def _placed(self, rows: Iterable[JobRow]) -> None:
        """Rows just recorded (and placed, if they wait in the queue): wake the worker, show them."""
        self.worker.wake()
        self.status.offer(rows)

    async def _follow(self, row: JobRow, redrive: str | None, suspend: bool) -> JobRow:
        """Changes a user makes after admission: a re-drive annotation, `spec.suspend`."""
        uid = row.ref.uid
        if redrive and redrive != row.redrive_token and row.phase is Phase.DEAD_LETTERED:
            redriven = await self.ledger.redrive(uid, redrive)
            if redriven is not None:
                row = redriven
                if row.phase is Phase.QUEUED:
                    await self.queue.place([placement(row)], int(time.time() * 1000))
                    self.worker.wake()
                    log.info("job re-driven", extra=job_fields(row.ref))
                    self.events.post(row.ref, "Normal", "Redriven", "re-queued with attempts reset")
                self.status.mark([uid])
        if suspend and row.phase in (Phase.QUEUED, Phase.RETRYING):
            changed = await self.ledger.set_suspended(uid, True)
            if changed is not None:
                row = changed
                await self.queue.remove([str(uid)])
                self.status.mark([uid])
        elif not suspend and row.phase is Phase.SUSPENDED:
            changed = await self.ledger.set_suspended(uid, False)
            if changed is not None:
                row = changed
                await self.queue.place([placement(row)], int(time.time() * 1000))
                self.worker.wake()
                self.status.mark([uid])
        return row

    async def forget(self, uid: UUID) -> None:
        """The RelayJob was deleted: cancel an attempt in flight, leave nothing queued or held."""
        self._seen.pop(uid, None)
        self.worker.cancel(uid)
        row = await self.ledger.cancel(uid)
        await self.queue.remove([str(uid)])
        if row is not None:
            log.info("job deleted; cancelled", extra=job_fields(row.ref) | {"phase": row.phase.value})
