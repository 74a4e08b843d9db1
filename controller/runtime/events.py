"""Kubernetes Events for the transitions users care about, rate-limited so load cannot flood the API.

`core.event_budget` bounds Events per second and keeps part of the budget for warnings; what it
refuses is counted, not queued, because the status already tells the same story and an Event
backlog would only grow under load.
"""

from __future__ import annotations

import asyncio
import logging
import time

from controller.adapters.kube import KubeError
from controller.adapters.metrics import Metrics
from controller.core.event_budget import EventBudget
from controller.model.jobs import ClusterApi, JobRef
from controller.runtime.logs import job_fields

log = logging.getLogger("relayjob.events")


class EventPoster:
    def __init__(self, kube: ClusterApi, metrics: Metrics, per_second: float) -> None:
        self._kube = kube
        self._metrics = metrics
        self._budget = EventBudget.full(per_second, time.monotonic())
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, ref: JobRef, kind: str, reason: str, message: str, *, queue: bool = False) -> None:
        """An Event on the RelayJob `ref` (on the RelayQueue `ref` with `queue`), within the
        process's Event budget: past it the Event is dropped and counted."""
        if not self._budget.take(time.monotonic(), warning=kind == "Warning"):
            self._metrics.events_dropped.inc()
            return
        task = asyncio.create_task(self._send(ref, kind, reason, message, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, ref: JobRef, kind: str, reason: str, message: str, queue: bool) -> None:
        try:
            send = self._kube.post_queue_event if queue else self._kube.post_event
            await send(ref, kind, reason, message)
            self._metrics.events.labels(reason).inc()
        except KubeError as error:
            log.warning("could not post Event %s: %s", reason, error, extra=job_fields(ref))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
