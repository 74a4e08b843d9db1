"""CPU time of the servers a section runs, read from /proc with psutil (a bench extra: the report
and its tests must not need it)."""

from __future__ import annotations

import contextlib
import json
import os
import time

import psutil


def cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process, which must be running, and its children:
    those alive and those it has reaped (PostgreSQL's backends are children of its postmaster)."""
    out = {}
    for name, pid in pids.items():
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        out[name] = float(total)
    return out


# The servers a drain shares the machine with, as {"name": pid} JSON: `bench.core` sets it for our
# drains, which then say what each server spent on them.
SERVER_PIDS_ENV = "RELAY_BENCH_SERVER_PIDS"


class DrainCpu:
    """CPU milliseconds per job of this process and of the servers named in SERVER_PIDS_ENV,
    between `start` and `stop`: what one job costs the machine, split by process. PostgreSQL's
    figure includes its background work meanwhile (WAL writer, checkpointer, autovacuum): a
    durable ledger pays for that too."""

    def __init__(self) -> None:
        self._servers: dict[str, int | None] = json.loads(os.environ.get(SERVER_PIDS_ENV) or "{}")
        self._began: dict[str, float] = {}

    def start(self) -> None:
        self._began = self._now()

    def stop(self, jobs: int) -> dict[str, float]:
        """{"client": ms, <server name>: ms, ...} per job since `start`."""
        now = self._now()
        return {name: round((now[name] - self._began[name]) * 1000 / jobs, 4) for name in now}

    def _now(self) -> dict[str, float]:
        return {"client": time.process_time(), **cpu_seconds(self._servers)}
