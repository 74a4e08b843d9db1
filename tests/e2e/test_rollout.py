"""A rollout re-executes nothing that had finished: SIGTERM to the operator while attempts are in
flight lets them finish and records them (DESIGN.md, "Graceful shutdown"); the operator that starts
next finds nothing lost and runs nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controller.cli import AFTER_GRACE_SECONDS
from devtools.operator_process import OperatorProcess
from tests.support.target import Target

pytestmark = pytest.mark.e2e

JOBS = 50
# Longer than the 5 s kopf gives the tasks it did not start once its stop flag is set: the drain
# must not depend on kopf still running (with kopf stopped first, every attempt here was cancelled).
TARGET_MS = 8000
GRACE_SECONDS = 20


def jobs(namespace: str, url: str) -> str:
    return "\n---\n".join(
        json.dumps({"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob",
                    "metadata": {"name": f"rollout-{i}", "namespace": namespace},
                    "spec": {"nullifier": f"rollout.{i}", "target": {"http": {"url": url}},
                             "maxAttempts": 5, "timeoutSeconds": 30}})
        for i in range(JOBS))  # fmt: skip


def statuses(control_plane: Any, namespace: str, prefix: str) -> dict[str, dict[str, Any]]:
    out = control_plane.kubectl("get", "rj", "-n", namespace, "-o", "json", check=False, timeout=60)
    if out.returncode != 0:
        return {}
    items = json.loads(out.stdout)["items"]
    return {
        i["metadata"]["name"]: i.get("status", {}) for i in items if i["metadata"]["name"].startswith(prefix)
    }


def wait_completed(control_plane: Any, namespace: str, prefix: str, n: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = statuses(control_plane, namespace, prefix)
        if len(seen) == n and {s.get("phase") for s in seen.values()} == {"Completed"}:
            return seen
        assert time.monotonic() < deadline, f"not all Completed: {seen}"
        time.sleep(0.5)


def wait_calls(target: Target, prefix: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for c in target.calls if c.key.startswith(prefix)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} calls reached the target"
        time.sleep(0.05)


async def attempts_by_nullifier(dsn: str, prefix: str) -> dict[str, list[tuple[str, str | None]]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT j.nullifier, a.outcome, a.reason FROM attempts a JOIN jobs j ON j.uid = a.job_uid"
            " WHERE starts_with(j.nullifier, $1) ORDER BY j.nullifier, a.run, a.attempt",
            prefix,
        )
    finally:
        await conn.close()
    found: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        found.setdefault(row["nullifier"], []).append((row["outcome"], row["reason"]))
    return found


def test_sigterm_mid_flight_finishes_and_records_the_attempts_and_a_restart_runs_nothing_twice(
    operator_env: dict[str, str], control_plane: Any, namespace: str, target: Target, tmp_path: Path
) -> None:
    env = {**operator_env, "RELAY_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS)}
    first = OperatorProcess(env, tmp_path / "first.log").start()
    try:
        control_plane.kubectl("apply", "-f", "-", input=jobs(namespace, target.url(f"/delay/{TARGET_MS}")))
        # A second wave of attempts has started: SIGTERM lands while they are in flight, with
        # about 7 s of them left.
        wait_calls(target, "rollout.", 11)
        time.sleep(1)
        began = time.monotonic()
        code = first.stop(timeout=GRACE_SECONDS + 20)
        took = time.monotonic() - began
    finally:
        first.kill()
    assert code == 0, first.logs()[-3000:]
    assert took < GRACE_SECONDS + 5, f"shutdown took {took:.1f}s"
    # What was in flight finished within the grace: nothing was cut off, nothing left unrecorded.
    complaints = [r["msg"] for r in first.log_records() if r.get("level") in ("WARNING", "ERROR", "CRITICAL")]
    assert not [m for m in complaints if "shutdown grace" in m or "could not be recorded" in m], complaints
    late = [c for c in target.calls if c.key.startswith("rollout.") and c.at > began + 1]
    assert not late, "an attempt started after SIGTERM"

    second = OperatorProcess(env, tmp_path / "second.log").start()
    try:
        wait_completed(control_plane, namespace, "rollout-", JOBS, timeout=120)
        assert second.stop() == 0, second.logs()[-3000:]
    finally:
        second.kill()

    recorded = asyncio.run(attempts_by_nullifier(env["RELAY_DATABASE_URL"], "rollout."))
    calls = target.by_key()
    assert set(recorded) == {f"rollout.{i}" for i in range(JOBS)}
    assert {key: calls[key] for key in recorded} == {key: len(a) for key, a in recorded.items()}, (
        "a target call count differs from the attempts recorded for its job"
    )
    lost = {key: a for key, a in recorded.items() if any(o == "lost" or r == "LeaseExpired" for o, r in a)}
    assert not lost, f"attempts recorded as lost after a graceful shutdown: {lost}"
    assert all(len(a) == 1 for a in recorded.values()), recorded


def test_an_attempt_outliving_the_grace_is_recorded_and_another_operator_runs_it_at_once(
    operator_env: dict[str, str], control_plane: Any, namespace: str, target: Target, tmp_path: Path
) -> None:
    """Cut off, recorded with its reason, and due again at once: with a 60 s lease, the next
    operator runs it within seconds instead of after the lease (which would also record it as lost
    with reason LeaseExpired, which it was not)."""
    env = {**operator_env, "RELAY_SHUTDOWN_GRACE_SECONDS": "1", "RELAY_LEASE_SECONDS": "60"}
    job = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob",
           "metadata": {"name": "cutoff", "namespace": namespace},
           "spec": {"nullifier": "cutoff.0", "target": {"http": {"url": target.url("/hang-once")}},
                    "maxAttempts": 3, "timeoutSeconds": 120}}  # fmt: skip
    first = OperatorProcess(env, tmp_path / "first.log").start()
    try:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(job))
        wait_calls(target, "cutoff.", 1)
        began = time.monotonic()
        code = first.stop(timeout=30)
        took = time.monotonic() - began
    finally:
        first.kill()
    assert code == 0, first.logs()[-3000:]
    assert took < 1 + AFTER_GRACE_SECONDS + 3, f"shutdown took {took:.1f}s"
    recorded = asyncio.run(attempts_by_nullifier(env["RELAY_DATABASE_URL"], "cutoff."))
    assert recorded == {"cutoff.0": [("lost", "ShutdownGraceExceeded")]}

    second = OperatorProcess(env, tmp_path / "second.log").start()
    try:
        began = time.monotonic()
        (status,) = wait_completed(control_plane, namespace, "cutoff", 1, timeout=30).values()
        assert time.monotonic() - began < 20, "the job waited for its lease to expire"
        assert second.stop() == 0, second.logs()[-3000:]
    finally:
        second.kill()
    assert status["attempts"] == 2
    recorded = asyncio.run(attempts_by_nullifier(env["RELAY_DATABASE_URL"], "cutoff."))
    assert recorded == {"cutoff.0": [("lost", "ShutdownGraceExceeded"), ("succeeded", "Succeeded")]}
    assert target.by_key()["cutoff.0"] == 2
