"""Section 5: the operator's cost when a cluster holds many finished RelayJobs and a full ledger.

An operator first runs a burst of no-op jobs on an empty cluster (`burst_empty_jobs_per_s`); one of
the rows it recorded is the template of every finished job that follows. Then, step by step, with
the operator stopped: RelayJobs are created through the API (as users leave them, without TTL) and
given the `Completed` status and ledger row the operator would have written, and the ledger is
filled up to `ledger_rows` with jobs whose RelayJob was deleted and which wait for retention. At
each step an operator is started afresh and measured: start to ready (/readyz), start to settled
(its initial list of every RelayJob handled: CPU below SETTLED_CPU for a second), RSS once settled,
CPU, API requests and ledger rows read over a few idle maintenance intervals, and a fresh burst.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.e2e import CREATE_CONCURRENCY, Tracker, _operator, _start
from bench.env import Servers, log
from bench.kube import (
    CALL_TIMEOUT,
    Operator,
    admin,
    bounded,
    client,
    create_job,
    jobs_path,
    list_version,
    request,
    request_counts,
    request_key,
)
from bench.processes import cpu_seconds
from controller.adapters.kube import GROUP, PLURAL, KubeClient, KubeError
from controller.adapters.ledger import connect as ledger_connect
from devtools.servers import KubeAPIServer

# Idle maintenance is measured over this many reconcile intervals of this length.
INTERVAL_S = 5.0
INTERVALS = 3
# The operator has settled when it used less than this share of one core for a whole second.
SETTLED_CPU = 0.05
SETTLE_TIMEOUT_S = 600.0
# How long ago the finished jobs ran: users' jobs accumulate over days, not in the bench's minutes.
AGE = timedelta(days=1)
# Ledger rows of a namespace whose RelayJob the operator saw deleted.
GONE = "SELECT count(*) FROM jobs WHERE namespace = $1 AND deleted_at IS NOT NULL"
# RelayJobs written into etcd per transaction (etcd's --max-txn-ops is 128 by default).
ETCD_TXN_PUTS = 100
RAW_CREATES = 1000  # RelayJobs created where no operator watches, before each burst
# Bursts per step, the best kept (as the core section keeps its best of 2): on this 2-core machine
# the API server's own create rate varied from 495/s to 819/s between steps of one run.
BURSTS = 2
# The resources the operator reads and writes (the API server also serves itself: leases, ...).
COUNTED_RESOURCES = ("relayjobs", "relayqueues", "relayschedules", "events", "secrets", "kopfpeerings")


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _requests(server: KubeAPIServer) -> dict[str, float]:
    """apiserver_request_total by "VERB resource", for the resources the operator reads and writes."""
    out: dict[str, float] = {}
    for labels, value in request_counts(server):
        if labels.get("resource") in COUNTED_RESOURCES:
            key = request_key(labels)
            out[key] = out.get(key, 0.0) + value
    return out


async def _ledger_reads(dsn: str) -> dict[str, float]:
    """Statements (transactions) and rows the database served so far; PostgreSQL publishes them
    with a delay of up to a second, so a window's edges are read after a pause."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS statements, tup_returned + tup_fetched AS rows"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        # Which index (or a sequential scan) read them: where a cost that grows comes from.
        by_index = await conn.fetch(
            "SELECT indexrelname AS name, idx_tup_read AS read FROM pg_stat_user_indexes"
            " UNION ALL SELECT relname || ' (sequential)', coalesce(seq_tup_read, 0) FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    assert row is not None
    reads = {f"read {r['name']}": float(r["read"]) for r in by_index}
    return {"statements": float(row["statements"]), "rows": float(row["rows"]), **reads}


def _reads_by_index(before: dict[str, float], after: dict[str, float], per: float) -> dict[str, float]:
    """Rows read between two `_ledger_reads`, by index (or sequential scan), divided by `per`."""
    return {
        k.removeprefix("read "): (v - before.get(k, 0.0)) / per
        for k, v in sorted(after.items())
        if k.startswith("read ")
    }


async def _count(pool: asyncpg.Pool, query: str, *args: Any) -> int:
    """A count the bench itself reads, with its statistics published at once: PostgreSQL holds a
    backend's back for up to 10 s while it idles, and a count of the whole ledger then landed in
    the next step's maintenance window (366,444 rows "read per interval" at 10,000 RelayJobs)."""
    async with pool.acquire() as conn:
        count = int(await conn.fetchval(query, *args))
        await conn.execute("SELECT pg_stat_force_next_flush()")
    return count


def _listed(operator: Operator) -> float:
    """RelayJobs the operator has reconciled from its lists so far, by either path."""
    values = operator.metric_values()
    return sum(v for k, v in values.items() if k.startswith("relayjob_listed_relayjobs_total{"))


async def _settle(operator: Operator, began: float, relayjobs: int) -> tuple[float, float]:
    """Seconds from `began` (time.monotonic) until the operator reconciled every RelayJob of its
    start-up list (`relayjob_listed_relayjobs_total` reaches `relayjobs`: an operator waiting for a
    busy API server's list is idle too) and then used under SETTLED_CPU for a second. Also returns
    the highest RSS (MiB) seen meanwhile, once a second."""
    deadline = began + SETTLE_TIMEOUT_S
    peak = 0.0
    pid = operator.pid
    while time.monotonic() < deadline:
        before = _cpu_s(pid)
        await asyncio.sleep(1.0)
        peak = max(peak, _rss_mib(pid))
        idle = _cpu_s(pid) - before < SETTLED_CPU
        if idle and await asyncio.to_thread(_listed, operator) >= relayjobs:
            return time.monotonic() - began - 1.0, peak
    raise RuntimeError(f"the operator was still busy {SETTLE_TIMEOUT_S}s after its start")


def _etcd_key(namespace: str, name: str) -> str:
    return f"/registry/{GROUP}/{PLURAL}/{namespace}/{name}"


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


async def _stored(etcd: aiohttp.ClientSession, key: str) -> dict[str, Any]:
    """The object the API server stored under `key`, through etcd's JSON gateway."""
    async with etcd.post("/v3/kv/range", json={"key": _b64(key)}) as response:
        found = await response.json()
    value: dict[str, Any] = json.loads(base64.b64decode(found["kvs"][0]["value"]))
    return value


async def _finished_jobs(
    etcd: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    template: asyncpg.Record,
    stored: dict[str, Any],
    first: int,
    count: int,
) -> int:
    """`count` RelayJobs showing `Completed` (as users leave them), each with the ledger row the
    operator recorded for it: copies of the job `template` and of the RelayJob `stored` for it
    (status written by the operator, and recorded as written in the ledger: the template's own
    record of that may still be on its way), but for uid and name, a day older in the ledger.
    Returns the etcd revision of the last write.

    They are written into etcd as the API server stores them, in transactions of ETCD_TXN_PUTS,
    and reach the API server through its watch of etcd: creating them through the API (a create
    and a status write each) ran at 80-250 jobs/s on this machine, 7 to 20 minutes for 100,000."""
    namespace = stored["metadata"]["namespace"]
    uids = [uuid.uuid4() for _ in range(count)]
    names = [f"done-{i:06d}" for i in range(first, first + count)]
    began = time.monotonic()
    await pool.execute(
        "INSERT INTO jobs (uid, namespace, name, generation, spec, phase, nullifier, nullifier_state,"
        " run, attempts, retries, max_attempts, result, reason, message, version, status_version,"
        " created_at, queued_at, started_at, finished_at, updated_at, priority, queue)"
        " SELECT n.uid, t.namespace, n.name, t.generation, t.spec, t.phase, t.nullifier,"
        " t.nullifier_state, t.run, t.attempts, t.retries, t.max_attempts, t.result, t.reason, t.message,"
        " t.version, t.version, t.created_at - $4::interval, t.queued_at - $4::interval,"
        " t.started_at - $4::interval, t.finished_at - $4::interval, t.updated_at - $4::interval,"
        " t.priority, t.queue"
        " FROM unnest($1::uuid[], $2::text[]) AS n(uid, name), (SELECT * FROM jobs WHERE uid = $3) AS t",
        uids,
        names,
        template["uid"],
        AGE,
    )

    def put(uid: uuid.UUID, name: str) -> dict[str, Any]:
        body = {**stored, "metadata": {**stored["metadata"], "uid": str(uid), "name": name}}
        return {"requestPut": {"key": _b64(_etcd_key(namespace, name)), "value": _b64(json.dumps(body))}}

    async def txn(lo: int) -> int:
        ops = [put(uids[i], names[i]) for i in range(lo, min(lo + ETCD_TXN_PUTS, count))]
        async with etcd.post("/v3/kv/txn", json={"success": ops}) as response:
            if response.status != 200:
                raise RuntimeError(f"etcd refused a transaction: {response.status} {await response.text()}")
            return int((await response.json())["header"]["revision"])

    revisions = await bounded(8, (txn(lo) for lo in range(0, count, ETCD_TXN_PUTS)))
    log(f"scale: {count} finished RelayJobs written in {time.monotonic() - began:.1f}s")
    return int(max(revisions))


async def _caught_up(api: KubeClient, namespace: str, revision: int) -> None:
    """Until the API server's watch cache holds etcd `revision`: the writes behind its back reach
    it through its watch of etcd, and until then a list at a later resource version fails (504
    "Too large resource version"), which kopf retries for under a minute before it stops."""
    began = time.monotonic()
    params = {"limit": "1", "resourceVersion": str(revision), "resourceVersionMatch": "NotOlderThan"}
    while time.monotonic() - began < SETTLE_TIMEOUT_S:
        try:
            await api.call("GET", jobs_path(namespace), params=params, timeout=CALL_TIMEOUT)
        except KubeError as error:
            if error.status not in (429, 504):
                raise
            await asyncio.sleep(1.0)
        else:
            log(f"scale: the API server caught up with etcd in {time.monotonic() - began:.1f}s")
            return
    raise RuntimeError(f"the API server did not reach etcd revision {revision} in {SETTLE_TIMEOUT_S}s")


async def _fill_ledger(pool: asyncpg.Pool, namespace: str, template: asyncpg.Record, rows: int) -> None:
    """Ledger rows up to `rows`: finished jobs whose RelayJob was deleted a day ago, which retention
    (7 days by default) keeps, each with its one attempt."""
    have = await _count(pool, "SELECT count(*) FROM jobs")
    missing = rows - have
    if missing <= 0:
        return
    began = time.monotonic()
    await pool.execute(
        "WITH gone AS (INSERT INTO jobs (uid, namespace, name, generation, spec, phase, run, attempts,"
        " retries, max_attempts, result, reason, message, version, status_version, created_at, queued_at,"
        " started_at, finished_at, updated_at, deleted_at, priority, queue)"
        " SELECT gen_random_uuid(), $1, 'gone-' || ($2::bigint + i), t.generation, t.spec, t.phase, t.run,"
        " t.attempts, t.retries, t.max_attempts, t.result, t.reason, t.message, t.version, t.status_version,"
        " now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',"
        " now() - interval '1 day', now() - interval '1 day', now() - interval '1 day', t.priority, t.queue"
        " FROM generate_series(1, $3::bigint) AS i, (SELECT * FROM jobs WHERE uid = $4) AS t"
        " RETURNING uid, started_at, finished_at, result)"
        " INSERT INTO attempts (job_uid, run, attempt, worker, outcome, result, started_at, finished_at)"
        " SELECT uid, 1, 1, 'bench', 'succeeded', result, started_at, finished_at FROM gone",
        namespace,
        have,
        missing,
        template["uid"],
    )
    await pool.execute("VACUUM ANALYZE jobs")
    await pool.execute("VACUUM ANALYZE attempts")
    log(f"scale: ledger filled to {rows} rows in {time.monotonic() - began:.1f}s")


async def _raw_creates(api: KubeClient, namespace: str, jobs: int) -> float:
    """Creates/s of `jobs` RelayJobs in `namespace`, which no operator watches: what the API
    server alone gives, to tell its slowing down with the RelayJobs it holds from ours."""
    await request(api, "POST", "/api/v1/namespaces", json={"metadata": {"name": namespace}})
    began = time.perf_counter()
    await bounded(CREATE_CONCURRENCY, (create_job(api, namespace, f"raw-{i:05d}") for i in range(jobs)))
    return jobs / (time.perf_counter() - began)


async def _burst(
    api: KubeClient, servers: Servers, operator: Operator, namespace: str, prefix: str, jobs: int
) -> dict[str, Any]:
    """Jobs/s of `jobs` fresh RelayJobs, from the first create to the last `Completed` seen, and
    what each job cost: CPU milliseconds of each server and ledger rows read. When the burst
    slows as the cluster holds more RelayJobs, these say whose work per job grew."""
    server = servers.sandbox.apiserver
    dsn = operator.env["RELAY_DATABASE_URL"]
    pids = {
        "operator": operator.pid,
        "kube-apiserver": server.pid,
        "etcd": servers.sandbox.etcd.pid,
        "postgres": servers.postgres.pid,
    }
    cpu0, db0 = cpu_seconds(pids), await _ledger_reads(dsn)
    tracker = Tracker()
    version = await list_version(api, namespace)
    watcher = asyncio.create_task(tracker.follow(server, namespace, version))
    names = [f"{prefix}-{i:05d}" for i in range(jobs)]
    try:
        began = time.time()
        await bounded(CREATE_CONCURRENCY, (create_job(api, namespace, n) for n in names))
        # Every one of these names: the watch also shows the status writes of older RelayJobs.
        async with asyncio.timeout(600):
            while missing := [n for n in names if n not in tracker.completed]:
                tracker.all_done.clear()
                tracker.expected = len(tracker.completed) + len(missing)
                await tracker.all_done.wait()
        jobs_per_s = jobs / (max(tracker.completed[n] for n in names) - began)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await asyncio.sleep(1.0)  # PostgreSQL publishes its statistics up to a second late
    cpu1, db1 = cpu_seconds(pids), await _ledger_reads(dsn)
    return {
        "jobs_per_s": round(jobs_per_s, 1),
        "cpu_ms_per_job": {k: round(1000 * (cpu1[k] - cpu0[k]) / jobs, 2) for k in pids},
        "ledger_rows_read_per_job": round((db1["rows"] - db0["rows"]) / jobs, 1),
        "ledger_reads_by_index_per_job": {
            k: round(v, 1) for k, v in _reads_by_index(db0, db1, jobs).items() if v >= 0.1
        },
    }


async def _best_burst(
    api: KubeClient, servers: Servers, operator: Operator, namespace: str, prefix: str, jobs: int
) -> dict[str, Any]:
    """The fastest of BURSTS bursts (`_burst`), with every burst's jobs/s as `runs`; the first
    burst's RelayJobs are named `prefix`-00000, ..."""
    rounds = [
        await _burst(api, servers, operator, namespace, prefix if i == 0 else f"{prefix}{i + 1}", jobs)
        for i in range(BURSTS)
    ]
    best = max(rounds, key=lambda r: r["jobs_per_s"])
    return {**best, "runs": [r["jobs_per_s"] for r in rounds]}


async def _measure_step(
    operator: Operator, api: KubeClient, servers: Servers, namespace: str, relayjobs: int, burst: int
) -> dict[str, Any]:
    server = servers.sandbox.apiserver
    dsn = operator.env["RELAY_DATABASE_URL"]
    at_start = _requests(server)
    began = time.monotonic()
    await asyncio.to_thread(operator.start, 300.0)
    ready_s = time.monotonic() - began
    settled_s, peak = await _settle(operator, began, relayjobs)
    rss = _rss_mib(operator.pid)
    log(f"scale: {relayjobs} RelayJobs: ready {ready_s:.1f}s, settled {settled_s:.1f}s, RSS {rss:.0f} MiB")
    cpu0, api0, db0 = _cpu_s(operator.pid), _requests(server), await _ledger_reads(dsn)
    start_requests = {k: v - at_start.get(k, 0.0) for k, v in api0.items() if v != at_start.get(k, 0.0)}
    await asyncio.sleep(INTERVAL_S * INTERVALS)
    cpu1, api1, db1 = _cpu_s(operator.pid), _requests(server), await _ledger_reads(dsn)
    requests = {k: (api1.get(k, 0.0) - api0.get(k, 0.0)) / INTERVALS for k in api1}
    requests = {k: round(v, 1) for k, v in sorted(requests.items()) if v}
    figures: dict[str, Any] = {
        "relayjobs": relayjobs,
        "ready_s": round(ready_s, 2),
        "settled_s": round(settled_s, 2),
        "rss_mib": round(rss, 1),
        "start_peak_rss_mib": round(peak, 1),
        "start_cpu_s": round(cpu0, 1),
        # What the start cost the API server: kopf's lists, and any status the operator rewrote.
        "start_api_requests": {k: round(v) for k, v in sorted(start_requests.items())},
        "maintenance_cpu_s": round((cpu1 - cpu0) / INTERVALS, 3),
        "maintenance_api_requests": round(sum(requests.values()), 1),
        "maintenance_api_by_request": requests,
        # One is the bench's own reading of the statistics.
        "maintenance_ledger_statements": round((db1["statements"] - db0["statements"] - 1) / INTERVALS, 1),
        "maintenance_ledger_rows_read": round((db1["rows"] - db0["rows"]) / INTERVALS),
        "maintenance_ledger_reads_by_index": {
            k: round(v) for k, v in _reads_by_index(db0, db1, INTERVALS).items() if v
        },
    }
    log(
        f"scale: per {INTERVAL_S:.0f}s interval: {figures['maintenance_cpu_s']} CPU s,"
        f" {figures['maintenance_api_requests']} API requests,"
        f" {figures['maintenance_ledger_rows_read']} ledger rows read"
    )
    raw = await _raw_creates(api, f"{namespace}-raw{relayjobs}", RAW_CREATES)
    figures["raw_creates_per_s"] = round(raw, 1)
    cost = await _best_burst(api, servers, operator, namespace, f"b{relayjobs}", burst)
    figures["burst_jobs_per_s"] = cost.pop("jobs_per_s")
    figures["burst_cost"] = cost
    figures["rss_after_burst_mib"] = round(_rss_mib(operator.pid), 1)
    log(f"scale: burst of {burst} at {relayjobs} RelayJobs: {figures['burst_jobs_per_s']} jobs/s")
    log(f"scale: its cost per job: {cost}")
    operator.stop()
    return figures


async def _scale(servers: Servers, steps: tuple[int, ...], ledger_rows: int, burst: int) -> dict[str, Any]:
    server = servers.sandbox.apiserver
    operator, namespace = _operator(servers, "scale")
    operator.env["RELAY_RECONCILE_INTERVAL_SECONDS"] = str(INTERVAL_S)
    api = client(admin(server), connections=CREATE_CONCURRENCY)
    pool: asyncpg.Pool | None = None
    etcd = aiohttp.ClientSession(base_url=servers.sandbox.etcd.url)
    try:
        await _start(operator, api, server, namespace)
        raw_empty = await _raw_creates(api, f"{namespace}-raw0", RAW_CREATES)
        empty_cost = await _best_burst(api, servers, operator, namespace, "empty", burst)
        empty = empty_cost.pop("jobs_per_s")
        log(f"scale: burst of {burst} on an empty cluster: {empty:.1f} jobs/s; raw creates {raw_empty:.0f}/s")
        log(f"scale: its cost per job: {empty_cost}")
        pool = await ledger_connect(operator.env["RELAY_DATABASE_URL"], 1, 16, timeout=10)
        template = await pool.fetchrow(
            "SELECT * FROM jobs WHERE namespace = $1 AND name = $2", namespace, "empty-00000"
        )
        assert template is not None
        stored = await _stored(etcd, _etcd_key(namespace, "empty-00000"))
        if (stored.get("status") or {}).get("phase") != "Completed":
            raise RuntimeError(f"the template RelayJob is not Completed: {stored.get('status')}")
        # The burst's RelayJobs go, so that the first step holds just its own; their rows stay in
        # the ledger, waiting for retention, once the operator has seen them deleted.
        await request(api, "DELETE", jobs_path(namespace))
        for _ in range(600):
            if await _count(pool, GONE, namespace) >= BURSTS * burst:
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("the operator did not see the burst's RelayJobs deleted within 5 minutes")
        operator.stop()
        have = 0
        by_relayjobs = []
        for step in steps:
            revision = await _finished_jobs(etcd, pool, template, stored, have, step - have)
            have = step
            await _fill_ledger(pool, namespace, template, max(ledger_rows, step))
            await _caught_up(api, namespace, revision)
            figures = await _measure_step(operator, api, servers, namespace, step, burst)
            have += BURSTS * burst  # the step's bursts left their finished RelayJobs too
            figures["ledger_rows"] = await _count(pool, "SELECT count(*) FROM jobs")
            by_relayjobs.append(figures)
    finally:
        operator.stop()
        if pool is not None:
            await pool.close()
        await api.close()
        await etcd.close()
    last = by_relayjobs[-1]
    keys = (
        "relayjobs", "ledger_rows", "rss_mib", "start_peak_rss_mib", "ready_s", "settled_s",
        "maintenance_cpu_s", "maintenance_api_requests", "maintenance_ledger_rows_read", "burst_jobs_per_s",
    )  # fmt: skip
    return {
        **{k: last[k] for k in keys},
        "burst_empty_jobs_per_s": empty,
        "burst_empty_cost": empty_cost,
        "raw_creates_per_s": last["raw_creates_per_s"],
        "raw_creates_empty_per_s": round(raw_empty, 1),
        "burst_jobs": burst,
        "burst_rounds": BURSTS,
        "interval_s": INTERVAL_S,
        "by_relayjobs": by_relayjobs,
    }


def run(servers: Servers, steps: tuple[int, ...], ledger_rows: int, burst: int) -> dict[str, Any]:
    return asyncio.run(_scale(servers, steps, ledger_rows, burst))
