"""RelaySchedules through the real API server and the operator as a process: runs start on the
minute, once whatever the replicas, Forbid holds a minute back while a slow run goes on, the
history limits delete old runs, and what is wrong with a schedule is refused (CEL) or reported
(condition and Event)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devtools.operator_process import OperatorProcess
from tests.support.target import Target

pytestmark = pytest.mark.e2e

T = TypeVar("T")
LABEL = "relay.dev/schedule"


def schedule_doc(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelaySchedule",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def apply_schedule(kube: Any, ns: str, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kube.kubectl("apply", "-n", ns, "-f", "-", input=schedule_doc(name, spec), check=False)


def get_schedule(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kube.kubectl("get", "-n", ns, f"rsch/{name}", "-o", "json").stdout))


def runs_of(kube: Any, ns: str, name: str) -> list[dict[str, Any]]:
    out = kube.kubectl("get", "-n", ns, "rj", "-l", f"{LABEL}={name}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def names(items: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["name"] for i in items}


def events_of(kube: Any, ns: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=RelaySchedule,involvedObject.name={name}"
    out = kube.kubectl("get", "-n", ns, "events", "--field-selector", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def eventually(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def minute_of(run: dict[str, Any]) -> int:
    return int(run["metadata"]["name"].rsplit("-", 1)[1])


def utc_minute(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready(schedule: dict[str, Any]) -> dict[str, Any]:
    conditions = schedule.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_an_every_minute_forbid_schedule_skips_the_minute_its_slow_run_overlaps_and_starts_each_run_once(
    control_plane: Any, namespace: str, target: Target, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator("a")
    # A second replica: both create every run, one succeeds. Its grace outlasts the first run's
    # attempt, which it may be the one running: the rollout below must not lose that attempt.
    second = start_operator("b", RELAY_SHUTDOWN_GRACE_SECONDS="150")
    spec: dict[str, Any] = {
        "schedule": "* * * * *",
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        # The first run (90 s) outlasts the next minute by more than this: that minute is missed.
        "startingDeadlineSeconds": 20,
        "jobTemplate": {
            "metadata": {"labels": {"team": "e2e"}, "annotations": {"note": "from the template"}},
            "spec": {
                "maxAttempts": 1,
                "timeoutSeconds": 150,
                "target": {"http": {"url": target.url("/slow/90000/200")}},
            },
        },
    }
    assert apply_schedule(control_plane, namespace, "tick", spec).returncode == 0
    uid = get_schedule(control_plane, namespace, "tick")["metadata"]["uid"]

    (first,) = eventually(lambda: runs_of(control_plane, namespace, "tick"), 100, "the first run")
    m0 = minute_of(first)
    assert first["metadata"]["name"] == f"tick-{m0}"
    assert first["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelaySchedule",
            "name": "tick",
            "uid": uid,
            "controller": True,
        }
    ]
    assert first["metadata"]["labels"] == {"team": "e2e", LABEL: "tick"}
    assert first["metadata"]["annotations"]["note"] == "from the template"
    assert first["metadata"]["annotations"]["relay.dev/scheduled-at"] == utc_minute(m0)
    assert first["spec"]["target"]["http"]["url"] == target.url("/slow/90000/200")

    # A rollout while the first run is still in flight: a new replica comes, then the old one
    # stops gracefully (finishing the attempt if it holds it: SIGKILL would dead-letter a run of
    # maxAttempts 1 on whichever replica happened to claim it).
    start_operator("c")
    assert second.stop(timeout=150) == 0

    third_name = f"tick-{m0 + 2}"
    seconds_left = (m0 + 2) * 60 - time.time()
    eventually(
        lambda: third_name in names(runs_of(control_plane, namespace, "tick")),
        seconds_left + 60,
        f"{third_name}, the run after the skipped minute",
    )
    assert names(runs_of(control_plane, namespace, "tick")) == {f"tick-{m0}", third_name}

    events = events_of(control_plane, namespace, "tick")
    created = Counter(e["message"] for e in events if e["reason"] == "SuccessfulCreate")
    assert created == {f"created run tick-{m0}": 1, f"created run {third_name}": 1}
    skipped = [e["message"] for e in events if e["reason"] == "JobAlreadyActive"]
    assert skipped and utc_minute(m0 + 1) in skipped[0] and f"tick-{m0}" in skipped[0]

    first_uid = first["metadata"]["uid"]
    assert target.by_key()[first_uid] == 1  # delivered once, by one replica

    status = eventually(
        lambda: (
            (s := get_schedule(control_plane, namespace, "tick").get("status", {})).get("lastSuccessfulTime")
            and s
        ),
        30,
        "the first run's success in the schedule's status",
    )
    assert status["lastScheduleTime"] == utc_minute(m0 + 2)
    assert [a["name"] for a in status["active"]] == [third_name]
    assert status["activeCount"] == 1
    assert ready(get_schedule(control_plane, namespace, "tick"))["reason"] == "Scheduling"
    # The table users read, as `kubectl get cronjobs` shows one.
    table = control_plane.kubectl("get", "-n", namespace, "rsch", "tick").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST",
        "SCHEDULE",
        "AGE",
    ]
    assert table[1].split()[:9] == ["tick", "*", "*", "*", "*", "*", "Etc/UTC", "false", "1"]
    assert control_plane.kubectl("delete", "-n", namespace, "rsch/tick").returncode == 0


def test_finished_runs_beyond_the_history_limits_are_deleted_oldest_first(
    control_plane: Any, namespace: str, target: Target, operator: OperatorProcess
) -> None:
    spec = {
        "schedule": "@yearly",
        "suspend": True,
        "successfulJobsHistoryLimit": 1,
        "failedJobsHistoryLimit": 1,
        "jobTemplate": {"spec": {"target": {"noop": {}}}},
    }
    assert apply_schedule(control_plane, namespace, "kept", spec).returncode == 0
    uid = get_schedule(control_plane, namespace, "kept")["metadata"]["uid"]
    owner = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelaySchedule", "name": "kept", "uid": uid}
    ok = {"target": {"noop": {}}}
    failing = {"maxAttempts": 1, "target": {"http": {"url": target.url("/status/400")}}}
    # Runs as the schedule would have created them, in this order (names sort as creation does).
    for name, job in [
        ("kept-1", ok),
        ("kept-2", failing),
        ("kept-3", ok),
        ("kept-4", failing),
        ("kept-5", ok),
    ]:
        doc = {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelayJob",
            "metadata": {"name": name, "labels": {LABEL: "kept"}, "ownerReferences": [owner]},
            "spec": job,
        }
        control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(doc))
    # Labelled like a run, but not the schedule's: left alone.
    stranger = {
        "apiVersion": "relay.dev/v1alpha1",
        "kind": "RelayJob",
        "metadata": {"name": "kept-stranger", "labels": {LABEL: "kept"}},
        "spec": ok,
    }
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(stranger))

    eventually(
        lambda: names(runs_of(control_plane, namespace, "kept")) == {"kept-4", "kept-5", "kept-stranger"},
        60,
        "the runs beyond the limits deleted",
    )
    status = eventually(
        lambda: (
            (s := get_schedule(control_plane, namespace, "kept").get("status", {})).get("lastSuccessfulTime")
            and s
        ),
        30,
        "lastSuccessfulTime",
    )
    assert status["active"] == [] and status["activeCount"] == 0
    assert "lastScheduleTime" not in status  # suspended: nothing was scheduled
    assert ready(get_schedule(control_plane, namespace, "kept"))["reason"] == "Suspended"
    deleted = {
        e["message"] for e in events_of(control_plane, namespace, "kept") if e["reason"] == "SuccessfulDelete"
    }
    assert deleted == {f"deleted finished run kept-{n}" for n in (1, 2, 3)}


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("bad-cron", {"schedule": "every minute"}, "spec.schedule must be a cron expression of 5"),
        ("six-fields", {"schedule": "0 * * * * *"}, "spec.schedule must be a cron expression of 5"),
        ("cron-tz", {"schedule": "CRON_TZ=UTC 0 * * * *"}, "not TZ= or CRON_TZ="),
        ("bad-macro", {"schedule": "@every 5m"}, "spec.schedule must be a cron expression of 5"),
        ("negative", {"startingDeadlineSeconds": -1}, "spec.startingDeadlineSeconds must not be negative"),
        ("bad-zone", {"timeZone": "../etc/passwd"}, "spec.timeZone must be an IANA time zone name"),
        ("bad-policy", {"concurrencyPolicy": "Sometimes"}, 'Unsupported value: "Sometimes"'),
        ("s" * 64, {}, "must be at most 63 characters"),
    ],
)
def test_the_api_server_refuses_a_schedule_cel_can_tell_is_wrong(
    control_plane: Any, namespace: str, name: str, change: dict[str, Any], message: str
) -> None:
    spec = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"target": {"noop": {}}}}} | change
    result = apply_schedule(control_plane, namespace, name, spec)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "change", "reason", "named"),
    [
        ("mars-time", {"timeZone": "Mars/Olympus_Mons"}, "UnknownTimeZone", "'Mars/Olympus_Mons'"),
        ("minute-61", {"schedule": "61 * * * *"}, "InvalidSchedule", "'61 * * * *'"),
        (
            "no-target",
            {"jobTemplate": {"spec": {"payload": {"a": 1}}}},
            "InvalidJobTemplate",
            "jobTemplate.spec.target",
        ),
    ],
)
def test_what_cel_cannot_check_stops_the_schedule_with_a_condition_and_a_warning(
    control_plane: Any,
    namespace: str,
    operator: OperatorProcess,
    name: str,
    change: dict[str, Any],
    reason: str,
    named: str,
) -> None:
    spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"target": {"noop": {}}}}} | change
    assert apply_schedule(control_plane, namespace, name, spec).returncode == 0
    condition = eventually(
        lambda: ready(get_schedule(control_plane, namespace, name)), 30, f"the Ready condition of {name}"
    )
    assert condition["status"] == "False" and condition["reason"] == reason
    assert named in condition["message"]
    warning = eventually(
        lambda: [e for e in events_of(control_plane, namespace, name) if e["reason"] == reason],
        30,
        f"a {reason} Event",
    )
    assert warning[0]["type"] == "Warning" and named in warning[0]["message"]
    assert runs_of(control_plane, namespace, name) == []
    control_plane.kubectl("delete", "-n", namespace, f"rsch/{name}")


def test_the_sample_schedule_applies_and_waits_for_0230_berlin_time(
    control_plane: Any, namespace: str, operator: OperatorProcess
) -> None:
    sample = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "schedule.yaml"
    control_plane.kubectl("apply", "-n", namespace, "-f", str(sample))
    condition = eventually(
        lambda: ready(get_schedule(control_plane, namespace, "nightly-report")), 30, "the sample's condition"
    )
    assert (condition["status"], condition["reason"]) == ("True", "Scheduling")
    # 02:30 in Berlin is 00:30 UTC in summer and 01:30 UTC in winter.
    assert condition["message"].startswith("next run at ")
    assert condition["message"].endswith(("T00:30:00Z", "T01:30:00Z")), condition["message"]
    control_plane.kubectl("delete", "-n", namespace, "-f", str(sample))
