"""The operator on Redis behind Sentinel (one primary, one replica, three sentinels): it finds the
primary through the sentinels, keeps one bounded pool, and when the primary dies mid-run and a
sentinel promotes the replica, every job admitted before, during and after completes exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.exceptions

from controller.adapters.queue import connect, pool_stats
from controller.model.jobs import JobRef
from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from devtools.binaries import find_redis_server
from devtools.redis_topologies import ReplicaRedisServer, SentinelServer
from devtools.servers import RedisServer
from tests.integration.conftest import RecordingCluster, eventually, fast_settings, new_ref, running

pytestmark = pytest.mark.integration

SERVICE = "relay"


@dataclass
class Topology:
    primary: RedisServer
    replica: ReplicaRedisServer
    sentinels: list[SentinelServer]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"


def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    executable = find_redis_server()
    primary = RedisServer(tmp_path / "primary", executable)
    primary.start()
    replica = ReplicaRedisServer(tmp_path / "replica", executable, primary=primary)
    sentinels = [
        SentinelServer(tmp_path / f"sentinel-{i}", executable, primary=primary, service=SERVICE)
        for i in range(3)
    ]
    try:
        replica.start()
        for sentinel in sentinels:
            sentinel.start()
        _wait(replica.synced, "the replica did not sync with the primary")
        yield Topology(primary, replica, sentinels)
    finally:
        for server in (*sentinels, replica, primary):
            server.stop()


@pytest.fixture
def settings(topology: Topology, database_url: str, key_prefix: str) -> Settings:
    return fast_settings(topology.url, database_url, key_prefix, redis_pool_max=6)


async def _admit(app: App, cluster: RecordingCluster, refs: list[JobRef], delay: int = 0) -> None:
    """Admit each job as kopf would deliver it: again after an error, until it is taken."""
    for ref in refs:
        spec = {"target": {"noop": {}}, "nullifier": f"spend-{ref.name}", "delaySeconds": delay}
        body = cluster.body(ref, spec)
        while True:
            try:
                await app.admissions.observe(body)
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                await asyncio.sleep(0.1)


async def test_a_failover_mid_run_loses_and_repeats_nothing(
    app: App, cluster: RecordingCluster, topology: Topology, settings: Settings
) -> None:
    before = [new_ref(f"before-{i}") for i in range(100)]
    # Still waiting in Redis (`delayed`) when the primary dies: the queue as the replica has it.
    waiting = [new_ref(f"waiting-{i}") for i in range(100)]
    during = [new_ref(f"during-{i}") for i in range(50)]
    after = [new_ref(f"after-{i}") for i in range(100)]
    old_primary = (topology.primary.host, topology.primary.port)
    async with running(app):
        await _admit(app, cluster, before)
        await _admit(app, cluster, waiting, delay=2)
        topology.primary.kill()
        await _admit(app, cluster, during)

        def promoted() -> bool:
            found = topology.sentinels[0].primary_address()
            return found is not None and found != old_primary

        await asyncio.to_thread(_wait, promoted, "no sentinel promoted the replica")
        await _admit(app, cluster, after)
        uids = [ref.uid for ref in (*before, *waiting, *during, *after)]

        async def all_completed() -> bool:
            rows = await app.ledger.get_many(uids)
            return all(u in rows and rows[u].phase == Phase.COMPLETED for u in uids)

        await eventually(all_completed, timeout=90)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await app.status.wait_idle()
    for uid in uids:
        outcomes = [a["outcome"] for a in await app.ledger.attempts_of(uid)]
        assert outcomes.count("succeeded") == 1, (uid, outcomes)
    assert all(cluster.status[u]["phase"] == "Completed" for u in uids)
    assert await app.queue.members() == set()
    assert pool_stats(app.redis)[1] <= settings.redis_pool_max


async def test_the_primarys_pool_waits_for_a_free_connection_instead_of_opening_more(
    topology: Topology,
) -> None:
    client = connect(topology.url, 2, 5)
    try:
        # Each PING holds a connection across an await, so 50 at once contend for the two.
        assert await asyncio.gather(*(client.ping() for _ in range(50))) == [True] * 50
        assert pool_stats(client)[1] == 2
    finally:
        await client.aclose()
