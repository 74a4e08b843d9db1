"""The Grafana dashboard: its queries name series the operator defines, and the chart ships it as
the ConfigMap Grafana's dashboard sidecar loads. (tests/e2e/test_metrics_scrape.py checks the same
queries against a live scrape of the running operator.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.adapters.metrics import Metrics
from tests.support.promql import DASHBOARD, dashboard_exprs, exported, metric_names
from tests.unit.test_packaging import of_kind, render

SHOW = ("--show-only", "templates/dashboard.yaml")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (outcome) (rate(relayjob_jobs_total{job=~"$job"}[$__rate_interval]))',
            {"relayjob_jobs_total"},
        ),
        (
            "histogram_quantile(0.99, sum without (pod) (rate(x_seconds_bucket{a='b'}[5m] offset 1h)))",
            {"x_seconds_bucket"},
        ),
        ("a_total / on (job) group_left (version) b_info > bool 0", {"a_total", "b_info"}),
        ('up{job="by (x) rate(y)"} and ignoring (pod) z', {"up", "z"}),
    ],
)
def test_metric_names_strip_functions_matchers_ranges_and_groupings(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_dashboard_query_names_a_series_the_operator_defines() -> None:
    defined = exported(Metrics().registry.collect())
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no series named in {expr}"
        assert names <= defined, f"{sorted(names - defined)} (in {expr}) is not a series the operator defines"


def test_dashboard_panels_are_distinct_and_read_the_chosen_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert len({p["title"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job"}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all('job=~"$job"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_chart_ships_no_dashboard_by_default(helm: Path) -> None:
    configmaps = of_kind(render(helm), "ConfigMap")
    assert not [c for c in configmaps if c["metadata"]["name"].endswith("-dashboard")]


def test_chart_dashboard_configmap_is_the_json_with_the_sidecars_label(helm: Path) -> None:
    (configmap,) = render(helm, "--set", "grafana.dashboard.enabled=true", *SHOW)
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["namespace"] == "relay-system"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"relayjob-operator.json": DASHBOARD.read_text()}


def test_chart_dashboard_namespace_labels_and_annotations_are_settable(helm: Path) -> None:
    (configmap,) = render(
        helm,
        "--set", "grafana.dashboard.enabled=true",
        "--set", "grafana.dashboard.namespace=monitoring",
        "--set", "grafana.dashboard.labels.grafana_dashboard=relay",
        "--set", "grafana.dashboard.annotations.grafana_folder=Operators",
        *SHOW,
    )  # fmt: skip
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "relay"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Operators"}
