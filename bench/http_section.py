"""Section `http`: relaying real HTTP jobs. Each system drains the same number of pre-queued jobs
that each POST to one loopback target (`bench.http_target`, in a process of its own, the same for
every system) which answers after `delay` seconds, at the same concurrency: relayjob
(`bench.relay_http`, `target.http` through the operator's worker and its pooled http executor),
BullMQ (a Worker whose processor calls Node's fetch, keep-alive) and arq (a task using one aiohttp
session).

The target is first measured alone (`bench.http_load`, one aiohttp client at the same
concurrency): what it serves is the ceiling the systems are shown to be below. Runs are
interleaved round by round like the core section's, each system keeping its best. Before each run
the target's counts are zeroed; after it, the TCP connections it accepted are that run's. Ours must
stay within the http executor's pool (`pool_max`), with no failed attempt.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.env import BENCH, PEER_PYTHON, PYTHON, ROOT, Servers, flush_redis, log, run_json

SYSTEMS = ("relayjob", "bullmq", "arq")


@dataclass(frozen=True)
class Target:
    url: str
    control: str

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.control}/reset", method="POST"), timeout=10
        ).close()

    def accepted(self) -> int:
        with urllib.request.urlopen(f"{self.control}/stats", timeout=10) as answer:
            return int(json.load(answer)["accepted"])


@contextmanager
def target_server(delay: float) -> Iterator[Target]:
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.http_target", str(delay)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the HTTP target exited ({process.wait()}) before it listened")
        ports = json.loads(line)
        yield Target(f"http://127.0.0.1:{ports['port']}/job", f"http://127.0.0.1:{ports['control_port']}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _command(system: str, servers: Servers, target: str, jobs: int, concurrency: int, dsn: str) -> list[str]:
    url = servers.redis_url
    if system == "relayjob":
        return [PYTHON, "-m", "bench.relay_http", url, dsn, target, str(jobs), str(concurrency)]
    if system == "bullmq":
        return [
            "node",
            str(BENCH / "peers" / "bullmq" / "drain.js"),
            url,
            str(jobs),
            str(concurrency),
            target,
        ]
    return [PEER_PYTHON, "-m", "bench.peers.arq_peer", url, str(jobs), str(concurrency), target]


def run(servers: Servers, jobs: int, concurrency: int, rounds: int, delay: float) -> dict[str, Any]:
    seen: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    with target_server(delay) as target:
        alone = run_json(
            [PYTHON, "-m", "bench.http_load", target.url, str(jobs), str(concurrency)], timeout=900
        )
        log(f"http target alone: {alone['jobs_per_s']:8.0f} requests/s ({alone['errors']} errors)")
        for round_no in range(rounds):
            for system in SYSTEMS:
                flush_redis(servers.redis_url)
                dsn = servers.new_database("http") if system == "relayjob" else ""
                target.reset()
                try:
                    figures = run_json(
                        _command(system, servers, target.url, jobs, concurrency, dsn), timeout=900
                    )
                finally:
                    if dsn:
                        servers.drop_database(dsn)
                figures["connections"] = target.accepted()
                seen[system].append(figures)
                log(
                    f"http c={concurrency} round {round_no + 1}/{rounds}: {system:8s}"
                    f" {figures['jobs_per_s']:8.0f} jobs/s ({figures['seconds']:.2f}s,"
                    f" {figures['connections']} connections, {figures.get('errors', 0)} errors)"
                )
    flush_redis(servers.redis_url)
    return summarize(seen, jobs, concurrency, delay, alone)


def summarize(
    seen: dict[str, list[dict[str, Any]]], jobs: int, concurrency: int, delay: float, alone: dict[str, Any]
) -> dict[str, Any]:
    """The section's figures from every run's: each system's best rate; our latency from that same
    best run; connections and errors from the worst, since a bound must hold in every run."""
    best = {s: max(runs, key=lambda r: float(r["jobs_per_s"])) for s, runs in seen.items()}
    ours = seen["relayjob"]
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "target_delay_s": delay,
        **{s: round(float(best[s]["jobs_per_s"]), 1) for s in seen},
        "relayjob_p50_s": round(float(best["relayjob"]["p50_s"]), 4),
        "relayjob_p99_s": round(float(best["relayjob"]["p99_s"]), 4),
        "target_connections": max(int(r["connections"]) for r in ours),
        "pool_max": int(ours[0]["pool_max"]),
        "errors": sum(int(r["errors"]) for r in ours),
        "error_reasons": _merged(r.get("error_reasons", {}) for r in ours),
        "peer_errors": {
            s: sum(int(r.get("errors", 0)) for r in runs) for s, runs in seen.items() if s != "relayjob"
        },
        "connections_by_system": {s: max(int(r["connections"]) for r in runs) for s, runs in seen.items()},
        "target_alone_per_s": round(float(alone["jobs_per_s"]), 1),
        "target_alone_errors": int(alone["errors"]),
        # Latency alone bounds any system: `concurrency` requests in flight, each `delay` long.
        "latency_bound_per_s": round(concurrency / delay, 1),
        "runs": {s: [round(float(r["jobs_per_s"]), 1) for r in runs] for s, runs in seen.items()},
        "rounds": len(ours),
    }


def _merged(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for found in counts:
        for reason, n in found.items():
            out[reason] = out.get(reason, 0) + int(n)
    return out
