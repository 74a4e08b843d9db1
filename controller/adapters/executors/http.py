"""`target.http`: one request per attempt, and a named reason for every way it can end.

2xx succeeds. 408, 429, 5xx, connection errors, timeouts and answers that are not valid HTTP are
retryable (Retry-After honoured); any other status, a redirect, an invalid URL or header, a Secret
that is missing or not readable, and a forbidden address fail permanently. Messages name the URL with
credentials removed and never include header values: they end up in status, Events and logs.

The target is not trusted: at most `max_response_bytes` of its answer are read and the rest is
dropped with the connection, its Retry-After is read strictly, and its redirects are not followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from controller.adapters.executors.egress import EgressGuard, EgressPolicy
from controller.adapters.executors.request import (
    header_name_problem,
    header_value_problem,
    request_body,
    request_headers,
    trim_line_end,
)
from controller.adapters.executors.retry_after import parse_retry_after
from controller.model.jobs import (
    AttemptContext,
    ExecutionResult,
    Outcome,
    SecretForbidden,
    SecretNotFound,
    SecretReader,
    SecretUnavailable,
)
from controller.model.spec import HttpTarget, redact_url
from controller.settings import Settings

RETRYABLE_STATUSES = frozenset({408, 429})
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
# Room for a readable reason from the target's side (an aiohttp parser message, a Location).
_QUOTED_CHARS = 300


@dataclass(frozen=True)
class HttpConfig:
    """The operator's settings for the http executor (RELAY_HTTP_*)."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    max_connections: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpConfig:
        return cls(
            max_response_bytes=settings.http_max_response_bytes,
            egress=EgressPolicy(deny=tuple(settings.http_deny_cidrs), allow=tuple(settings.http_allow_cidrs)),
        )


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SUCCEEDED
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


