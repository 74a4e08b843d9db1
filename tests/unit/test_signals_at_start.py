"""Who a SIGTERM reaches while kopf is still starting: the operator's drain, never kopf's own
stop (which cancels every task after a fixed 5 s). A rollout that stopped a just-started pod hit
that window, and the process exited 1."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from controller.cli import _on_signals, run_kopf


@pytest.fixture
async def default_signals() -> AsyncIterator[None]:
    yield
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


@pytest.mark.usefixtures("default_signals")
async def test_a_sigterm_before_kopf_is_ready_starts_our_drain_and_leaves_kopf_running() -> None:
    registry = kopf.OperatorRegistry()
    starting, release = asyncio.Event(), asyncio.Event()

    @kopf.on.startup(registry=registry)
    async def _startup(**_: Any) -> None:
        starting.set()
        await release.wait()  # kopf is spawned but not ready: its watches wait for this

    shutdown, stop = asyncio.Event(), asyncio.Event()
    _on_signals(shutdown.set)  # as the operator does before it starts kopf
    kopf_task = asyncio.create_task(
        run_kopf(shutdown.set, registry=registry, standalone=True, clusterwide=True, stop_flag=stop)
    )
    await asyncio.wait_for(starting.wait(), 10)
    await asyncio.sleep(0.2)  # kopf's handlers went in as it spawned its tasks, before this
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(shutdown.wait(), 5)
    await asyncio.sleep(0.5)
    assert not kopf_task.done(), "kopf stopped on the signal itself"
    stop.set()
    release.set()
    await asyncio.wait_for(kopf_task, 20)
