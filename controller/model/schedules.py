"""The RelaySchedule spec as `manifests/crd-relayschedules.yaml` defines it, re-validated on our side,
and the names of what the operator says about a schedule (condition and Event reasons).

The CRD checks the shape of a cron string and keeps `jobTemplate.spec` open; what CEL cannot check
(a cron field out of range, an unknown time zone, a job template that is no valid RelayJob spec)
is found here and in `core.schedule`, and reported on the schedule instead of creating runs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEDULE_LABEL = "relay.dev/schedule"
SCHEDULED_AT_ANNOTATION = "relay.dev/scheduled-at"
PLURAL, KIND = "relayschedules", "RelaySchedule"


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class ScheduleReason(StrEnum):
    """Reasons of the `Ready` condition and of the Events on a RelaySchedule; the run Events use
    CronJob's names, which people already search for."""

    SCHEDULING = "Scheduling"
    SUSPENDED = "Suspended"
    INVALID_SCHEDULE = "InvalidSchedule"
    UNKNOWN_TIME_ZONE = "UnknownTimeZone"
    INVALID_JOB_TEMPLATE = "InvalidJobTemplate"
    SUCCESSFUL_CREATE = "SuccessfulCreate"
    FAILED_CREATE = "FailedCreate"
    SUCCESSFUL_DELETE = "SuccessfulDelete"
    JOB_ALREADY_ACTIVE = "JobAlreadyActive"
    TOO_MANY_MISSED_TIMES = "TooManyMissedTimes"


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class TemplateMetadata(_Spec):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class JobTemplate(_Spec):
    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    # Validated as a RelayJobSpec by the runtime, which reports a bad one on the schedule.
    spec: dict[str, Any]


class RelayScheduleSpec(_Spec):
    schedule: str = Field(min_length=1)
    time_zone: str | None = Field(default=None, alias="timeZone")
    concurrency_policy: ConcurrencyPolicy = Field(default=ConcurrencyPolicy.ALLOW, alias="concurrencyPolicy")
    starting_deadline_seconds: int | None = Field(default=None, ge=0, alias="startingDeadlineSeconds")
    suspend: bool = False
    successful_jobs_history_limit: int = Field(default=3, ge=0, alias="successfulJobsHistoryLimit")
    failed_jobs_history_limit: int = Field(default=1, ge=0, alias="failedJobsHistoryLimit")
    job_template: JobTemplate = Field(alias="jobTemplate")
