"""One operator process: its pools and clients, created at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redis.exceptions

from controller.adapters import ledger as ledger_mod
from controller.adapters import queue as queue_mod
from controller.adapters.callback_ledger import CallbackLedger
from controller.adapters.executors.http import HttpConfig
from controller.adapters.executors.registry import load_executors
from controller.adapters.kube import Credentials, KubeClient, KubeError
from controller.adapters.metrics import Metrics
from controller.model.jobs import ClusterApi, Executor
from controller.runtime.admission import Admissions
from controller.runtime.callbacks import Callbacks
from controller.runtime.events import EventPoster
from controller.runtime.maintenance import Maintenance
from controller.runtime.queues import Queues
from controller.runtime.retry import Throttle, throttled
from controller.runtime.schedules import Schedules
from controller.runtime.secret_policy import SecretPolicy, announce, inspect
from controller.runtime.status import StatusWriter
from controller.runtime.worker import Worker
from controller.settings import Settings, redis_endpoint

log = logging.getLogger("relayjob.app")


class StartupError(Exception):
    """Start-up cannot go on; the message names the setting to fix."""


T = TypeVar("T")
KUBE_SPARE_CONNECTIONS = 16
BACKEND_CHECK_SECONDS = 5.0
# Worth waiting for: the server is not (yet) there. Everything else is a misconfiguration.
_WAIT_FOR = (
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


async def _patiently(what: str, setting: str, timeout: float, connect: Callable[[], Awaitable[T]]) -> T:
    """Connect, retrying while the server is merely not there yet (refused, timed out) for up to
    `timeout` seconds. Errors that waiting cannot fix (credentials, unknown database) surface at
    once; every failure ends in a StartupError naming the setting to check."""
    deadline = time.monotonic() + timeout
    throttle = Throttle(0.5, 5.0)
    while True:
        try:
            return await connect()
        except _WAIT_FOR as error:
            if time.monotonic() + throttle.next_seconds > deadline:
                raise StartupError(f"{setting}: cannot reach {what} ({error})") from None
            pause = throttle.failed()
            log.warning(
                "%s: %s does not answer yet (%s); retrying in %.1fs",
                setting,
                what,
                error,
                pause,
                extra={"setting": setting},
            )
            await throttle.pause()


def _lasting(error: BaseException) -> str | None:
    """What makes a failed Redis connection one that waiting cannot fix, or None. redis-py reports
    every failure to connect as a ConnectionError; the OSError that caused it tells them apart."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
            return f"unknown Redis host ({error})"
        if isinstance(cause, FileNotFoundError):
            return f"a file named in the URL does not exist ({cause.filename or error})"
        # A connection closed mid-handshake may be a proxy whose backend is not up yet.
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError | ssl.SSLSyscallError):
            return f"TLS with Redis failed ({cause})"
        cause = cause.__cause__ or cause.__context__
    return None


def _check_redis_files(url: str) -> None:
    """Checked before connecting: redis-py's error for a missing file names neither it nor the option."""
    options = redis_endpoint(url).options
    for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = options.get(option)
        if path and not os.path.isfile(path):
            raise StartupError(f"RELAY_REDIS_URL: {option}={path} is not a file (is its Secret mounted?)")


async def _open_redis(settings: Settings) -> queue_mod.RedisClient:
    _check_redis_files(settings.redis_url.get_secret_value())
    client = queue_mod.connect(
        settings.redis_url.get_secret_value(),
        settings.redis_pool_max,
        settings.redis_pool_timeout_seconds,
    )

    async def ping() -> None:
        try:
            await client.ping()
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as error:
            # Both are ConnectionErrors, which _patiently would wait out until the timeout.
            raise StartupError(f"RELAY_REDIS_URL: Redis refused the credentials ({error})") from None
        except redis.exceptions.ConnectionError as error:
            lasting = _lasting(error)
            if lasting is None:
                raise
            raise StartupError(f"RELAY_REDIS_URL: {lasting}") from None

    try:
        await _patiently("Redis", "RELAY_REDIS_URL", settings.startup_timeout_seconds, ping)
    except redis.exceptions.RedisError as error:
        await client.aclose()
        raise StartupError(f"RELAY_REDIS_URL: Redis refused the connection ({error})") from None
    except StartupError:
        await client.aclose()
        raise
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    except redis.exceptions.ResponseError:
        policy = None  # CONFIG is disabled on some managed Redis services
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %r, not 'noeviction': under memory pressure Redis will "
            "silently drop queued jobs (reconciliation re-queues them from the ledger, late). "
            "Set maxmemory-policy noeviction on the server behind RELAY_REDIS_URL.",
            policy,
            extra={"setting": "RELAY_REDIS_URL", "maxmemory_policy": policy},
        )
    return client


