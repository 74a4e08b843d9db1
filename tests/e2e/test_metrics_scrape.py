"""/metrics of the real operator after real work: 500 jobs in 5 namespaces, some of them retried
and dead-lettered. The series count stays bounded (no job names or uids as labels), and every
series the Grafana dashboard's queries name is one the operator really exports."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.operator_process import OperatorProcess
from tests.e2e.jobs import apply
from tests.support.promql import dashboard_exprs, metric_names
from tests.support.target import Target

NAMESPACES = 5
JOBS_PER_NAMESPACE = 100
FAILING_PER_NAMESPACE = 3  # retried once, then dead-lettered
# One job per namespace waits an hour: its queue keeps a series in the per-queue gauges.
COMPLETING_PER_NAMESPACE = JOBS_PER_NAMESPACE - FAILING_PER_NAMESPACE - 1
# What the operator exports with every label value it can take (outcomes, sets, pools, loops,
# backends, histogram buckets) and the process's own series, with room to grow: far below one
# series per job, which 500 jobs would show at once.
MAX_SERIES = 400
FINISHED = {"Completed", "DeadLettered"}


def _phases(control_plane: Any, namespace: str) -> dict[str, str]:
    out = control_plane.kubectl("get", "rj", "-n", namespace, "-o", "json", timeout=300).stdout
    return {i["metadata"]["name"]: i.get("status", {}).get("phase", "-") for i in json.loads(out)["items"]}


@pytest.fixture(scope="module")
def namespaces(control_plane: Any, namespace: str) -> list[str]:
    names = [f"{namespace}-m{i}" for i in range(NAMESPACES)]
    for name in names:
        control_plane.kubectl("create", "namespace", name)
    return names


@pytest.fixture(scope="module")
def worked(
    control_plane: Any,
    operator_env: dict[str, str],
    namespaces: list[str],
    target: Target,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OperatorProcess, dict[str, dict[str, str]]]]:
    """An operator watching the namespaces, after every one of their jobs finished but `later`."""
    env = {**operator_env, "RELAY_NAMESPACES": ",".join(namespaces)}
    log = Path(tmp_path_factory.mktemp("metrics")) / "operator.log"
    process = OperatorProcess(env, log).start()
    try:
        fast = {"initialSeconds": 0.2, "maxSeconds": 1, "jitter": False}
        for ns in namespaces:
            jobs: dict[str, dict[str, Any]] = {
                f"job-{i}": {"target": {"noop": {}}, "payload": {"i": i}}
                for i in range(COMPLETING_PER_NAMESPACE)
            }
            jobs["later"] = {"target": {"noop": {}}, "delaySeconds": 3600}
            for i in range(FAILING_PER_NAMESPACE):
                jobs[f"failing-{i}"] = {
                    "target": {"http": {"url": target.url("/status/500")}},
                    "maxAttempts": 2,
                    "backoff": fast,
                }
            apply(control_plane, ns, jobs)
        deadline = time.monotonic() + 300
        phases = {ns: _phases(control_plane, ns) for ns in namespaces}
        while not all(_finished(p) for p in phases.values()):
            assert time.monotonic() < deadline, f"jobs not finished: {phases}"
            time.sleep(2)
            phases = {ns: _phases(control_plane, ns) for ns in namespaces}
        yield process, phases
    finally:
        code = process.stop()
    assert code == 0, f"operator exited {code} on SIGTERM:\n{process.logs()[-3000:]}"


def _finished(phases: dict[str, str]) -> bool:
    rest = {name: phase for name, phase in phases.items() if name != "later"}
    return len(rest) == JOBS_PER_NAMESPACE - 1 and set(rest.values()) <= FINISHED


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_series_stay_bounded_after_500_jobs_in_5_namespaces(
    worked: tuple[OperatorProcess, dict[str, dict[str, str]]], control_plane: Any
) -> None:
    process, phases = worked
    for ns, by_name in phases.items():
        dead = sorted(n for n, p in by_name.items() if p == "DeadLettered")
        assert dead == [f"failing-{i}" for i in range(FAILING_PER_NAMESPACE)], ns
    samples = _samples(process.metrics())
    assert len(samples) <= MAX_SERIES, f"{len(samples)} series after {NAMESPACES * JOBS_PER_NAMESPACE} jobs"
    outcomes = {s.labels["outcome"]: s.value for s in samples if s.name == "relayjob_jobs_total"}
    assert outcomes["completed"] == NAMESPACES * COMPLETING_PER_NAMESPACE
    assert outcomes["dead_lettered"] == NAMESPACES * FAILING_PER_NAMESPACE
    value = {s.name: s.value for s in samples if not s.labels}
    # Every attempt started waited in the queue first (a re-run after a lost lease is not counted).
    assert 0 < value["relayjob_queue_wait_seconds_count"] <= value["relayjob_attempts_total"]
    uids = set()
    for ns in phases:
        out = control_plane.kubectl("get", "rj", "-n", ns, "-o", "json", timeout=300).stdout
        uids |= {i["metadata"]["uid"] for i in json.loads(out)["items"]}
    names = {name for by_job in phases.values() for name in by_job}
    values = {v for s in samples for v in s.labels.values()}
    assert not values & (uids | names), "a job's name or uid is a label value"


def test_every_dashboard_query_names_a_series_of_the_live_scrape(
    worked: tuple[OperatorProcess, dict[str, dict[str, str]]],
) -> None:
    process, _ = worked
    live = {s.name for s in _samples(process.metrics())}
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= live, f"{sorted(names - live)} (in {expr}) missing from /metrics"
