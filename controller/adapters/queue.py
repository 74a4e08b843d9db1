"""The Redis side of the queue: key names, the Lua scripts, and the one pooled client.

Keys, named `{<prefix>}:<name>` (the prefix is a hash tag, so every key lives in one Redis Cluster
hash slot and the multi-key scripts and transactions below work on a cluster too):
  ready    ZSET uid -> ready score (priority, then admission order; see core.scoring)
  delayed  ZSET uid -> epoch ms when the job becomes ready (notBefore, delay, retry backoff)
  leased   ZSET uid -> epoch ms when the lease expires unless the worker renews it
  score    HASH uid -> ready score, so a delayed or expired job re-enters `ready` in its place
  dead     ZSET uid -> epoch ms it was dead-lettered (the dead-letter set)

A uid is in at most one of ready/delayed/leased; every script keeps that true atomically. Nothing
finished stays in Redis: completion removes the uid and its score.

Releases before the hash tag named the keys `<prefix>:<name>`. Nothing reads those any more: after
an upgrade the maintenance loop's rebuild re-queues every unfinished job from the ledger under the
new names, and the old keys can be deleted (README, "Operating it").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from controller.settings import RedisEndpoint, redis_endpoint

RedisClient = Redis | RedisCluster

PROMOTE_LIMIT = 1000

# Promote due delayed jobs, pop up to N ready ones and lease them, in one atomic step: two replicas
# can never claim the same uid, and a claimed uid is never outside `leased`.
_CLAIM = """
local ready, delayed, leased, score = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, lease_ms, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, PROMOTE_LIMIT)
for _, uid in ipairs(due) do
  local s = redis.call('HGET', score, uid)
  redis.call('ZREM', delayed, uid)
  if s then redis.call('ZADD', ready, s, uid) end
end
local popped = redis.call('ZPOPMIN', ready, n)
local out = {}
for i = 1, #popped, 2 do
  local uid = popped[i]
  redis.call('ZADD', leased, now + lease_ms, uid)
  out[#out + 1] = uid
end
return out
""".replace("PROMOTE_LIMIT", str(PROMOTE_LIMIT))

# Put jobs where the ledger says they belong. mode 'force' (admission, re-drive, a new priority)
# moves a uid that is not leased, and gives a leased one its new score for when it is next queued;
# mode 'missing' (rebuild after Redis loss) only adds a uid found nowhere, so a rebuild never
# duplicates a queued or leased job.
_PLACE = """
local ready, delayed, leased, score, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, mode = tonumber(ARGV[1]), ARGV[2]
local placed = 0
for i = 3, #ARGV, 3 do
  local uid, s, at = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local leased_now = redis.call('ZSCORE', leased, uid)
  local present = leased_now or redis.call('ZSCORE', ready, uid) or redis.call('ZSCORE', delayed, uid)
  if leased_now and mode == 'force' then
    redis.call('HSET', score, uid, s)
  elseif not leased_now and (mode == 'force' or not present) then
    redis.call('HSET', score, uid, s)
    redis.call('ZREM', dead, uid)
    if at > now then
      redis.call('ZREM', ready, uid)
      redis.call('ZADD', delayed, at, uid)
    else
      redis.call('ZREM', delayed, uid)
      redis.call('ZADD', ready, s, uid)
    end
    placed = placed + 1
  end
end
return placed
"""

# Expired leases go back to `ready` in their original place; the next claim counts a new attempt.
_REAP = """
local ready, leased, score = KEYS[1], KEYS[2], KEYS[3]
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired = redis.call('ZRANGE', leased, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
for _, uid in ipairs(expired) do
  redis.call('ZREM', leased, uid)
  local s = redis.call('HGET', score, uid)
  if s then redis.call('ZADD', ready, s, uid) end
end
return expired
"""

# Nack: hand claimed-but-unstarted jobs back at once (the ledger refused them for a passing reason,
# or shutdown began before they started), rather than letting their leases run out.
_NACK = """
local ready, leased, score = KEYS[1], KEYS[2], KEYS[3]
for _, uid in ipairs(ARGV) do
  if redis.call('ZREM', leased, uid) == 1 then
    local s = redis.call('HGET', score, uid)
    if s then redis.call('ZADD', ready, s, uid) end
  end
end
return #ARGV
"""


@dataclass(frozen=True)
class Placement:
    uid: str
    score: int
    ready_at_ms: int


@dataclass(frozen=True)
class Depth:
    ready: int
    delayed: int
    leased: int
    dead: int


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The primary that Sentinel names, reached through a pool that waits for a free connection like
    `connect`'s own rather than raising when all `max_connections` are in use."""


def connect(url: str, max_connections: int, timeout: float) -> RedisClient:
    """The process's one Redis client. A BlockingConnectionPool waits (up to `timeout`) for a free
    connection instead of opening another, so connections to Redis never exceed `max_connections`;
    through Sentinel the same holds for the current primary. A cluster client keeps at most
    `max_connections` per node, and a command that finds all of a node's in use fails at once
    (redis-py's cluster client cannot wait for one)."""
    common: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }
    endpoint = redis_endpoint(url)
    if endpoint.topology == "single":
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **common
        )
        return aioredis.Redis(connection_pool=pool)
    node: dict[str, object] = {**common, **endpoint.options, **_credentials(endpoint)}
    if endpoint.tls:
        node["ssl"] = True
    if endpoint.topology == "cluster":
        nodes = [ClusterNode(host, port) for host, port in endpoint.hosts]
        return RedisCluster(startup_nodes=nodes, max_connections=max_connections, **node)  # type: ignore[arg-type]
    # Sentinels are asked without the data nodes' credentials, over TLS when the URL says so.
    sentinel_kwargs = {k: v for k, v in node.items() if k not in ("username", "password")}
    sentinel = Sentinel(list(endpoint.hosts), sentinel_kwargs=sentinel_kwargs, **node)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(
        endpoint.service,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout,
        db=endpoint.db,
    )
    return client


