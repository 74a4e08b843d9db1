"""/metrics as Prometheus scrapes it: the operator's series, the process's and the build's."""

from __future__ import annotations

import asyncio
import platform

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.kube import KubeError
from controller.adapters.metrics import BACKENDS
from controller.model.phases import Phase
from controller.runtime import probes
from controller.runtime.app import App
from devtools.servers import LOOPBACK, free_port
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration


async def test_metrics_carry_process_runtime_and_build_series(app: App) -> None:
    runner = web.AppRunner(probes.build(app, lambda: None), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{LOOPBACK}:{port}/metrics") as answer,
        ):
            assert answer.status == 200
            text = await answer.text()
    finally:
        await runner.cleanup()
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_objects_collected_total",
        "python_info",
        "relayjob_jobs_total",
    ):
        assert name in samples, name
    build = samples["relayjob_build_info"]
    assert build.value == 1
    assert build.labels["python"] == platform.python_version() and build.labels["version"]


async def test_oldest_ready_age_and_queue_wait_measure_time_from_ready_to_started(
    app: App, cluster: RecordingCluster
) -> None:
    waiting = [new_ref(f"waiting-{i}") for i in range(3)]
    later = new_ref("later")
    for ref in waiting:
        await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    # Not ready for an hour: not part of the age, and never started here.
    await app.admissions.observe(cluster.body(later, {"target": {"noop": {}}, "delaySeconds": 3600}))
    await asyncio.sleep(1.2)
    await app.maintenance.oldest()
    assert 1.2 <= app.metrics.oldest_ready_age._value.get() < 60
    registry = app.metrics.registry
    assert registry.get_sample_value("relayjob_queue_wait_seconds_count") == 0

    async with running(app):

        async def completed() -> bool:
            rows = await app.ledger.get_many([r.uid for r in waiting])
            return all(row.phase is Phase.COMPLETED for row in rows.values())

        await eventually(completed)
    assert registry.get_sample_value("relayjob_queue_wait_seconds_count") == 3
    assert registry.get_sample_value("relayjob_queue_wait_seconds_bucket", {"le": "1.0"}) == 0
    await app.maintenance.oldest()
    assert app.metrics.oldest_ready_age._value.get() == 0


async def test_backend_up_follows_the_readiness_checks(app: App, cluster: RecordingCluster) -> None:
    registry = app.metrics.registry

    def up() -> dict[str, float | None]:
        return {b: registry.get_sample_value("relayjob_backend_up", {"backend": b}) for b in BACKENDS}

    assert await app.ping() == {"redis": "ok", "postgres": "ok", "kubernetes": "ok"}
    assert up() == {"redis": 1, "postgres": 1, "kubernetes": 1}

    async def unreachable() -> None:
        raise KubeError(503, "the API server is shutting down")

    cluster.ping = unreachable  # type: ignore[method-assign]
    assert (await app.ping())["kubernetes"] == "error: KubeError"
    assert up() == {"redis": 1, "postgres": 1, "kubernetes": 0}
