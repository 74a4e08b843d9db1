"""Operator configuration, read from `RELAY_*` environment variables and validated at start-up.

A bad value stops the process with a message naming the variable (see `describe_error`), never a
traceback: a misconfigured operator must be obvious in `kubectl logs`, not a crash loop of stack traces.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "RELAY_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"))
    database_url: SecretStr = Field(default=SecretStr("postgresql://relay@127.0.0.1:5432/relay"))
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)

    concurrency: int = Field(default=10, ge=1, le=10_000)
    redis_pool_max: int = Field(default=20, ge=2, le=10_000)
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    db_pool_min: int = Field(default=1, ge=0, le=1000)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Statements prepared once per connection: a round trip less per statement, but only where
    # RELAY_DATABASE_URL reaches PostgreSQL itself, not a pooler in transaction mode.
    db_prepared_statements: bool = False

    # How long start-up waits for Redis and PostgreSQL to answer before giving up with an error
    # naming the setting: long enough to ride out a rollout where they start after us.
    startup_timeout_seconds: float = Field(default=60.0, ge=0, le=3600)
    lease_seconds: float = Field(default=15.0, ge=1, le=3600)
    # On SIGTERM, attempts in flight may run this much longer; those still running are then stopped
    # and recorded as cut off. Keep it below the pod's terminationGracePeriodSeconds by what the rest
    # of shutdown takes (the chart derives one from the other).
    shutdown_grace_seconds: float = Field(default=25.0, ge=0, le=3600)
    reconcile_interval_seconds: float = Field(default=30.0, ge=1, le=86400)
    # How often RelayQueue status (counts, dispatch rate) is refreshed: `kubectl get rq`'s lag.
    queue_status_seconds: float = Field(default=5.0, ge=0.5, le=3600)
    # Ledger rows of deleted RelayJobs leave this long after they finished (fractions allowed).
    ledger_retention_days: float = Field(default=7.0, gt=0, le=36500)
    # ttlSecondsAfterFinished for RelayJobs that set none; unset, they stay until deleted.
    default_ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    claim_batch: int = Field(default=64, ge=1, le=10_000)
    poll_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    payload_limit_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    status_flush_seconds: float = Field(default=0.2, ge=0, le=60)
    # A job about to run (Queued and ready) or running shows that phase only after this long, so
    # one that finishes sooner costs a single status write (Completed) instead of two or three.
    status_quiet_seconds: float = Field(default=1.0, ge=0, le=30)
    # Status patches in flight at once: our share of a busy API server. While another client created
    # RelayJobs 64 at a time on the bench's saturated API server, 32 left status 5-8 s behind the
    # ledger and 128 about 1.5 s. Where priority and fairness is on (the default), the API server
    # queues what our priority level cannot run yet, so this bounds connections more than load.
    status_concurrency: int = Field(default=128, ge=1, le=1000)
    secret_cache_seconds: float = Field(default=10.0, ge=0, le=3600)
    events_per_second: float = Field(default=20.0, ge=0, le=10_000)
    # The http executor reads at most this much of an answer and drops the rest unread. It refuses
    # link-local and cloud metadata addresses always; DENY adds networks, a non-empty ALLOW permits
    # only its own (comma-separated CIDRs, IPv4 or IPv6; deny wins).
    http_max_response_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    http_deny_cidrs: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(default_factory=list)
    http_allow_cidrs: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(default_factory=list)

    # The ValidatingAdmissionPolicy that lets users name only Secrets they may read, and its binding
    # of the same name (manifests/secret-policy.yaml; the chart names them after the release). Checked
    # at start-up: a warning when absent, or a start-up error when required.
    secret_policy_name: str = Field(
        default="relayjob-operator-secret-references",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    require_secret_policy: bool = False

    key_prefix: str = Field(default="relay", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_:.-]+$")
    http_port: int = Field(default=8080, ge=0, le=65535)
    peering_name: str = Field(default="relayjob-operator", min_length=1)
    # Replicas with equal priorities all pause (kopf #51, #734): unless set, each process draws its
    # own, so exactly one of several replicas handles RelayJob events at a time.
    peering_priority: int = Field(default_factory=lambda: secrets.randbelow(1_000_000) + 1)
    standalone: bool = False
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="json", pattern=r"^(json|text)$")
    # uvloop's event loop, as kopf's own CLI picks when uvloop is installed: the worker's hot path
    # is socket reads and writes, which it does in C. `asyncio` is the standard library's loop.
    event_loop: str = Field(default="uvloop", pattern=r"^(uvloop|asyncio)$")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("http_deny_cidrs", "http_allow_cidrs", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks: list[IPv4Network | IPv6Network] = []
        for entry in filter(None, (e.strip() for e in value.split(","))):
            try:
                networks.append(ip_network(entry))
            except ValueError as error:
                raise ValueError(f"{entry!r} is not an IPv4 or IPv6 network: {error}") from None
        return networks

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        redis_endpoint(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return value


_REDIS_SCHEMES: dict[str, tuple[Literal["single", "sentinel", "cluster"], bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True)
class RedisEndpoint:
    """RELAY_REDIS_URL taken apart. `single` is any URL redis-py reads itself; the others are
    `redis[s]+sentinel://[user:pass@]host:port,host:port/<service>[/<db>][?options]` and
    `redis[s]+cluster://[user:pass@]host:port[,host:port]/[?options]`, where the user and password
    are those of the data nodes and `options` (e.g. `ssl_ca_certs=/path`) apply to every node."""

    topology: Literal["single", "sentinel", "cluster"]
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str = ""
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)


def redis_endpoint(url: str) -> RedisEndpoint:
    scheme, _, rest = url.partition("://")
    if scheme not in _REDIS_SCHEMES or not rest:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}")
    topology, tls = _REDIS_SCHEMES[scheme]
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    if topology == "single":
        return RedisEndpoint("single", tls, options=options)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = []
    for entry in hostlist.split(","):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{entry!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    service = path.pop(0) if topology == "sentinel" and path else ""
    if topology == "sentinel" and not service:
        raise ValueError("a redis+sentinel:// URL names its service: .../<service>/<db>")
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise ValueError(
            f"{parts.path!r}: expected /<db> after the hosts" + (" and service" if service else "")
        )
    db = int(path[0]) if path else 0
    if topology == "cluster" and db:
        raise ValueError("Redis Cluster has only database 0")
    return RedisEndpoint(
        topology,
        tls,
        tuple(hosts),
        unquote(username) or None,
        unquote(password) or None,
        service,
        db,
        options,
    )


def describe_error(error: ValidationError) -> str:
    """One line per bad setting, each naming the environment variable a user sets."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
