"""Rows of the ledger and the results executors return: the values passed between layers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from controller.model.phases import Phase
from controller.model.queues import QueueRef
from controller.model.spec import DEFAULT_QUEUE, RelayJobSpec


class JobRef(BaseModel):
    """Where a job lives in Kubernetes; every log line and status write about a job carries it."""

    model_config = ConfigDict(frozen=True)

    uid: UUID
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def uid_of(body: Any) -> UUID | None:
    """The uid in a Kubernetes object's `metadata`; None when `body` is no object, or has no uid
    that parses (the API server always sets one: a list or watch of anything else is garbage)."""
    try:
        return UUID(body["metadata"]["uid"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class FencingToken(NamedTuple):
    """Which attempt an outcome belongs to: the job's run (its re-drive epoch, from 1) and the
    attempt number within that run (from 1). The ledger records an outcome only while the job still
    holds this token, so a worker that lost its lease cannot overwrite what the worker that
    re-claimed the job recorded."""

    run: int
    attempt: int


class JobRow(BaseModel):
    """One row of the ledger's `jobs` table."""

    model_config = ConfigDict(frozen=True)

    ref: JobRef
    seq: int
    phase: Phase
    # None only for a job rejected because its spec is invalid: the ledger keeps what was written.
    spec_or_none: RelayJobSpec | None
    generation: int
    nullifier: str | None
    attempts: int
    retries: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    result: dict[str, Any] | None
    reason: str | None
    message: str | None
    # The last relay.dev/redrive value seen (acted on or ignored); the ledger keeps every one.
    redrive_token: str | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    # spec.activeDeadlineSeconds after the run's first attempt started: no attempt starts later.
    deadline_at: datetime | None = None
    run: int = 1
    version: int = 1
    deleted: bool = False
    # The mutable fields as last acted on (the spec holds them as admitted): `priority` places the
    # job in the queue; `suspend` holds it back from its next attempt.
    priority: int = 0
    suspend: bool = False
    queue: str = DEFAULT_QUEUE

    @property
    def queue_id(self) -> str:
        """The job's queue as Redis and the metrics name it: `<namespace>/<queue>`."""
        return QueueRef(self.ref.namespace, self.queue).id

    @property
    def fence(self) -> FencingToken:
        """The fencing token of the job's current (or last) attempt."""
        return FencingToken(self.run, self.attempts)

    @property
    def spec(self) -> RelayJobSpec:
        """The spec of a job that was admitted; every job that can run has one."""
        if self.spec_or_none is None:
            raise ValueError(f"{self.ref} was rejected with an invalid spec")
        return self.spec_or_none


class SpecChange(BaseModel):
    """The fields of a RelayJob that may change after creation, as of one generation."""

    model_config = ConfigDict(frozen=True)

    generation: int
    priority: int
    ttl_seconds: int | None
    suspend: bool


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


class ExecutionResult(BaseModel):
    """What an executor says of one attempt. `message` must never carry a secret."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    reason: str
    message: str = ""
    retry_after_seconds: float | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class AttemptContext(BaseModel):
    """Everything an executor may know about the attempt it runs."""

    model_config = ConfigDict(frozen=True)

    ref: JobRef
    spec: RelayJobSpec
    attempt: int
    idempotency_key: str


class SecretReader(Protocol):
    async def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...


class ClusterApi(Protocol):
    """What the runtime needs of the Kubernetes API; `adapters.kube.KubeClient` is the real one."""

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool: ...

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None: ...

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]: ...

    async def delete_job(self, ref: JobRef) -> bool: ...

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool: ...

    async def list_queues(self, namespaces: Iterable[str]) -> list[dict[str, Any]]: ...

    async def get_queue(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch_queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool: ...

    async def post_queue_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class SecretNotFound(Exception):
    """A Secret or key named by `headersFrom` is missing: a permanent failure of the attempt."""


class SecretForbidden(Exception):
    """The operator may not read a Secret named by `headersFrom` (RBAC): a permanent failure."""


class SecretUnavailable(Exception):
    """The API server did not answer for a Secret just now: the attempt may be retried."""


class Executor(Protocol):
    """One kind of target. Implementations load through the `relayjob.executors` entry points."""

    async def execute(self, ctx: AttemptContext) -> ExecutionResult: ...

    async def close(self) -> None: ...
