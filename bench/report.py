"""The bench's outputs besides latest.json: the targets checked, RESULTS.md, the chart, a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import scale_report

PEERS = ("bullmq", "bullmq_aof_always", "bullmq_aof_everysec", "arq", "saq")
_LABELS = {
    "relayjob": "relayjob",
    "bullmq": "BullMQ",
    "bullmq_aof_always": "BullMQ, AOF always",
    "bullmq_aof_everysec": "BullMQ, AOF everysec",
    "arq": "arq",
    "saq": "SAQ",
}
# Goals from issue 20: at equal durability (BullMQ's Redis syncing every write, as our ledger does)
# and against arq, at every concurrency the core section runs; relaying HTTP against both peers.
CORE_VS_BULLMQ_AOF_ALWAYS = 1.0
CORE_VS_ARQ = 4.0
HTTP_VS_ARQ = 2.0
HTTP_VS_BULLMQ = 0.6
# End to end, each figure the median of its rounds.
E2E_WRITES_PER_JOB = 1.2
E2E_P99_S = 2.0
# The scale section's chart, beside throughput.png.
SCALE_CHART = "scale.png"
# The e2e legs, in order: the API server's create and its watch; kopf and admission; the worker;
# the status writer, its patch and the watch that sees it. The create call is beside them.
_LEGS = (
    ("create_call", "create call answered"),
    ("create_to_watched", "create → creation seen by a watch"),
    ("watched_to_admitted", "seen → admitted"),
    ("admitted_to_finished", "admitted → outcome recorded"),
    ("finished_to_seen", "recorded → `Completed` seen by a watch"),
)


def _target(name: str, value: float | None, goal: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": ok}


def _at_least(name: str, ours: float, theirs: float | None, goal: float) -> dict[str, Any]:
    """Target `ours / theirs >= goal`; a peer that did not run (or finished nothing) is not met."""
    if not theirs:
        return _target(name, None, f">= {goal:g}", False)
    ratio = ours / theirs
    return _target(name, round(ratio, 2), f">= {goal:g}", ratio >= goal)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    core = result.get("core")
    for conc, row in (core["by_concurrency"] if core else {}).items():
        us = row["relayjob"]
        out.append(
            _at_least(
                f"core c={conc} vs BullMQ, AOF always",
                us,
                row.get("bullmq_aof_always"),
                CORE_VS_BULLMQ_AOF_ALWAYS,
            )
        )
        out.append(_at_least(f"core c={conc} vs arq", us, row.get("arq"), CORE_VS_ARQ))
    http = result.get("http")
    if http:
        out.append(_at_least("http vs arq", http["relayjob"], http["arq"], HTTP_VS_ARQ))
        out.append(_at_least("http vs BullMQ", http["relayjob"], http["bullmq"], HTTP_VS_BULLMQ))
        connections, pool_max = http["target_connections"], http["pool_max"]
        out.append(
            _target("http connections to the target", connections, f"<= {pool_max}", connections <= pool_max)
        )
        out.append(_target("http failed attempts", http["errors"], "0", http["errors"] == 0))
    queues = result.get("queues")
    if queues:
        ratio = queues["nonbinding_vs_plain"]
        out.append(_target("queue limits configured, not binding, vs none", ratio, ">= 0.9", ratio >= 0.9))
    e2e = result.get("e2e")
    if e2e:
        frac = e2e["fraction_of_limit"]
        out.append(_target("e2e share of the physical limit", frac, ">= 0.6", frac >= 0.6))
        per_job = e2e["api_writes_per_job"]
        out.append(
            _target(
                "e2e API writes per job", per_job, f"<= {E2E_WRITES_PER_JOB:g}", per_job <= E2E_WRITES_PER_JOB
            )
        )
        p99 = e2e["p99_s"]
        out.append(_target("e2e p99 create-to-Completed (s), median round", p99, "< 2", p99 < E2E_P99_S))
    conn = result.get("connections")
    if conn:
        ours = conn["relayjob"]
        ok = ours["conn_delta"] <= conn["pool_max"] and ours["errors"] == 0
        out.append(_target("connections delta", ours["conn_delta"], f"<= {conn['pool_max']}, 0 errors", ok))
    memory = result.get("memory")
    if memory and "rj_10000_mib" in memory:
        rss = memory["rj_10000_mib"]
        out.append(_target("RSS with 10,000 RelayJobs (MiB)", rss, "<= 250", rss <= 250))
    if result.get("scale"):
        out += scale_report.targets(result["scale"])
    return out


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _http_markdown(http: dict[str, Any]) -> list[str]:
    us = http["relayjob"]
    reasons = ", ".join(f"{k}: {v}" for k, v in http.get("error_reasons", {}).items()) or "none"
    by_system = http.get("connections_by_system", {})
    fastest = max(http[s] for s in ("relayjob", "bullmq", "arq"))
    limited = (
        " (at or above it: the target may be what limits it)" if fastest >= http["target_alone_per_s"] else ""
    )
    return [
        f"## HTTP jobs: {http['jobs']:,} POSTs to one loopback target answering after"
        f" {http['target_delay_s'] * 1000:g} ms, concurrency {http['concurrency']}, jobs/s",
        "",
        "relayjob: `target.http` through the operator's worker, its pooled http executor and the"
        " ledger; BullMQ: a Worker calling Node's fetch (keep-alive); arq: a task using one aiohttp"
        " session. Same target process for all, its counts zeroed before each run.",
        "",
        "| relayjob | BullMQ | arq | vs BullMQ | vs arq | relayjob claim → outcome p50 / p99"
        " | connections to the target (pool max) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| **{us:,.0f}** | {http['bullmq']:,.0f} | {http['arq']:,.0f} | {_ratio(us, http['bullmq'])}"
        f" | {_ratio(us, http['arq'])} | {http['relayjob_p50_s']:.3f} / {http['relayjob_p99_s']:.3f} s"
        f" | {http['target_connections']} ({http['pool_max']}) | {http['errors']} |",
        "",
        f"The target alone, from one aiohttp client at the same concurrency:"
        f" {http['target_alone_per_s']:,.0f} requests/s ({http['target_alone_errors']} errors); the"
        f" delay alone would allow {http['latency_bound_per_s']:,.0f}/s. The fastest system reached"
        f" {fastest / http['target_alone_per_s']:.0%} of what the target served alone"
        f"{limited}."
        " Connections the target"
        " accepted per system: "
        + (", ".join(f"{_LABELS[s]} {n}" for s, n in by_system.items()) or "-")
        + f". Our failed attempts by reason: {reasons}; the peers' failed jobs:"
        f" {', '.join(f'{_LABELS[s]} {n}' for s, n in http.get('peer_errors', {}).items()) or '-'}.",
        "",
    ]


def _queues_markdown(queues: dict[str, Any]) -> list[str]:
    best = queues["jobs_per_s"]
    limited = queues["limited_per_s"]
    observed = ", ".join(f"{x:g}" for x in limited["observed"]) or "none"
    return [
        f"## Core queue through RelayQueues: {queues['jobs']:,} jobs at concurrency"
        f" {queues['concurrency']}, jobs/s",
        "",
        "relayjob alone, the layouts interleaved round by round. *plain*: the namespace's implicit"
        " queue; *nonbinding*: one queue with maxConcurrency and a rate limit far above the drain;"
        " *queues10*: dealt over ten queues of equal weight; *limited*: an unlimited queue, timed,"
        f" beside one limited to {limited['limit']:g} starts/s.",
        "",
        "| plain | nonbinding | queues10 | limited (unlimited queue) | nonbinding ÷ plain |",
        "|---:|---:|---:|---:|---:|",
        f"| {best['plain']:,.0f} | {best['nonbinding']:,.0f} | {best['queues10']:,.0f}"
        f" | {best['limited']:,.0f} | {queues['nonbinding_vs_plain']:.2f} |",
        "",
        f"The limited queue's starts during the drain, per second: {observed}.",
        "",
    ]


def _loads(e2e: dict[str, Any]) -> str:
    """The load average at the start of the first round and at the end of the last."""
    rounds = e2e.get("rounds") or []
    if not rounds:
        return "not recorded"
    return f"{rounds[0]['load_average_start']} at the start, {rounds[-1]['load_average_end']} at the end"


def _e2e_rounds(rounds: list[dict[str, Any]]) -> list[str]:
    if not rounds:
        return []
    lines = [
        "| round | jobs/s | p50 | p99 | API writes/job | raw status patches/s | share of limit"
        " | load average at start → end |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rounds, 1):
        lines.append(
            f"| {i} | {r['jobs_per_s']:,.0f} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s"
            f" | {r['api_writes_per_job']:.2f} | {r['raw_status_patches_per_s']:,.0f}"
            f" | {r['fraction_of_limit']:.0%} | {r['load_average_start']} → {r['load_average_end']} |"
        )
    return [*lines, ""]


def _core_markdown(core: dict[str, Any], chart_name: str) -> list[str]:
    lines = [
        f"## Core queue: {core['jobs']:,} pre-queued no-op jobs drained, jobs/s",
        "",
        "Same concurrency, one worker process each. RelayJob includes its PostgreSQL ledger"
        " writes (attempt opened and outcome recorded, `fsync=on`, `synchronous_commit=on`) and"
        " its status writer; the peers keep only Redis state. relayjob, BullMQ, arq and SAQ share"
        " one redis-server that keeps nothing on disk; *AOF always* and *AOF everysec* are BullMQ"
        " on a redis-server of its own with `appendonly yes` and that `appendfsync`, its file on"
        " the ledger's disk: *always* is the comparison at equal durability.",
        "",
        "| concurrency | relayjob | "
        + " | ".join(_LABELS[p] for p in PEERS)
        + " | "
        + " | ".join(f"vs {_LABELS[p]}" for p in PEERS)
        + " |",
        "|---:|---:|" + "---:|" * (2 * len(PEERS)),
    ]
    for conc, row in core["by_concurrency"].items():
        us = row["relayjob"]
        lines.append(
            f"| {conc} | **{us:,.0f}** | "
            + " | ".join(_rate(row.get(p)) for p in PEERS)
            + " | "
            + " | ".join(_ratio(us, row.get(p)) for p in PEERS)
            + " |"
        )
    lines += ["", f"![throughput by concurrency](results/{chart_name})", ""]
    floor = core.get("floor")
    if floor and "10" in core["by_concurrency"]:
        c10 = core["by_concurrency"]["10"]
        lines += [
            f"Floor: {floor['jobs_per_s']:,.0f} jobs/s. That is our hot path's ledger and Redis"
            " statements alone, in batches, with no per-job work around them (`bench/relay_floor.py`):"
            " what a durable ledger allows on this machine. At concurrency 10 relayjob reaches"
            f" {c10['relayjob'] / floor['jobs_per_s']:.0%} of it, BullMQ"
            f" {c10['bullmq'] / floor['jobs_per_s']:.0%} and BullMQ with AOF always"
            f" {c10.get('bullmq_aof_always', 0) / floor['jobs_per_s']:.0%}.",
            "",
        ]
    if core.get("cpu_ms_per_job"):
        lines += _cpu_markdown(core)
    if "stages" in core:
        lines += _stages_markdown(core["stages"])
    return lines


def _cpu_markdown(core: dict[str, Any]) -> list[str]:
    """What a job cost each process in our best drains and the floor's, and the most the machine's
    cores allow at that cost; beside it, what BullMQ with AOF always leaves a job at its rate."""
    cores = int(core.get("cores") or 1)
    drains = [(f"relayjob, concurrency {c}", by["relayjob"]) for c, by in core["cpu_ms_per_job"].items()]
    if core.get("floor", {}).get("cpu_ms_per_job"):
        drains.append(("floor", core["floor"]["cpu_ms_per_job"]))
    lines = [
        "CPU per job of each process in the best drain, in ms (PostgreSQL's includes its WAL writer,"
        " checkpointer and autovacuum meanwhile), and the rate this machine's"
        f" {cores} cores allow at that cost if nothing else ran ({cores} x 1000 ÷ total):",
        "",
        "| drain | worker (floor: its client) | PostgreSQL | Redis | total | cores allow, jobs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, cpu in drains:
        total = sum(cpu.values())
        cells = [f"{cpu.get(p, 0.0):.3f}" for p in ("client", "postgres", "redis")]
        lines.append(f"| {name} | {' | '.join(cells)} | {total:.3f} | {cores * 1000 / total:,.0f} |")
    budgets = [
        f"{cores * 1000 / row['bullmq_aof_always']:.3f} ms at concurrency {c}"
        for c, row in core["by_concurrency"].items()
        if row.get("bullmq_aof_always")
    ]
    if budgets:
        lines += ["", f"At BullMQ with AOF always's rates a job may cost {' and '.join(budgets)} in all."]
    return [*lines, ""]


def _stages_markdown(profile: dict[str, Any]) -> list[str]:
    lines = [
        f"Where the worker's CPU goes (`bench/stages.py`: one more drain of {profile['jobs']:,} jobs at"
        f" concurrency {profile['concurrency']} under py-spy, {profile['jobs_per_s_profiled']:,.0f} jobs/s"
        f" while sampled, {profile['cpu_ms_per_job']:.3f} ms of CPU per job):",
        "",
        "| stage | share of the worker's CPU | ms per job |",
        "|---|---:|---:|",
    ]
    for stage, figures in profile["stages"].items():
        lines.append(f"| {stage} | {figures['share']:.0%} | {figures['ms_per_job']:.3f} |")
    return [*lines, ""]


def _steal(share: float | None) -> str:
    if share is None:
        return ""
    return (
        f" CPU steal during the run: {share:.0%} of the CPUs' time went to other guests of the host,"
        " which slows every system measured alike."
    )


def markdown(result: dict[str, Any], chart_name: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"`make bench` ({result['mode']} run) on {result['machine']}, {result['when']}.",
        f"Load average at start {result.get('load_average_at_start')}, at end"
        f" {result.get('load_average_at_end')} (the machine is shared; figures are best-of-rounds,"
        " end to end's the median of its rounds)." + _steal(result.get("cpu_steal_share")),
        "Machine-readable: [results/latest.json](results/latest.json). How each figure is measured:"
        " the docstrings of `bench/*.py`.",
        *_settings(result.get("operator_settings")),
        "",
    ]
    if "core" in result:
        lines += _core_markdown(result["core"], chart_name)
    if "queues" in result:
        lines += _queues_markdown(result["queues"])
    if "http" in result:
        lines += _http_markdown(result["http"])
    e2e = result.get("e2e")
    if e2e:
        writes = ", ".join(f"{k}: {v:g}" for k, v in e2e["api_writes"].items()) or "none"
        lines += [
            f"## End to end: {e2e['jobs']:,} RelayJobs created through the API → all Completed",
            "",
            f"Each figure is the median of its values over {len(e2e.get('rounds', [])) or 1} round(s)"
            f" (not the best), load average (1, 5, 15 min) {_loads(e2e)}.",
            "",
            "| jobs/s | p50 | p99 | API writes/job | raw status patches/s"
            " | limit (raw ÷ writes/job) | share of limit |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {e2e['jobs_per_s']:,.0f} | {e2e['p50_s']:.2f} s | {e2e['p99_s']:.2f} s"
            f" | {e2e['api_writes_per_job']:.2f} | {e2e['raw_status_patches_per_s']:,.0f}"
            f" | {e2e['limit_jobs_per_s']:,.0f} | {e2e['fraction_of_limit']:.0%} |",
            "",
            *_with_creates(e2e),
            *_ideal(e2e),
            "Operator writes counted by the API server (`apiserver_request_total`, bench creates"
            f" excluded): {writes}.",
            "",
        ]
        legs = e2e.get("legs")
        if legs:
            cut = "; ".join(
                f"{name} {legs[k]['p50_s']:.2f} / {legs[k]['p99_s']:.2f} s" for k, name in _LEGS if k in legs
            )
            lines += [f"Where the time goes, cut at the ledger's timestamps (p50 / p99): {cut}.", ""]
        lag = e2e.get("status_lag")
        if lag:
            lines += [
                "Of the last leg, the operator's own status lag (`relayjob_status_lag_seconds`: a change"
                " handed to its status writer → the API server accepting the patch) was"
                f" {lag['p50_s']:.2f} / {lag['p99_s']:.2f} s (p50 / p99, mean {lag['mean_s']:.2f} s);"
                " the rest is the record reaching the writer and the watch delivering the object.",
                "",
            ]
        cpu = e2e.get("cpu_ms_per_job")
        if cpu:
            named = {"kube_apiserver": "kube-apiserver", "postgres": "PostgreSQL", "redis": "Redis"}
            each = ", ".join(f"{named.get(k, k)} {v:.2f} ms" for k, v in cpu.items())
            lines += [f"CPU per job during the run: {each}.", ""]
        lines += _e2e_rounds(e2e.get("rounds", []))
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
    if result.get("scale"):
        lines += scale_report.markdown(result["scale"], SCALE_CHART)
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
    systems = [s for s in ("relayjob", *PEERS) if all(s in core["by_concurrency"][c] for c in concs)]
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for i, system in enumerate(systems):
        values = [core["by_concurrency"][c][system] for c in concs]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(concs))]
        bars = ax.bar(xs, values, width, label=_LABELS[system])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(concs)), [f"concurrency {c}" for c in concs])
    ax.set_ylabel("jobs/s (higher is better)")
    ax.set_title(f"Draining {core['jobs']:,} no-op jobs ({result['mode']} run)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(result: dict[str, Any], md_path: Path, png_path: Path) -> None:
    if "core" in result:
        chart(result, png_path)
    if result.get("scale"):
        scale_report.chart(result["scale"], png_path.with_name(SCALE_CHART))
    md_path.write_text(markdown(result, png_path.name))


def summary(result: dict[str, Any]) -> str:
    lines = ["", "== bench summary =="]
    core = result.get("core")
    if core:
        for conc, row in core["by_concurrency"].items():
            ratios = ", ".join(f"{p} {_ratio(row['relayjob'], row.get(p))}" for p in PEERS)
            lines.append(f"core c={conc}: relayjob {row['relayjob']:,.0f}/s ({ratios})")
        if "floor" in core:
            lines.append(f"core floor (statements alone): {core['floor']['jobs_per_s']:,.0f}/s")
    queues = result.get("queues")
    if queues:
        figures = ", ".join(f"{layout} {rate:,.0f}/s" for layout, rate in queues["jobs_per_s"].items())
        lines.append(f"queues c={queues['concurrency']}: {figures}")
        lines.append(
            f"queues limited to {queues['limited_per_s']['limit']:g}/s: {queues['limited_per_s']['observed']}"
        )
    http = result.get("http")
    if http:
        lines.append(
            f"http c={http['concurrency']}: relayjob {http['relayjob']:,.0f}/s (bullmq"
            f" {_ratio(http['relayjob'], http['bullmq'])}, arq {_ratio(http['relayjob'], http['arq'])}),"
            f" p50/p99 {http['relayjob_p50_s']:.3f}/{http['relayjob_p99_s']:.3f} s,"
            f" {http['target_connections']} connections (pool {http['pool_max']}), {http['errors']} errors;"
            f" target alone {http['target_alone_per_s']:,.0f}/s"
        )
    for t in result.get("targets", []):
        lines.append(f"{'PASS' if t['met'] else 'MISS'}  {t['target']}: {t['value']} (goal {t['goal']})")
    return "\n".join(lines)


def _settings(settings: dict[str, str] | None) -> list[str]:
    """The settings every operator and worker of the run had, beside their defaults."""
    if not settings:
        return []
    each = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    return [f"Our operators and workers ran with {each} (the ledger is PostgreSQL itself, reached directly)."]


def _ideal(e2e: dict[str, Any]) -> list[str]:
    """What the ideal relay (`bench.ideal`) reached in the same rounds: the machine's ceiling."""
    ideal = e2e.get("ideal")
    if not ideal:
        return []
    each = ", ".join(f"{r['fraction_of_limit']:.0%}" for r in ideal.get("rounds", []))
    return [
        "The ideal relay (`bench.ideal`: a watch and one status patch per job, at once; no ledger,"
        " no queue, no Events), run right after each round on the same API server, reached"
        f" {ideal['jobs_per_s']:,.0f} jobs/s, p50 / p99 {ideal['p50_s']:.2f} / {ideal['p99_s']:.2f} s,"
        f" {ideal['fraction_of_limit']:.0%} of its limit (rounds: {each}): the most any relay"
        " reaches on this machine while the API server, etcd and the bench's creates share its CPU.",
        "",
    ]


def _with_creates(e2e: dict[str, Any]) -> list[str]:
    """The limit once each job's own create is counted too: the same API server takes it."""
    if "limit_with_creates_jobs_per_s" not in e2e:
        return []
    return [
        f"The same API server also takes each job's create: {e2e['raw_creates_per_s']:,.0f} creates/s"
        " alone, from the same client. A job costs a create and its operator writes, so the limit"
        f" counting both is {e2e['limit_with_creates_jobs_per_s']:,.0f} jobs/s"
        f" (1 ÷ (1 ÷ creates/s + writes/job ÷ patches/s)), and the run reached"
        f" {e2e['fraction_of_limit_with_creates']:.0%} of it.",
        "",
    ]
