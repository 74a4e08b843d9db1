"""The bench's report logic: which issue-20 targets a run's figures meet, and how the HTTP section
sums its runs. Figures here are made up; nothing is measured."""

from __future__ import annotations

from typing import Any

from bench.env import steal_share
from bench.histograms import status_lag
from bench.http_section import summarize
from bench.report import markdown, summary, targets


def _core(relayjob: float, aof_always: float, arq: float) -> dict[str, Any]:
    row = {
        "relayjob": relayjob,
        "bullmq": 3 * aof_always,
        "bullmq_aof_always": aof_always,
        "bullmq_aof_everysec": 2 * aof_always,
        "arq": arq,
        "saq": arq,
    }
    return {"jobs": 100, "by_concurrency": {"10": row, "100": dict(row)}, "runs": {}, "rounds": 1}


def _http(**overrides: Any) -> dict[str, Any]:
    http: dict[str, Any] = {
        "jobs": 100,
        "concurrency": 200,
        "target_delay_s": 0.02,
        "relayjob": 2000.0,
        "bullmq": 3000.0,
        "arq": 900.0,
        "relayjob_p50_s": 0.05,
        "relayjob_p99_s": 0.2,
        "target_connections": 100,
        "pool_max": 100,
        "errors": 0,
        "target_alone_per_s": 5000.0,
        "target_alone_errors": 0,
        "latency_bound_per_s": 10000.0,
    }
    return http | overrides


def _met(result: dict[str, Any]) -> dict[str, bool]:
    return {t["target"]: t["met"] for t in targets(result)}


def test_core_is_judged_against_bullmq_at_equal_durability_and_arq_at_each_concurrency() -> None:
    met = _met({"core": _core(relayjob=4000, aof_always=4000, arq=1000)})

    assert met == {
        "core c=10 vs BullMQ, AOF always": True,
        "core c=10 vs arq": True,
        "core c=100 vs BullMQ, AOF always": True,
        "core c=100 vs arq": True,
    }


def test_core_below_bullmq_with_aof_always_or_four_times_arq_misses() -> None:
    found = {t["target"]: t for t in targets({"core": _core(relayjob=3999, aof_always=4000, arq=1000)})}

    assert found["core c=10 vs BullMQ, AOF always"]["met"] is False
    assert found["core c=10 vs BullMQ, AOF always"]["value"] == 1.0  # rounded, yet short of the goal
    assert found["core c=10 vs arq"]["met"] is False


def test_a_core_run_without_the_aof_figures_misses_that_target_rather_than_failing() -> None:
    core = _core(relayjob=4000, aof_always=4000, arq=1000)
    for row in core["by_concurrency"].values():
        del row["bullmq_aof_always"], row["bullmq_aof_everysec"]

    found = {t["target"]: t for t in targets({"core": core})}

    assert found["core c=10 vs BullMQ, AOF always"] == {
        "target": "core c=10 vs BullMQ, AOF always",
        "value": None,
        "goal": ">= 1",
        "met": False,
    }
    assert "| 10 | **4,000** | 12,000 | - | - |" in markdown({**_header(), "core": core}, "chart.png")


def test_http_meets_its_targets_at_twice_arq_sixty_percent_of_bullmq_within_the_pool() -> None:
    met = _met({"http": _http(relayjob=1800.0, bullmq=3000.0, arq=900.0)})

    assert met == {
        "http vs arq": True,
        "http vs BullMQ": True,
        "http connections to the target": True,
        "http failed attempts": True,
    }


def test_http_misses_on_throughput_more_connections_than_the_pool_or_any_error() -> None:
    assert _met({"http": _http(relayjob=1790.0)})["http vs arq"] is False
    assert _met({"http": _http(relayjob=1790.0, bullmq=3000.0)})["http vs BullMQ"] is False
    assert _met({"http": _http(target_connections=101)})["http connections to the target"] is False
    assert _met({"http": _http(errors=1)})["http failed attempts"] is False


def _run(rate: float, connections: int, errors: int = 0, **extra: Any) -> dict[str, Any]:
    return {"jobs_per_s": rate, "seconds": 1.0, "connections": connections, "errors": errors, **extra}


def test_http_summary_keeps_each_best_rate_but_the_worst_connections_and_every_error() -> None:
    seen = {
        "relayjob": [
            _run(1000, 100, 2, p50_s=0.1, p99_s=0.9, pool_max=100, error_reasons={"Timeout": 2}),
            _run(1500, 90, 1, p50_s=0.05, p99_s=0.3, pool_max=100, error_reasons={"Timeout": 1}),
        ],
        "bullmq": [_run(3000, 200), _run(2500, 250, 3)],
        "arq": [_run(700, 100), _run(800, 100)],
    }

    out = summarize(seen, 100, 200, 0.02, {"jobs_per_s": 5000.0, "errors": 0})

    assert (out["relayjob"], out["bullmq"], out["arq"]) == (1500, 3000, 800)
    assert (out["relayjob_p50_s"], out["relayjob_p99_s"]) == (0.05, 0.3)  # the best run's latency
    assert out["target_connections"] == 100
    assert out["errors"] == 3
    assert out["error_reasons"] == {"Timeout": 3}
    assert out["peer_errors"] == {"bullmq": 3, "arq": 0}
    assert out["connections_by_system"] == {"relayjob": 100, "bullmq": 250, "arq": 100}
    assert out["latency_bound_per_s"] == 10000


