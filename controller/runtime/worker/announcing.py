"""Saying what a recorded transition means: an Event on the RelayJob, a log line and a metric.

`announce(row)` takes a row the ledger returned from a transition the worker applied. Completed,
Retrying, Suspended and DeadLettered each get one Event (reason = the phase, message = the row's),
one log line and, except Suspended, one count (`relayjob_jobs_total` or `relayjob_retries_total`);
other phases are not announced. A finished job's `onCompletion` / `onFailure` is told too: the
row goes to the callbacks, which create its callback job. Events are rate-limited by the poster;
nothing here raises.
"""

from __future__ import annotations

import logging

from controller.adapters.metrics import Metrics
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.logs import job_fields
from controller.runtime.worker.ports import CallbackSink, EventSink

log = logging.getLogger("relayjob.worker")


class Announcer:
    def __init__(self, *, events: EventSink, metrics: Metrics, callbacks: CallbackSink) -> None:
        self._events = events
        self._metrics = metrics
        self._callbacks = callbacks
        # Looked up once: `labels()` per announced job was a measurable part of settling.
        self._completed = metrics.jobs.labels("completed")
        self._dead_lettered = metrics.jobs.labels("dead_lettered")

    def announce(self, row: JobRow) -> None:
        fields = job_fields(row.ref) | {"phase": row.phase.value, "attempts": row.attempts}
        if row.phase is Phase.COMPLETED:
            self._completed.inc()
            log.info("job completed", extra=fields)
            self._events.post(row.ref, "Normal", "Completed", row.message or "completed")
        elif row.phase is Phase.RETRYING:
            self._metrics.retries.inc()
            log.info("retry scheduled: %s", row.message, extra=fields)
            self._events.post(row.ref, "Warning", "Retrying", row.message or "retrying")
        elif row.phase is Phase.SUSPENDED:
            log.info("attempt recorded; job suspended: %s", row.message, extra=fields)
            self._events.post(row.ref, "Normal", "Suspended", row.message or "suspended")
        elif row.phase is Phase.DEAD_LETTERED:
            self._dead_lettered.inc()
            log.warning("job dead-lettered: %s", row.message, extra=fields)
            self._events.post(row.ref, "Warning", "DeadLettered", row.message or "dead-lettered")
        self._callbacks.offer([row])
