"""RELAY_SHUTDOWN_GRACE_SECONDS: what an attempt cut off at shutdown does to its job, the setting, and
the chart that sets it together with the pod's terminationGracePeriodSeconds."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.cli import AFTER_GRACE_SECONDS
from controller.core.transitions import cut_off
from controller.model.jobs import JobRow
from controller.model.phases import Phase, Reason
from controller.settings import Settings, describe_error
from tests.unit.fakes import job_row

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CHART = Path(__file__).resolve().parents[2] / "helm" / "relayjob-operator"


def running(attempts: int, max_attempts: int = 3) -> JobRow:
    return job_row(Phase.PROCESSING, attempts=attempts, maxAttempts=max_attempts)


def test_an_attempt_cut_off_at_shutdown_is_retried_at_once_with_a_named_reason() -> None:
    decision = cut_off(running(attempts=1), 25, NOW)
    assert decision.phase is Phase.RETRYING
    assert decision.reason == Reason.SHUTDOWN_GRACE_EXCEEDED
    assert decision.next_attempt_at == NOW  # no backoff: the target did not fail, we went away
    assert (
        decision.message == "attempt 1 was stopped after the operator's 25s shutdown grace; retrying at once"
    )
    assert decision.error is not None and decision.error.startswith("ShutdownGraceExceeded: ")


def test_a_last_attempt_cut_off_at_shutdown_exhausts_the_job_as_a_lost_lease_would() -> None:
    decision = cut_off(running(attempts=3, max_attempts=3), 25, NOW)
    assert decision.phase is Phase.DEAD_LETTERED
    assert decision.reason == Reason.ATTEMPTS_EXHAUSTED
    assert (
        decision.message
        == "3 of 3 attempts used; attempt 3 was stopped after the operator's 25s shutdown grace"
    )
    assert decision.next_attempt_at is None


def test_the_grace_defaults_to_25_seconds_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RELAY_SHUTDOWN_GRACE_SECONDS", raising=False)
    assert Settings().shutdown_grace_seconds == 25
    monkeypatch.setenv("RELAY_SHUTDOWN_GRACE_SECONDS", "2.5")
    assert Settings().shutdown_grace_seconds == 2.5


def test_a_negative_grace_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SHUTDOWN_GRACE_SECONDS", "-1")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "RELAY_SHUTDOWN_GRACE_SECONDS: Input should be greater than or equal to 0" in describe_error(
        caught.value
    )


def template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "relay", str(CHART), "-n", "relay-system", "--kube-version", "1.36.0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def operator_pod(helm: Path, *args: str) -> tuple[dict[str, Any], dict[str, str]]:
    result = template(helm, "--show-only", "templates/deployment.yaml", *args)
    assert result.returncode == 0, result.stderr
    pod = yaml.safe_load(result.stdout)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize(("args", "grace"), [((), 25), (("--set", "config.shutdownGraceSeconds=60"), 60)])
def test_the_chart_gives_the_pod_more_time_than_the_operator_grace(
    helm: Path, args: tuple[str, ...], grace: int
) -> None:
    """Both come from one value, and the pod's period covers the grace and the recording of what
    was cut off, with room to stop kopf and close the pools: the kubelet's SIGKILL must not land
    while outcomes are being recorded."""
    pod, env = operator_pod(helm, *args)
    assert env["RELAY_SHUTDOWN_GRACE_SECONDS"] == str(grace)
    assert pod["terminationGracePeriodSeconds"] == grace + 15
    assert pod["terminationGracePeriodSeconds"] >= grace + AFTER_GRACE_SECONDS + 10


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("-1", "minimum: got -1, want 0"),
        ("2.5", "got number, want integer"),
        ('"soon"', "got string, want integer"),
    ],
)
def test_the_chart_schema_refuses_a_grace_that_is_not_whole_seconds(
    helm: Path, value: str, complaint: str
) -> None:
    result = template(helm, "--set-json", f"config.shutdownGraceSeconds={value}")
    assert result.returncode != 0
    assert f"at '/config/shutdownGraceSeconds': {complaint}" in result.stderr, result.stderr
