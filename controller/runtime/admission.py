"""From a RelayJob as the watch delivers it to a ledger row, a queue entry and a status.

`observe` is idempotent by uid and cheap for objects already seen at this generation, because the
watch also delivers our own status patches. `forget` handles deletion.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from controller.adapters.kube import FIELD_MANAGER
from controller.adapters.ledger import UNSTORABLE, Admission, Ledger, NewJob, RedriveVerdict, Refusal, Shown
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Placement, Queue
from controller.core.admission import Admitted, admit
from controller.core.changes import follow, ignored_message
from controller.core.scoring import ready_score
from controller.core.status import status_agrees, status_shows
from controller.core.transitions import admitted
from controller.model.jobs import JobRef, JobRow, uid_of
from controller.model.phases import Phase, Reason
from controller.model.queues import IMPLICIT, RelayQueueSpec
from controller.model.spec import DEFAULT_QUEUE, QUEUE_NAME_PATTERN, RelayJobSpec
from controller.runtime.events import EventPoster
from controller.runtime.intake import Intake
from controller.runtime.logs import job_fields
from controller.runtime.queues import Queues
from controller.runtime.status import StatusWriter
from controller.runtime.worker import Worker

log = logging.getLogger("relayjob.admission")
REDRIVE_ANNOTATION = "relay.dev/redrive"
QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)
# The immutable fields a queue's defaults fill in: a later generation keeps them as admitted.
ADMITTED_DEFAULTS = {"max_attempts", "backoff", "timeout_seconds"}


def status_written_by_another(meta: Mapping[str, Any]) -> bool:
    """Whether the RelayJob's status was last written by a client other than the operator.

    Status is one atomic value (the CRD says so), so its owner in `managedFields` is whoever last
    changed it: normally us; after `kubectl patch --subresource=status`, that client."""
    for entry in meta.get("managedFields") or ():
        if (
            entry.get("subresource") == "status"
            and entry.get("manager") != FIELD_MANAGER
            and "f:status" in (entry.get("fieldsV1") or {})
        ):
            return True
    return False


def placement_for(
    uid: UUID, priority: int, seq: int, next_attempt_at: datetime | None, queue: str
) -> Placement:
    """Where the ledger says a waiting job belongs in Redis; `queue` is the queue's id."""
    return Placement(
        uid=str(uid),
        score=ready_score(priority, seq),
        ready_at_ms=int(next_attempt_at.timestamp() * 1000) if next_attempt_at else 0,
        queue=queue,
    )


def placement(row: JobRow) -> Placement:
    return placement_for(row.ref.uid, row.priority, row.seq, row.next_attempt_at, row.queue_id)


def version_key(meta: Mapping[str, Any]) -> tuple[int, str | None]:
    """What of a RelayJob's metadata admission acts on: its generation and re-drive value."""
    return int(meta.get("generation") or 1), (meta.get("annotations") or {}).get(REDRIVE_ANNOTATION)


def nothing_to_follow(row: JobRow | Shown, generation: int, redrive: str | None) -> bool:
    """Whether the ledger row already reflects this generation and re-drive value (`_follow`)."""
    return generation <= row.generation and (not redrive or redrive == row.redrive_token)


def _created(meta: Mapping[str, Any]) -> datetime:
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return datetime.now(UTC)


