"""Redis as managed services run it: TLS (`rediss://`, the CA from a file) and an ACL user with a
password. The queue works over it; a wrong password, a missing CA file or an unknown host stop
start-up at once with an error naming RELAY_REDIS_URL."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from controller.adapters.queue import Placement, Queue, connect
from controller.runtime.app import App, StartupError
from controller.settings import Settings
from devtools.binaries import find_redis_server
from devtools.pki import ensure_pki
from devtools.redis_topologies import SecureRedisServer
from tests.integration.conftest import RecordingCluster

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-relay"
UNKNOWN_HOST = "no-such-host.invalid"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedisServer]:
    workdir = tmp_path_factory.mktemp("redis-tls")
    pki = ensure_pki(workdir / "pki")
    server = SecureRedisServer(workdir, find_redis_server(), pki=pki, user="relay", password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def tls_queue(tls_redis: SecureRedisServer, key_prefix: str) -> AsyncIterator[Queue]:
    client = connect(tls_redis.url, 4, 5)
    yield Queue(client, key_prefix)
    await client.aclose()


async def test_the_queue_works_over_tls_as_an_acl_user(tls_queue: Queue) -> None:
    now = int(time.time() * 1000)
    await tls_queue.place([Placement("a", 1, 0, "ns/default"), Placement("b", 2, 0, "ns/default")], now)
    assert (await tls_queue.claim(2, now, 10_000)).uids == ["a", "b"]
    await tls_queue.ack(done=["a", "b"])
    assert await tls_queue.members() == set()


async def _start_fails(url: str, database_url: str) -> str:
    settings = Settings(redis_url=url, database_url=database_url, startup_timeout_seconds=60, http_port=0)
    started = time.monotonic()
    with pytest.raises(StartupError) as failure:
        await App.assemble(settings, RecordingCluster(), "test")
    assert time.monotonic() - started < 5, "a lasting misconfiguration was waited out"
    message = str(failure.value)
    assert message.startswith("RELAY_REDIS_URL: ")
    assert PASSWORD not in message and "wrong-password" not in message
    return message


async def test_a_wrong_password_is_a_start_up_error_at_once(
    tls_redis: SecureRedisServer, database_url: str
) -> None:
    message = await _start_fails(tls_redis.url.replace(PASSWORD, "wrong-password"), database_url)
    assert "refused the credentials" in message


async def test_a_missing_ca_file_is_a_start_up_error_at_once(
    tls_redis: SecureRedisServer, database_url: str
) -> None:
    url = tls_redis.url.replace(str(tls_redis.pki.ca_cert), "/nonexistent/ca.crt")
    message = await _start_fails(url, database_url)
    assert "/nonexistent/ca.crt" in message


async def test_an_untrusted_server_certificate_is_a_start_up_error_at_once(
    tls_redis: SecureRedisServer, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = ensure_pki(tmp_path_factory.mktemp("other-ca") / "pki")
    url = tls_redis.url.replace(str(tls_redis.pki.ca_cert), str(other.ca_cert))
    assert "TLS with Redis failed" in await _start_fails(url, database_url)


async def test_an_unknown_host_is_a_start_up_error_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver answers as for a name that does not exist, without asking the machine's DNS
    # server: test traffic stays on loopback.
    resolve = socket.getaddrinfo

    def getaddrinfo(host: object, *args: Any, **kwargs: Any) -> Any:
        if host == UNKNOWN_HOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    message = await _start_fails(f"redis://{UNKNOWN_HOST}:6379/0", database_url)
    assert "unknown Redis host" in message