def test_the_report_shows_the_http_section_and_its_summary_line() -> None:
    result = {**_header(), "http": _http()}
    result["targets"] = targets(result)

    text = markdown(result, "chart.png")

    assert "## HTTP jobs: 100 POSTs to one loopback target answering after 20 ms" in text
    assert "| **2,000** | 3,000 | 900 | 0.67x | 2.22x | 0.050 / 0.200 s | 100 (100) | 0 |" in text
    assert "The fastest system reached 60% of what the target served alone." in text
    assert "http c=200: relayjob 2,000/s" in summary(result)


def test_the_report_says_when_a_system_was_as_fast_as_the_target_alone() -> None:
    text = markdown({**_header(), "http": _http(bullmq=5000.0)}, "chart.png")

    assert "reached 100% of what the target served alone (at or above it: the target may be" in text


def test_the_core_report_shows_each_process_cpu_per_job_and_what_the_cores_allow() -> None:
    core = _core(relayjob=3000, aof_always=5000, arq=1000)
    core["cores"] = 2
    core["cpu_ms_per_job"] = {"10": {"relayjob": {"client": 0.25, "postgres": 0.2, "redis": 0.05}}}
    core["floor"] = {"jobs_per_s": 9000.0, "runs": [], "cpu_ms_per_job": {"client": 0.04, "postgres": 0.12}}

    text = markdown({**_header(), "core": core}, "chart.png")

    assert "| relayjob, concurrency 10 | 0.250 | 0.200 | 0.050 | 0.500 | 4,000 |" in text
    assert "| floor | 0.040 | 0.120 | 0.000 | 0.160 | 12,500 |" in text
    assert "a job may cost 0.400 ms at concurrency 10 and 0.400 ms at concurrency 100 in all." in text


def test_the_report_says_how_much_cpu_the_host_stole_during_the_run() -> None:
    assert steal_share((100, 1000), (350, 2000)) == 0.25
    assert steal_share((100, 1000), (100, 1000)) is None

    text = markdown({**_header(), "cpu_steal_share": 0.25}, "chart.png")

    assert "CPU steal during the run: 25% of the CPUs' time went to other guests of the host" in text


def _header() -> dict[str, Any]:
    return {"mode": "quick", "machine": "test", "when": "now"}


def test_status_lag_is_read_from_the_operators_histogram_as_promql_would() -> None:
    key = "relayjob_status_lag_seconds"
    metrics = {
        f"{key}_bucket{{le=0.1}}": 0.0,
        f"{key}_bucket{{le=1.0}}": 50.0,  # half the patches answered within 0.1-1 s
        f"{key}_bucket{{le=2.5}}": 100.0,
        f"{key}_bucket{{le=+Inf}}": 100.0,
        f"{key}_count": 100.0,
        f"{key}_sum": 120.0,
    }
    # histogram_quantile(0.5) = 0.1 + 0.9 * 50/50; (0.99) = 1 + 1.5 * 49/50.
    assert status_lag(metrics) == {"mean_s": 1.2, "p50_s": 1.0, "p99_s": 2.47}
    assert status_lag({}) == {}


def _e2e() -> dict[str, Any]:
    return {
        "jobs": 100,
        "jobs_per_s": 200.0,
        "p50_s": 1.0,
        "p99_s": 2.5,
        "api_writes_per_job": 1.1,
        "raw_status_patches_per_s": 440.0,
        "limit_jobs_per_s": 400.0,
        "fraction_of_limit": 0.5,
        "api_writes": {"PATCH relayjobs/status": 100.0},
        "cpu_ms_per_job": {"operator": 2.0, "kube_apiserver": 5.0, "postgres": 1.0},
    }


def test_the_e2e_report_sets_the_ideal_relays_ceiling_and_every_process_cpu_beside_ours() -> None:
    e2e = _e2e()
    e2e["ideal"] = {
        "jobs_per_s": 280.0,
        "p50_s": 0.8,
        "p99_s": 1.7,
        "fraction_of_limit": 0.64,
        "rounds": [{"fraction_of_limit": 0.64}, {"fraction_of_limit": 0.87}],
    }

    text = markdown({**_header(), "e2e": e2e}, "chart.png")

    assert "reached 280 jobs/s, p50 / p99 0.80 / 1.70 s, 64% of its limit (rounds: 64%, 87%)" in text
    assert "CPU per job during the run: operator 2.00 ms, kube-apiserver 5.00 ms, PostgreSQL 1.00 ms." in text


def test_an_e2e_result_without_the_ideal_relay_reports_without_it() -> None:
    text = markdown({**_header(), "e2e": _e2e()}, "chart.png")

    assert "ideal relay" not in text


def test_the_report_names_the_settings_our_operators_ran_with() -> None:
    result = {**_header(), "operator_settings": {"RELAY_DB_PREPARED_STATEMENTS": "true"}}

    text = markdown(result, "chart.png")

    assert "Our operators and workers ran with `RELAY_DB_PREPARED_STATEMENTS=true`" in text
    assert "ran with" not in markdown(_header(), "chart.png")
