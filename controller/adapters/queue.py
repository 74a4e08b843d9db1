"""The Redis side of the queues: key names, the Lua scripts, and the one pooled client.

Keys, named `{<prefix>}:<name>` (the prefix is a hash tag, so every key lives in one Redis Cluster
hash slot and the multi-key scripts and transactions below work on a cluster too; the per-queue keys
are built inside the scripts from the same tag, so they share the slot). A queue id ("qid") is
`<namespace>/<name>`:
  ready:<qid>    ZSET uid -> ready score (priority, then admission order; see core.scoring)
  queues         ZSET qid -> stride pass, for each queue with ready work (the claim's contenders)
  vtime          STRING the pass of the latest dispatch: where a queue that starts contending begins
  delayed        ZSET uid -> epoch ms when the job becomes ready (notBefore, delay, retry backoff)
  delayed:<qid>  SET  the queue's uids in `delayed`, to count them
  leased         ZSET uid -> epoch ms when the lease expires unless the worker renews it
  running:<qid>  ZSET the queue's uids in `leased`, with the same expiry: the attempts holding a slot
  score          HASH uid -> ready score, so a delayed or expired job re-enters its ready set in place
  queue          HASH uid -> qid
  dead           ZSET uid -> epoch ms it was dead-lettered (the dead-letter set)
  limits         HASH qid -> the RelayQueue's limits as JSON (`configure`)
  tat            HASH qid -> GCRA theoretical arrival time, epoch µs, of a rate-limited queue
  qids           SET  every qid with a job in Redis or limits, for `queue_depths`
  dispatched:<b> HASH qid -> jobs claimed in the 10 s bucket b (epoch ms // 10000); expires

A uid is in at most one of ready/delayed/leased; every script keeps that true atomically, and keeps
`running:<qid>` exactly the leased uids of the queue: a slot is taken by the claim that leases a
job and given back by whatever ends the lease (ack, nack, remove, reap), in the same script, so the
count is a set's size and cannot drift. A lease that expired counts no more against the queue's
concurrency, reaped or not: a dead replica's slots are free the moment its leases run out. The one
lease without a slot is one `renew` re-creates after Redis lost everything: the job's qid is gone
with it until the rebuild's `place` records it again, which gives the slot back to the queue.
Nothing finished stays in Redis: completion removes the uid, its score and its qid.

Claims are fair by weight with stride scheduling: each contending queue has a pass, the claim takes
from the queue with the lowest, and each job taken advances that queue's pass by 1/weight. A queue
that starts contending (its ready set was empty) enters at `vtime`, and one the claim skips for its
limits is lifted to `vtime`, so neither idling nor waiting banks credit; a backlog of any size
advances its own pass only, so another queue's ready job waits at most one claim. Stride rather
than deficit round-robin because one claim takes a few dozen jobs across the queues, and stride's
order is exact at that grain, with a single number per queue to keep.

Rate limits are GCRA (the generic cell rate algorithm) per queue: one stored time per queue, burst
starts at once then `per_second`. Limits and slots live in Redis and are decided in the claim's one
script, so they hold across any number of replicas; replicas pass their clocks in (`now_ms`) as they
do for leases, so their clocks are assumed in step.

Releases before the hash tag named the keys `<prefix>:<name>`, and releases before queues kept one
`ready` ZSET. Nothing reads those any more: after an upgrade the maintenance loop's rebuild re-queues
every unfinished job from the ledger under the new names, and the old keys can be deleted (README,
"Operating it").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from controller.settings import RedisEndpoint, redis_endpoint

RedisClient = Redis | RedisCluster

PROMOTE_LIMIT = 1000
POP_LIMIT = 1000
BUCKET_MS = 10_000
RATE_WINDOW_BUCKETS = 6  # `dispatched_per_second` looks back one minute
BUCKET_TTL_SECONDS = 90  # outlives the oldest bucket a minute's window reads

# Every script takes the key prefix as ARGV[1] and uses these names and helpers.
_PRELUDE = """
local P = ARGV[1]
local QUEUES, VTIME, DELAYED, LEASED = P .. ':queues', P .. ':vtime', P .. ':delayed', P .. ':leased'
local SCORE, QUEUE, DEAD, QIDS = P .. ':score', P .. ':queue', P .. ':dead', P .. ':qids'
local LIMITS, TAT = P .. ':limits', P .. ':tat'
local function ready_key(q) return P .. ':ready:' .. q end
local function delayed_key(q) return P .. ':delayed:' .. q end
local function running_key(q) return P .. ':running:' .. q end
local vtime = nil
local function make_ready(uid, q, s)
  redis.call('ZADD', ready_key(q), s, uid)
  vtime = vtime or redis.call('GET', VTIME) or 0
  redis.call('ZADD', QUEUES, 'NX', vtime, q)
