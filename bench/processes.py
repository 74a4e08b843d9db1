"""CPU time of the servers a section runs, read from /proc with psutil (a bench extra: the report
and its tests must not need it)."""

from __future__ import annotations

import contextlib

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
