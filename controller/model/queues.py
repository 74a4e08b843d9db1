"""The RelayQueue spec as the CRD's OpenAPI schema defines it, re-validated on our side.

A queue names the flow control its jobs wait under: whether they may start at all (`paused`), how
many may run at once and how fast they may start across every replica (`maxConcurrency`,
`rateLimit`), their share when queues compete (`weight`), and the defaults for jobs that set none.
Peers: Cloud Tasks queues (maxDispatchesPerSecond, maxConcurrentDispatches, pause), QStash flow
control (rate and parallelism per key), BullMQ's limiter and pause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.model.spec import DEFAULT_QUEUE, Backoff


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class RateLimit(_Spec):
    """Attempt starts per second across all replicas, with `burst` starts allowed at once."""

    per_second: float = Field(gt=0, le=10_000, alias="perSecond")
    burst: int = Field(default=1, ge=1, le=10_000)


class QueueDefaults(_Spec):
    """What a job in the queue gets for each of these fields it does not set."""

    max_attempts: int | None = Field(default=None, ge=1, le=100, alias="maxAttempts")
    backoff: Backoff | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600, alias="timeoutSeconds")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, alias="ttlSecondsAfterFinished")

    def fill(self, spec: dict[str, Any]) -> dict[str, Any]:
        """`spec` (a RelayJob spec as the API server holds it) with each field it leaves out taken
        from these defaults; fields it sets are kept as they are."""
        given = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {**spec, **{k: v for k, v in given.items() if spec.get(k) is None}}


class RelayQueueSpec(_Spec):
    paused: bool = False
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000, alias="maxConcurrency")
    rate_limit: RateLimit | None = Field(default=None, alias="rateLimit")
    weight: int = Field(default=1, ge=1, le=1000)
    defaults: QueueDefaults = Field(default_factory=QueueDefaults)


IMPLICIT = RelayQueueSpec()
"""The namespace's `default` queue while no RelayQueue of that name exists: no limits."""


@dataclass(frozen=True, order=True)
class QueueRef:
    namespace: str
    name: str

    @property
    def id(self) -> str:
        """`<namespace>/<name>`: how Redis and the metrics name the queue (both parts are DNS
        labels, so the slash cannot be part of either)."""
        return f"{self.namespace}/{self.name}"

    @property
    def implicit(self) -> bool:
        """Whether the queue exists without an object: the namespace's `default`."""
        return self.name == DEFAULT_QUEUE
