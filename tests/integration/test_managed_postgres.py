"""PostgreSQL as users run it: behind PgBouncer in transaction mode, and over verified TLS."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controller.adapters import ledger as ledger_mod
from controller.adapters.ledger import Ledger, NewJob
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec
from controller.runtime.app import App, StartupError
from controller.settings import Settings
from devtools.binaries import find_postgres_bindir
from devtools.pki import PKI, ensure_pki
from devtools.servers import TlsPostgresServer
from tests.integration.conftest import RecordingCluster, new_ref, succeeded

pytestmark = pytest.mark.integration

RAW = {"target": {"noop": {}}, "maxAttempts": 3}
PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return ensure_pki(tmp_path_factory.mktemp("pg-pki") / "pki")


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[TlsPostgresServer]:
    server = TlsPostgresServer(
        tmp_path_factory.mktemp("pg-tls"), find_postgres_bindir(), pki=pki, user="relay", password=PASSWORD
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            server.remove_data()


@pytest.fixture
async def pooled_database(postgres_server: Any, pgbouncer_server: Any) -> AsyncIterator[str]:
    """A fresh database, reached through PgBouncer."""
    name = f"b_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield pgbouncer_server.dsn_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _job_lifecycle(ledger: Ledger, index: int) -> Phase:
    spec = RelayJobSpec.model_validate(RAW)
    job = NewJob(new_ref(f"job-{index}"), spec, RAW, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None)
    row = (await ledger.admit(job)).row
    [started] = (await ledger.start_attempts([str(row.ref.uid)])).started
    [done] = await ledger.record_outcomes([succeeded(started)], {row.ref.uid: spec})
    return done.phase


async def test_ledger_runs_behind_pgbouncer_in_transaction_mode(pooled_database: str) -> None:
    """Start-up parameters, named prepared statements and a session-level migration lock each
    broke behind PgBouncer; 100 concurrent job lifecycles on 20 connections over 8 server
    sessions, after migrations raced from three pools, now all land."""
    pools = [await ledger_mod.connect(pooled_database, 1, 20, 10) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(ledger_mod.migrate(p) for p in pools))
        assert sorted(len(a) for a in applied) == [0, 0, len(ledger_mod.migration_files())]
        ledger = Ledger(pools[0], "w1")
        phases = await asyncio.gather(*(_job_lifecycle(ledger, i) for i in range(100)))
        assert phases == [Phase.COMPLETED] * 100
    finally:
        for pool in pools:
            await pool.close()


async def test_ledger_runs_over_tls_verified_against_the_ca(
    tls_postgres: TlsPostgresServer, pki: PKI
) -> None:
    dsn = tls_postgres.user_dsn(PASSWORD, f"?sslmode=verify-full&sslrootcert={pki.ca_cert}")
    pool = await ledger_mod.connect(dsn, 1, 4, 10)
    try:
        await ledger_mod.migrate(pool)
        assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert await _job_lifecycle(Ledger(pool, "w1"), 0) is Phase.COMPLETED
    finally:
        await pool.close()


async def _startup_error(redis_url: str, database_url: str) -> str:
    """What start-up says about `database_url`, and that it says so within seconds although
    it would wait a minute for a server that is merely not there yet."""
    settings = Settings(redis_url=redis_url, database_url=database_url, startup_timeout_seconds=60)
    began = time.monotonic()
    with pytest.raises(StartupError) as caught:
        app = await App.assemble(settings, RecordingCluster(), "w1")
        await app.close()
    assert time.monotonic() - began < 5
    message = str(caught.value)
    assert message.startswith("RELAY_DATABASE_URL: ") and PASSWORD not in message
    return message


async def test_verify_full_without_its_ca_file_is_a_startup_error(
    redis_server: Any, tls_postgres: TlsPostgresServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.crt"
    dsn = tls_postgres.user_dsn(PASSWORD, f"?sslmode=verify-full&sslrootcert={missing}")
    assert str(missing) in await _startup_error(redis_server.url, dsn)


async def test_a_server_certificate_from_another_ca_is_a_startup_error(
    redis_server: Any, tls_postgres: TlsPostgresServer, tmp_path: Path
) -> None:
    other = ensure_pki(tmp_path / "other-pki")
    dsn = tls_postgres.user_dsn(PASSWORD, f"?sslmode=verify-full&sslrootcert={other.ca_cert}")
    assert "certificate verify failed" in await _startup_error(redis_server.url, dsn)


async def test_a_wrong_password_is_a_startup_error(
    redis_server: Any, tls_postgres: TlsPostgresServer, pki: PKI
) -> None:
    dsn = tls_postgres.user_dsn("wrong", f"?sslmode=verify-full&sslrootcert={pki.ca_cert}")
    assert "refused the credentials" in await _startup_error(redis_server.url, dsn)


async def test_an_unknown_host_is_a_startup_error(redis_server: Any) -> None:
    dsn = "postgresql://relay@relayjob-no-such-host.invalid:5432/relay"
    assert "unknown PostgreSQL host" in await _startup_error(redis_server.url, dsn)