end
local function unready(uid, q)
  if redis.call('ZREM', ready_key(q), uid) == 1 and redis.call('EXISTS', ready_key(q)) == 0 then
    redis.call('ZREM', QUEUES, q)
  end
end
local function delay(uid, q, at)
  redis.call('ZADD', DELAYED, at, uid)
  if q then
    redis.call('SADD', delayed_key(q), uid)
    redis.call('SADD', QIDS, q)
  end
end
local function undelay(uid, q)
  redis.call('ZREM', DELAYED, uid)
  if q then redis.call('SREM', delayed_key(q), uid) end
end
local function release(uid, q)
  local was = redis.call('ZREM', LEASED, uid)
  if q then redis.call('ZREM', running_key(q), uid) end
  return was
end
local function requeue(uid)
  local q, s = redis.call('HGET', QUEUE, uid), redis.call('HGET', SCORE, uid)
  if q and s then make_ready(uid, q, s) end
end
"""

# Promote due delayed jobs, then lease up to N ready ones across the queues, in one atomic step: two
# replicas can never claim the same uid, a claimed uid is never outside `leased`, and no queue's
# limits can be passed by claims racing on several replicas. Returns {uids, {qid, count, ...}
# dispatched, {qid, 1, ...} throttled, the earliest epoch ms a throttled rate limit frees a start}.
_CLAIM = (
    _PRELUDE
    + """
local now, lease_ms, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now_us = now * 1000
local due = redis.call('ZRANGE', DELAYED, '-inf', now, 'BYSCORE', 'LIMIT', 0, PROMOTE_LIMIT)
for _, uid in ipairs(due) do
  undelay(uid, redis.call('HGET', QUEUE, uid))
  requeue(uid)
end
vtime = tonumber(vtime or redis.call('GET', VTIME) or 0)
local start_vtime = vtime
local flat = redis.call('ZRANGE', QUEUES, 0, -1, 'WITHSCORES')
local qs, pass, live, budget, stride, taken, was = {}, {}, {}, {}, {}, {}, {}
local interval, tat0, burst, rate_left = {}, {}, {}, {}
for i = 1, #flat, 2 do
  local j = #qs + 1
  qs[j], pass[j], live[j], taken[j] = flat[i], tonumber(flat[i + 1]), true, 0
  was[j] = pass[j]
end
local function weigh(j)
  local q, raw = qs[j], redis.call('HGET', LIMITS, qs[j])
  stride[j] = 1
  if not raw then
    if string.sub(q, -8) == '/default' then return math.huge end
    return nil
  end
  local c = cjson.decode(raw)
  stride[j] = 1 / (c.weight or 1)
  if c.paused then return 0 end
  local b = math.huge
  if c.max then b = c.max - redis.call('ZCOUNT', running_key(q), '(' .. now, '+inf') end
  if c.rate then
    interval[j], burst[j] = 1e6 / c.rate, c.burst or 1
    tat0[j] = math.max(tonumber(redis.call('HGET', TAT, q) or 0), now_us)
    rate_left[j] = math.floor(burst[j] - (tat0[j] - now_us) / interval[j] + 1e-9)
    b = math.min(b, rate_left[j])
  end
  return b
