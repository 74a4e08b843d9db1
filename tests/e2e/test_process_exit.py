"""When the operator's background work stops on an error nothing anticipated, the process says
why and exits non-zero (so the kubelet restarts it) instead of running on without a worker or
hanging in kopf's shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from devtools.operator_process import OperatorProcess
from devtools.servers import free_port

pytestmark = pytest.mark.e2e

# The operator as `python -m controller run` starts it, with its background work made to fail
# once kopf is watching and the worker is busy, as an unanticipated bug in a loop would.
FAILING = """
import asyncio, sys
from controller import cli
from controller.runtime.app import App

started = App.run

async def run(self):
    work = asyncio.create_task(started(self))
    await asyncio.sleep(2)
    work.cancel()
    raise RuntimeError("a bug in a background loop")

App.run = run
sys.exit(cli.main(["run"]))
"""


def test_background_failure_ends_the_process_with_a_reason(
    operator_env: dict[str, str], control_plane: Any, namespace: str
) -> None:
    docs = "\n---\n".join(
        f"""{{"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob",
            "metadata": {{"name": "exit-{i}", "namespace": "{namespace}"}},
            "spec": {{"target": {{"noop": {{}}}}}}}}"""
        for i in range(50)
    )
    control_plane.kubectl("apply", "-f", "-", input=docs)
    env = {**os.environ, **operator_env, "RELAY_HTTP_PORT": str(free_port())}
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", FAILING], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "background work stopped" in output and "a bug in a background loop" in output, output
    assert time.monotonic() - began < 30, output


def test_sigterm_stops_promptly_and_cleanly(operator_env: dict[str, str], tmp_path: Any) -> None:
    """SIGTERM drains and closes with code 0, well inside the kubelet's 30 s grace period. Usually
    in 0.2 s; kopf may still wait its fixed 5 s for tasks it counts as its own, so the bound is
    10 s, which a plain SIGTERM once exceeded in CI (and then exited 1)."""
    op = OperatorProcess(operator_env, tmp_path / "op.log").start()
    began = time.monotonic()
    code = op.stop()
    assert code == 0, op.logs()[-3000:]
    assert time.monotonic() - began < 10, op.logs()[-3000:]


def test_sigterm_to_dev_stops_the_operator_it_started(
    operator_env: dict[str, str], control_plane: Any
) -> None:
    """`relayjob-operator dev` (the README's `make run`) stopped its operator on Ctrl-C only. On
    SIGTERM (`timeout`, a service manager, an IDE's stop button) Python ended it at once, and the
    operator it had started ran on, holding its HTTP port: the next `make run` failed with
    'RELAY_HTTP_PORT: cannot listen on port 8080'."""
    port = free_port()
    env = {**os.environ, **operator_env, "RELAY_HTTP_PORT": str(port)}
    dev = subprocess.Popen([sys.executable, "-m", "controller", "dev"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            assert dev.poll() is None and time.monotonic() < deadline, "the operator never came up"
            time.sleep(0.2)
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(30) == 0
        deadline = time.monotonic() + 15
        while _answers(port):
            assert time.monotonic() < deadline, "the operator outlived `dev`"
            time.sleep(0.2)
    finally:
        dev.kill()
        control_plane.kubectl("delete", "relayjob", "hello", "--ignore-not-found")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False
