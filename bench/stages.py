"""Where the worker's CPU goes between our core figure and the floor: one profiled drain, by stage.

`bench.relay_core` drains the core section's jobs once more under py-spy (sampling, so the drain
runs at close to its normal speed), and each sample of the worker's process is put in the first
stage whose function is on its stack. py-spy leaves out samples where the thread sleeps (waiting
in epoll), so the shares are shares of the CPU the process spent, and times the process's CPU per
job (`cpu_ms_per_job`) gives each stage's milliseconds per job.

Samples from before the drain (imports, connecting, seeding the jobs) and after it (the drain
check) are not counted. The stages, as `STAGES` names them:

- claim: the claim loop, leasing jobs in Redis with the Lua claim;
- open: opening attempts in the ledger (start.sql) and turning its rows into JobRows;
- execute: running each attempt in its task, under its slot and timeout (the no-op executor);
- settle: recording outcomes in the ledger (record.sql), acking them in Redis, announcing them;
- status: building each status document, patching it (to the stand-in API server), and the
  ledger's version check and record of what was written;
- events, callbacks, maintenance: the rest of the operator's loops;
- event loop and I/O: uvloop's own work (socket reads and writes, timers, task switches) and the
  client libraries' protocol parsing called from it, outside any stage's coroutine.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.env import PYTHON, WORK, Servers, flush_redis, log, run_json

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("open", ("Claiming._open",)),
    ("claim", ("Claiming.run",)),
    ("execute", ("Attempts._attempt",)),
    ("settle", ("Settling.run",)),
    ("status", ("StatusWriter.",)),
    ("events", ("EventPoster.",)),
    ("callbacks", ("Callbacks.",)),
    ("maintenance", ("Maintenance.", "Queues.", "App._backend_gauges", "Leases.heartbeat")),
)
LOOP = "event loop and I/O"
# Samples outside the drain: start-up, seeding, and the check after it.
_OUTSIDE = ("seed ", "App.assemble ", "check_drained ", "App.close ", "Settings.__init__ ")
_FRAME = re.compile(r"^(?P<name>[^ ]+) \((?P<file>.*?)(?::\d+)?\)$")


def _stage(frames: list[str]) -> str | None:
    """The stage a sampled stack belongs to; None when it is outside the drain."""
    names = []
    for frame in frames:
        match = _FRAME.match(frame)
        names.append(match["name"] if match else frame)
    joined = " ".join(names) + " "
    # The script's own `<module>` frame is the root of every stack; another one below it is an import.
    if any(marker in joined for marker in _OUTSIDE) or names.count("<module>") > 1:
        return None
    for stage, markers in STAGES:
        if any(name.startswith(marker) for marker in markers for name in names):
            return stage
    return LOOP


def shares(raw: Path) -> dict[str, float]:
    """Each stage's share of the drain's samples in py-spy's raw output (`stack count` lines)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stage = _stage(stack.split(";"))
        if stage is not None:
            counts[stage] += int(count)
    total = sum(counts.values())
    if not total:
        raise RuntimeError(f"py-spy recorded no samples of the drain in {raw}")
    return {stage: n / total for stage, n in counts.most_common()}


def profile(servers: Servers, jobs: int, concurrency: int) -> dict[str, Any]:
    """One drain of `jobs` no-op jobs at `concurrency` under py-spy; each stage's share of the
    worker's CPU and its ms per job, beside the drain's jobs/s (slowed by the sampling a little)."""
    spy = Path(PYTHON).with_name("py-spy")
    if not spy.exists():
        raise RuntimeError(f"{spy} is missing: `make bench-setup` installs py-spy (the bench extra)")
    flush_redis(servers.redis_url)
    dsn = servers.new_database("stages")
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=WORK, prefix="stages-", suffix=".txt", delete=False) as out:
        raw = Path(out.name)
    command = [PYTHON, "-m", "bench.relay_core", servers.redis_url, dsn, str(jobs), str(concurrency)]
    try:
        figures = run_json(
            [str(spy), "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--", *command],
            timeout=900,
        )
        split = shares(raw)
    finally:
        servers.drop_database(dsn)
        raw.unlink(missing_ok=True)
    cpu_ms = float(figures["cpu_ms_per_job"])
    log(f"stage profile: {figures['jobs_per_s']:.0f} jobs/s under py-spy, {cpu_ms:.3f} ms CPU per job")
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s_profiled": round(float(figures["jobs_per_s"]), 1),
        "cpu_ms_per_job": round(cpu_ms, 4),
        "stages": {
            stage: {"share": round(share, 4), "ms_per_job": round(share * cpu_ms, 4)}
            for stage, share in split.items()
        },
    }
