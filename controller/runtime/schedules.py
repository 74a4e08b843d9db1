"""RelaySchedules: create each run when it is due, keep the history limits, write the status.

kopf tells `observe`/`forget` which schedules exist (its watch runs on the replica that handles
resources). One loop then reconciles each of them when a run is due and every `POLL_SECONDS`
otherwise, to see runs finish (Forbid waits for them; status and history follow them). Each pass
reads the schedule and its runs afresh from the API: a replica that kopf has paused since keeps
no stale schedule alive, and two replicas acting at once cost reads, never a second run, because
a run's name is fixed by its scheduled minute and `create_job` of an existing name does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from pydantic import ValidationError

from controller.adapters.kube import KubeError
from controller.core.schedule import (
    TOO_MANY_MISSED,
    Cron,
    InvalidSchedule,
    UnknownTimeZone,
    due,
    parse_time,
    run_name,
    utc,
)
from controller.core.schedule_runs import (
    CONDITION,
    Condition,
    Run,
    beyond_history,
    owned_runs,
    run_object,
    status_document,
)
from controller.model.jobs import JobRef
from controller.model.schedules import ConcurrencyPolicy, RelayScheduleSpec, ScheduleReason
from controller.model.spec import RelayJobSpec

log = logging.getLogger("relayjob.schedules")

POLL_SECONDS = 5.0


class ScheduleApi(Protocol):
    """What schedules need of the Kubernetes API; `adapters.kube.KubeClient` is the real one."""

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_runs(self, namespace: str, schedule: str) -> list[dict[str, Any]]: ...

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool: ...

    async def delete_job(self, ref: JobRef) -> bool: ...

    async def patch_schedule_status(self, ref: JobRef, status: dict[str, Any]) -> bool: ...

    async def post_schedule_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None: ...


class Invalid(Exception):
    def __init__(self, reason: ScheduleReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _understand(spec: dict[str, Any]) -> tuple[RelayScheduleSpec, Cron]:
    """The spec and its cron, or `Invalid` naming what the CRD's CEL could not check."""
    try:
        parsed = RelayScheduleSpec.model_validate(spec)
    except ValidationError as error:
        raise Invalid(ScheduleReason.INVALID_SCHEDULE, _first_error("spec", error)) from None
    try:
        cron = Cron.parse(parsed.schedule, parsed.time_zone)
    except UnknownTimeZone as error:
        raise Invalid(ScheduleReason.UNKNOWN_TIME_ZONE, str(error)) from None
    except InvalidSchedule as error:
        raise Invalid(ScheduleReason.INVALID_SCHEDULE, str(error)) from None
    if "nullifier" in parsed.job_template.spec:
        # Every run would carry it, and each run after the first would be refused as NullifierSpent.
        raise Invalid(
            ScheduleReason.INVALID_JOB_TEMPLATE,
            "jobTemplate.spec.nullifier: every run would share it; leave it out (runs are named once each)",
        )
    try:
        RelayJobSpec.model_validate(parsed.job_template.spec)
    except ValidationError as error:
        raise Invalid(ScheduleReason.INVALID_JOB_TEMPLATE, _first_error("jobTemplate.spec", error)) from None
    return parsed, cron


def _first_error(where: str, error: ValidationError) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    return f"{where}.{path}: {first['msg']}" if path else f"{where}: {first['msg']}"


