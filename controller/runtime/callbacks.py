"""Creating the callback RelayJobs of finished jobs (core.callbacks), exactly once.

- `offer(rows)` takes rows the worker has just recorded (every path that ends a job: an attempt's
  outcome, an attempt cut off at shutdown, a last attempt whose lease was lost); those owed a
  callback are created by `run`, in order, right after.
- `deliver` creates one callback job and then records it in the ledger. AlreadyExists counts as
  created: the name is the job's own, so it was created by another replica, an earlier try or a
  process that stopped before recording it. An API server (or ledger) that does not answer, or
  answers 429 or 5xx, is retried with capped exponential backoff until it does: the callback is
  never given up for an outage. A refusal for good (invalid, forbidden, namespace gone) is
  recorded with its reason and answered with a Warning Event `CallbackRefused` on the job.
- `sweep` (maintenance) creates the callbacks still owed by jobs finished a while ago: a process
  that recorded an outcome and stopped before creating its callback leaves it owed in the ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from controller.adapters.callback_ledger import CallbackRecord
from controller.adapters.kube import API_VERSION, KIND, KubeError
from controller.adapters.metrics import Metrics
from controller.core.callbacks import CallbackKind, callback_job, owed
from controller.model.jobs import JobRow
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT, until_done
from controller.runtime.worker.ports import EventSink

log = logging.getLogger("relayjob.callbacks")
# A callback is normally being created by the replica that recorded the outcome for this long
# after it; maintenance leaves younger ones to it (a second create would be a harmless no-op).
SWEEP_GRACE_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 10.0
MAX_MESSAGE_CHARS = 512


class JobCreator(Protocol):
    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool: ...


class CallbackStore(Protocol):
    """What the callbacks need of the ledger; `adapters.callback_ledger.CallbackLedger` is the real one."""

    async def owed(self, older_than: float, namespaces: Sequence[str]) -> list[JobRow]: ...

    async def recorded(self, record: CallbackRecord) -> None: ...


class Unanswered(Exception):
    """The API server did not decide on a callback job (no answer, 429, 5xx): try again."""


def _api_message(error: KubeError) -> str:
    """The message of the API server's Status answer, without the JSON around it."""
    try:
        status = json.loads(error.body)
    except ValueError:
        return error.body[:MAX_MESSAGE_CHARS]
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or error.body)[:MAX_MESSAGE_CHARS]


def _decided(error: KubeError) -> bool:
    """Whether the API server's answer is final: a 4xx other than 429 (a transport failure is 0)."""
    return 400 <= error.status < 500 and error.status != 429


class Callbacks:
    def __init__(
        self,
        *,
        kube: JobCreator,
        ledger: CallbackStore,
        events: EventSink,
        metrics: Metrics,
        namespaces: Sequence[str],
    ) -> None:
        """`namespaces` are those this operator watches (all when empty): another operator's
        jobs in the same ledger are its own to call back."""
        self._kube = kube
        self._ledger = ledger
        self._events = events
        self._metrics = metrics
        self._namespaces = list(namespaces)
        self._owed: asyncio.Queue[tuple[JobRow, CallbackKind]] = asyncio.Queue()

    def offer(self, rows: Iterable[JobRow]) -> None:
        """Create, in the background, the callbacks these just-recorded rows are owed."""
        for row in rows:
            kind = owed(row)
            if kind is not None:
                self._owed.put_nowait((row, kind))

    async def run(self) -> None:
        while True:
            row, kind = await self._owed.get()
            await until_done(
                partial(self.deliver, row, kind),
                "callbacks",
                self._metrics,
                first_delay=FIRST_RETRY_SECONDS,
                max_delay=MAX_RETRY_SECONDS,
                extra=job_fields(row.ref),
                retry_on=(Unanswered, *TRANSIENT),
            )
            self._owed.task_done()

    async def sweep(self) -> int:
        """Create the callbacks owed by jobs that finished at least SWEEP_GRACE_SECONDS ago;
        returns how many were delivered. A failure ends the pass: the next one tries again."""
        rows = await self._ledger.owed(SWEEP_GRACE_SECONDS, self._namespaces)
        for row in rows:
            kind = owed(row)
            if kind is not None:
                await self.deliver(row, kind)
        if rows:
            log.warning("created %d callback jobs owed by jobs finished earlier", len(rows))
        return len(rows)

    async def deliver(self, row: JobRow, kind: CallbackKind) -> None:
        """Create `row`'s `kind` callback job (or find it created) and record that it exists, or
        record and announce why the API server refused it for good. Raises Unanswered, or an
        outage of the ledger, when there is nothing final to record yet."""
        body = callback_job(row, kind, API_VERSION, KIND)
        name = body["metadata"]["name"]
        fields = job_fields(row.ref) | {"callback": name}
        try:
            created = await self._kube.create_job(row.ref.namespace, body)
        except KubeError as error:
            if not _decided(error):
                raise Unanswered(f"creating callback job {name}: {error}") from None
            refusal = f"the API server refused callback job {name} ({kind}): {_api_message(error)}"
            await self._ledger.recorded(CallbackRecord(row, kind, name, refusal))
            log.error("%s", refusal, extra=fields)
            self._events.post(row.ref, "Warning", "CallbackRefused", refusal)
            return
        await self._ledger.recorded(CallbackRecord(row, kind, name))
        if created:
            log.info("created callback job %s (%s)", name, kind, extra=fields)
            self._events.post(row.ref, "Normal", "CallbackCreated", f"created RelayJob {name} ({kind})")
