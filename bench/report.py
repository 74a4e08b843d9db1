"""The bench's outputs besides latest.json: the targets checked, RESULTS.md, the chart, a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PEERS = ("bullmq", "arq", "saq")
# The e2e legs, in order: the API server, its watch, kopf and admission; the worker; the status
# writer, its patch and the watch that sees it.
_LEGS = (
    ("create_to_admitted", "create → admitted"),
    ("admitted_to_finished", "admitted → outcome recorded"),
    ("finished_to_seen", "recorded → `Completed` seen by a watch"),
)


def _target(name: str, value: float | None, goal: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": ok}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    core = result.get("core")
    if core and "10" in core["by_concurrency"]:
        c10 = core["by_concurrency"]["10"]
        vs_bullmq = c10["relayjob"] / c10["bullmq"]
        vs_arq = c10["relayjob"] / c10["arq"]
        out.append(_target("core c=10 vs BullMQ", round(vs_bullmq, 2), ">= 1.0", vs_bullmq >= 1.0))
        out.append(_target("core c=10 vs arq", round(vs_arq, 2), ">= 5.0", vs_arq >= 5.0))
    e2e = result.get("e2e")
    if e2e:
        frac = e2e["fraction_of_limit"]
        out.append(_target("e2e share of the physical limit", frac, ">= 0.6", frac >= 0.6))
        per_job = e2e["api_writes_per_job"]
        out.append(_target("e2e API writes per job", per_job, "<= 3", per_job <= 3))
        out.append(_target("e2e p99 create-to-Completed (s)", e2e["p99_s"], "< 2", e2e["p99_s"] < 2))
    conn = result.get("connections")
    if conn:
        ours = conn["relayjob"]
        ok = ours["conn_delta"] <= conn["pool_max"] and ours["errors"] == 0
        out.append(_target("connections delta", ours["conn_delta"], f"<= {conn['pool_max']}, 0 errors", ok))
    memory = result.get("memory")
    if memory and "rj_10000_mib" in memory:
        rss = memory["rj_10000_mib"]
        out.append(_target("RSS with 10,000 RelayJobs (MiB)", rss, "<= 250", rss <= 250))
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def markdown(result: dict[str, Any], chart_name: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"`make bench` ({result['mode']} run) on {result['machine']}, {result['when']}.",
        f"Load average at start {result.get('load_average_at_start')}, at end"
        f" {result.get('load_average_at_end')} (the machine is shared; figures are best-of-rounds).",
        "Machine-readable: [results/latest.json](results/latest.json). How each figure is measured:"
        " the docstrings of `bench/*.py`.",
        "",
    ]
    core = result.get("core")
    if core:
        lines += [
            f"## Core queue: {core['jobs']:,} pre-queued no-op jobs drained, jobs/s",
            "",
            "Same redis-server, same concurrency, one worker process each. RelayJob includes its"
            " PostgreSQL ledger writes (attempt opened and outcome recorded, `fsync=on`,"
            " `synchronous_commit=on`) and its status writer; the peers keep only Redis state.",
            "",
            "| concurrency | relayjob | BullMQ | arq | SAQ | vs BullMQ | vs arq | vs SAQ |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for conc, row in core["by_concurrency"].items():
            us = row["relayjob"]
            lines.append(
                f"| {conc} | **{us:,.0f}** | {row['bullmq']:,.0f} | {row['arq']:,.0f} | {row['saq']:,.0f}"
                f" | {_ratio(us, row['bullmq'])} | {_ratio(us, row['arq'])} | {_ratio(us, row['saq'])} |"
            )
        lines += ["", f"![throughput by concurrency](results/{chart_name})", ""]
        floor = core.get("floor")
        if floor and "10" in core["by_concurrency"]:
            c10 = core["by_concurrency"]["10"]
            lines += [
                f"Floor: {floor['jobs_per_s']:,.0f} jobs/s. That is our hot path's ledger and Redis"
                " statements alone, in batches, with no per-job work around them (`bench/relay_floor.py`):"
                " what a durable ledger allows on this machine. At concurrency 10 relayjob reaches"
                f" {c10['relayjob'] / floor['jobs_per_s']:.0%} of it and BullMQ"
                f" {c10['bullmq'] / floor['jobs_per_s']:.0%}.",
                "",
            ]
    e2e = result.get("e2e")
    if e2e:
        writes = ", ".join(f"{k}: {v:g}" for k, v in e2e["api_writes"].items()) or "none"
        lines += [
            f"## End to end: {e2e['jobs']:,} RelayJobs created through the API → all Completed",
            "",
            "| jobs/s | p50 | p99 | API writes/job | raw status patches/s"
            " | limit (raw ÷ writes/job) | share of limit |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {e2e['jobs_per_s']:,.0f} | {e2e['p50_s']:.2f} s | {e2e['p99_s']:.2f} s"
            f" | {e2e['api_writes_per_job']:.2f} | {e2e['raw_status_patches_per_s']:,.0f}"
            f" | {e2e['limit_jobs_per_s']:,.0f} | {e2e['fraction_of_limit']:.0%} |",
            "",
            "Operator writes counted by the API server (`apiserver_request_total`, bench creates"
            f" excluded): {writes}.",
            "",
        ]
        legs = e2e.get("legs")
        if legs:
            cut = "; ".join(f"{name} {legs[k]['p50_s']:.2f} / {legs[k]['p99_s']:.2f} s" for k, name in _LEGS)
            lines += [f"Where the time goes, cut at the ledger's timestamps (p50 / p99): {cut}.", ""]
        cpu = e2e.get("cpu_ms_per_job")
        if cpu:
            lines += [
                f"CPU per job during the run: operator {cpu['operator']:.2f} ms,"
                f" kube-apiserver {cpu['kube_apiserver']:.2f} ms.",
                "",
            ]
        rounds = e2e.get("runs", [])
        if len(rounds) > 1:
            shown = "; ".join(
                f"{r['jobs_per_s']:,.0f} jobs/s, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s,"
                f" {r['fraction_of_limit']:.0%} of a {r['raw_status_patches_per_s']:,.0f}/s limit"
                for r in rounds
            )
            lines += [f"Every round (the one above is closest to its limit): {shown}.", ""]
    conn = result.get("connections")
    if conn:
        lines += [
            f"## Connections: {conn['ops']:,} queue operations at concurrency {conn['concurrency']}",
            "",
            "| client | ops done | Redis connections opened | peak connected clients | errors |"
            " `Cannot assign requested address` |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for mode, label in (
            ("relayjob", f"relayjob (pool max {conn['pool_max']})"),
            ("naive", "naive: connection per operation"),
        ):
            row = conn[mode]
            note = " (stopped at its time bound)" if row.get("deadline_hit") else ""
            lines.append(
                f"| {label} | {row['ops_done']:,}{note} | {row['conn_delta']:,} | {row['peak_clients']:,}"
                f" | {row['errors']:,} | {'yes' if row['hit_eaddrnotavail'] else 'no'} |"
            )
        kernel = conn.get("kernel", {})
        if kernel:
            lines += [
                "",
                "Kernel: "
                + ", ".join(f"`{k}={v}`" for k, v in kernel.items())
                + " (with `tcp_tw_reuse` on, loopback reuses TIME_WAIT ports, which is why the naive"
                " client may survive here where the seed incident's did not).",
            ]
        lines.append("")
    memory = result.get("memory")
    if memory:
        steps = [k for k in memory if k.startswith("rj_")]
        header = " | ".join(["idle", *(f"{k[3:-4]} RelayJobs" for k in steps), "peak"])
        values = " | ".join(f"{memory[k]:.0f} MiB" for k in ["idle_mib", *steps, "peak_mib"])
        lines += [
            "## Operator memory (RSS)",
            "",
            f"| {header} |",
            "|" + "---:|" * (len(steps) + 2),
            f"| {values} |",
            "",
        ]
    checks = result.get("targets") or []
    if checks:
        lines += ["## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
        for t in checks:
            lines.append(
                f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
            )
        lines.append("")
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    core = result["core"]
    concs = list(core["by_concurrency"])
    systems = ("relayjob", *PEERS)
    width = 0.2
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, system in enumerate(systems):
        values = [core["by_concurrency"][c][system] for c in concs]
        xs = [j + (i - 1.5) * width for j in range(len(concs))]
        bars = ax.bar(xs, values, width, label=system)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(concs)), [f"concurrency {c}" for c in concs])
    ax.set_ylabel("jobs/s (higher is better)")
    ax.set_title(f"Draining {core['jobs']:,} no-op jobs, same redis-server ({result['mode']} run)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(result: dict[str, Any], md_path: Path, png_path: Path) -> None:
    if "core" in result:
        chart(result, png_path)
    md_path.write_text(markdown(result, png_path.name))


def summary(result: dict[str, Any]) -> str:
    lines = ["", "== bench summary =="]
    core = result.get("core")
    if core:
        for conc, row in core["by_concurrency"].items():
            ratios = ", ".join(f"{p} {_ratio(row['relayjob'], row[p])}" for p in PEERS)
            lines.append(f"core c={conc}: relayjob {row['relayjob']:,.0f}/s ({ratios})")
        if "floor" in core:
            lines.append(f"core floor (statements alone): {core['floor']['jobs_per_s']:,.0f}/s")
    for t in result.get("targets", []):
        lines.append(f"{'PASS' if t['met'] else 'MISS'}  {t['target']}: {t['value']} (goal {t['goal']})")
    return "\n".join(lines)
