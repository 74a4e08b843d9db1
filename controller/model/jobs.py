"""Rows of the ledger and the results executors return: the values passed between layers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from controller.model.phases import Phase
from controller.model.spec import RelayJobSpec


class JobRef(BaseModel):
    """Where a job lives in Kubernetes; every log line and status write about a job carries it."""

    model_config = ConfigDict(frozen=True)

    uid: UUID
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class JobRow(BaseModel):
    """One row of the ledger's `jobs` table."""

    model_config = ConfigDict(frozen=True)

    ref: JobRef
    seq: int
    phase: Phase
    spec: RelayJobSpec
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
    redrive_token: str | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


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


class SecretNotFound(Exception):
    """A Secret or key named by `headersFrom` is missing: a permanent failure of the attempt."""


class Executor(Protocol):
    """One kind of target. Implementations load through the `relayjob.executors` entry points."""

    async def execute(self, ctx: AttemptContext) -> ExecutionResult: ...

    async def close(self) -> None: ...
