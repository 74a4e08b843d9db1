"""What one pass over a RelaySchedule does (`runtime.schedules`), against a typed in-memory API and
a clock the test sets: concurrency policies, history limits, replicas racing, status and Events."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.adapters.kube import KubeError
from controller.core.schedule import run_name
from controller.model.jobs import JobRef
from controller.runtime.schedules import Schedules

NS = "apps"
UID = "00000000-0000-0000-0000-0000000000aa"
CREATED = datetime(2026, 6, 1, 8, 0, 30, tzinfo=UTC)


class FakeApi:
    """RelaySchedules and RelayJobs as the API server keeps them: names unique, creates of an
    existing name refused, deletes by uid."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.schedule: dict[str, Any] | None = {
            "metadata": {"name": "tick", "namespace": NS, "uid": UID, "generation": 1,
                         "creationTimestamp": "2026-06-01T08:00:30Z"},
            "spec": spec,
        }  # fmt: skip
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.creates = 0
        self.fail_creates = False

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.schedule)

    async def list_runs(self, namespace: str, schedule: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(j)
            for j in self.jobs.values()
            if j["metadata"]["labels"].get("relay.dev/schedule") == schedule
        ]

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        self.creates += 1
        if self.fail_creates:
            raise KubeError(500, "etcdserver: request timed out")
        name = body["metadata"]["name"]
        if name in self.jobs:
            return False
        meta = {
            **body["metadata"],
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "creationTimestamp": f"2026-06-01T{len(self.jobs):02d}:00:00Z",
        }
        self.jobs[name] = {"metadata": meta, "spec": body["spec"]}
        return True

    async def delete_job(self, ref: JobRef) -> bool:
        return self.jobs.pop(ref.name, None) is not None

    async def patch_schedule_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        assert self.schedule is not None
        self.schedule["status"] = copy.deepcopy(status)
        return True

    async def post_schedule_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    def finish(self, name: str, phase: str, at: str = "2026-06-01T08:05:00Z") -> None:
        self.jobs[name]["status"] = {"phase": phase, "completedAt": at if phase == "Completed" else None}

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


def spec(**changes: Any) -> dict[str, Any]:
    return {
        "schedule": "* * * * *",
        "concurrencyPolicy": "Allow",
        "suspend": False,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 1,
        "jobTemplate": {"metadata": {"labels": {"team": "a"}}, "spec": {"target": {"noop": {}}}},
    } | changes


def minute(n: int) -> datetime:
    return datetime(2026, 6, 1, 8, n, tzinfo=UTC)


async def test_a_due_run_is_created_once_with_owner_labels_and_status() -> None:
    api = FakeApi(spec())
    upcoming = await Schedules(api).reconcile(NS, "tick", minute(1) + timedelta(seconds=2))
    assert upcoming == minute(2)
    run = api.jobs[run_name("tick", minute(1))]
    owner = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelaySchedule", "name": "tick", "uid": UID}
    assert run["metadata"]["ownerReferences"] == [owner | {"controller": True}]
    assert run["metadata"]["labels"] == {"team": "a", "relay.dev/schedule": "tick"}
    assert api.schedule is not None
    status = api.schedule["status"]
    assert status["lastScheduleTime"] == "2026-06-01T08:01:00Z"
    assert [a["name"] for a in status["active"]] == [run["metadata"]["name"]] and status["activeCount"] == 1
    assert api.reasons() == ["SuccessfulCreate"]


async def test_a_second_replica_in_the_same_minute_creates_nothing_more() -> None:
    api = FakeApi(spec())
    now = minute(1) + timedelta(seconds=2)
    await Schedules(api).reconcile(NS, "tick", now)
    api_view_before_status = copy.deepcopy(api.schedule)
    assert api_view_before_status is not None
    api_view_before_status.pop("status")
    stale = FakeApi(spec())  # a replica that read the schedule before the first wrote its status
    stale.jobs = api.jobs
    await Schedules(stale).reconcile(NS, "tick", now + timedelta(seconds=1))
    assert len(api.jobs) == 1 and stale.creates == 1
    assert "SuccessfulCreate" not in stale.reasons()


async def test_forbid_skips_while_a_run_is_active_and_starts_late_within_the_deadline() -> None:
    api = FakeApi(spec(concurrencyPolicy="Forbid", startingDeadlineSeconds=30))
    schedules = Schedules(api)
    await schedules.reconcile(NS, "tick", minute(1))
    await schedules.reconcile(NS, "tick", minute(2) + timedelta(seconds=1))
    await schedules.reconcile(NS, "tick", minute(2) + timedelta(seconds=6))
    assert set(api.jobs) == {run_name("tick", minute(1))}
    assert api.reasons().count("JobAlreadyActive") == 1  # said once per skipped time
    api.finish(run_name("tick", minute(1)), "Completed")
    await schedules.reconcile(NS, "tick", minute(2) + timedelta(seconds=20))
    assert run_name("tick", minute(2)) in api.jobs  # late, but within startingDeadlineSeconds


async def test_forbid_misses_a_run_whose_deadline_passed_while_the_previous_one_ran() -> None:
    api = FakeApi(spec(concurrencyPolicy="Forbid", startingDeadlineSeconds=10))
    schedules = Schedules(api)
    await schedules.reconcile(NS, "tick", minute(1))
    await schedules.reconcile(NS, "tick", minute(2) + timedelta(seconds=1))
    api.finish(run_name("tick", minute(1)), "Completed")
    await schedules.reconcile(NS, "tick", minute(2) + timedelta(seconds=40))
    assert set(api.jobs) == {run_name("tick", minute(1))}
    await schedules.reconcile(NS, "tick", minute(3))
    assert set(api.jobs) == {run_name("tick", minute(1)), run_name("tick", minute(3))}


