"""A RelaySchedule's runs: what they are (active, succeeded, failed), which the history limits drop,
the RelayJob a run is created as, and the schedule's status document. No I/O: the runtime reads
the runs from the API and writes what these functions return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.core.schedule import parse_time, run_name, utc
from controller.model.phases import Phase
from controller.model.schedules import KIND, SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION, JobTemplate

API_VERSION = "relay.dev/v1alpha1"
CONDITION = "Ready"


@dataclass(frozen=True)
class Run:
    name: str
    uid: str
    created: str
    phase: str | None
    completed_at: datetime | None

    @property
    def succeeded(self) -> bool:
        return self.phase == Phase.COMPLETED

    @property
    def failed(self) -> bool:
        # Rejected counts as failed: the run ended without its request being delivered.
        return self.phase in (Phase.DEAD_LETTERED, Phase.REJECTED)

    @property
    def active(self) -> bool:
        return not (self.succeeded or self.failed)


def owned_runs(items: list[dict[str, Any]], schedule_uid: str) -> list[Run]:
    """The runs among `items` (RelayJobs listed by the schedule's label) that this schedule owns:
    a label anyone can set, an ownerReference to this uid only the schedule's runs carry."""
    runs = []
    for item in items:
        meta = item.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        if not any(o.get("uid") == schedule_uid and o.get("kind") == KIND for o in owners):
            continue
        status = item.get("status") or {}
        runs.append(
            Run(
                name=meta["name"],
                uid=meta["uid"],
                created=meta.get("creationTimestamp") or "",
                phase=status.get("phase"),
                completed_at=parse_time(status.get("completedAt")),
            )
        )
    return sorted(runs, key=lambda r: (r.created, r.name))


def beyond_history(runs: list[Run], successful_limit: int, failed_limit: int) -> list[Run]:
    """Finished runs past the history limits, oldest first (`runs` is in creation order)."""
    succeeded = [r for r in runs if r.succeeded]
    failed = [r for r in runs if r.failed]
    return (
        succeeded[: max(0, len(succeeded) - successful_limit)] + failed[: max(0, len(failed) - failed_limit)]
    )


def run_object(
    schedule: str, schedule_uid: str, template: JobTemplate, scheduled: datetime
) -> dict[str, Any]:
    """The RelayJob for the run at `scheduled`, without apiVersion/kind (the client adds them).
    The ownerReference leaves `blockOwnerDeletion` out: setting it needs the finalizers
    subresource of the schedule, which the operator is not granted."""
    return {
        "metadata": {
            "name": run_name(schedule, scheduled),
            "labels": {**template.metadata.labels, SCHEDULE_LABEL: schedule},
            "annotations": {**template.metadata.annotations, SCHEDULED_AT_ANNOTATION: utc(scheduled)},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": schedule,
                    "uid": schedule_uid,
                    "controller": True,
                }
            ],
        },
        "spec": template.spec,
    }


@dataclass(frozen=True)
class Condition:
    ready: bool
    reason: str
    message: str


def status_document(
    previous: dict[str, Any],
    *,
    namespace: str,
    generation: int | None,
    runs: list[Run],
    last_schedule: datetime | None,
    condition: Condition,
    now: datetime,
) -> dict[str, Any]:
    """The schedule's whole status. `lastSuccessfulTime` only moves forward: a run deleted by the
    history limit takes its completion time with it."""
    last_success = parse_time(previous.get("lastSuccessfulTime"))
    for run in runs:
        if run.succeeded and run.completed_at and (last_success is None or run.completed_at > last_success):
            last_success = run.completed_at
    state = "True" if condition.ready else "False"
    old: dict[str, Any] = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == CONDITION), {}
    )
    same = old.get("status") == state and old.get("reason") == condition.reason
    document: dict[str, Any] = {
        "active": [
            {
                "apiVersion": API_VERSION,
                "kind": "RelayJob",
                "namespace": namespace,
                "name": r.name,
                "uid": r.uid,
            }
            for r in runs
            if r.active
        ],
        "conditions": [
            {
                "type": CONDITION,
                "status": state,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": (old.get("lastTransitionTime") if same else None) or utc(now),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        ],
    }
    document["activeCount"] = len(document["active"])
    if last_schedule is not None:
        document["lastScheduleTime"] = utc(last_schedule)
    if last_success is not None:
        document["lastSuccessfulTime"] = utc(last_success)
    return document