end
local out, throttled, next_at, skipped, emptied = {}, {}, false, {}, vtime
while want > 0 do
  local best, second = nil, nil
  for j = 1, #qs do
    if live[j] then
      if best == nil or pass[j] < pass[best] then
        if best then second = pass[best] end
        best = j
      elseif second == nil or pass[j] < second then
        second = pass[j]
      end
    end
  end
  if best == nil then break end
  local q = qs[best]
  if budget[best] == nil then budget[best] = weigh(best) or false end
  if budget[best] == false or budget[best] <= 0 then
    live[best], skipped[best] = false, true
  end
  if budget[best] ~= false and budget[best] <= 0 then
    throttled[#throttled + 1] = q
    throttled[#throttled + 1] = 1
    if interval[best] and rate_left[best] - taken[best] <= 0 then
      local tat = tat0[best] + taken[best] * interval[best]
      local free_at = math.ceil((tat - (burst[best] - 1) * interval[best]) / 1000)
      if not next_at or free_at < next_at then next_at = free_at end
    end
  elseif budget[best] ~= false then
    -- At most POP_LIMIT at a time: the leases go into one ZADD, whose arguments unpack() passes.
    local k = math.min(want, budget[best], POP_LIMIT)
    if second then k = math.min(k, math.floor((second - pass[best]) / stride[best]) + 1) end
    local popped = redis.call('ZPOPMIN', ready_key(q), k)
    local got = #popped / 2
    if got > 0 then
      local leases = {}
      for i = 1, #popped, 2 do
        leases[i], leases[i + 1] = now + lease_ms, popped[i]
        out[#out + 1] = popped[i]
      end
      redis.call('ZADD', LEASED, unpack(leases))
      redis.call('ZADD', running_key(q), unpack(leases))
    end
    want, budget[best], taken[best] = want - got, budget[best] - got, taken[best] + got
    pass[best] = pass[best] + got * stride[best]
    if got < k or redis.call('EXISTS', ready_key(q)) == 0 then
      if pass[best] > emptied then emptied = pass[best] end
      live[best], pass[best] = false, nil
      redis.call('ZREM', QUEUES, q)
    end
  end
end
-- Virtual time is the lowest pass still contending (or, when none is, where the last one to empty
-- ended): queues that join later, or that this claim skipped, start there and bank no credit.
local floor = nil
for j = 1, #qs do
  if live[j] and (floor == nil or pass[j] < floor) then floor = pass[j] end
end
vtime = math.max(vtime, floor or emptied)
for j = 1, #qs do
  if skipped[j] and pass[j] < vtime then pass[j] = vtime end
end
local dispatched = {}
local bucket = P .. ':dispatched:' .. math.floor(now / BUCKET_MS)
for j = 1, #qs do
  if pass[j] and pass[j] ~= was[j] then redis.call('ZADD', QUEUES, 'XX', pass[j], qs[j]) end
  if taken[j] > 0 then
    dispatched[#dispatched + 1] = qs[j]
    dispatched[#dispatched + 1] = taken[j]
    if redis.call('HINCRBY', bucket, qs[j], taken[j]) == taken[j] then
      redis.call('EXPIRE', bucket, BUCKET_TTL_SECONDS)
    end
    if interval[j] then
      redis.call('HSET', TAT, qs[j], string.format('%.0f', tat0[j] + taken[j] * interval[j]))
    end
  end
end
if vtime ~= start_vtime then redis.call('SET', VTIME, tostring(vtime)) end
return {out, dispatched, throttled, next_at}
"""
)
for _name, _value in (
    ("PROMOTE_LIMIT", PROMOTE_LIMIT),
    ("POP_LIMIT", POP_LIMIT),
    ("BUCKET_MS", BUCKET_MS),
    ("BUCKET_TTL_SECONDS", BUCKET_TTL_SECONDS),
):
    _CLAIM = _CLAIM.replace(_name, str(_value))

# Put jobs where the ledger says they belong. mode 'force' (admission, re-drive, a new priority)
# moves a uid that is not leased, and gives a leased one its new score and queue for when it is
# next queued; mode 'missing' (rebuild after Redis loss) only adds a uid found nowhere, so a rebuild
# never duplicates a queued or leased job, and gives a lease that `renew` re-created its queue (and
# so its slot) back. ARGV: prefix, now, mode, then uid, score, ready-at ms, qid per job.
_PLACE = (
    _PRELUDE
    + """
local now, mode = tonumber(ARGV[2]), ARGV[3]
local placed = 0
for i = 4, #ARGV, 4 do
  local uid, s, at, q = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local old = redis.call('HGET', QUEUE, uid)
  local expiry = redis.call('ZSCORE', LEASED, uid)
  if expiry then
    if mode == 'force' or not old then
      redis.call('HSET', SCORE, uid, s)
      if old ~= q then
        if old then redis.call('ZREM', running_key(old), uid) end
        redis.call('HSET', QUEUE, uid, q)
        redis.call('ZADD', running_key(q), expiry, uid)
        redis.call('SADD', QIDS, q)
      end
    end
  else
    -- A uid with no queue was queued by a release before queues: it is placed anew.
    local present = old and (redis.call('ZSCORE', DELAYED, uid) or redis.call('ZSCORE', ready_key(old), uid))
    if mode == 'force' or not present then
      if old and old ~= q then
        unready(uid, old)
        undelay(uid, old)
      end
      redis.call('HSET', SCORE, uid, s)
      redis.call('HSET', QUEUE, uid, q)
      redis.call('ZREM', DEAD, uid)
      redis.call('SADD', QIDS, q)
      if at > now then
        unready(uid, q)
        delay(uid, q, at)
      else
        undelay(uid, q)
        make_ready(uid, q, s)
      end
      placed = placed + 1
    end
  end
end
return placed
"""
)

# Expired leases give their slots back and return to their ready sets in their original place; the
# next claim counts a new attempt.
_REAP = (
    _PRELUDE
    + """
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGE', LEASED, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
for _, uid in ipairs(expired) do
  release(uid, redis.call('HGET', QUEUE, uid))
  requeue(uid)
end
return expired
"""
)

# Nack: hand claimed-but-unstarted jobs back at once (the ledger refused them for a passing reason,
# or shutdown began before they started), rather than letting their leases run out.
_NACK = (
    _PRELUDE
    + """
for i = 2, #ARGV do
  local uid = ARGV[i]
  if release(uid, redis.call('HGET', QUEUE, uid)) == 1 then requeue(uid) end
end
return #ARGV - 1
"""
)

# Apply recorded outcomes: each uid leaves `leased` and its slot; done ones leave Redis, retried ones
# wait in `delayed`, dead ones enter the dead-letter set. ARGV: prefix, #done, #retry, then the done
# uids, then uid, epoch ms pairs for retry, then for dead.
_ACK = (
    _PRELUDE
    + """
local n_done, n_retry = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, n_done do
  local uid = ARGV[i]
  release(uid, redis.call('HGET', QUEUE, uid))
  redis.call('HDEL', SCORE, uid)
  redis.call('HDEL', QUEUE, uid)
  i = i + 1
end
for _ = 1, n_retry do
  local uid = ARGV[i]
  local q = redis.call('HGET', QUEUE, uid)
  release(uid, q)
  delay(uid, q, ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  local uid = ARGV[i]
  release(uid, redis.call('HGET', QUEUE, uid))
  redis.call('HDEL', SCORE, uid)
  redis.call('HDEL', QUEUE, uid)
  redis.call('ZADD', DEAD, ARGV[i + 1], uid)
  i = i + 2
end
return 1
"""
)

# Forget jobs everywhere: deleted, suspended, stale or finished elsewhere.
_REMOVE = (
    _PRELUDE
    + """
for i = 2, #ARGV do
  local uid = ARGV[i]
  local q = redis.call('HGET', QUEUE, uid)
  if q then unready(uid, q) end
  undelay(uid, q)
  release(uid, q)
  redis.call('ZREM', DEAD, uid)
  redis.call('HDEL', SCORE, uid)
  redis.call('HDEL', QUEUE, uid)
end
return #ARGV - 1
"""
)

# Plain ZADD, not XX: after a Redis loss the heartbeat re-creates the lease, so a rebuild does not
# hand a running job to another worker; the slot comes with it whenever the job's queue is known.
_RENEW = (
    _PRELUDE
    + """
local deadline = ARGV[2]
for i = 3, #ARGV do
  local uid = ARGV[i]
  redis.call('ZADD', LEASED, deadline, uid)
  local q = redis.call('HGET', QUEUE, uid)
  if q then
    redis.call('ZADD', running_key(q), deadline, uid)
    redis.call('SADD', QIDS, q)
  end
end
return 1
"""
)

# Per queue: ready, delayed, running. A qid with none of these and no limits is dropped from `qids`.
_DEPTHS = (
    _PRELUDE
    + """
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', QIDS)) do
  local r = redis.call('ZCARD', ready_key(q))
  local d = redis.call('SCARD', delayed_key(q))
  local n = redis.call('ZCARD', running_key(q))
  if r + d + n == 0 and redis.call('HEXISTS', LIMITS, q) == 0 then
    redis.call('SREM', QIDS, q)
  else
    out[#out + 1] = {q, r, d, n}
  end
end
return out
"""
)

# A RelayQueue's limits, as JSON (ARGV[3]), or none (the queue is gone) when ARGV[3] is empty.
# Changed limits restart the rate's clock, so a raised rate applies at once rather than after the
# old rate's interval; the same limits again (every reconcile) leave it running.
_CONFIGURE = (
    _PRELUDE
    + """
local q, rule = ARGV[2], ARGV[3]
if redis.call('HGET', LIMITS, q) ~= rule then redis.call('HDEL', TAT, q) end
if rule == '' then
  redis.call('HDEL', LIMITS, q)
else
  redis.call('HSET', LIMITS, q, rule)
  redis.call('SADD', QIDS, q)
end
return 1
"""
)

# Jobs claimed from each queue (ARGV[4..]) in each 10 s bucket from ARGV[2] to ARGV[3], bucket by
# bucket.
_DISPATCHED = (
    _PRELUDE
    + """
local out = {}
for b = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local counts = redis.call('HMGET', P .. ':dispatched:' .. b, unpack(ARGV, 4))
  for i = 1, #counts do out[#out + 1] = tonumber(counts[i] or 0) end
end
return out
"""
)

# Totals across the queues, and every uid held in a ready set, `delayed` or `leased`.
_TOTALS = (
    _PRELUDE
    + """
local ready = 0
for _, q in ipairs(redis.call('ZRANGE', QUEUES, 0, -1)) do
  ready = ready + redis.call('ZCARD', ready_key(q))
end
return {ready, redis.call('ZCARD', DELAYED), redis.call('ZCARD', LEASED), redis.call('ZCARD', DEAD)}
"""
)

_MEMBERS = (
    _PRELUDE
    + """
local out = {}
for _, q in ipairs(redis.call('ZRANGE', QUEUES, 0, -1)) do
  for _, uid in ipairs(redis.call('ZRANGE', ready_key(q), 0, -1)) do out[#out + 1] = uid end
end
for _, key in ipairs({DELAYED, LEASED}) do
  for _, uid in ipairs(redis.call('ZRANGE', key, 0, -1)) do out[#out + 1] = uid end
end
return out
"""
)


@dataclass(frozen=True)
class Placement:
    uid: str
    score: int
    ready_at_ms: int
    queue: str  # the qid, `<namespace>/<name>`


@dataclass(frozen=True)
class QueueLimits:
    """A RelayQueue's flow control as the claim script applies it."""

    paused: bool = False
    max_concurrency: int | None = None
    per_second: float | None = None
    burst: int = 1
    weight: int = 1


@dataclass(frozen=True)
class Claimed:
    """What one claim leased, and why it left ready work behind.

    `dispatched`: qid -> jobs leased from it; `throttled`: qid -> 1 for each queue this claim skipped
    though it had ready work, for its pause, concurrency cap or rate limit; `retry_at_ms`: the
    earliest epoch ms a skipped rate limit allows a start again (None when no rate limit held
    anything back), so a claimer can come back then rather than at its next poll.
    """

    uids: list[str]
    dispatched: dict[str, int]
    throttled: dict[str, int]
    retry_at_ms: int | None = None


@dataclass(frozen=True)
class Depth:
    ready: int
    delayed: int
    leased: int
    dead: int


@dataclass(frozen=True)
class QueueDepth:
    ready: int
    delayed: int
    running: int


class FairBlockingConnectionPool(aioredis.BlockingConnectionPool):
    """redis-py's BlockingConnectionPool, with connections handed out first come, first served.

    redis-py's own pool lets a task that asks while a connection is free take it ahead of the tasks
    already waiting, and a woken waiter that finds it gone waits again at the back: a task looping
    over commands gets its connection straight back each time. With 8 tasks looping over PINGs on a
    pool of 2, two of them ran 3,700 commands in 3 s while the other six got none, and failed with
    "No connection available." when `timeout` ran out; in the operator that starves a lease
    heartbeat behind the claim loop. Here a task first takes a turn from a FIFO semaphore of
    `max_connections` (asyncio.Semaphore never lets a newcomer pass a waiter), then the pool's
    connection, which is then free. Raises redis' ConnectionError("No connection available.") when
    no turn comes within `timeout` seconds, as redis-py's pool does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                await self._turns.acquire()
        except TimeoutError as error:
            raise redis.exceptions.ConnectionError("No connection available.") from error
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._turns.release()
            raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._turns.release()


class _BlockingSentinelPool(SentinelConnectionPool, FairBlockingConnectionPool):
    """The primary that Sentinel names, reached through a pool that waits for a free connection like
    `connect`'s own rather than raising when all `max_connections` are in use."""


def connect(url: str, max_connections: int, timeout: float) -> RedisClient:
    """The process's one Redis client. Its pool waits (up to `timeout`, first come first served:
    `FairBlockingConnectionPool`) for a free connection instead of opening another, so connections
    to Redis never exceed `max_connections`; through Sentinel the same holds for the current
    primary. A cluster client keeps at most `max_connections` per node, and a command that finds
    all of a node's in use fails at once (redis-py's cluster client cannot wait for one)."""
    common: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }
    endpoint = redis_endpoint(url)
    if endpoint.topology == "single":
        pool = FairBlockingConnectionPool.from_url(
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


def _pairs(flat: Sequence[str | int]) -> dict[str, int]:
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


class Queue:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.tag = f"{{{prefix}}}"
        # The fixed keys each script touches, declared so a cluster client routes it to their slot;
        # the scripts build the per-queue keys from the same tag.
        self.keys = [f"{self.tag}:{name}" for name in ("queues", "delayed", "leased", "score", "queue")]
        self.delayed = f"{self.tag}:delayed"
        self.score = f"{self.tag}:score"
        self.queue_of = f"{self.tag}:queue"
        self.leased = f"{self.tag}:leased"
        self.dead = f"{self.tag}:dead"
        self.limits = f"{self.tag}:limits"
        self.tat = f"{self.tag}:tat"
        self.qids = f"{self.tag}:qids"
        self._config_keys = [self.limits, self.tat, self.qids]
        self._claim = client.register_script(_CLAIM)
        self._place = client.register_script(_PLACE)
        self._reap = client.register_script(_REAP)
        self._nack = client.register_script(_NACK)
        self._ack = client.register_script(_ACK)
        self._remove = client.register_script(_REMOVE)
        self._renew = client.register_script(_RENEW)
        self._depths = client.register_script(_DEPTHS)
        self._totals = client.register_script(_TOTALS)
        self._members = client.register_script(_MEMBERS)
        self._configure = client.register_script(_CONFIGURE)
        self._dispatched = client.register_script(_DISPATCHED)

    def ready_key(self, qid: str) -> str:
        return f"{self.tag}:ready:{qid}"

    def running_key(self, qid: str) -> str:
        return f"{self.tag}:running:{qid}"

    async def configure(self, qid: str, limits: QueueLimits) -> None:
        """The queue exists with these limits, for every replica's claims. Idempotent."""
        rule: dict[str, object] = {"weight": limits.weight}
        if limits.paused:
            rule["paused"] = True
        if limits.max_concurrency is not None:
            rule["max"] = limits.max_concurrency
        if limits.per_second is not None:
            rule.update(rate=limits.per_second, burst=limits.burst)
        await self._configure(keys=self._config_keys, args=[self.tag, qid, json.dumps(rule, sort_keys=True)])

    async def unconfigure(self, qid: str) -> None:
        """The queue is gone: its jobs stay where they are, and no claim takes one until it is
        configured again (the namespace's `default` queue is then the implicit one, with no limits).
        Attempts already running keep their slots until they end."""
        await self._configure(keys=self._config_keys, args=[self.tag, qid, ""])

    async def place(self, items: Sequence[Placement], now_ms: int, only_missing: bool = False) -> int:
        """Put each job where the ledger says it belongs (its queue's ready set, or `delayed` until
        its `ready_at_ms`); with `only_missing`, only jobs found nowhere. Returns how many moved."""
        if not items:
            return 0
        args: list[str | int] = [self.tag, now_ms, "missing" if only_missing else "force"]
        for item in items:
            args += [item.uid, item.score, item.ready_at_ms, item.queue]
        return int(await self._place(keys=self.keys, args=args))

    async def claim(self, n: int, now_ms: int, lease_ms: int) -> Claimed:
        """Lease up to `n` ready jobs until `now_ms + lease_ms` (epoch ms), after moving the delayed
        jobs due by `now_ms` to their ready sets: across the queues by weight, best score first
        within a queue, none from a queue that is paused, unconfigured, at its concurrency cap or
        out of its rate. A running slot counts from the claim (a job leased ahead of a free worker
        slot holds one). One claim takes at most `burst` jobs from a rate-limited queue, so a queue
        with burst 1 reaches its rate only while claims come at least that often: beside busy
        queues they come as slots free, when idle at `retry_at_ms`."""
        uids, dispatched, throttled, retry_at = await self._claim(
            keys=self.keys, args=[self.tag, now_ms, lease_ms, n]
        )
        return Claimed(list(uids), _pairs(dispatched), _pairs(throttled), int(retry_at) if retry_at else None)

    async def renew(self, uids: Iterable[str], deadline_ms: int) -> None:
        """Extend the leases of the attempts this process runs, re-creating any Redis lost."""
        uids = list(uids)
        if uids:
            await self._renew(keys=self.keys, args=[self.tag, deadline_ms, *uids])

    async def ack(
        self,
        done: Sequence[str] = (),
        retry: Sequence[tuple[str, int]] = (),
        dead: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Apply outcomes the ledger recorded, in one script: each uid leaves `leased` and gives its
        slot back; `done` ones leave Redis entirely, `retry` ones wait in `delayed` until their
        epoch ms, and `dead` ones enter the dead-letter set with theirs (when they were
        dead-lettered)."""
        if not (done or retry or dead):
            return
        args: list[str | int] = [self.tag, len(done), len(retry), *done]
        for uid, at in (*retry, *dead):
            args += [uid, at]
        await self._ack(keys=[*self.keys, self.dead], args=args)

    async def remove(self, uids: Iterable[str]) -> None:
        """Forget jobs everywhere: deleted, suspended, stale or finished elsewhere."""
        uids = list(uids)
        if uids:
            await self._remove(keys=[*self.keys, self.dead], args=[self.tag, *uids])

    async def reap(self, now_ms: int, limit: int = 1000) -> list[str]:
        """Return up to `limit` leases expired by `now_ms` (epoch ms) to their ready sets, giving
        their slots back; returns their uids."""
        return list(await self._reap(keys=self.keys, args=[self.tag, now_ms, limit]))

    async def nack(self, uids: Sequence[str]) -> None:
        """Hand leases back unused: each uid still leased gives its slot back and returns to its
        ready set in its place."""
        if uids:
            await self._nack(keys=self.keys, args=[self.tag, *uids])

    async def depth(self) -> Depth:
        ready, delayed, leased, dead = await self._totals(keys=[*self.keys, self.dead], args=[self.tag])
        return Depth(int(ready), int(delayed), int(leased), int(dead))

    async def queue_depths(self) -> dict[str, QueueDepth]:
        """Ready, delayed and running (slots held) per qid, for every queue with jobs in Redis or
        limits configured."""
        rows = await self._depths(keys=[self.qids, self.limits], args=[self.tag])
        return {str(q): QueueDepth(int(r), int(d), int(n)) for q, r, d, n in rows}

    async def dispatched_per_second(self, qids: Iterable[str], now_ms: int | None = None) -> dict[str, float]:
        """Jobs claimed per second from each queue over the last minute (ending at `now_ms`, epoch
        ms, by default now): the 10 s buckets the claims counted in, the oldest weighted by how
        much of it the minute still covers."""
        qids = list(qids)
        if not qids:
            return {}
        now = int(time.time() * 1000) if now_ms is None else now_ms
        current = now // BUCKET_MS
        covered = 1 - (now % BUCKET_MS) / BUCKET_MS
        first = current - RATE_WINDOW_BUCKETS
        counts = await self._dispatched(keys=self.keys, args=[self.tag, first, current, *qids])
        window_seconds = RATE_WINDOW_BUCKETS * BUCKET_MS / 1000
        rates: dict[str, float] = {}
        for i, qid in enumerate(qids):
            # counts holds bucket after bucket, one count per qid in each; the oldest bucket is
            # only partly inside the minute.
            per_bucket = [int(counts[b * len(qids) + i]) for b in range(RATE_WINDOW_BUCKETS + 1)]
            rates[qid] = (per_bucket[0] * covered + sum(per_bucket[1:])) / window_seconds
        return rates

    async def members(self) -> set[str]:
        """Every uid Redis holds in a ready set, delayed or leased (what tests and a diagnosis look at)."""
        return set(await self._members(keys=self.keys, args=[self.tag]))
