"""`make bench` / `make bench-quick`: us and our peers, measured in the same run on this machine.

    python -m bench [--quick] [--only core,queues,http,e2e,connections,memory,scale] [--rounds N]

Sections (see each module): core queue against arq, SAQ and BullMQ (`bench.core`, BullMQ also on
a redis-server with an append-only file), the core queue through RelayQueues
(`bench.core.run_queues`), HTTP jobs against one loopback target (`bench.http_section`), end to end
through the sandbox's API server (`bench.e2e`), connection discipline (`bench.connections`),
the operator's memory (`bench.e2e`) and its cost with many finished RelayJobs (`bench.scale`).
Writes bench/results/latest.json (plus a copy named after the mode), bench/RESULTS.md,
bench/results/throughput.png and scale.png, and prints the ratios.

Benchmarks are not tests: nothing here runs in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import connections, core, e2e, http_section, report, stages
from bench import scale as scale_section
from bench.env import (
    BENCH,
    OPERATOR_SETTINGS,
    PEER_PYTHON,
    RESULTS,
    WORK,
    Servers,
    cpu_ticks,
    log,
    machine,
    steal_share,
)

SECTIONS = ("core", "queues", "http", "e2e", "connections", "memory", "scale")
# The http section's target answers after this long; every system relays at HTTP_CONCURRENCY.
HTTP_DELAY_S = 0.02
HTTP_CONCURRENCY = 200


@dataclass(frozen=True)
class Scale:
    core_jobs: int
    concurrencies: tuple[int, ...]
    rounds: int
    e2e_jobs: int
    raw_patches: int
    conn_ops: int
    conn_concurrency: int
    naive_deadline: float
    memory_steps: tuple[int, ...]
    http_jobs: int
    e2e_rounds: int  # its figures are the median of the rounds (issue 20)
    scale_steps: tuple[int, ...]  # finished RelayJobs in the cluster at each step
    scale_ledger_rows: int
    scale_burst: int


FULL = Scale(20_000, (10, 100), 2, 2_000, 6_000, 100_000, 200, 60.0, (1_000, 10_000), 20_000, e2e.ROUNDS,
             (1_000, 10_000, 100_000), 1_000_000, 2_000)  # fmt: skip
QUICK = Scale(5_000, (10, 100), 1, 1_000, 2_000, 20_000, 200, 15.0, (1_000, 3_000), 3_000, 1,
              (1_000, 5_000), 100_000, 500)  # fmt: skip


def _check_peers() -> None:
    missing = [m for m in ("matplotlib", "psutil") if not _importable(m)]
    peers = subprocess.run([PEER_PYTHON, "-c", "import aiohttp, arq, saq"], capture_output=True, check=False)
    if missing or peers.returncode != 0:
        sys.exit("bench: peers or bench tools are not installed; run: make bench-setup")
    if shutil.which("node") is None:
        sys.exit("bench: node (Node.js 18+) is needed for the BullMQ peer")
    bullmq = BENCH / "peers" / "bullmq"
    if not (bullmq / "node_modules" / "bullmq").is_dir():
        log("installing BullMQ into bench/peers/bullmq (npm ci)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=bullmq, check=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 5 minutes")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (core: best kept, e2e: median)")
    parser.add_argument("--keep-servers", action="store_true", help="leave the bench's servers running")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    rounds = args.rounds or scale.rounds
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if set(chosen) != {"queues"}:  # the queues section runs us alone: no peers needed
        _check_peers()
    for name, value in OPERATOR_SETTINGS.items():
        os.environ.setdefault(name, value)  # operators and workers inherit the environment
    started, ticks = time.monotonic(), cpu_ticks()
    servers = Servers(kube=bool({"e2e", "memory", "scale"} & set(chosen)), aof="core" in chosen)
    servers.up()
    result: dict[str, Any] = {
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "operator_settings": {name: os.environ[name] for name in OPERATOR_SETTINGS},
    }
    try:
        _measure(result, servers, chosen, scale, rounds, args.rounds or scale.e2e_rounds)
    finally:
        if not args.keep_servers:
            servers.down()
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["cpu_steal_share"] = steal_share(ticks, cpu_ticks())
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    result["targets"] = report.targets(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    if set(chosen) != set(SECTIONS) or os.environ.get("BENCH_PYSPY"):
        # A partial or profiled run would replace the published figures with fewer or slower
        # ones: it is kept aside, and the summary printed.
        (WORK / "partial.json").write_text(text)
        log(f"partial or profiled run: figures in {WORK / 'partial.json'}; results/ left as they were")
    else:
        (RESULTS / "latest.json").write_text(text)
        (RESULTS / f"{result['mode']}.json").write_text(text)
        report.write(result, BENCH / "RESULTS.md", RESULTS / "throughput.png")
    print(report.summary(result))
    return 0


def _measure(
    result: dict[str, Any], servers: Servers, chosen: list[str], scale: Scale, rounds: int, e2e_rounds: int
) -> None:
    """Run the `chosen` sections in their order, each adding its figures to `result`."""
    if "core" in chosen:
        log(f"core queue: {scale.core_jobs} jobs at concurrency {scale.concurrencies}, {rounds} round(s)")
        result["core"] = core.run(servers, scale.core_jobs, scale.concurrencies, rounds)
        result["core"]["stages"] = stages.profile(servers, scale.core_jobs, scale.concurrencies[0])
    if "queues" in chosen:
        result["queues"] = _queues(servers, scale, rounds)
    if "http" in chosen:
        result["http"] = _http(servers, scale, rounds)
    if "e2e" in chosen:
        log(f"end to end: {scale.e2e_jobs} RelayJobs through the API server, {e2e_rounds} round(s)")
        result["e2e"] = e2e.run_e2e(servers, scale.e2e_jobs, scale.raw_patches, e2e_rounds)
    if "connections" in chosen:
        result["connections"] = _connections(servers, scale)
    if "memory" in chosen:
        log(f"memory: idle, then {scale.memory_steps} RelayJobs")
        result["memory"] = e2e.run_memory(servers, scale.memory_steps)
    if "scale" in chosen:
        log(f"scale: {scale.scale_steps} finished RelayJobs, {scale.scale_ledger_rows} ledger rows")
        steps, rows, burst = scale.scale_steps, scale.scale_ledger_rows, scale.scale_burst
        result["scale"] = scale_section.run(servers, steps, rows, burst)


def _queues(servers: Servers, scale: Scale, rounds: int) -> dict[str, Any]:
    concurrency = scale.concurrencies[0]
    log(f"core queue through RelayQueues: {scale.core_jobs} jobs at concurrency {concurrency}")
    return core.run_queues(servers, scale.core_jobs, concurrency, rounds)


def _http(servers: Servers, scale: Scale, rounds: int) -> dict[str, Any]:
    log(f"http: {scale.http_jobs} jobs at concurrency {HTTP_CONCURRENCY}, target delay {HTTP_DELAY_S}s")
    return http_section.run(servers, scale.http_jobs, HTTP_CONCURRENCY, rounds, HTTP_DELAY_S)


def _connections(servers: Servers, scale: Scale) -> dict[str, Any]:
    log(f"connections: {scale.conn_ops} ops at concurrency {scale.conn_concurrency}")
    from controller.settings import Settings

    pool_max = Settings().redis_pool_max
    found = connections.run(
        servers.redis_url, scale.conn_ops, scale.conn_concurrency, pool_max, scale.naive_deadline
    )
    found["kernel"] = _kernel_net()
    return found


def _kernel_net() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("tcp_tw_reuse", "ip_local_port_range", "tcp_fin_timeout"):
        path = Path("/proc/sys/net/ipv4") / name
        try:
            out[name] = " ".join(path.read_text().split())
        except OSError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
