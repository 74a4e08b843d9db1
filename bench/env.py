"""The servers every benchmark runs against, and small helpers shared by the sections.

One sandbox under `bench/.work/sandbox` provides redis-server (shared by us and the peers, flushed
between runs) and, for the Kubernetes sections, etcd + kube-apiserver. The ledger runs on a
PostgreSQL of the bench's own with the durability settings a production server has (`fsync=on`,
`synchronous_commit=on`, `full_page_writes=on`): the sandbox's PostgreSQL turns those off to make
tests fast, and a queue benchmark on a ledger that never reaches the disk would flatter us.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from devtools.binaries import find_postgres_bindir, find_redis_server
from devtools.sandbox import Sandbox
from devtools.servers import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# Servers, logs and partial figures; RELAY_BENCH_WORKDIR gives a run a directory of its own, so two
# runs at once do not purge each other's servers. The peers' venv stays where `make bench-setup` put it.
WORK = Path(os.environ.get("RELAY_BENCH_WORKDIR") or BENCH / ".work")
RESULTS = BENCH / "results"
PYTHON = sys.executable
# arq and SAQ, from a venv of their own (`make bench-setup`): see the Makefile.
PEER_PYTHON = str(BENCH / ".work" / "peers-venv" / "bin" / "python")
_RELAXED = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# Settings of every operator and worker the bench runs, unless the environment sets them: the
# bench's ledger is PostgreSQL itself, reached directly, which the README's "Managed PostgreSQL"
# configures so. Measured in e2e rounds: PostgreSQL's CPU per job 0.73-0.74 ms with, 1.05-1.29 ms
# without (each statement parsed and planned afresh).
OPERATOR_SETTINGS = {"RELAY_DB_PREPARED_STATEMENTS": "true"}
# redis-server's `appendfsync` settings BullMQ is measured with besides no persistence at all.
AOF_MODES = ("always", "everysec")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class DurablePostgres(PostgresServer):
    """The sandbox's PostgreSQL without the settings that trade durability for test speed."""

    def command(self) -> list[str]:
        argv = super().command()
        out: list[str] = []
        for i, arg in enumerate(argv):
            if arg in _RELAXED or (arg == "-c" and i + 1 < len(argv) and argv[i + 1] in _RELAXED):
                continue
            out.append(arg)
        return [*out, "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"]


class AofRedis(RedisServer):
    """redis-server writing every change to its append-only file, as a durable BullMQ deployment
    runs it: `appendfsync always` syncs the file before each reply, `everysec` once a second. Its
    directory is under bench/.work, on the disk the ledger's PostgreSQL syncs to, so both pay for
    the same disk."""

    def __init__(self, workdir: Path, fsync: str) -> None:
        super().__init__(workdir, find_redis_server())
        self.fsync = fsync

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("--appendonly") + 1] = "yes"
        return [*argv, "--appendfsync", self.fsync]


@dataclass
class Servers:
    """The bench's servers; `up` starts what the chosen sections need: `kube` the API server and
    etcd, `aof` one AofRedis per AOF_MODES beside the sandbox's redis-server (which keeps nothing)."""

    kube: bool
    aof: bool = False
    sandbox: Sandbox = field(init=False)
    postgres: DurablePostgres = field(init=False)
    aof_redis: dict[str, AofRedis] = field(init=False, default_factory=dict)

    def up(self) -> None:
        """Start every server on empty stores. Data kept from earlier runs skews the figures: with
        the RelayJobs of past runs left in etcd (1.4 GB after a few dozen), the API server spent
        the first minute of each e2e round re-listing them at 1.5 cores, refusing watches meanwhile,
        and then served the burst from a heap many times the size this run needs."""
        components = ("etcd", "kube-apiserver", "redis") if self.kube else ("redis",)
        self.sandbox = Sandbox(WORK / "sandbox", components=components, helm=False, log=log)
        self.sandbox.down(purge=True)  # servers left over by an interrupted run go with their data
        self.sandbox.up()
        pg_dir = WORK / "ledger"
        pg_dir.mkdir(parents=True, exist_ok=True)
        self.postgres = DurablePostgres(pg_dir, find_postgres_bindir())
        self.postgres.stop()
        self.postgres.remove_data()
        self.postgres.launch()
        self.postgres.wait_ready()
        log(f"ledger PostgreSQL (durable) at {self.postgres.dsn}")
        for mode in AOF_MODES if self.aof else ():
            server = AofRedis(Path(tempfile.mkdtemp(prefix=f"redis-aof-{mode}-", dir=WORK)), mode)
            self.aof_redis[mode] = server
            server.start()
            log(f"redis-server with appendfsync {mode} at {server.url}")

    def down(self) -> None:
        for server in self.aof_redis.values():
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
        self.aof_redis.clear()
        self.postgres.stop()
        self.postgres.remove_data()
        self.sandbox.down(purge=True)

    @property
    def redis_url(self) -> str:
        return self.sandbox.redis.url

    def aof_url(self, mode: str) -> str:
        return self.aof_redis[mode].url

    def new_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.postgres.psql(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(self.postgres.dsn)._replace(path=f"/{name}"))

    def drop_database(self, dsn: str) -> None:
        """Drop a finished run's database and write out what it dirtied: otherwise autovacuum and
        the checkpointer work through its tens of thousands of dead rows while later runs measure."""
        name = urlsplit(dsn).path.lstrip("/")
        self.postgres.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.postgres.psql("CHECKPOINT")


def redis_info(url: str, section: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        client = aioredis.Redis.from_url(url)
        try:
            return dict(await client.info(section))
        finally:
            await client.aclose()

    return asyncio.run(go())


def flush_redis(url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    asyncio.run(go())


def run_json(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a measuring subprocess; its last stdout line is a JSON object with its figures."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} {' '.join(argv[1:3])} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{argv} printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat; (0, 0) where there is none.
    Steal is time the hypervisor ran other guests while ours wanted the CPU: on a shared host it
    slows every system measured alike."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_share(began: tuple[int, int], ended: tuple[int, int]) -> float | None:
    """The share of CPU time stolen between two `cpu_ticks` readings; None when unknown."""
    total = ended[1] - began[1]
    return round((ended[0] - began[0]) / total, 3) if total > 0 else None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )
