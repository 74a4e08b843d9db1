"""The scale section's report: its targets and the burst cost table. Figures here are made up;
nothing is measured."""

from __future__ import annotations

from typing import Any

from bench.scale_report import markdown, targets


def _step(relayjobs: int, burst: float, cost: dict[str, Any] | None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "relayjobs": relayjobs,
        "ledger_rows": 1_000_000 + relayjobs,
        "ready_s": 1.0,
        "settled_s": 2.0,
        "rss_mib": 100.0,
        "start_peak_rss_mib": 110.0,
        "start_cpu_s": 3.0,
        "maintenance_cpu_s": 0.03,
        "maintenance_api_requests": 1.0,
        "maintenance_ledger_rows_read": 5000,
        "burst_jobs_per_s": burst,
        "raw_creates_per_s": 700.0,
    }
    if cost is not None:
        step["burst_cost"] = cost
    return step


def _cost(operator_ms: float) -> dict[str, Any]:
    cpu = {"operator": operator_ms, "kube-apiserver": 6.0, "etcd": 1.0, "postgres": 0.5}
    return {"cpu_ms_per_job": cpu, "ledger_rows_read_per_job": 4.0, "runs": [150.0, 160.0]}


def _scale(steps: list[dict[str, Any]], empty_cost: dict[str, Any] | None) -> dict[str, Any]:
    last = steps[-1]
    scale = {
        **last,
        "burst_empty_jobs_per_s": 200.0,
        "burst_jobs": 2000,
        "interval_s": 5.0,
        "by_relayjobs": steps,
    }
    if empty_cost is not None:
        scale["burst_empty_cost"] = empty_cost
    return scale


def test_the_burst_cost_table_shows_each_process_per_step_beside_the_empty_cluster() -> None:
    scale = _scale([_step(1000, 195.0, _cost(2.1)), _step(100_000, 170.0, _cost(2.6))], _cost(2.0))
    text = "\n".join(markdown(scale, "scale.png"))
    assert "| RelayJobs | operator CPU ms | kube-apiserver CPU ms | etcd CPU ms | postgres CPU ms |" in text
    assert "| empty | 2.0 | 6.0 | 1.0 | 0.5 | 4.0 | 150.0, 160.0 |" in text
    assert "| 100,000 | 2.6 | 6.0 | 1.0 | 0.5 | 4.0 | 150.0, 160.0 |" in text


def test_results_without_burst_costs_render_without_the_table() -> None:
    text = "\n".join(markdown(_scale([_step(1000, 195.0, None)], None), "scale.png"))
    assert "CPU ms" not in text
    assert "| 1,000 |" in text


def test_a_burst_slower_by_more_than_a_tenth_than_on_an_empty_cluster_misses() -> None:
    met = {t["target"]: t["met"] for t in targets(_scale([_step(1000, 181.0, None)], None))}
    assert met["scale: burst vs the same burst on an empty cluster"]
    met = {t["target"]: t["met"] for t in targets(_scale([_step(1000, 179.0, None)], None))}
    assert not met["scale: burst vs the same burst on an empty cluster"]
