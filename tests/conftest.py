"""Session fixtures that start real servers, through the same code as `sandbox up`.

- `redis_server`: a private redis-server (`.url`, `.host`, `.port`, plus stop/start/pause/resume).
- `postgres_server`: a private initdb'd PostgreSQL; `.dsn` points at database `relay`.
- `pgbouncer_server`: PgBouncer in transaction mode in front of `postgres_server`; `.dsn_for(db)`
  reaches any of its databases through the pooler.
- `control_plane`: etcd + kube-apiserver with the RelayJob CRD and the Secret-reference admission
  policy installed; a `KubeTools` with `.kubeconfig`, `.server`, `.kubectl(*args)`,
  `.helm(*args)` (Helm 3; `tool="helm4"` for Helm 4), `.helm_path` and `.sandbox` (the servers,
  for fault injection). With `RELAY_E2E_USE_KUBECONFIG=1` it is the cluster `KUBECONFIG` names
  instead, and `.sandbox` is None.

A missing binary fails the tests that need it with the message saying what to install; nothing
is skipped, since a skipped real-server test would pass unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devtools.binaries import BinaryError
from devtools.sandbox import CONTROL_PLANE, DEFAULT_CRD, DEFAULT_SECRET_POLICY, KubeTools, Sandbox
from devtools.servers import PgBouncerServer, PostgresServer, RedisServer

T = TypeVar("T")


def _or_fail(action: Callable[[], T]) -> T:
    """Run action; a missing binary fails the test with the instruction, not a traceback."""
    try:
        return action()
    except BinaryError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


@contextlib.contextmanager
def running_sandbox(directory: Path, components: tuple[str, ...], **options: Any) -> Iterator[Sandbox]:
    """A sandbox of the given components, stopped (and its PostgreSQL data removed) afterwards;
    `options` go to `Sandbox` (crd, secret_policy, helm: off unless given).

    Logs stay in the directory, which pytest keeps for the last few sessions, for post-mortems.
    """
    sandbox = Sandbox(directory, components=components, **({"helm": False} | options))
    try:
        _or_fail(sandbox.up)
        yield sandbox
    finally:
        sandbox.down()
        if "postgres" in components:
            with contextlib.suppress(Exception):
                sandbox.postgres.remove_data()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_sandbox(tmp_path_factory.mktemp("redis"), ("redis",)) as sandbox:
        yield sandbox.redis


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_sandbox(tmp_path_factory.mktemp("postgres"), ("postgres",)) as sandbox:
        yield sandbox.postgres


@pytest.fixture(scope="session")
def pgbouncer_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[PgBouncerServer]:
    # Debian installs it in /usr/sbin, which an ordinary user's PATH may lack.
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        pytest.fail("pgbouncer not found: install it (`apt-get install pgbouncer`)", pytrace=False)
    server = PgBouncerServer(tmp_path_factory.mktemp("pgbouncer"), Path(found), postgres=postgres_server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTools]:
    if os.environ.get("RELAY_E2E_USE_KUBECONFIG") == "1":
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig:
            pytest.fail("RELAY_E2E_USE_KUBECONFIG=1 but KUBECONFIG is not set", pytrace=False)
        scratch = tmp_path_factory.mktemp("kube")
        client = _or_fail(lambda: KubeTools.for_existing_cluster(kubeconfig, scratch))
        client.install_crd(DEFAULT_CRD)
        client.install_secret_policy(DEFAULT_SECRET_POLICY)
        yield client
        return
    with running_sandbox(tmp_path_factory.mktemp("control-plane"), CONTROL_PLANE) as sandbox:
        yield sandbox.kube_tools()