async def test_replace_deletes_the_active_run_before_starting_the_next() -> None:
    api = FakeApi(spec(concurrencyPolicy="Replace"))
    schedules = Schedules(api)
    await schedules.reconcile(NS, "tick", minute(1))
    await schedules.reconcile(NS, "tick", minute(2))
    assert set(api.jobs) == {run_name("tick", minute(2))}
    assert api.reasons() == ["SuccessfulCreate", "SuccessfulDelete", "SuccessfulCreate"]


async def test_allow_lets_runs_overlap() -> None:
    api = FakeApi(spec())
    schedules = Schedules(api)
    await schedules.reconcile(NS, "tick", minute(1))
    await schedules.reconcile(NS, "tick", minute(2))
    assert set(api.jobs) == {run_name("tick", minute(1)), run_name("tick", minute(2))}


async def test_suspend_starts_nothing_and_says_so() -> None:
    api = FakeApi(spec(suspend=True))
    await Schedules(api).reconcile(NS, "tick", minute(5))
    assert api.jobs == {}
    assert api.schedule is not None
    assert api.schedule["status"]["conditions"][0]["reason"] == "Suspended"


async def test_history_limits_delete_the_oldest_finished_runs_and_keep_the_success_time() -> None:
    api = FakeApi(spec(successfulJobsHistoryLimit=1, failedJobsHistoryLimit=0))
    schedules = Schedules(api)
    for n in (1, 2, 3, 4):
        await schedules.reconcile(NS, "tick", minute(n))
    api.finish(run_name("tick", minute(1)), "Completed", "2026-06-01T08:01:05Z")
    api.finish(run_name("tick", minute(2)), "DeadLettered")
    api.finish(run_name("tick", minute(3)), "Completed", "2026-06-01T08:03:05Z")
    await schedules.reconcile(NS, "tick", minute(4) + timedelta(seconds=5))
    assert set(api.jobs) == {run_name("tick", minute(3)), run_name("tick", minute(4))}
    assert api.schedule is not None
    status = api.schedule["status"]
    assert status["lastSuccessfulTime"] == "2026-06-01T08:03:05Z"
    assert [a["name"] for a in status["active"]] == [run_name("tick", minute(4))]


async def test_runs_of_another_owner_are_neither_counted_nor_deleted() -> None:
    api = FakeApi(spec(concurrencyPolicy="Forbid", successfulJobsHistoryLimit=0))
    api.jobs["impostor"] = {
        "metadata": {"name": "impostor", "uid": str(uuid.uuid4()), "labels": {"relay.dev/schedule": "tick"},
                     "creationTimestamp": "2026-06-01T07:00:00Z"},
        "status": {"phase": "Completed"},
    }  # fmt: skip
    await Schedules(api).reconcile(NS, "tick", minute(1))
    assert set(api.jobs) == {"impostor", run_name("tick", minute(1))}


async def test_an_unknown_zone_stops_the_schedule_with_a_condition_and_one_warning() -> None:
    api = FakeApi(spec(timeZone="Mars/Olympus_Mons"))
    schedules = Schedules(api)
    assert await schedules.reconcile(NS, "tick", minute(1)) is None
    assert await schedules.reconcile(NS, "tick", minute(2)) is None
    assert api.jobs == {}
    assert api.schedule is not None
    condition = api.schedule["status"]["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "UnknownTimeZone")
    assert "'Mars/Olympus_Mons'" in condition["message"]
    assert api.events == [("Warning", "UnknownTimeZone", condition["message"])]


async def test_a_failed_create_is_a_warning_and_the_pass_fails_to_be_tried_again() -> None:
    api = FakeApi(spec())
    api.fail_creates = True
    try:
        await Schedules(api).reconcile(NS, "tick", minute(1))
    except KubeError:
        pass
    else:
        raise AssertionError("the pass should fail")
    assert api.reasons() == ["FailedCreate"]
    assert api.schedule is not None and "status" not in api.schedule  # lastScheduleTime did not move


async def test_a_deleted_schedule_is_forgotten() -> None:
    api = FakeApi(spec())
    schedules = Schedules(api)
    schedules.observe(NS, "tick")
    api.schedule = None
    assert await schedules.reconcile(NS, "tick", minute(1)) is None
    assert api.jobs == {}


async def test_more_than_a_hundred_missed_times_warn_once_as_the_catch_up_run_starts() -> None:
    api = FakeApi(spec(suspend=True))
    assert api.schedule is not None
    api.schedule["status"] = {"lastScheduleTime": "2026-05-31T08:00:00Z"}
    schedules = Schedules(api)
    await schedules.reconcile(NS, "tick", minute(1))
    await schedules.reconcile(NS, "tick", minute(1) + timedelta(seconds=5))
    assert "TooManyMissedTimes" not in api.reasons()  # suspended: nothing starts, nothing to say
    api.schedule["spec"]["suspend"] = False
    await schedules.reconcile(NS, "tick", minute(1) + timedelta(seconds=10))
    await schedules.reconcile(NS, "tick", minute(1) + timedelta(seconds=15))
    assert api.reasons().count("TooManyMissedTimes") == 1
    assert set(api.jobs) == {run_name("tick", minute(1))}


async def test_a_template_with_a_nullifier_is_refused_since_every_run_would_share_it() -> None:
    template = {"spec": {"nullifier": "nightly", "target": {"noop": {}}}}
    api = FakeApi(spec(jobTemplate=template))
    assert await Schedules(api).reconcile(NS, "tick", minute(1)) is None
    assert api.jobs == {}
    assert api.reasons() == ["InvalidJobTemplate"]
