"""The seed incident: a worker that opened a Redis connection per operation died with
`Cannot assign requested address (os error 99)` under 10 concurrent jobs. 1,000 jobs at
concurrency 50 must open no more Redis connections than the configured pool maximum."""

from __future__ import annotations

import logging

import pytest

from controller.adapters.queue import pool_stats
from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration

JOBS, CONCURRENCY, POOL_MAX = 1000, 50, 12


async def test_thousand_jobs_stay_within_the_pool(
    settings: Settings, cluster: RecordingCluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"concurrency": CONCURRENCY, "redis_pool_max": POOL_MAX})
    app = await App.assemble(settings, cluster, "incident")
    try:
        before = (await app.redis.info("stats"))["total_connections_received"]
        refs = [new_ref(f"job-{i}") for i in range(JOBS)]
        with caplog.at_level(logging.INFO):
            async with running(app):
                for ref in refs:
                    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))

                async def drained() -> bool:
                    count = await app.pool.fetchval(
                        "SELECT count(*) FROM jobs WHERE phase = $1", Phase.COMPLETED.value
                    )
                    return bool(count == JOBS)

                await eventually(drained, timeout=120, every=0.2)
                await app.status.wait_idle()
        after = (await app.redis.info("stats"))["total_connections_received"]
        _, peak_in_pool = pool_stats(app.redis)
    finally:
        await app.close()
    assert after - before <= POOL_MAX, f"opened {after - before} connections, pool max {POOL_MAX}"
    assert peak_in_pool <= POOL_MAX
    assert "Cannot assign requested address" not in caplog.text
    assert all(cluster.status[r.uid]["phase"] == "Completed" for r in refs)
