"""The RelayJob spec as the CRD's OpenAPI schema defines it, re-validated on our side.

The API server already enforces the schema and the CEL rules; we validate again because a
RelayJob may have been created before a CRD upgrade, and because the worker must never act on
an object it does not understand. A spec that fails here ends `Rejected` with reason `InvalidSpec`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NULLIFIER_PATTERN = r"^[A-Za-z0-9_:.\-]{1,128}$"
DEFAULT_PAYLOAD_LIMIT_BYTES = 64 * 1024
DEFAULT_QUEUE = "default"
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS-1123 label, as object names are


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(_Spec):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class HeaderFrom(_Spec):
    name: str = Field(min_length=1, max_length=256)
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


class Signing(_Spec):
    """Standard Webhooks signing: the Secret key holds the `whsec_`-prefixed base64 signing key."""

    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


CAPTURE_MAX_BYTES = 4096


class CaptureResponse(_Spec):
    max_bytes: int = Field(ge=1, le=CAPTURE_MAX_BYTES, alias="maxBytes")


HttpStatus = Annotated[int, Field(ge=100, le=599)]


class HttpTarget(_Spec):
    url: str = Field(min_length=1, max_length=2048)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    headers_from: list[HeaderFrom] = Field(default_factory=list, alias="headersFrom")
    signing: Signing | None = None
    # None: the default list (408, 429, 5xx); a list given replaces it, an empty one included.
    retryable_statuses: list[HttpStatus] | None = Field(
        default=None, max_length=50, alias="retryableStatuses"
    )
    capture_response: CaptureResponse | None = Field(default=None, alias="captureResponse")


class NoopTarget(_Spec):
    model_config = ConfigDict(extra="allow", frozen=True)


class Target(BaseModel):
    """Exactly one executor; names other than `http`/`noop` come from the entry-point group."""

    model_config = ConfigDict(extra="allow", frozen=True)

    http: HttpTarget | None = None
    noop: NoopTarget | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        names = self.executor_names()
        if len(names) != 1:
            raise ValueError(f"target must name exactly one executor, got {sorted(names) or 'none'}")
        return self

    def executor_names(self) -> list[str]:
        known = [n for n in ("http", "noop") if getattr(self, n) is not None]
        return known + list((self.model_extra or {}).keys())

    @property
    def executor(self) -> str:
        # Asked once per attempt: the built-in names without building `executor_names`.
        if self.http is not None:
            return "http"
        if self.noop is not None:
            return "noop"
        return self.executor_names()[0]

    def config_for(self, name: str) -> Any:
        if name in ("http", "noop"):
            return getattr(self, name)
        return (self.model_extra or {}).get(name)


class Callback(_Spec):
    """Where a finished job's outcome is sent: delivered as a RelayJob of its own (core.callbacks)."""

    http: HttpTarget


class Backoff(_Spec):
    initial_seconds: float = Field(default=1.0, gt=0, le=86400, alias="initialSeconds")
    max_seconds: float = Field(default=300.0, gt=0, le=86400, alias="maxSeconds")
    multiplier: float = Field(default=2.0, ge=1, le=10)
    jitter: bool = True


class RelayJobSpec(_Spec):
    payload: dict[str, Any] = Field(default_factory=dict)
    nullifier: str | None = Field(default=None, pattern=NULLIFIER_PATTERN)
    priority: int = Field(default=0, ge=-100, le=100)
    not_before: datetime | None = Field(default=None, alias="notBefore")
    delay_seconds: int | None = Field(default=None, ge=0, le=31_536_000, alias="delaySeconds")
    max_attempts: int = Field(default=5, ge=1, le=100, alias="maxAttempts")
    backoff: Backoff = Field(default_factory=Backoff)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600, alias="timeoutSeconds")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, alias="ttlSecondsAfterFinished")
    suspend: bool = False
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=2**31 - 1, alias="activeDeadlineSeconds"
    )
    # The RelayQueue (same namespace) whose limits the job waits under; `default` needs no object.
    queue: str = Field(default=DEFAULT_QUEUE, pattern=QUEUE_NAME_PATTERN)
    target: Target
    on_completion: Callback | None = Field(default=None, alias="onCompletion")
    on_failure: Callback | None = Field(default=None, alias="onFailure")

    @model_validator(mode="after")
    def _one_start_rule(self) -> RelayJobSpec:
        if self.not_before is not None and self.delay_seconds is not None:
            raise ValueError("set at most one of notBefore and delaySeconds")
        return self

    @field_validator("not_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def payload_size(self) -> int:
        return len(json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False).encode())

    def earliest_start(self, created: datetime) -> datetime:
        """The first instant an attempt may start: `notBefore`, or creation plus `delaySeconds`."""
        if self.not_before is not None:
            return self.not_before
        if self.delay_seconds:
            return created + timedelta(seconds=self.delay_seconds)
        return created


_SECRETISH_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:token|key|secret|password|sig)[^=&#]*=)[^&#]*")


def redact_url(url: str) -> str:
    """A URL fit for status, events, logs and metrics: no userinfo, no secret-looking query values."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "***@" + authority.rsplit("@", 1)[1]
        url = f"{scheme}{sep}{authority}{slash}{path}"
    return _SECRETISH_QUERY.sub(r"\1***", url)
