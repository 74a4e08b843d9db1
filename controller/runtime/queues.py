"""RelayQueues: which exist, their limits in Redis, their waiting jobs' reason, and their status.

The RelayQueue objects are the desired state; Redis holds their limits (so every replica's claims
obey them, whichever replica handles resources), and the ledger records which waiting jobs have no
queue (`QueueNotFound`). Three paths keep those in agreement:

- `observe` / `forget`: the watch delivered a RelayQueue, or its deletion (the fast path).
- `spec_for`: admission asks for a job's queue; a queue this process has not seen yet is read
  from the API server once, so a RelayQueue applied together with its jobs is found even when the
  jobs' watch event arrives first.
- `reconcile`: every reconcile interval, the RelayQueues listed from the API server are compared
  with Redis and with the queues waiting jobs name, which repairs what a restart or a lost Redis
  missed.

`write_statuses` publishes each queue's counts (ready, delayed, running from Redis; deadLettered
from the ledger), its dispatch rate over the last minute and a `Paused` condition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from controller.adapters.ledger import Ledger
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Queue, QueueLimits
from controller.core.queues import KnownQueue, queue_status, same_status
from controller.model.jobs import ClusterApi, JobRef, JobRow
from controller.model.phases import Reason
from controller.model.queues import IMPLICIT, QueueRef, RelayQueueSpec
from controller.runtime.events import EventPoster
from controller.runtime.status import StatusWriter
from controller.runtime.worker import Worker

log = logging.getLogger("relayjob.queues")
# A queue the API server said does not exist is not asked for again for this long: a burst of
# jobs naming a missing queue costs one GET, not one per job.
MISS_SECONDS = 2.0


def limits(spec: RelayQueueSpec) -> QueueLimits:
    """What Redis needs of a queue's spec to decide claims."""
    rate = spec.rate_limit
    return QueueLimits(
        paused=spec.paused,
        max_concurrency=spec.max_concurrency,
        per_second=rate.per_second if rate else None,
        burst=rate.burst if rate else 1,
        weight=spec.weight,
    )


def _ref(meta: Mapping[str, Any]) -> QueueRef:
    return QueueRef(str(meta["namespace"]), str(meta["name"]))


def _read(body: Mapping[str, Any]) -> KnownQueue:
    meta = body.get("metadata") or {}
    try:
        spec = RelayQueueSpec.model_validate(body.get("spec") or {})
        problem = None
    except ValidationError as error:
        # The API server validated it; an object from before a CRD upgrade may still disagree.
        # Holding its jobs is the safe reading of limits we cannot read.
        spec = RelayQueueSpec(paused=True)
        problem = f"spec is invalid, so the queue is held paused: {error.errors()[0]['msg']}"
    return KnownQueue(UUID(str(meta["uid"])), int(meta.get("generation") or 1), spec, problem)