class Admissions:
    def __init__(
        self,
        *,
        ledger: Ledger,
        queue: Queue,
        worker: Worker,
        status: StatusWriter,
        events: EventPoster,
        metrics: Metrics,
        queues: Queues,
        payload_limit: int,
        default_ttl_seconds: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.worker = worker
        self.status = status
        self.events = events
        self.metrics = metrics
        self.queues = queues
        self.payload_limit = payload_limit
        self.default_ttl_seconds = default_ttl_seconds
        self._seen: dict[UUID, tuple[int, str | None]] = {}
        self.intake = Intake(ledger, queue, placement, self._placed)

    async def observe(self, body: Mapping[str, Any], *, listed: bool = False) -> None:
        """Reconcile one RelayJob as a watch event delivered it: admit it the first time, then act
        on each new generation (mutable fields) and re-drive value, and repair a status that
        another client wrote. `listed`: the body came from a list of every RelayJob (a start or a
        re-list of the watch), not from a change."""
        meta = body.get("metadata") or {}
        ref = JobRef(uid=UUID(meta["uid"]), namespace=meta["namespace"], name=meta["name"])
        spec = dict(body.get("spec") or {})
        key = generation, redrive = version_key(meta)
        if self._seen.get(ref.uid) == key:
            # Mostly our own status patches coming back: cheap unless someone else wrote status.
            if status_written_by_another(meta):
                self._repair(ref)
            return
        # A uid this process has never seen is most likely new: admission's INSERT is idempotent
        # by uid and returns the existing row otherwise, so a read first would only cost a round trip.
        # A listed one is most likely recorded: one read, where admission took three statements
        # and a spec validation (at 100,000 finished RelayJobs, minutes of a start-up).
        known = ref.uid in self._seen or listed
        row = await self.ledger.get(ref.uid) if known else None
        created = False
        if row is None:
            queue = await self._queue_of(ref, spec)
            spec = self._defaulted(spec, queue)
            row, created = await self._admit(ref, spec, generation, _created(meta), queue is not None)
        else:
            spec = self._defaulted(spec, await self._queue_of(ref, spec), row.spec_or_none)
        if not created:
            followed = await self._follow(row, spec, generation, redrive)
            if status_written_by_another(meta):
                self._repair(ref)
            elif followed is row and not status_agrees(body.get("status") or {}, row):
                # Behind the ledger (after a restart, say): write it, unless this process already
                # wrote that version. A status this event's own change made stale is already on
                # its way from `_follow`.
                self.status.mark([ref.uid])
        self._seen[ref.uid] = key
        if listed:
            self.metrics.listed.labels("event").inc()

    def unchanged(self, body: Mapping[str, Any]) -> bool:
        """Whether `observe` would do nothing for this RelayJob: seen at this generation and
        re-drive value, and its status last written by the operator (mostly its own status patch
        coming back through the watch). In memory only: kopf's watch decoding asks it per event."""
        meta = body.get("metadata") or {}
        uid = uid_of(body)
        if uid is None or self._seen.get(uid) != version_key(meta):
            return False
        return not status_written_by_another(meta)

    async def observe_page(self, bodies: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Reconcile one page of a list of every RelayJob (a start, or a re-list of the watch) with
        one ledger read for the whole page. A RelayJob the ledger knows at this generation and
        re-drive value, whose status no other client wrote, is done here: it joins the live set,
        and its status is marked for writing if it is behind the ledger. Returns the rest, in
        order, each for `observe(listed=True)`: new jobs, changed ones, malformed ones.

        Raises what `Ledger.shown` raises; nothing is recorded as seen then.

        Why a page at once: kopf gives each listed object a worker of its own, held for its
        `idle_timeout` after the event, and reads the next page without waiting for them. At
        100,000 finished RelayJobs the list outran the workers by minutes, and the objects
        waiting for one held 800 MiB."""
        uids = [uid_of(body) for body in bodies]
        pending: dict[UUID, Mapping[str, Any]] = {}
        done: set[UUID] = set()
        for uid, body in zip(uids, bodies, strict=True):
            meta = body.get("metadata") or {}
            if uid is None or status_written_by_another(meta):
                continue  # left to `observe`: it reports a malformed object, and repairs status
            if self._seen.get(uid) == version_key(meta):
                done.add(uid)
            else:
                pending[uid] = body
        rows = await self.ledger.shown(pending) if pending else {}
        behind: list[UUID] = []
        for uid, body in pending.items():
            row = rows.get(uid)
            generation, redrive = key = version_key(body["metadata"])
            if row is None or not nothing_to_follow(row, generation, redrive):
                continue
            if not status_shows(body.get("status") or {}, row.phase, row.attempts, row.generation):
                behind.append(uid)
            self._seen[uid] = key
            done.add(uid)
        if behind:
            self.status.mark(behind)
        self.metrics.listed.labels("page").inc(len(done))
        return [body for uid, body in zip(uids, bodies, strict=True) if uid not in done]

    async def _queue_of(self, ref: JobRef, spec: Mapping[str, Any]) -> RelayQueueSpec | None:
        """The spec of the RelayQueue the job names, None when it does not exist. A queue name
        the schema would refuse is left to admission, which rejects the spec."""
        name = spec.get("queue") or DEFAULT_QUEUE
        if not isinstance(name, str) or not QUEUE_NAME.match(name):
            return IMPLICIT
        return await self.queues.spec_for(ref.namespace, name)

    def _defaulted(
        self, spec: dict[str, Any], queue: RelayQueueSpec | None, admitted: RelayJobSpec | None = None
    ) -> dict[str, Any]:
        """`spec` with the defaults for the fields it leaves out: the queue's, then the operator's
        TTL. A later generation keeps the immutable fields as they were admitted (the queue's
        defaults may have changed since); the TTL, which may change, follows the defaults. A new
        job whose queue does not exist yet is left as it is: it takes the queue's defaults when
        the queue appears (`Ledger.find_queue`)."""
        if admitted is not None:
            spec = {**admitted.model_dump(by_alias=True, include=ADMITTED_DEFAULTS), **spec}
        elif queue is None:
            return spec
        if queue is not None:
            spec = queue.defaults.fill(spec)
        if spec.get("ttlSecondsAfterFinished") is None and self.default_ttl_seconds is not None:
            # The operator's default stands in for a TTL neither the job nor its queue sets, at
            # admission and at every later generation alike, so a change of priority keeps it.
            spec["ttlSecondsAfterFinished"] = self.default_ttl_seconds
        return spec

    def _repair(self, ref: JobRef) -> None:
        log.warning("status disagrees with the ledger; rewriting it", extra=job_fields(ref))
        self.metrics.status_repairs.inc()
        self.status.repair([ref.uid])

    async def _admit(
        self, ref: JobRef, raw: dict[str, Any], generation: int, created: datetime, queue_found: bool
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
            first = admitted(spec, created, datetime.now(UTC), queue_found)
            job = NewJob(
                ref, spec, raw, generation, first.phase, first.reason, first.message, first.next_attempt_at
            )
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
                if row.reason == Reason.QUEUE_NOT_FOUND:
                    self.events.post(ref, "Warning", Reason.QUEUE_NOT_FOUND, row.message or "")
        if not placed:
            if row.phase is Phase.QUEUED and not row.deleted:
                await self.queue.place([placement(row)], int(time.time() * 1000))
            self._placed([row])
        return row, admission.created

    def _placed(self, rows: Iterable[JobRow]) -> None:
        """Rows just recorded (and placed, if they wait in the queue): wake the worker, show them."""
        self.worker.wake()
        self.status.offer(rows)

    async def _follow(self, row: JobRow, raw: dict[str, Any], generation: int, redrive: str | None) -> JobRow:
        """Changes a user makes after admission: a re-drive value, a new generation of the spec."""
        if redrive and redrive != row.redrive_token:
            row = await self._redrive(row, redrive)
        if generation > row.generation:
            row = await self._change(row, raw, generation)
        return row

    async def _redrive(self, row: JobRow, value: str) -> JobRow:
        """Act on a `relay.dev/redrive` value the ledger has not seen on this job; say why not
        when the job is not dead-lettered (the value stays recorded, so it never fires later)."""
        done = await self.ledger.redrive(row.ref.uid, value)
        if done.row is None:
            return row
        row = done.row
        shown = f"{REDRIVE_ANNOTATION}={value!r}"
        if done.verdict is RedriveVerdict.REDRIVEN:
            await self.queue.place([placement(row)], int(time.time() * 1000))
            self.worker.wake()
            log.info("job re-driven", extra=job_fields(row.ref))
            self.events.post(row.ref, "Normal", Reason.REDRIVEN, f"{shown}: re-queued with attempts reset")
        elif done.verdict is RedriveVerdict.NOT_DEAD_LETTERED:
            self.events.post(
                row.ref,
                "Normal",
                Reason.REDRIVE_IGNORED,
                f"{shown} ignored: the job was {done.phase}, not DeadLettered; the value is recorded "
                "and will not act later: set a new value once the job is DeadLettered",
            )
        elif done.verdict is RedriveVerdict.SEEN_BEFORE:
            self.events.post(
                row.ref,
                "Normal",
                Reason.REDRIVE_IGNORED,
                f"{shown} ignored: this value was already seen on this job; set a new value to re-drive",
            )
        else:
            self.events.post(row.ref, "Warning", Reason.REDRIVE_IGNORED, f"{shown} ignored: {row.message}")
        self.status.offer([row])
        return row

    async def _change(self, row: JobRow, raw: dict[str, Any], generation: int) -> JobRow:
        """Apply a new generation's mutable fields, in the ledger first and then in Redis."""
        followed = follow(row.spec_or_none, raw, generation)
        changed = await self.ledger.follow(row.ref.uid, followed.change)
        if changed is None:
            return row
        if followed.ignored:
            self.events.post(
                changed.ref, "Warning", Reason.SPEC_CHANGE_IGNORED, ignored_message(followed.ignored)
            )
        uid = str(changed.ref.uid)
        now_ms = int(time.time() * 1000)
        if changed.phase is Phase.SUSPENDED and row.phase is not Phase.SUSPENDED:
            await self.queue.remove([uid])
            self.events.post(
                changed.ref, "Normal", Reason.SUSPENDED, "spec.suspend is true: no attempt starts"
            )
        elif row.phase is Phase.SUSPENDED and changed.phase is Phase.QUEUED:
            await self.queue.place([placement(changed)], now_ms)
            self.worker.wake()
            self.events.post(changed.ref, "Normal", Reason.RESUMED, "spec.suspend is false: queued again")
        elif changed.priority != row.priority and changed.phase.active:
            # A waiting job moves to its new place; a leased one keeps its lease and gets the new
            # place when it is next queued (a retry, or an expired lease).
            await self.queue.place([placement(changed)], now_ms)
        self.status.offer([changed])
        return changed

    def seen(self, uid: UUID) -> bool:
        """Whether the watch delivered this RelayJob and no deletion of it since: the live set of
        RelayJobs, kept from the watch."""
        return uid in self._seen

    async def forget(self, uid: UUID) -> None:
        """The RelayJob was deleted: cancel an attempt in flight, leave nothing queued or held."""
        self._seen.pop(uid, None)
        self.worker.cancel(uid)
        row = await self.ledger.cancel(uid)
        await self.queue.remove([str(uid)])
        if row is not None:
            log.info("job deleted; cancelled", extra=job_fields(row.ref) | {"phase": row.phase.value})