async def _open_postgres(settings: Settings) -> asyncpg.Pool:
    # asyncpg reads a named CA file as it connects, and its FileNotFoundError would pass for a
    # server that is not there yet (a missing socket file): a file no wait will bring is named now.
    query = parse_qs(urlsplit(settings.database_url.get_secret_value()).query)
    ca_file = query.get("sslrootcert", [os.environ.get("PGSSLROOTCERT", "")])[-1]
    if ca_file and not os.access(ca_file, os.R_OK):
        raise StartupError(f"RELAY_DATABASE_URL: the CA file sslrootcert={ca_file} cannot be read")

    async def pool() -> asyncpg.Pool:
        try:
            return await ledger_mod.connect(
                settings.database_url.get_secret_value(),
                settings.db_pool_min,
                settings.db_pool_max,
                settings.db_pool_timeout_seconds,
                prepared_statements=settings.db_prepared_statements,
            )
        except socket.gaierror as error:
            # Both are OSErrors, which _patiently waits out; only a resolver that does not answer
            # yet is worth waiting for, not a name it says does not exist or a certificate.
            if error.errno == socket.EAI_AGAIN:
                raise
            raise StartupError(f"RELAY_DATABASE_URL: unknown PostgreSQL host ({error})") from None
        except ssl.SSLError as error:
            raise StartupError(f"RELAY_DATABASE_URL: TLS with PostgreSQL failed ({error})") from None

    try:
        opened = await _patiently("PostgreSQL", "RELAY_DATABASE_URL", settings.startup_timeout_seconds, pool)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as error:
        raise StartupError(f"RELAY_DATABASE_URL: PostgreSQL refused the credentials ({error})") from None
    except asyncpg.ClientConfigurationError as error:
        # Raised before any connection is tried: sslmode=verify-full with no CA file, a bad option.
        raise StartupError(f"RELAY_DATABASE_URL: {error}") from None
    except asyncpg.PostgresError as error:
        raise StartupError(f"RELAY_DATABASE_URL: {error}") from None
    applied = await ledger_mod.migrate(opened)
    if applied:
        log.info("ledger migrations applied: %s", ", ".join(applied))
    return opened


