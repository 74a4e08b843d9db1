"""`target.http`: one request per attempt, and a named reason for every way it can end.

2xx succeeds. 408, 429, 5xx (or the statuses of `retryableStatuses`), connection errors, timeouts and
answers that are not valid HTTP are retryable (Retry-After honoured); any other status, a redirect,
an invalid URL or header, a Secret that is missing or not readable, a signing key that is not one,
and a forbidden address fail permanently. Messages name the URL with credentials removed and never
include header values: they end up in status, Events and logs.

The target is not trusted: at most `max_response_bytes` of its answer are read and the rest is
dropped with the connection, its Retry-After is read strictly, and its redirects are not followed.
Of the body, only the first `captureResponse.maxBytes` are kept, and only when asked; response
headers never are (a target may echo credentials in them).
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.request import proxy_bypass

import aiohttp
from aiohttp.helpers import ProxyInfo, proxies_from_env
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
from controller.adapters.executors.signing import SIGNATURE_HEADERS, signature_headers, signing_key_problem
from controller.model.jobs import (
    AttemptContext,
    ExecutionResult,
    Outcome,
    SecretForbidden,
    SecretNotFound,
    SecretReader,
    SecretUnavailable,
)
from controller.model.spec import HttpTarget, SecretKeyRef, redact_url
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


def classify_status(status: int, retryable: Collection[int] | None = None) -> Outcome:
    """`retryable` is `target.http.retryableStatuses`, which replaces 408, 429 and 5xx when given."""
    if 200 <= status < 300:
        return Outcome.SUCCEEDED
    if retryable is None:
        return Outcome.RETRYABLE if status in RETRYABLE_STATUSES or status >= 500 else Outcome.PERMANENT
    return Outcome.RETRYABLE if status in retryable else Outcome.PERMANENT


# A target's URL is parsed, redacted and quoted once per URL, not per attempt: many jobs share one,
# and per attempt these were 5% of the executor's CPU in a profile of the bench's http section.
@functools.lru_cache(maxsize=1024)
def _call(method: str, url: str) -> str:
    """`METHOD url` for messages: the URL redacted and quoted."""
    return f"{method} {_quote(redact_url(url))}"


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> URL:
    """The URL as aiohttp takes it; raises ValueError for one an attempt cannot be sent to."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("scheme must be http or https and a host is required")
    return parsed


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
    # The first bytes of the body, as many as `captureResponse.maxBytes` asks (none by default).
    body: bytes = b""


async def _read_capped(response: aiohttp.ClientResponse, limit: int, keep: int) -> bytes:
    """Read at most `limit` bytes of the body, keeping the first `keep` of them; drop the connection
    if more remain.

    Reading (not just closing) lets a small answer finish, so its connection is reused, and makes a
    body that trickles in slower than the timeout end in Timeout.
    """
    kept = bytearray()
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(min(remaining, 2**16))
        if not chunk:
            return bytes(kept)
        kept += chunk[: max(0, keep - len(kept))]
        remaining -= len(chunk)
    if not response.content.at_eof():
        response.close()
    return bytes(kept)