def _quote(text: str) -> str:
    """Text from the target's side (or a URL) fit for a status message: one line, printable, short."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= _QUOTED_CHARS else text[: _QUOTED_CHARS - 1] + "…"


def _cannot_connect(error: aiohttp.ClientConnectorError) -> str:
    cause = error.os_error
    detail = cause.strerror or str(cause) or type(cause).__name__
    return f"cannot connect to {error.host}:{error.port}: {detail}"


def _failed(outcome: Outcome, reason: str, message: str) -> ExecutionResult:
    return ExecutionResult(outcome=outcome, reason=reason, message=message)


def _header_refusal(name: str, value: str, source: str) -> ExecutionResult | None:
    """Why header `name` cannot be sent with `value`, naming where it came from (`source`) and
    never the value; None when it can."""
    if problem := header_name_problem(name):
        return _failed(Outcome.PERMANENT, "InvalidHeaderName", f"header {name!r} {problem}")
    if problem := header_value_problem(value):
        return _failed(
            Outcome.PERMANENT,
            "InvalidHeaderValue",
            f"header {name!r} {source} {problem}; only one trailing newline is removed",
        )
    return None


@dataclass(frozen=True)
class Answer:
    """What of a target's answer decides the outcome; the body never does."""

    status: int
    location: str | None
    retry_after: str | None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read at most `limit` bytes of the body, keeping none; drop the connection if more remain.

    Reading (not just closing) lets a small answer finish, so its connection is reused, and makes a
    body that trickles in slower than the timeout end in Timeout.
    """
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(min(remaining, 2**16))
        if not chunk:
            return
        remaining -= len(chunk)
    if not response.content.at_eof():
        response.close()


class HttpExecutor:
    def __init__(
        self,
        secrets: SecretReader,
        config: HttpConfig | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        """`resolver` replaces the system's DNS (aiohttp's default) for names in URLs and proxies."""
        self._secrets = secrets
        self._config = config or HttpConfig()
        self._guard = EgressGuard(self._config.egress)
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop; one session (one bounded connection
        # pool) serves every attempt of the process.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._config.max_connections,
                    resolver=self._resolver,
                    socket_factory=self._guard.socket,
                ),
                # The body is never decoded, only counted: a compressed answer cannot expand in memory.
                auto_decompress=False,
                headers={"User-Agent": "relayjob-operator", "Accept-Encoding": "identity"},
                # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as every HTTP client in a cluster is configured.
                trust_env=True,
            )
        return self._session

    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        target = ctx.spec.target.http
        assert isinstance(target, HttpTarget)
        call = f"{target.method} {_quote(redact_url(target.url))}"
        try:
            url = URL(target.url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("scheme must be http or https and a host is required")
        except ValueError as error:
            return _failed(Outcome.PERMANENT, "InvalidURL", f"{call}: {error}")
        given = await self._headers(ctx, target)
        if isinstance(given, ExecutionResult):
            return given
        try:
            body = request_body(target.method, ctx.spec.payload)
        except (ValueError, RecursionError) as error:
            return _failed(Outcome.PERMANENT, "InvalidPayload", f"payload cannot be sent as JSON: {error}")
        headers = request_headers(ctx, given, body is not None)
        with self._guard.watching() as refused:
            try:
                answer = await self._send(target.method, url, headers, body, ctx.spec.timeout_seconds)
            except TimeoutError:
                return _failed(
                    Outcome.RETRYABLE,
                    "Timeout",
                    f"{call}: no complete answer within {ctx.spec.timeout_seconds:g}s",
                )
            except aiohttp.InvalidURL as error:
                return _failed(Outcome.PERMANENT, "InvalidURL", f"{call}: {error.description or 'invalid'}")
            except aiohttp.ClientConnectorError as error:
                # No address connected and the guard refused one: the name points somewhere it must
                # not, which no retry changes (an allowed address that answered would have won).
                if refused:
                    return _failed(Outcome.PERMANENT, "TargetForbidden", f"{call}: {'; '.join(refused)}")
                return _failed(
                    Outcome.RETRYABLE, "ConnectionError", f"{call}: {_quote(_cannot_connect(error))}"
                )
            except aiohttp.ClientHttpProxyError as error:
                return _failed(
                    Outcome.RETRYABLE, "ConnectionError", f"{call}: the proxy answered {error.status}"
                )
            except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as error:
                text = error.message if isinstance(error, aiohttp.ClientResponseError) else str(error)
                return _failed(
                    Outcome.RETRYABLE,
                    "InvalidResponse",
                    f"{call}: the answer is not valid HTTP: {_quote(text)}",
                )
            except (aiohttp.ClientError, OSError) as error:
                text = str(error) or type(error).__name__
                return _failed(Outcome.RETRYABLE, "ConnectionError", f"{call}: {_quote(text)}")
        return judge(call, answer)

    async def _headers(self, ctx: AttemptContext, target: HttpTarget) -> dict[str, str] | ExecutionResult:
        """The user's headers, literal and from Secrets, each checked; or the reason one cannot go."""
        headers: dict[str, str] = {}
        for name, given in target.headers.items():
            value = trim_line_end(given)
            if refusal := _header_refusal(name, value, "of target.http.headers"):
                return refusal
            headers[name] = value
        namespace = ctx.ref.namespace
        for item in target.headers_from:
            ref = item.secret_key_ref
            if problem := header_name_problem(item.name):  # before the Secret is read at all
                return _failed(Outcome.PERMANENT, "InvalidHeaderName", f"header {item.name!r} {problem}")
            try:
                value = trim_line_end(await self._secrets.read_secret_key(namespace, ref.name, ref.key))
            except SecretNotFound as error:
                return _failed(Outcome.PERMANENT, "SecretNotFound", f"header {item.name!r}: {error}")
            except SecretForbidden as error:
                return _failed(Outcome.PERMANENT, "SecretForbidden", f"header {item.name!r}: {error}")
            except SecretUnavailable as error:
                return _failed(Outcome.RETRYABLE, "SecretUnavailable", f"header {item.name!r}: {error}")
            source = f"from Secret {namespace}/{ref.name} key {ref.key!r}"
            if refusal := _header_refusal(item.name, value, source):
                return refusal
            headers[item.name] = value
        return headers

    async def _send(
        self,
        method: str,
        url: URL,
        headers: aiohttp.typedefs.LooseHeaders,
        body: bytes | None,
        timeout: float,
    ) -> Answer:
        async with self._client().request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            await _read_capped(response, self._config.max_response_bytes)
            return Answer(
                response.status, response.headers.get("Location"), response.headers.get("Retry-After")
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def judge(call: str, answer: Answer) -> ExecutionResult:
    """The outcome of an attempt that got an answer."""
    status = answer.status
    result = {"httpStatus": status}
    if 300 <= status < 400:
        where = _quote(redact_url(answer.location)) if answer.location else "no Location"
        return ExecutionResult(
            outcome=Outcome.PERMANENT,
            reason="Redirect",
            message=f"{call} answered {status}, a redirect to {where}; redirects are not followed, "
            "so target.http.url must name the final address",
            result=result,
        )
    outcome = classify_status(status)
    # A Retry-After on an answer that is not retried means nothing and is never read.
    retry_after = parse_retry_after(answer.retry_after) if outcome is Outcome.RETRYABLE else None
    return ExecutionResult(
        outcome=outcome,
        reason=f"HTTP{status}",
        message=f"{call} answered {status}",
        retry_after_seconds=retry_after,
        result=result,
    )
