"""The chart's alerts: valid Prometheus rules (`promtool check rules`), each shown to fire and to
stay quiet (`promtool test rules` on tests/unit/alerts_test.yaml), each naming only series the
operator exports and linking a runbook section, and shipped by the chart as they are."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.metrics import Metrics
from devtools.binaries import Binaries, BinaryError
from tests.unit.test_packaging import CHART, REPO, of_kind, render

RULES = CHART / "files" / "alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = REPO / "docs" / "runbooks.md"
# Series of other exporters that alerts may name; everything else must be the operator's own.
FOREIGN_SERIES = {"kube_pod_container_status_restarts_total"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool built from the prometheus Go module (cached, built by the set-up)."""
    try:
        return Binaries().ensure("promtool")
    except BinaryError as error:
        pytest.fail(str(error), pytrace=False)


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=300, check=False, cwd=REPO
    )


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_are_valid_prometheus_rules(promtool: Path) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_each_alert_fires_on_series_that_should_fire_it_and_only_on_those(promtool: Path) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for alert in alerts():
        assert set(cases.get(alert["alert"], [])) == {True, False}, alert["alert"]


def test_alerts_name_only_series_the_operator_exports() -> None:
    exported = {sample.name for family in Metrics().registry.collect() for sample in family.samples}
    for alert in alerts():
        named = set(re.findall(r"\b[a-z_]+_[a-z_]+(?=\s*[{\[)])", alert["expr"])) - {"sum", "max"}
        assert named, alert["alert"]
        assert named - FOREIGN_SERIES <= exported, f"{alert['alert']}: {named - FOREIGN_SERIES - exported}"


def test_every_alert_links_its_runbook_section() -> None:
    headings = {
        line.removeprefix("## ").strip().lower()
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in alerts():
        name = alert["alert"]
        assert alert["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert name.lower() in headings, f"docs/runbooks.md has no section {name}"
        assert {"summary", "description"} <= alert["annotations"].keys()
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_chart_ships_the_rules_file_as_a_prometheus_rule_only_when_enabled(helm: Path) -> None:
    assert not of_kind(render(helm), "PrometheusRule")
    (rule,) = of_kind(
        render(
            helm,
            "--set", "prometheusRule.enabled=true",
            "--set", "prometheusRule.namespace=monitoring",
            "--set", "prometheusRule.labels.release=kube-prometheus-stack",
        ),
        "PrometheusRule",
    )  # fmt: skip
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert "{{ $labels.namespace }}" in rule["spec"]["groups"][0]["rules"][0]["annotations"]["description"]


def test_runbook_base_url_makes_the_runbook_links_absolute(helm: Path) -> None:
    base = "https://git.example.com/ops/relayjob-operator/blob/main"
    (rule,) = of_kind(
        render(
            helm, "--set", "prometheusRule.enabled=true", "--set", f"prometheusRule.runbookBaseUrl={base}/"
        ),
        "PrometheusRule",
    )
    assert rule["metadata"]["namespace"] == "relay-system"
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls == [f"{base}/docs/runbooks.md#{a['alert'].lower()}" for a in alerts()]