def captured_text(body: bytes) -> str:
    """The captured bytes as text: invalid UTF-8 replaced, and a character the cut split dropped."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(body, final=False)


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
        self._proxies: dict[str, ProxyInfo] = {}

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
                # No trust_env: it costs two thread hops per request (a ~/.netrc read and a proxy
                # lookup, 12% of the worker's time relaying http jobs in bench/relay_http.py) and
                # would lend the netrc's credentials to users' targets. `_proxy` does the lookup.
                trust_env=False,
            )
            # HTTPS_PROXY / HTTP_PROXY as every HTTP client in a cluster is configured, read once
            # (a pod's environment does not change), with the function aiohttp's trust_env uses.
            self._proxies = proxies_from_env()
        return self._session

    def _proxy(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy for `url` (and its credentials), or None when NO_PROXY exempts its host or no
        proxy is set for its scheme: trust_env's rule (aiohttp `get_env_proxy_for_url`)."""
        info = self._proxies.get(url.scheme)
        if info is None or (url.host is not None and proxy_bypass(url.host)):
            return None, None
        return info.proxy, info.proxy_auth

    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        target = ctx.spec.target.http
        assert isinstance(target, HttpTarget)
        call = _call(target.method, target.url)
        try:
            url = _parsed(target.url)
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
        if target.signing is not None:
            secret = await self._signing_key(ctx, target)
            if isinstance(secret, ExecutionResult):
                return secret
            # Signed as late as possible: the timestamp is this attempt's.
            headers.update(signature_headers(secret, str(ctx.ref.uid), body, datetime.now(UTC)))
        keep = target.capture_response.max_bytes if target.capture_response else 0
        with self._guard.watching() as refused:
            try:
                answer = await self._send(target.method, url, headers, body, ctx.spec.timeout_seconds, keep)
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
        return judge(call, answer, target.retryable_statuses, target.capture_response is not None)

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
            secret = await self._secret_value(namespace, ref, f"header {item.name!r}")
            if isinstance(secret, ExecutionResult):
                return secret
            source = f"from Secret {namespace}/{ref.name} key {ref.key!r}"
            if refusal := _header_refusal(item.name, secret, source):
                return refusal
            headers[item.name] = secret
        if target.signing is not None:
            for name in headers:
                if name.lower() in SIGNATURE_HEADERS:
                    return _failed(
                        Outcome.PERMANENT,
                        "InvalidHeaderName",
                        f"header {name!r} is set by the operator when target.http.signing is given",
                    )
        return headers

    async def _secret_value(self, namespace: str, ref: SecretKeyRef, what: str) -> str | ExecutionResult:
        """A Secret's value, one trailing newline removed; or why it cannot be read, as the
        attempt's outcome (`what` names the field that refers to it)."""
        try:
            return trim_line_end(await self._secrets.read_secret_key(namespace, ref.name, ref.key))
        except SecretNotFound as error:
            return _failed(Outcome.PERMANENT, "SecretNotFound", f"{what}: {error}")
        except SecretForbidden as error:
            return _failed(Outcome.PERMANENT, "SecretForbidden", f"{what}: {error}")
        except SecretUnavailable as error:
            return _failed(Outcome.RETRYABLE, "SecretUnavailable", f"{what}: {error}")

    async def _signing_key(self, ctx: AttemptContext, target: HttpTarget) -> str | ExecutionResult:
        """The signing key from its Secret, checked; or the reason it cannot sign. Never shown."""
        assert target.signing is not None
        ref = target.signing.secret_key_ref
        namespace = ctx.ref.namespace
        what = "target.http.signing"
        secret = await self._secret_value(namespace, ref, what)
        if isinstance(secret, ExecutionResult):
            return secret
        if problem := signing_key_problem(secret):
            return _failed(
                Outcome.PERMANENT,
                "InvalidSigningKey",
                f"{what}: Secret {namespace}/{ref.name} key {ref.key!r} {problem}",
            )
        return secret

    async def _send(
        self,
        method: str,
        url: URL,
        headers: aiohttp.typedefs.LooseHeaders,
        body: bytes | None,
        timeout: float,
        keep: int,
    ) -> Answer:
        client = self._client()
        proxy, proxy_auth = self._proxy(url)
        async with client.request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
        ) as response:
            kept = await _read_capped(response, self._config.max_response_bytes, keep)
            return Answer(
                response.status, response.headers.get("Location"), response.headers.get("Retry-After"), kept
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def judge(
    call: str, answer: Answer, retryable: Collection[int] | None = None, capture: bool = False
) -> ExecutionResult:
    """The outcome of an attempt that got an answer: `retryable` replaces the default retryable
    statuses when given, and `capture` keeps the answer's captured body in the result."""
    status = answer.status
    result: dict[str, object] = {"httpStatus": status}
    if capture:
        result["body"] = captured_text(answer.body)
    if 300 <= status < 400:
        where = _quote(redact_url(answer.location)) if answer.location else "no Location"
        return ExecutionResult(
            outcome=Outcome.PERMANENT,
            reason="Redirect",
            message=f"{call} answered {status}, a redirect to {where}; redirects are not followed, "
            "so target.http.url must name the final address",
            result=result,
        )
    outcome = classify_status(status, retryable)
    # A Retry-After on an answer that is not retried means nothing and is never read.
    retry_after = parse_retry_after(answer.retry_after) if outcome is Outcome.RETRYABLE else None
    return ExecutionResult(
        outcome=outcome,
        reason=f"HTTP{status}",
        message=f"{call} answered {status}",
        retry_after_seconds=retry_after,
        result=result,
    )