@dataclass(kw_only=True)
class App:
    settings: Settings
    redis: queue_mod.RedisClient
    pool: asyncpg.Pool
    kube: ClusterApi
    metrics: Metrics
    executors: dict[str, Executor]
    ledger: ledger_mod.Ledger
    queue: queue_mod.Queue
    status: StatusWriter
    events: EventPoster
    worker: Worker
    admissions: Admissions
    queues: Queues
    maintenance: Maintenance
    callbacks: Callbacks
    identity: str
    # What start-up found of the Secret-reference admission policy; None when not looked for.
    secret_policy: SecretPolicy | None = None
    # RelaySchedules need the real API client (`start`); a process assembled without one has none.
    schedules: Schedules | None = None

    @classmethod
    async def start(cls, settings: Settings, login: Callable[[], Credentials]) -> App:
        """`login` reads the process's Kubernetes credentials; it is called again after a 401."""
        identity = f"{socket.gethostname()}-{os.getpid()}"
        kube = KubeClient(
            login(),
            "relayjob-operator",
            identity,
            settings.secret_cache_seconds,
            # Status patches may all be in flight while Events, Secret reads and deletes go on.
            max_connections=settings.status_concurrency + KUBE_SPARE_CONNECTIONS,
            refresh=login,
        )
        # Before any pool opens: when the policy is required and absent, start-up ends here.
        policy = await inspect(kube, settings.secret_policy_name)
        refusal = announce(policy, required=settings.require_secret_policy)
        if refusal is not None:
            await kube.close()
            raise StartupError(refusal)
        app = await cls.assemble(settings, kube, identity)
        app.secret_policy = policy
        app.schedules = Schedules(kube)
        app.metrics.secret_policy_installed.set(1 if policy.installed else 0)
        return app

    @classmethod
    async def assemble(cls, settings: Settings, kube: ClusterApi, identity: str) -> App:
        """Open the pools and wire every part to them and to `kube`."""
        redis_client = await _open_redis(settings)
        try:
            pool = await _open_postgres(settings)
        except BaseException:
            await redis_client.aclose()
            raise
        metrics = Metrics()
        executors = load_executors(kube, HttpConfig.from_settings(settings))
        ledger = ledger_mod.Ledger(pool, identity)
        queue = queue_mod.Queue(redis_client, settings.key_prefix)
        status = StatusWriter(
            ledger=ledger,
            kube=kube,
            metrics=metrics,
            flush_seconds=settings.status_flush_seconds,
            concurrency=settings.status_concurrency,
            quiet_seconds=settings.status_quiet_seconds,
        )
        events = EventPoster(kube, metrics, settings.events_per_second)
        callbacks = Callbacks(
            kube=kube,
            ledger=CallbackLedger(pool),
            events=events,
            metrics=metrics,
            namespaces=settings.namespaces,
        )
        worker = Worker(
            settings=settings,
            queue=queue,
            ledger=ledger,
            executors=executors,
            status=status,
            events=events,
            metrics=metrics,
            callbacks=callbacks,
        )
        queues = Queues(
            kube=kube,
            queue=queue,
            ledger=ledger,
            status=status,
            worker=worker,
            events=events,
            metrics=metrics,
            namespaces=settings.namespaces,
            default_ttl_seconds=settings.default_ttl_seconds_after_finished,
        )
        admissions = Admissions(
            ledger=ledger,
            queue=queue,
            worker=worker,
            status=status,
            events=events,
            metrics=metrics,
            queues=queues,
            payload_limit=settings.payload_limit_bytes,
            default_ttl_seconds=settings.default_ttl_seconds_after_finished,
        )
        maintenance = Maintenance(
            ledger=ledger,
            queue=queue,
            kube=kube,
            metrics=metrics,
            status=status,
            namespaces=settings.namespaces,
            lease_seconds=settings.lease_seconds,
            interval=settings.reconcile_interval_seconds,
            retention_seconds=settings.ledger_retention_days * 86400,
            forget=admissions.forget,
            seen=admissions.seen,
            queues=queues,
            queue_status_seconds=settings.queue_status_seconds,
            callbacks=callbacks,
        )
        return cls(
            settings=settings,
            redis=redis_client,
            pool=pool,
            kube=kube,
            metrics=metrics,
            executors=executors,
            ledger=ledger,
            queue=queue,
            status=status,
            events=events,
            worker=worker,
            admissions=admissions,
            queues=queues,
            maintenance=maintenance,
            callbacks=callbacks,
            identity=identity,
        )

    async def run(self) -> None:
        """The background work of the process; returns only by cancellation, which comes after
        `drain` on a graceful shutdown."""
        await asyncio.gather(
            self.status.run(),
            self.worker.run(),
            self.callbacks.run(),
            self.maintenance.run(),
            self._pool_gauges(),
            self._backend_gauges(),
            *([self.schedules.run()] if self.schedules else []),
        )

    async def _pool_gauges(self) -> None:
        while True:
            in_use, opened = queue_mod.pool_stats(self.redis)
            self.metrics.pool_in_use.labels("redis").set(in_use)
            self.metrics.pool_size.labels("redis").set(opened)
            self.metrics.pool_in_use.labels("postgres").set(self.pool.get_size() - self.pool.get_idle_size())
            self.metrics.pool_size.labels("postgres").set(self.pool.get_size())
            await asyncio.sleep(2)

    async def _backend_gauges(self) -> None:
        # /readyz refreshes them too, but only when something probes it.
        throttle = Throttle(BACKEND_CHECK_SECONDS, BACKEND_CHECK_SECONDS)
        while True:
            async with throttled(throttle, self.metrics, "backends", errors=(Exception,), logger=log):
                await self.ping()
            await asyncio.sleep(BACKEND_CHECK_SECONDS)

    async def ping(self, timeout: float = 0.8) -> dict[str, str]:
        """Readiness of each dependency, for /readyz and `relayjob_backend_up`: checked at once and
        each bounded, so the answer comes within the kubelet's default one-second probe timeout."""

        async def check(name: str, probe: Callable[[], Awaitable[object]]) -> tuple[str, str]:
            try:
                async with asyncio.timeout(timeout):
                    await probe()
            except TimeoutError:
                return name, "error: no answer"
            except (redis.exceptions.RedisError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    OSError, KubeError) as error:  # fmt: skip
                return name, f"error: {type(error).__name__}"
            return name, "ok"

        results = await asyncio.gather(
            check("redis", self.redis.ping),
            check("postgres", lambda: self.pool.fetchval("SELECT 1")),
            check("kubernetes", self.kube.ping),
        )
        for name, state in results:
            self.metrics.backend_up.labels(name).set(1 if state == "ok" else 0)
        return dict(results)

    async def drain(self, grace_ends: float, gives_up: float) -> None:
        """Graceful shutdown of the work `run` does, which goes on meanwhile: the worker claims
        nothing more and finishes and records its attempts (`Worker.drain`), then the status writer
        writes what they changed, all by `gives_up` (time.monotonic()) at the latest."""
        await self.worker.drain(grace_ends, gives_up)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, gives_up - time.monotonic())):
                await self.status.wait_idle()

    async def close(self) -> None:
        """Close every client and pool. Attempts `drain` did not see through are stopped unrecorded:
        their leases lapse and the jobs run again, as after a crash."""
        await self.worker.abandon()
        for executor in self.executors.values():
            await executor.close()
        await self.events.drain()
        await self.kube.close()
        await self.pool.close()
        await self.redis.aclose()