class Schedules:
    def __init__(self, kube: ScheduleApi, poll_seconds: float = POLL_SECONDS) -> None:
        self._kube = kube
        self._poll = poll_seconds
        self._known: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        # The scheduled time each schedule last reported Forbid skipping, to say it once.
        self._skipped: dict[tuple[str, str], datetime] = {}

    def observe(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._known:
            self._known.add((namespace, name))
            self._wake.set()

    def forget(self, namespace: str, name: str) -> None:
        self._known.discard((namespace, name))
        self._skipped.pop((namespace, name), None)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            wake_at = datetime.now(UTC).timestamp() + self._poll
            for namespace, name in sorted(self._known):
                try:
                    upcoming = await self.reconcile(namespace, name, datetime.now(UTC))
                except KubeError as error:
                    # Tried again at the next poll; one schedule's trouble must not stop the others.
                    log.warning(
                        "schedule %s/%s not reconciled: %s",
                        namespace,
                        name,
                        error,
                        extra={"schedule": {"namespace": namespace, "name": name}},
                    )
                    continue
                if upcoming is not None:
                    wake_at = min(wake_at, upcoming.timestamp())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - datetime.now(UTC).timestamp())):
                    await self._wake.wait()

    async def reconcile(self, namespace: str, name: str, now: datetime) -> datetime | None:
        """One pass over one schedule at `now`; returns the next schedule time, None when the
        schedule is gone or cannot run."""
        body = await self._kube.get_schedule(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        meta = body["metadata"]
        ref = JobRef(uid=UUID(meta["uid"]), namespace=namespace, name=name)
        previous: dict[str, Any] = body.get("status") or {}
        runs = owned_runs(await self._kube.list_runs(namespace, name), meta["uid"])
        last = parse_time(previous.get("lastScheduleTime"))
        try:
            spec, cron = _understand(body.get("spec") or {})
        except Invalid as invalid:
            await self._write(
                ref, previous, meta, runs, last, Condition(False, invalid.reason, invalid.message)
            )
            return None
        since = last or parse_time(meta.get("creationTimestamp")) or now
        plan = due(cron, since, now, spec.starting_deadline_seconds)
        if (
            plan.scheduled is not None
            and not spec.suspend
            and await self._start(ref, spec, plan.scheduled, runs)
        ):
            # Said when the catch-up run starts: while suspended or held back by Forbid, the same
            # missed times would be counted again on every pass.
            if plan.too_many_missed:
                await self._event(
                    ref,
                    "Warning",
                    ScheduleReason.TOO_MANY_MISSED_TIMES,
                    f"more than {TOO_MANY_MISSED} start times were missed; only the latest, "
                    f"{utc(plan.scheduled)}, runs (set startingDeadlineSeconds to bound the catch-up)",
                )
            last = plan.scheduled
            runs = owned_runs(await self._kube.list_runs(namespace, name), meta["uid"])
        for old in beyond_history(runs, spec.successful_jobs_history_limit, spec.failed_jobs_history_limit):
            if await self._kube.delete_job(JobRef(uid=UUID(old.uid), namespace=namespace, name=old.name)):
                await self._event(
                    ref, "Normal", ScheduleReason.SUCCESSFUL_DELETE, f"deleted finished run {old.name}"
                )
            runs = [r for r in runs if r.uid != old.uid]
        condition = (
            Condition(True, ScheduleReason.SUSPENDED, "suspended: no new runs start")
            if spec.suspend
            else Condition(True, ScheduleReason.SCHEDULING, f"next run at {utc(plan.next_time)}")
        )
        await self._write(ref, previous, meta, runs, last, condition)
        return plan.next_time

    async def _start(
        self, ref: JobRef, spec: RelayScheduleSpec, scheduled: datetime, runs: list[Run]
    ) -> bool:
        """Start the run at `scheduled` as the concurrency policy allows; True when it exists now."""
        name = run_name(ref.name, scheduled)
        others = [r for r in runs if r.active and r.name != name]
        if others and spec.concurrency_policy is ConcurrencyPolicy.FORBID:
            key = (ref.namespace, ref.name)
            if self._skipped.get(key) != scheduled:
                self._skipped[key] = scheduled
                await self._event(
                    ref,
                    "Normal",
                    ScheduleReason.JOB_ALREADY_ACTIVE,
                    f"run for {utc(scheduled)} not started: concurrencyPolicy is Forbid and "
                    f"{', '.join(r.name for r in others)} is still active",
                )
            return False
        if spec.concurrency_policy is ConcurrencyPolicy.REPLACE:
            for old in others:
                if await self._kube.delete_job(
                    JobRef(uid=UUID(old.uid), namespace=ref.namespace, name=old.name)
                ):
                    await self._event(
                        ref,
                        "Normal",
                        ScheduleReason.SUCCESSFUL_DELETE,
                        f"deleted active run {old.name} (Replace)",
                    )
        body = run_object(ref.name, str(ref.uid), spec.job_template, scheduled)
        try:
            created = await self._kube.create_job(ref.namespace, body)
        except KubeError as error:
            await self._event(
                ref, "Warning", ScheduleReason.FAILED_CREATE, f"could not create run {name}: {error}"
            )
            raise
        if created:
            await self._event(ref, "Normal", ScheduleReason.SUCCESSFUL_CREATE, f"created run {name}")
        return True

    async def _write(
        self,
        ref: JobRef,
        previous: dict[str, Any],
        meta: dict[str, Any],
        runs: list[Run],
        last: datetime | None,
        condition: Condition,
    ) -> None:
        status = status_document(
            previous,
            namespace=ref.namespace,
            generation=meta.get("generation"),
            runs=runs,
            last_schedule=last,
            condition=condition,
            now=datetime.now(UTC),
        )
        if status == previous:
            return
        old: dict[str, Any] = next(
            (c for c in previous.get("conditions") or [] if c.get("type") == CONDITION), {}
        )
        if not condition.ready and old.get("reason") != condition.reason:
            await self._event(ref, "Warning", condition.reason, condition.message)
        await self._kube.patch_schedule_status(ref, status)

    async def _event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        try:
            await self._kube.post_schedule_event(ref, kind, reason, message)
        except KubeError as error:  # an Event is worth a log line, not the pass
            log.warning("could not post Event %s on schedule %s: %s", reason, ref, error)
