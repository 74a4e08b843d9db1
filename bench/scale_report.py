"""The scale section's part of bench/RESULTS.md: its targets, its table and its chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RSS_MIB = 300.0
READY_S = 20.0
BURST_VS_EMPTY = 0.9
# Per-interval figures count as flat when the largest step's are within this share (plus a few
# units of noise: a watch reconnecting, a statistics read) of the smallest step's.
FLAT_SHARE = 1.1
FLAT_SLACK = {"maintenance_api_requests": 1.0, "maintenance_cpu_s": 0.02}


def _flat(steps: list[dict[str, Any]], key: str) -> bool:
    first, last = steps[0][key], steps[-1][key]
    return bool(last <= first * FLAT_SHARE + FLAT_SLACK[key])


def _target(name: str, value: Any, goal: str, met: bool) -> dict[str, Any]:
    return {"target": f"scale: {name}", "value": value, "goal": goal, "met": met}


def targets(scale: dict[str, Any]) -> list[dict[str, Any]]:
    jobs = f"{scale['relayjobs']:,} RelayJobs, {scale['ledger_rows']:,} ledger rows"
    rss, peak = scale["rss_mib"], scale["start_peak_rss_mib"]
    ready, settled = scale["ready_s"], scale["settled_s"]
    burst, empty = scale["burst_jobs_per_s"], scale["burst_empty_jobs_per_s"]
    steps = scale["by_relayjobs"]
    out = [
        _target(f"RSS once settled (MiB), {jobs}", rss, f"<= {RSS_MIB:g}", rss <= RSS_MIB),
        _target("peak RSS during the start (MiB)", peak, f"<= {RSS_MIB:g}", peak <= RSS_MIB),
        _target("start to ready (/readyz, s)", ready, f"<= {READY_S:g}", ready <= READY_S),
        _target("start to settled (every RelayJob listed and handled, s)", settled, f"<= {READY_S:g}",
                settled <= READY_S),
        _target("burst vs the same burst on an empty cluster", round(burst / empty, 2),
                f">= {BURST_VS_EMPTY:g}", burst >= BURST_VS_EMPTY * empty),
    ]  # fmt: skip
    for key, what in (
        ("maintenance_api_requests", "API requests"),
        ("maintenance_cpu_s", "CPU seconds"),
    ):
        values = " → ".join(f"{s[key]:,}" for s in steps)
        out.append(_target(f"{what} per interval flat in finished jobs", values, "flat", _flat(steps, key)))
    return out


RAW_CREATES_NOTE = (
    "RelayJobs created just before each burst, in a namespace no operator watches: the API server's own"
    " rate as it holds more RelayJobs"
)


def markdown(scale: dict[str, Any], chart_name: str) -> list[str]:
    rounds = scale.get("burst_rounds", 1)
    bursts = f"the fastest of {rounds} bursts" if rounds > 1 else "a burst"
    lines = [
        "## Cost at scale",
        "",
        f"Finished RelayJobs left in the cluster (no TTL) and a ledger of {scale['ledger_rows']:,} rows (the"
        " rest deleted RelayJobs waiting for retention). At each step a fresh operator starts; maintenance"
        f" is measured idle over a few {scale['interval_s']:g} s reconcile intervals, then {bursts} of"
        f" {scale['burst_jobs']:,} new jobs (on an empty cluster:"
        f" {scale['burst_empty_jobs_per_s']:,} jobs/s). Raw creates/s: {RAW_CREATES_NOTE} (on an empty"
        f" cluster: {scale.get('raw_creates_empty_per_s', 'not measured')}).",
        "",
        "| RelayJobs | ledger rows | ready (s) | settled (s) | RSS (MiB) | peak RSS at start (MiB)"
        " | CPU s / interval"
        " | API requests / interval | ledger rows read / interval | burst jobs/s | raw creates/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scale["by_relayjobs"]:
        lines.append(
            f"| {s['relayjobs']:,} | {s['ledger_rows']:,} | {s['ready_s']} | {s['settled_s']}"
            f" | {s['rss_mib']} | {s['start_peak_rss_mib']} | {s['maintenance_cpu_s']}"
            f" | {s['maintenance_api_requests']}"
            f" | {s['maintenance_ledger_rows_read']:,} | {s['burst_jobs_per_s']}"
            f" | {s.get('raw_creates_per_s', '')} |"
        )
    lines += [
        "",
        "Ledger rows read per interval are those of the last hour's transitions (the status repair's"
        " window, `STATUS_REPAIR_WINDOW_SECONDS`): here the bursts of the earlier steps, not the finished"
        " jobs left in the cluster, which no interval reads.",
    ]
    lines += _burst_cost(scale)
    last = scale["by_relayjobs"][-1]
    if last["settled_s"] > READY_S:
        per_job_ms = 1000 * last["start_cpu_s"] / last["relayjobs"]
        lines += [
            "",
            f"Start to settled misses its {READY_S:g} s by {last['settled_s'] - READY_S:.0f} s at"
            f" {last['relayjobs']:,} RelayJobs: /readyz answers at once, but every RelayJob of kopf's"
            " start-up list is then checked against its ledger row, a page of 500 at a time"
            f" ({last['start_cpu_s']:.0f} CPU s, {per_job_ms:.2f} ms of operator CPU each: decoding kopf's"
            " pages and one ledger read per page; the first sweep takes kopf's list, not one of its own).",
        ]
    lines += ["", f"![operator cost against finished RelayJobs]({chart_name})", ""]
    return lines


def _burst_cost(scale: dict[str, Any]) -> list[str]:
    """Each burst's cost per job by process, where the bench measured it: whose work grew."""
    rows = [("empty", scale.get("burst_empty_cost"))]
    rows += [(f"{s['relayjobs']:,}", s.get("burst_cost")) for s in scale["by_relayjobs"]]
    measured = [(name, cost) for name, cost in rows if cost]
    if not measured:
        return []
    processes = list(measured[0][1]["cpu_ms_per_job"])
    lines = [
        "",
        "What each job of the fastest burst cost, in CPU milliseconds of each process and ledger rows"
        " read, beside every burst's jobs/s:",
        "",
        "| RelayJobs | "
        + " | ".join(f"{p} CPU ms" for p in processes)
        + " | ledger rows read | bursts (jobs/s) |",
        "|---:|" + "---:|" * (len(processes) + 2),
    ]
    for name, cost in measured:
        cpu = " | ".join(str(cost["cpu_ms_per_job"][p]) for p in processes)
        runs = ", ".join(str(r) for r in cost.get("runs", []))
        lines.append(f"| {name} | {cpu} | {cost['ledger_rows_read_per_job']} | {runs} |")
    return lines


