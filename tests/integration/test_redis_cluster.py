"""The queue and the operator against a Redis Cluster of three primaries: every key of the queue
shares one hash slot (the prefix is a hash tag), so its scripts and transactions run unchanged.

The queue's own tests and the admission-to-completion pipeline test run here again, on the
cluster, through these module's `queue` and `settings` fixtures."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from controller.adapters.queue import Queue, connect
from controller.settings import Settings
from devtools.binaries import find_redis_server
from devtools.redis_topologies import ClusterRedisNode, create_cluster
from tests.integration import test_pipeline, test_queue, test_queue_flow_control
from tests.integration.conftest import fast_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("redis-cluster")
    nodes = [ClusterRedisNode(workdir / f"node-{i}", find_redis_server()) for i in range(3)]
    try:
        for node in nodes:
            node.launch()
        for node in nodes:
            node.wait_ready()
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            pytest.fail("redis-cli not found: install it (`apt-get install redis-tools`)", pytrace=False)
        yield create_cluster(nodes, Path(redis_cli))
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def queue(cluster_url: str, key_prefix: str) -> AsyncIterator[Queue]:
    client = connect(cluster_url, 8, 5)
    assert isinstance(client, RedisCluster)
    yield Queue(client, key_prefix)
    await client.aclose()


@pytest.fixture
def settings(cluster_url: str, database_url: str, key_prefix: str) -> Settings:
    return fast_settings(cluster_url, database_url, key_prefix)


async def test_every_queue_key_is_in_one_hash_slot(queue: Queue) -> None:
    assert isinstance(queue.client, RedisCluster)
    qid = "team/a"
    keys = (
        *queue.keys,
        queue.dead,
        queue.limits,
        queue.tat,
        queue.qids,
        queue.ready_key(qid),
        queue.running_key(qid),
    )
    assert len({queue.client.keyslot(key) for key in keys}) == 1


test_priority_then_fifo = test_queue.test_priority_then_fifo
test_delayed_jobs_wait_for_their_time = test_queue.test_delayed_jobs_wait_for_their_time
test_expired_lease_returns_to_ready = test_queue.test_expired_lease_returns_to_ready
test_renewed_lease_does_not_expire = test_queue.test_renewed_lease_does_not_expire
test_rebuild_never_duplicates = test_queue.test_rebuild_never_duplicates
test_concurrent_claims_never_share_a_job = test_queue.test_concurrent_claims_never_share_a_job
test_ack_and_remove_leave_nothing_behind = test_queue.test_ack_and_remove_leave_nothing_behind
test_a_nacked_lease_returns_to_ready_in_its_place = (
    test_queue.test_a_nacked_lease_returns_to_ready_in_its_place
)
# The scripts build each queue's keys themselves, under the same hash tag: on a cluster too.
test_queues_share_claims_by_weight = test_queue_flow_control.test_queues_share_claims_by_weight
test_a_burst_starts_at_once_then_the_rate_applies = (
    test_queue_flow_control.test_a_burst_starts_at_once_then_the_rate_applies
)
test_ack_nack_and_remove_give_slots_back = test_queue_flow_control.test_ack_nack_and_remove_give_slots_back
test_depths_and_dispatch_rate_per_queue = test_queue_flow_control.test_depths_and_dispatch_rate_per_queue
test_admit_claim_complete = test_pipeline.test_admit_claim_complete
