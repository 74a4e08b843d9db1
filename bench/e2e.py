"""Sections 2 and 4: end to end through the sandbox's API server, and the operator's memory.

e2e: once one warm-up job has gone through, N RelayJobs created through the API at high
concurrency while a watch records when each one shows `Completed`; jobs/s over the whole run,
create-to-Completed latency per job, and the API writes the operator made per job, from the API
server's own `apiserver_request_total` (write verbs on relayjobs and events, minus the bench's
creates). Beside it, the physical limit: the rate at which the operator's status write
(`KubeClient.patch_status`), from a process doing nothing else, patches RelayJob status on the same
API server. The operator authenticates with a ServiceAccount token, as it does in a cluster; the
bench's own calls go through the operator's client too, with the sandbox's admin certificate.
After each round, the same measurement with the ideal relay (`bench.ideal`: a watch and one status
patch per job, nothing durable) in the operator's place: what the machine allows any relay.

memory: RSS of an operator process idle, then with 1,000 and 10,000 RelayJobs created and completed.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from typing import Any

import asyncpg
import psutil

from bench.env import PYTHON, ROOT, WORK, Servers, log
from bench.histograms import status_lag
from bench.ideal import TOKEN_ENV as IDEAL_TOKEN_ENV
from bench.kube import (
    Operator,
    admin,
    bounded,
    client,
    create_job,
    create_namespace,
    delta,
    list_version,
    raw_status_patch_rate,
    refusals,
    request_seconds,
    service_account_token,
    write_counts,
)
from bench.processes import cpu_seconds
from controller.adapters.kube import KubeClient
from devtools.pki import write_kubeconfig
from devtools.servers import KubeAPIServer

CREATE_CONCURRENCY = 64
RAW_OBJECTS = 1000  # RelayJobs the raw limits create, then patch: the raw create rate is theirs


def _operator(servers: Servers, tag: str) -> tuple[Operator, str]:
    """The operator of a bench section, and the namespace it watches; `_start` starts it."""
    suffix = uuid.uuid4().hex[:8]
    namespace = f"bench-{tag}-{suffix}"
    env = {
        "RELAY_REDIS_URL": servers.redis_url,
        "RELAY_DATABASE_URL": servers.new_database(tag),
        "RELAY_KEY_PREFIX": f"b{tag}{suffix}",
        "RELAY_NAMESPACES": namespace,
        "RELAY_PEERING_NAME": f"bench-{suffix}",
        "RELAY_STANDALONE": "true",
        "RELAY_LOG_FORMAT": "json",
    }
    return Operator(env, WORK / "logs" / f"operator-{tag}-{suffix}.log"), namespace


async def _start(operator: Operator, api: KubeClient, server: KubeAPIServer, namespace: str) -> None:
    """Create the operator's namespace and its ServiceAccount, and start it with that account's token."""
    await create_namespace(api, namespace)
    token = await service_account_token(api, namespace)
    kubeconfig = WORK / f"kubeconfig-{namespace}"
    write_kubeconfig(kubeconfig, server.pki, server.url, token=token)
    operator.env["KUBECONFIG"] = str(kubeconfig)
    operator.start()


class Tracker:
    """Create times sent by the bench, and `Completed` times from a watch in a process of its own
    (`bench.tracker`), by name, both as wall-clock time."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.answered: dict[str, float] = {}  # when the API server answered the create
        self.completed: dict[str, float] = {}
        self.added: dict[str, float] = {}  # when the bench's watch first saw it
        self.all_done = asyncio.Event()
        self.expected = 0

    async def follow(self, server: KubeAPIServer, namespace: str, version: str) -> None:
        pki = server.pki
        argv = [server.url, pki.ca_cert, pki.admin_cert, pki.admin_key, namespace, version]
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bench.tracker", *map(str, argv), stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                seen = json.loads(line)
                if "added" in seen:
                    self.added[seen["name"]] = float(seen["added"])
                    continue
                self.completed[seen["name"]] = float(seen["at"])
                if len(self.completed) >= self.expected:
                    self.all_done.set()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _create_and_wait(
    api: KubeClient, namespace: str, names: list[str], tracker: Tracker, timeout: float
) -> float:
    tracker.expected += len(names)
    tracker.all_done.clear()

    async def create(name: str) -> None:
        tracker.created[name] = time.time()
        await create_job(api, namespace, name)
        tracker.answered[name] = time.time()

    began = time.time()
    await bounded(CREATE_CONCURRENCY, (create(n) for n in names))
    log(f"  {len(names)} RelayJobs created in {time.time() - began:.1f}s")
    async with asyncio.timeout(timeout):
        await tracker.all_done.wait()
    return began


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(_percentile(values, 0.50), 3), "p99_s": round(_percentile(values, 0.99), 3)}