class Queues:
    def __init__(
        self,
        *,
        kube: ClusterApi,
        queue: Queue,
        ledger: Ledger,
        status: StatusWriter,
        worker: Worker,
        events: EventPoster,
        metrics: Metrics,
        namespaces: Sequence[str],
        default_ttl_seconds: int | None = None,
    ) -> None:
        self.kube = kube
        self.queue = queue
        self.ledger = ledger
        self.status = status
        self.worker = worker
        self.events = events
        self.metrics = metrics
        self.namespaces = list(namespaces)
        self.default_ttl_seconds = default_ttl_seconds
        self.known: dict[QueueRef, KnownQueue] = {}
        self._missed: dict[QueueRef, float] = {}
        self._written: dict[QueueRef, dict[str, Any]] = {}

    async def observe(self, body: Mapping[str, Any]) -> None:
        """A RelayQueue as the watch (or a list) delivered it: publish its limits, release the jobs
        that waited for it, and say so when it was paused or resumed."""
        ref = _ref(body.get("metadata") or {})
        known = _read(body)
        before = self.known.get(ref)
        self.known[ref] = known
        self._missed.pop(ref, None)
        await self.queue.configure(ref.id, limits(known.spec))
        if before is None:
            found = await self.ledger.find_queue(ref, known.spec.defaults, self.default_ttl_seconds)
            if found:
                log.info("queue %s created; %d waiting jobs released", ref.id, len(found))
                self._show(found)
            if known.problem:
                self._event(ref, known, "Warning", Reason.INVALID_SPEC, known.problem)
        elif before.spec.paused != known.spec.paused:
            if known.spec.paused:
                self._event(
                    ref, known, "Normal", Reason.QUEUE_PAUSED, "spec.paused is true: no attempt starts"
                )
            else:
                self._event(ref, known, "Normal", Reason.QUEUE_RESUMED, "spec.paused is false: jobs start")
                self.worker.wake()
        if before is None or before.spec != known.spec:
            self.worker.wake()

    async def forget(self, namespace: str, name: str) -> None:
        """The RelayQueue was deleted: its waiting jobs wait for a queue of that name again."""
        ref = QueueRef(namespace, name)
        self.known.pop(ref, None)
        self._written.pop(ref, None)
        await self._lose(ref)

    async def _lose(self, ref: QueueRef) -> None:
        await self.queue.unconfigure(ref.id)
        if ref.implicit:
            return  # the namespace's `default` goes on existing, without limits
        lost = await self.ledger.lose_queue(ref)
        if lost:
            log.warning("queue %s does not exist; %d jobs wait for it", ref.id, len(lost))
            for row in lost:
                self.events.post(row.ref, "Warning", Reason.QUEUE_NOT_FOUND, row.message or "")
            self._show(lost)

    def _show(self, rows: Sequence[JobRow]) -> None:
        self.status.offer(rows)
        self.worker.wake()

    def _event(self, ref: QueueRef, known: KnownQueue, kind: str, reason: str, message: str) -> None:
        self.events.post(
            JobRef(uid=known.uid, namespace=ref.namespace, name=ref.name), kind, reason, message, queue=True
        )

    async def spec_for(self, namespace: str, name: str) -> RelayQueueSpec | None:
        """The spec of the queue a job names, or None when no such RelayQueue exists (the
        namespace's `default` always exists: without an object, it has no limits)."""
        ref = QueueRef(namespace, name)
        known = self.known.get(ref)
        if known is not None:
            return known.spec
        if ref.implicit:
            return IMPLICIT
        missed = self._missed.get(ref)
        if missed is not None and time.monotonic() - missed < MISS_SECONDS:
            return None
        body = await self.kube.get_queue(namespace, name)
        if body is None:
            self._missed[ref] = time.monotonic()
            return None
        await self.observe(body)
        return self.known[ref].spec

    async def reconcile(self) -> None:
        """Bring the known queues, Redis and the ledger in line with the RelayQueues that exist."""
        listed = {_ref(b["metadata"]): b for b in await self.kube.list_queues(self.namespaces)}
        for body in listed.values():
            await self.observe(body)
        for ref in [r for r in self.known if r not in listed]:
            await self.forget(ref.namespace, ref.name)
        for ref, lost in (await self.ledger.queues_awaited()).items():
            if ref in listed and lost:
                defaults = self.known[ref].spec.defaults
                self._show(await self.ledger.find_queue(ref, defaults, self.default_ttl_seconds))
            elif ref not in listed and self._watched(ref.namespace):
                await self._lose(ref)

    def _watched(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    async def write_statuses(self) -> int:
        """Write the status of each known RelayQueue whose figures changed; returns how many."""
        if not self.known:
            return 0
        refs = list(self.known)
        depths = await self.queue.queue_depths()
        rates = await self.queue.dispatched_per_second([r.id for r in refs])
        dead = await self.ledger.dead_lettered_by_queue({r.namespace for r in refs})
        now = datetime.now(UTC)
        written = 0
        for ref in refs:
            known = self.known.get(ref)
            if known is None:
                continue
            depth = depths.get(ref.id)
            ready, delayed, running = (depth.ready, depth.delayed, depth.running) if depth else (0, 0, 0)
            document = queue_status(
                known, ready, delayed, running, dead.get(ref, 0), rates.get(ref.id, 0.0), now
            )
            before = self._written.get(ref)
            if before is not None and same_status(before, document):
                continue
            if (
                before is not None
                and before["conditions"][0]["status"] == document["conditions"][0]["status"]
            ):
                document["conditions"][0]["lastTransitionTime"] = before["conditions"][0][
                    "lastTransitionTime"
                ]
            if await self.kube.patch_queue_status(ref.namespace, ref.name, document):
                self._written[ref] = document
                written += 1
        return written
