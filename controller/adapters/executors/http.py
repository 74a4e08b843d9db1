"""`target.http`: one request per attempt.

2xx succeeds. 408, 429, 5xx, connection errors and timeouts are retryable (Retry-After honoured);
any other status, an invalid URL or a missing Secret fails permanently. Messages name the URL with
credentials removed and never include header values: they end up in status, Events and logs.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import aiohttp
from yarl import URL

from controller.model.jobs import (
    AttemptContext,
    ExecutionResult,
    Outcome,
    SecretNotFound,
    SecretReader,
)
from controller.model.spec import HttpTarget, redact_url

RETRYABLE_STATUSES = frozenset({408, 429})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SUCCEEDED
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


class HttpExecutor:
    def __init__(self, secrets: SecretReader, max_connections: int = 100) -> None:
        self._secrets = secrets
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop; one session (one bounded connection
        # pool) serves every attempt of the process.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": "relayjob-operator"},
            )
        return self._session

    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        target = ctx.spec.target.http
        assert isinstance(target, HttpTarget)
        shown = redact_url(target.url)
        try:
            url = URL(target.url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("scheme must be http or https and a host is required")
        except ValueError as error:
            return ExecutionResult(
                outcome=Outcome.PERMANENT, reason="InvalidURL", message=f"{shown}: {error}"
            )
        headers = dict(target.headers)
        for item in target.headers_from:
            ref = item.secret_key_ref
            try:
                headers[item.name] = await self._secrets.read_secret_key(ctx.ref.namespace, ref.name, ref.key)
            except SecretNotFound as error:
                return ExecutionResult(
                    outcome=Outcome.PERMANENT,
                    reason="SecretNotFound",
                    message=f"headersFrom {item.name!r}: {error}",
                )
        headers["Idempotency-Key"] = ctx.idempotency_key
        body = {
            "payload": ctx.spec.payload,
            "job": {
                "namespace": ctx.ref.namespace,
                "name": ctx.ref.name,
                "uid": str(ctx.ref.uid),
                "attempt": ctx.attempt,
            },
        }
        try:
            async with self._client().request(
                target.method,
                url,
                json=body if target.method != "GET" else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=ctx.spec.timeout_seconds),
                allow_redirects=False,
            ) as response:
                await response.read()
                outcome = classify_status(response.status)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return ExecutionResult(
                outcome=Outcome.RETRYABLE,
                reason="Timeout",
                message=f"{target.method} {shown}: no answer within {ctx.spec.timeout_seconds:g}s",
            )
        except aiohttp.InvalidURL:
            return ExecutionResult(outcome=Outcome.PERMANENT, reason="InvalidURL", message=shown)
        except (aiohttp.ClientError, OSError) as error:
            return ExecutionResult(
                outcome=Outcome.RETRYABLE,
                reason="ConnectionError",
                message=f"{target.method} {shown}: {type(error).__name__}",
            )
        reason = f"HTTP{response.status}"
        return ExecutionResult(
            outcome=outcome,
            reason=reason,
            message=f"{target.method} {shown} answered {response.status}",
            retry_after_seconds=retry_after if outcome is Outcome.RETRYABLE else None,
            result={"httpStatus": response.status},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