def chart(scale: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = scale["by_relayjobs"]
    xs = [s["relayjobs"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    left.plot(xs, [s["rss_mib"] for s in steps], marker="o", label="RSS once settled")
    left.plot(xs, [s["start_peak_rss_mib"] for s in steps], marker="s", label="peak RSS during the start")
    left.axhline(RSS_MIB, color="grey", linestyle="--", linewidth=1, label=f"target {RSS_MIB:g} MiB")
    left.set_ylabel("MiB")
    left.set_title("Operator memory")
    right.plot(xs, [s["maintenance_api_requests"] for s in steps], marker="o", label="API requests")
    right.plot(xs, [s["maintenance_cpu_s"] * 1000 for s in steps], marker="s", label="CPU ms")
    right.set_ylabel("per reconcile interval (idle)")
    right.set_title("Maintenance cost")
    rows = right.twinx()
    rows.plot(xs, [s["maintenance_ledger_rows_read"] for s in steps], marker="^", color="tab:red",
              label="ledger rows read (right)")  # fmt: skip
    rows.set_ylabel("ledger rows read")
    for axis in (left, right, rows):
        axis.set_ylim(bottom=0)
    handles = right.get_legend_handles_labels()
    extra = rows.get_legend_handles_labels()
    right.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("finished RelayJobs in the cluster")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