def _credentials(endpoint: RedisEndpoint) -> dict[str, str]:
    found = {"username": endpoint.username, "password": endpoint.password}
    return {key: value for key, value in found.items() if value is not None}


def pool_stats(client: RedisClient) -> tuple[int, int]:
    """(connections in use, connections open) of the client's pool, for metrics and tests; for a
    cluster, summed over its nodes.

    redis-py exposes no public counters; these attributes are stable across 5.x-8.x.
    """
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()
        opened = sum(len(getattr(node, "_connections", ())) for node in nodes)
        return opened - sum(len(getattr(node, "_free", ())) for node in nodes), opened
    pool = client.connection_pool
    in_use = len(getattr(pool, "_in_use_connections", ()))
    return in_use, in_use + len(getattr(pool, "_available_connections", ()))


class Queue:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.ready = f"{{{prefix}}}:ready"
        self.delayed = f"{{{prefix}}}:delayed"
        self.leased = f"{{{prefix}}}:leased"
        self.score = f"{{{prefix}}}:score"
        self.dead = f"{{{prefix}}}:dead"
        self._claim = client.register_script(_CLAIM)
        self._place = client.register_script(_PLACE)
        self._reap = client.register_script(_REAP)
        self._nack = client.register_script(_NACK)

    async def place(self, items: Sequence[Placement], now_ms: int, only_missing: bool = False) -> int:
        """Put each job where the ledger says it belongs (`ready`, or `delayed` until its
        `ready_at_ms`); with `only_missing`, only jobs found nowhere. Returns how many moved."""
        if not items:
            return 0
        args: list[str | int] = [now_ms, "missing" if only_missing else "force"]
        for item in items:
            args += [item.uid, item.score, item.ready_at_ms]
        keys = [self.ready, self.delayed, self.leased, self.score, self.dead]
        return int(await self._place(keys=keys, args=args))

    async def claim(self, n: int, now_ms: int, lease_ms: int) -> list[str]:
        """Lease up to `n` ready jobs, best score first, until `now_ms + lease_ms` (epoch ms), after
        moving the delayed jobs due by `now_ms` to `ready`; returns their uids."""
        keys = [self.ready, self.delayed, self.leased, self.score]
        return list(await self._claim(keys=keys, args=[now_ms, lease_ms, n]))

    async def renew(self, uids: Iterable[str], deadline_ms: int) -> None:
        """Extend the leases of the attempts this process runs. Plain ZADD, not XX: after a Redis
        loss the heartbeat re-creates the lease, so a rebuild does not hand a running job to
        another worker."""
        mapping = dict.fromkeys(uids, deadline_ms)
        if mapping:
            await self.client.zadd(self.leased, mapping)

    async def ack(
        self,
        done: Sequence[str] = (),
        retry: Sequence[tuple[str, int]] = (),
        dead: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Apply outcomes the ledger recorded, in one MULTI round trip: each uid leaves `leased`;
        `done` ones leave Redis entirely, `retry` ones wait in `delayed` until their epoch ms, and
        `dead` ones enter the dead-letter set with theirs (when they were dead-lettered)."""
        if not (done or retry or dead):
            return
        # Variadic commands: a batch of any size is at most four commands in one MULTI.
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.leased, *done, *(uid for uid, _ in retry), *(uid for uid, _ in dead))
        if done or dead:
            pipe.hdel(self.score, *done, *(uid for uid, _ in dead))
        if retry:
            pipe.zadd(self.delayed, dict(retry))
        if dead:
            pipe.zadd(self.dead, dict(dead))
        await pipe.execute()

    async def remove(self, uids: Iterable[str]) -> None:
        """Forget jobs everywhere: deleted, suspended, stale or finished elsewhere."""
        uids = list(uids)
        if not uids:
            return
        pipe = self.client.pipeline(transaction=True)
        for key in (self.ready, self.delayed, self.leased, self.dead):
            pipe.zrem(key, *uids)
        pipe.hdel(self.score, *uids)
        await pipe.execute()

    async def reap(self, now_ms: int, limit: int = 1000) -> list[str]:
        """Return up to `limit` leases expired by `now_ms` (epoch ms) to `ready`; returns their uids."""
        return list(await self._reap(keys=[self.ready, self.leased, self.score], args=[now_ms, limit]))

    async def nack(self, uids: Sequence[str]) -> None:
        """Hand leases back unused: each uid still in `leased` returns to `ready` in its place."""
        if uids:
            await self._nack(keys=[self.ready, self.leased, self.score], args=list(uids))

    async def depth(self) -> Depth:
        pipe = self.client.pipeline(transaction=False)
        for key in (self.ready, self.delayed, self.leased, self.dead):
            pipe.zcard(key)
        ready, delayed, leased, dead = await pipe.execute()
        return Depth(int(ready), int(delayed), int(leased), int(dead))

    async def members(self) -> set[str]:
        """Every uid Redis holds in ready, delayed or leased (what tests and a diagnosis look at)."""
        pipe = self.client.pipeline(transaction=False)
        for key in (self.ready, self.delayed, self.leased):
            pipe.zrange(key, 0, -1)
        found: set[str] = set()
        for chunk in await pipe.execute():
            found.update(chunk)
        return found
