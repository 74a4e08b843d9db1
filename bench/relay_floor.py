"""The floor under our core-queue figure: the hot path's statements with nothing else around them.

    python -m bench.relay_floor REDIS_URL DATABASE_URL JOBS [LANES] [BATCH]

The same jobs are seeded as for `bench.relay_core`, then drained by LANES loops that each send,
for BATCH jobs at a time, exactly what the worker and status writer send for them: the Lua claim,
the ledger statement that opens attempts, the one that records outcomes, the Redis settle, and
the status-version record. Nothing runs per job but building the statements' arrays: no rows, no
executor, no status documents, no logs or metrics.

So this is what PostgreSQL and Redis on this machine allow a durable ledger with our statements,
if the operator's own per-job work cost nothing. Beside the operator's figure it splits the gap
to a peer in two: what the storage costs, and what our Python costs.

Prints one JSON line: {"peer": "floor", "jobs", "seconds", "jobs_per_s", "cpu_ms_per_job_by_process",
"lanes", "batch"}: CPU ms per job of this process ("client") and of the servers `bench.core` names
(`bench.processes.DrainCpu`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.processes import DrainCpu
from bench.relay_core import AcceptingCluster, check_drained, run_as_operator, seed
from controller.adapters.ledger import SQL, OutcomeRecord, record_arguments, start_arguments
from controller.model.jobs import FencingToken
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.runtime.app import App
from controller.settings import Settings

LANES = 4
BATCH = 128


async def main(redis_url: str, database_url: str, jobs: int, lanes: int, batch: int) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, database_url=database_url, key_prefix="benchfloor", http_port=0)
    cluster = AcceptingCluster()
    app = await App.assemble(settings, cluster, "bench-floor")
    lease_ms = int(settings.lease_seconds * 1000)
    recorded = 0

    async def lane() -> None:
        nonlocal recorded
        while True:
            uids = (await app.queue.claim(batch, int(time.time() * 1000), lease_ms)).uids
            if not uids:
                return
            opened = await app.pool.fetch(SQL["start"], *start_arguments(uids, "floor"))
            done = [
                OutcomeRecord(
                    uid=r["uid"],
                    fence=FencingToken(r["run"], r["attempts"]),
                    phase=Phase.COMPLETED,
                    reason=Reason.SUCCEEDED,
                    message="noop target",
                    outcome=AttemptOutcome.SUCCEEDED,
                )
                for r in opened
            ]
            settled = await app.pool.fetch(SQL["record"], *record_arguments(done))
            await app.queue.ack(done=uids)
            await app.ledger.statuses_written({r["uid"]: r["version"] for r in settled})
            recorded += len(settled)

    try:
        await seed(app, cluster, jobs)
        cpu = DrainCpu()
        cpu.start()
        began = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(lanes)))
        seconds = time.perf_counter() - began
        cpu_ms = cpu.stop(jobs)
        await check_drained(app, jobs)
    finally:
        await app.close()
    if recorded != jobs:
        raise RuntimeError(f"floor drain recorded {recorded} outcomes for {jobs} jobs")
    return {
        "peer": "floor",
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "cpu_ms_per_job_by_process": cpu_ms,
        "lanes": lanes,
        "batch": batch,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    out = run_as_operator(
        main(
            args[0],
            args[1],
            int(args[2]),
            int(args[3]) if len(args) > 3 else LANES,
            int(args[4]) if len(args) > 4 else BATCH,
        )
    )
    print(json.dumps(out), flush=True)
