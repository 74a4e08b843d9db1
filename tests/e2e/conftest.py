"""e2e fixtures: the operator as a real process against the sandbox control plane, Redis and
PostgreSQL; each test module gets a database, a Redis key prefix and a namespace of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from devtools.operator_process import OperatorProcess
from tests.support.databases import create_database
from tests.support.target import Target, ThreadedTarget


@pytest.fixture(scope="module")
def operator_env(control_plane: Any, redis_server: Any, postgres_server: Any) -> dict[str, str]:
    """Settings for operators of this module: a fresh database and key prefix, one namespace."""
    suffix = uuid.uuid4().hex[:8]
    database = f"e2e_{suffix}"
    asyncio.run(create_database(postgres_server.dsn, database))
    namespace = f"e2e-{suffix}"
    control_plane.kubectl("create", "namespace", namespace)
    return {
        "KUBECONFIG": str(control_plane.kubeconfig),
        "RELAY_REDIS_URL": redis_server.url,
        "RELAY_DATABASE_URL": urlunsplit(urlsplit(postgres_server.dsn)._replace(path=f"/{database}")),
        "RELAY_KEY_PREFIX": f"e2e{suffix}",
        "RELAY_NAMESPACES": namespace,
        "RELAY_PEERING_NAME": f"relay-{suffix}",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_STATUS_FLUSH_SECONDS": "0.1",
        "RELAY_LEASE_SECONDS": "5",
        "RELAY_RECONCILE_INTERVAL_SECONDS": "5",
        "RELAY_STANDALONE": "true",
        # Modules end with SIGTERM: a long attempt still running then must not hold teardown.
        "RELAY_SHUTDOWN_GRACE_SECONDS": "5",
    }


@pytest.fixture(scope="module")
def namespace(operator_env: dict[str, str]) -> str:
    return operator_env["RELAY_NAMESPACES"]


@pytest.fixture(scope="module")
def operator(
    operator_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    process = OperatorProcess(operator_env, log).start()
    yield process
    code = process.stop()
    assert code == 0, f"operator exited {code} on SIGTERM:\n{process.logs()[-3000:]}"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A counting HTTP target on loopback, served from a thread, for the module's jobs."""
    with ThreadedTarget() as served:
        yield served


@pytest.fixture
def start_operator(operator_env: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Start operators (killed after the test) watching `namespace`, with extra settings each."""
    started: list[OperatorProcess] = []

    def start(name: str = "op", **extra: str) -> OperatorProcess:
        env = {**operator_env, "RELAY_NAMESPACES": namespace, **extra}
        process = OperatorProcess(env, tmp_path / f"{name}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.e2e import test_faults

    if test_faults.RESULTS:
        terminalreporter.section("fault suite")
        terminalreporter.write_line(test_faults.fault_table())
