"""/metrics as Prometheus scrapes it: the operator's series, the process's and the build's."""

from __future__ import annotations

import platform

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from controller.runtime import probes
from controller.runtime.app import App
from devtools.servers import LOOPBACK, free_port

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