def _mean_seconds(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean seconds the API server spent on each kind of request made between two readings."""
    out = {}
    for key, (total, count) in after.items():
        was_total, was_count = before.get(key, (0.0, 0.0))
        if count > was_count:
            out[key] = round((total - was_total) / (count - was_count), 4)
    return out


async def _legs(dsn: str, namespace: str, tracker: Tracker, names: list[str]) -> dict[str, Any]:
    """Each job's create-to-Completed time cut at the ledger's own timestamps: when admission
    recorded it, and when its outcome was recorded. PostgreSQL runs on this machine, so its clock is
    the bench's."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, extract(epoch FROM created_at)::float8 AS admitted,"
            " extract(epoch FROM finished_at)::float8 AS finished"
            " FROM jobs WHERE namespace = $1 AND name = ANY($2::text[])",
            namespace,
            names,
        )
    finally:
        await conn.close()
    return {
        "create_to_admitted": _spread([r["admitted"] - tracker.created[r["name"]] for r in rows]),
        "create_call": _spread([tracker.answered[r["name"]] - tracker.created[r["name"]] for r in rows]),
        "answered_to_admitted": _spread([r["admitted"] - tracker.answered[r["name"]] for r in rows]),
        "create_to_watched": _spread([tracker.added[r["name"]] - tracker.created[r["name"]] for r in rows]),
        "watched_to_admitted": _spread([r["admitted"] - tracker.added[r["name"]] for r in rows]),
        "admitted_to_finished": _spread([r["finished"] - r["admitted"] for r in rows]),
        "finished_to_seen": _spread([tracker.completed[r["name"]] - r["finished"] for r in rows]),
    }


class IdealRelay:
    """`bench.ideal` in a process of its own, started and stopped as the operator is."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, server: KubeAPIServer, token: str, namespace: str, version: str) -> None:
        argv = [PYTHON, "-m", "bench.ideal", server.url, str(server.pki.ca_cert), namespace, version]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, IDEAL_TOKEN_ENV: token})

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


async def _start_relay(
    operator: Operator | None, relay: IdealRelay, api: KubeClient, server: KubeAPIServer, namespace: str
) -> tuple[str, int]:
    """Start the operator, or when there is none the ideal relay, on `namespace`: the list version
    from which the bench's watch starts, and the relay's pid."""
    if operator is not None:
        await _start(operator, api, server, namespace)
        return await list_version(api, namespace), operator.pid
    await create_namespace(api, namespace)
    token = await service_account_token(api, namespace)
    version = await list_version(api, namespace)
    relay.start(server, token, namespace, version)
    return version, relay.pid


def _processes(servers: Servers, relay: str, pid: int) -> dict[str, int | None]:
    """Every process a job passes through, by name: on a machine they saturate, each one's CPU per
    job is CPU the API server does not get."""
    return {
        relay: pid,
        "kube_apiserver": servers.sandbox.apiserver.pid,
        "etcd": servers.sandbox.etcd.pid,
        "postgres": servers.postgres.pid,
        "redis": servers.sandbox.redis.pid,
    }


async def _e2e(servers: Servers, jobs: int, raw_patches: int, ideal: bool = False) -> dict[str, Any]:
    """One round: the raw limits, then `jobs` RelayJobs relayed by the operator, or with `ideal`
    by `bench.ideal` (which has no ledger: no legs, no operator metrics)."""
    server = servers.sandbox.apiserver
    raw = await raw_status_patch_rate(
        server, f"bench-raw-{uuid.uuid4().hex[:6]}", objects=RAW_OBJECTS, patches=raw_patches, concurrency=32
    )
    log(f"e2e: raw status patches {raw['per_s']:.0f}/s, raw creates {raw['creates_per_s']:.0f}/s")
    operator, namespace = (
        _operator(servers, "e2e") if not ideal else (None, f"bench-ideal-{uuid.uuid4().hex[:8]}")
    )
    relay = IdealRelay()
    api = client(admin(server), connections=CREATE_CONCURRENCY)
    tracker = Tracker()
    try:
        version, relay_pid = await _start_relay(operator, relay, api, server, namespace)
        watcher = asyncio.create_task(tracker.follow(server, namespace, version))
        # One job through first: the clock measures an operator that is running, not kopf's first
        # list of a resource whose watch cache is still initialising on a just-started API server.
        await _create_and_wait(api, namespace, ["warm-up"], tracker, timeout=120)
        await asyncio.sleep(2.0)  # its Events and status re-checks land before the count starts
        before = write_counts(server)
        refused_before = refusals(server)
        timed_before = request_seconds(server)
        processes = _processes(servers, "operator" if operator is not None else "ideal", relay_pid)
        cpu_before = cpu_seconds(processes)
        names = [f"e2e-{i:05d}" for i in range(jobs)]
        began = await _create_and_wait(api, namespace, names, tracker, timeout=600)
        finished = max(tracker.completed.values())
        await asyncio.sleep(3.0)  # trailing writes (late Events, status re-checks) count too
        after = write_counts(server)
        refused_after = refusals(server)
        timed_after = request_seconds(server)
        cpu_after = cpu_seconds(processes)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)  # the tracker process is reaped
        metrics: dict[str, float] = {}
        legs: dict[str, Any] = {}
        if operator is not None:
            metrics = operator.metric_values()
            legs = await _legs(operator.env["RELAY_DATABASE_URL"], namespace, tracker, names)
    finally:
        if operator is not None:
            operator.stop()
        relay.stop()
        await api.close()
    writes = delta(before, after)
    ours = {
        f"{verb} {resource}{'/' + sub if sub else ''}": count
        for (verb, resource, sub), count in sorted(writes.items())
    }
    own_creates = float(jobs)
    total = sum(writes.values()) - own_creates
    ours["POST relayjobs"] = ours.get("POST relayjobs", 0.0) - own_creates
    latencies = [tracker.completed[n] - tracker.created[n] for n in names]
    seconds = finished - began
    per_job = total / jobs
    jobs_per_s = jobs / seconds
    limit = raw["per_s"] / max(per_job, 1e-9)
    # The same API server also takes each job's create, from the bench: a job costs a create and
    # `per_job` operator writes, each at its raw rate. The limit leaves the create out.
    with_creates = 1.0 / (1.0 / raw["creates_per_s"] + per_job / raw["per_s"])
    return {
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs_per_s, 1),
        **_spread(latencies),
        "max_s": round(max(latencies), 3),
        "api_writes_per_job": round(per_job, 3),
        "api_writes": {k: v for k, v in ours.items() if v},
        "raw_status_patches_per_s": round(raw["per_s"], 1),
        "limit_jobs_per_s": round(limit, 1),
        "fraction_of_limit": round(jobs_per_s / limit, 3),
        "raw_creates_per_s": round(raw["creates_per_s"], 1),
        "limit_with_creates_jobs_per_s": round(with_creates, 1),
        "fraction_of_limit_with_creates": round(jobs_per_s / with_creates, 3),
        "operator_status_writes": metrics.get("relayjob_status_writes_total", 0.0),
        "operator_loop_errors": {
            k: v for k, v in metrics.items() if k.startswith("relayjob_loop_errors_total")
        },
        "refused_429": {
            k: v - refused_before.get(k, 0.0)
            for k, v in refused_after.items()
            if v != refused_before.get(k, 0.0)
        },
        "legs": legs,
        "status_lag": status_lag(metrics),
        "api_server_mean_s": _mean_seconds(timed_before, timed_after),
        "cpu_ms_per_job": {k: round(1000 * (cpu_after[k] - cpu_before[k]) / jobs, 2) for k in cpu_after},
    }


ROUNDS = 3  # the e2e figures are the median of this many rounds (issue 20), each with its load average
_MEDIAN_KEYS = (
    "seconds",
    "jobs_per_s",
    "p50_s",
    "p99_s",
    "max_s",
    "api_writes_per_job",
    "raw_status_patches_per_s",
    "limit_jobs_per_s",
    "fraction_of_limit",
    "raw_creates_per_s",
    "limit_with_creates_jobs_per_s",
    "fraction_of_limit_with_creates",
    "operator_status_writes",
)


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure the median of its values over `rounds`; the API writes by kind are those of
    the round whose writes per job are the median (they are counts, shown together)."""
    out: dict[str, Any] = {"jobs": rounds[0]["jobs"]}
    for key in _MEDIAN_KEYS:
        out[key] = _median([r[key] for r in rounds])
    by_writes = sorted(rounds, key=lambda r: float(r["api_writes_per_job"]))
    out["api_writes"] = by_writes[len(by_writes) // 2]["api_writes"]
    out["legs"] = {
        leg: {q: _median([r["legs"][leg][q] for r in rounds]) for q in ("p50_s", "p99_s")}
        for leg in rounds[0]["legs"]
    }
    out["cpu_ms_per_job"] = {
        k: _median([r["cpu_ms_per_job"][k] for r in rounds]) for k in rounds[0]["cpu_ms_per_job"]
    }
    lags = [r["status_lag"] for r in rounds if r.get("status_lag")]
    if lags:
        out["status_lag"] = {k: _median([lag[k] for lag in lags]) for k in lags[0]}
    return out


def run_e2e(servers: Servers, jobs: int, raw_patches: int, rounds: int) -> dict[str, Any]:
    """`rounds` runs, each in a namespace and with an operator of its own, each measuring the raw
    status-patch limit just before it. Each figure reported is the median of its values over the
    rounds, not the best: the machine is shared, and a best-of hides how often a neighbour slows
    us. Every round's figures are kept under `rounds`, with the machine's load average (1, 5 and
    15 minutes) at its start and at its end."""
    kept = []
    ideal_rounds = []
    for round_no in range(rounds):
        load_start = _load_average()
        figures = asyncio.run(_e2e(servers, jobs, raw_patches))
        figures["load_average_start"] = load_start
        figures["load_average_end"] = _load_average()
        log(
            f"e2e round {round_no + 1}/{rounds}: {figures['jobs_per_s']} jobs/s,"
            f" p50 {figures['p50_s']}s, p99 {figures['p99_s']}s, {figures['api_writes_per_job']} writes/job,"
            f" {figures['fraction_of_limit']:.0%} of {figures['raw_status_patches_per_s']:.0f}/s;"
            f" load average {load_start} -> {figures['load_average_end']}"
        )
        kept.append(figures)
        # The ideal relay right after, on the machine as it is now (bench.ideal).
        best = asyncio.run(_e2e(servers, jobs, raw_patches, ideal=True))
        log(
            f"e2e ideal relay {round_no + 1}/{rounds}: {best['jobs_per_s']} jobs/s, p99 {best['p99_s']}s,"
            f" {best['fraction_of_limit']:.0%} of {best['raw_status_patches_per_s']:.0f}/s"
        )
        ideal_rounds.append(best)
    out = _medians(kept)
    shown = ("jobs_per_s", "p50_s", "p99_s", "api_writes_per_job", "fraction_of_limit")
    out["ideal"] = {k: v for k, v in _medians(ideal_rounds).items() if k in (*shown, "cpu_ms_per_job")}
    out["ideal"]["rounds"] = [{k: r[k] for k in (*shown, "raw_status_patches_per_s")} for r in ideal_rounds]
    keys = (
        "jobs_per_s",
        "p50_s",
        "p99_s",
        "api_writes_per_job",
        "raw_status_patches_per_s",
        "limit_jobs_per_s",
        "fraction_of_limit",
        "raw_creates_per_s",
        "limit_with_creates_jobs_per_s",
        "fraction_of_limit_with_creates",
        "legs",
        "refused_429",
        "operator_loop_errors",
        "api_server_mean_s",
        "load_average_start",
        "load_average_end",
    )
    out["rounds"] = [{k: r[k] for k in keys} for r in kept]
    return out


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def _memory(servers: Servers, steps: tuple[int, ...]) -> dict[str, Any]:
    server = servers.sandbox.apiserver
    operator, namespace = _operator(servers, "mem")
    api = client(admin(server), connections=CREATE_CONCURRENCY)
    tracker = Tracker()
    out: dict[str, Any] = {}
    peak = 0.0
    try:
        await _start(operator, api, server, namespace)
        await asyncio.sleep(5.0)
        out["idle_mib"] = round(_rss_mib(operator.pid), 1)
        log(f"memory: idle {out['idle_mib']} MiB")
        version = await list_version(api, namespace)
        watcher = asyncio.create_task(tracker.follow(server, namespace, version))
        have = 0
        for step in steps:
            names = [f"mem-{i:05d}" for i in range(have, step)]

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, _rss_mib(operator.pid))
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            await _create_and_wait(api, namespace, names, tracker, timeout=1200)
            sampler.cancel()
            have = step
            await asyncio.sleep(5.0)  # let the status writer and the reconciler settle
            out[f"rj_{step}_mib"] = round(_rss_mib(operator.pid), 1)
            log(f"memory: {step} RelayJobs {out[f'rj_{step}_mib']} MiB")
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)  # the tracker process is reaped
    finally:
        operator.stop()
        await api.close()
    out["peak_mib"] = round(peak, 1)
    return out


def run_memory(servers: Servers, steps: tuple[int, ...]) -> dict[str, Any]:
    return asyncio.run(_memory(servers, steps))
