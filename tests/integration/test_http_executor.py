"""The http executor against real HTTP servers on loopback that misbehave as hostile targets do.

Every server here is an aiohttp (or raw asyncio) server the test starts on 127.0.0.0/8, and every
name is answered by `LoopbackResolver`, never by DNS: even a broken egress guard cannot send a
packet off this machine. The tests that need the whole pipeline run it on real Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from controller.adapters.executors.egress import EgressPolicy
from controller.adapters.executors.http import HttpConfig, HttpExecutor
from controller.model.jobs import (
    AttemptContext,
    JobRef,
    Outcome,
    SecretForbidden,
    SecretUnavailable,
)
from controller.model.phases import Phase
from controller.model.spec import RelayJobSpec
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, running, submit_http

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class Server:
    host: str
    port: int
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def serving(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Server]:
    """An aiohttp server on `host` (a loopback address) that records each request, then runs `handler`."""
    server = Server(host, port)

    async def record(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        server.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    assert site._server is not None
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await runner.cleanup()


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


class LoopbackResolver(AbstractResolver):
    """Names made up for a test, answered from `answers` without DNS; any other name fails."""

    def __init__(self, answers: dict[str, Callable[[], str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(f"{host} is not a name this test answers")
        address = self.answers[host]()
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def attempt(
    url: str,
    *,
    method: str = "POST",
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    headers_from: list[dict[str, Any]] | None = None,
    timeout: float = 5.0,
    key: str = "key-1",
) -> AttemptContext:
    http: dict[str, Any] = {
        "url": url,
        "method": method,
        "headers": headers or {},
        "headersFrom": headers_from or [],
    }
    spec = RelayJobSpec.model_validate(
        {"target": {"http": http}, "payload": payload or {}, "timeoutSeconds": timeout}
    )
    ref = JobRef(uid=uuid.uuid4(), namespace="team-a", name="notify")
    return AttemptContext(ref=ref, spec=spec, attempt=2, idempotency_key=key)


@contextlib.asynccontextmanager
async def executor(
    secrets: Any = None, config: HttpConfig | None = None, names: dict[str, Callable[[], str]] | None = None
) -> AsyncIterator[HttpExecutor]:
    http = HttpExecutor(secrets or RecordingCluster(), config, resolver=LoopbackResolver(names or {}))
    try:
        yield http
    finally:
        await http.close()


def from_secret(header: str, name: str = "hook", key: str = "token") -> list[dict[str, Any]]:
    return [{"name": header, "secretKeyRef": {"name": name, "key": key}}]


# --- the request a target receives -------------------------------------------------------------


async def test_body_is_exactly_the_payload_with_numbers_as_held() -> None:
    held = (
        '{"order": 42, "huge": 123456789012345678901234567890123, "tiny": 1e-300, "far": 1e300, '
        '"pi": 3.14159, "text": "ü東😀\\u0000", "list": [true, null, -0.0]}'
    )
    payload = json.loads(held)
    async with serving(ok) as server, executor() as http:
        result = await http.execute(attempt(server.url("/hook"), payload=payload))
    assert result.outcome is Outcome.SUCCEEDED, result
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.raw) == payload
    text = seen.raw.decode()
    assert "123456789012345678901234567890123" in text and "1e+300" in text and "1e-300" in text
    assert "ü東😀" in text and '"payload"' not in text and '"job"' not in text


async def test_identity_goes_in_headers() -> None:
    async with serving(ok) as server, executor() as http:
        ctx = attempt(server.url(), key="order-42-notified")
        await http.execute(ctx)
    (seen,) = server.seen
    assert seen.headers["Idempotency-Key"] == "order-42-notified"
    assert seen.headers["Relay-Job-Namespace"] == "team-a"
    assert seen.headers["Relay-Job-Name"] == "notify"
    assert seen.headers["Relay-Job-Uid"] == str(ctx.ref.uid)
    assert seen.headers["Relay-Attempt"] == "2"


async def test_get_and_delete_carry_no_body() -> None:
    async with serving(ok) as server, executor() as http:
        for method in ("GET", "DELETE"):
            await http.execute(attempt(server.url(), method=method, payload={"a": 1}))
    assert [(s.method, s.raw) for s in server.seen] == [("GET", b""), ("DELETE", b"")]
    assert all("Content-Type" not in s.headers for s in server.seen)


# --- header values from Secrets and literal ones ---------------------------------------------------


async def test_a_secret_ending_in_a_newline_is_sent_without_it() -> None:
    cluster = RecordingCluster()
    cluster.secrets[("team-a", "hook")] = {"token": "Bearer s3cret\n", "crlf": "s3cret\r\n"}
    async with serving(ok) as server, executor(cluster) as http:
        ctx = attempt(
            server.url(),
            headers_from=from_secret("Authorization") + from_secret("X-Other", key="crlf"),
            headers={"X-Literal": "block scalar\n"},
        )
        result = await http.execute(ctx)
    assert result.outcome is Outcome.SUCCEEDED, result
    (seen,) = server.seen
    assert seen.headers["Authorization"] == "Bearer s3cret"
    assert seen.headers["X-Other"] == "s3cret" and seen.headers["X-Literal"] == "block scalar"


@pytest.mark.parametrize(
    "value", ["hunter2\nX-Injected: yes", "hunter2\n\n", "hun\x00ter2", "hunter2\r", "hun\x85ter2"]
)
async def test_a_control_character_in_a_secret_fails_permanently_before_any_request(value: str) -> None:
    cluster = RecordingCluster()
    cluster.secrets[("team-a", "hook")] = {"token": value}
    async with serving(ok) as server, executor(cluster) as http:
        result = await http.execute(attempt(server.url(), headers_from=from_secret("Authorization")))
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, "InvalidHeaderValue")
    assert "Authorization" in result.message and "Secret team-a/hook key 'token'" in result.message
    assert "hunter" not in result.message and "ter2" not in result.message
    assert server.seen == []


async def test_bad_literal_header_names_and_values_fail_before_any_request() -> None:
    async with serving(ok) as server, executor() as http:
        bad_value = await http.execute(attempt(server.url(), headers={"X-Token": "a\rb"}))
        bad_name = await http.execute(attempt(server.url(), headers={"X Token": "a"}))
        framing = await http.execute(attempt(server.url(), headers={"Content-Length": "2"}))
    assert (bad_value.outcome, bad_value.reason) == (Outcome.PERMANENT, "InvalidHeaderValue")
    assert "X-Token" in bad_value.message and "U+000D" in bad_value.message
    assert (bad_name.reason, framing.reason) == ("InvalidHeaderName", "InvalidHeaderName")
    assert "set by the operator" in framing.message
    assert server.seen == []


class Unreadable:
    """The two ways reading a Secret fails besides its absence, as adapters.kube reports them."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        if name == "forbidden":
            raise SecretForbidden(f"Secret {namespace}/{name} is not readable by the operator (forbidden)")
        raise SecretUnavailable(f"Secret {namespace}/{name} could not be read: 0: connection refused")


async def test_secrets_that_cannot_be_read_have_named_reasons() -> None:
    async with serving(ok) as server, executor(Unreadable()) as http:
        forbidden = await http.execute(
            attempt(server.url(), headers_from=from_secret("X-A", name="forbidden"))
        )
        unavailable = await http.execute(attempt(server.url(), headers_from=from_secret("X-A", name="later")))
    assert (forbidden.outcome, forbidden.reason) == (Outcome.PERMANENT, "SecretForbidden")
    assert (unavailable.outcome, unavailable.reason) == (Outcome.RETRYABLE, "SecretUnavailable")
    assert "team-a/forbidden" in forbidden.message and server.seen == []


# --- what the target answers ---------------------------------------------------------------------


def vm_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def restart_peak_rss() -> None:
    """VmHWM (the peak RSS) counts from now on (proc(5), /proc/pid/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


async def test_a_300_mib_answer_is_read_no_further_than_the_cap() -> None:
    chunk = b"x" * MIB
    sent = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Length": str(300 * MIB)})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(300):
                await response.write(chunk)
                sent += len(chunk)
        return response

    async with serving(huge) as server, executor(config=HttpConfig(max_response_bytes=64 * 1024)) as http:
        await http.execute(attempt(server.url("/warm-up"), timeout=60))  # connection and code paths
        sent = 0
        before = vm_kib("VmRSS")
        restart_peak_rss()
        result = await http.execute(attempt(server.url("/huge"), timeout=60))
        peak = vm_kib("VmHWM")
    assert result.outcome is Outcome.SUCCEEDED and result.reason == "HTTP200", result
    assert peak - before < 20 * 1024, f"RSS grew by {(peak - before) // 1024} MiB reading the answer"
    assert sent < 64 * MIB, f"{sent // MIB} MiB were sent before the connection was dropped"


async def test_an_answer_slower_than_the_timeout_is_a_timeout() -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                await response.write(b"x")
                await asyncio.sleep(0.1)
        return response

    async with serving(trickle) as server, executor() as http:
        result = await asyncio.wait_for(http.execute(attempt(server.url(), timeout=0.5)), 5)
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "Timeout")
    assert "0.5s" in result.message


async def test_a_redirect_fails_permanently_naming_its_location_without_credentials() -> None:
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(
            status=302, headers={"Location": "https://bob:hunter2@elsewhere.test/in?token=abc"}
        )

    async with serving(redirect) as server, executor() as http:
        result = await http.execute(attempt(server.url()))
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, "Redirect")
    assert "302" in result.message and "elsewhere.test/in" in result.message
    assert "hunter2" not in result.message and "abc" not in result.message
    assert len(server.seen) == 1  # not followed


async def test_answers_that_are_not_http_and_closed_connections_are_named() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]  # bound, never listening: connections are refused
        async with raw, executor() as http:
            invalid = await http.execute(attempt(f"http://127.0.0.1:{port}/"))
            refused = await http.execute(attempt(f"http://127.0.0.1:{closed_port}/"))
    assert (invalid.outcome, invalid.reason) == (Outcome.RETRYABLE, "InvalidResponse")
    assert "not valid HTTP" in invalid.message
    assert (refused.outcome, refused.reason) == (Outcome.RETRYABLE, "ConnectionError")
    assert f"127.0.0.1:{closed_port}" in refused.message


async def submit_hook(app: App, cluster: RecordingCluster, url: str, **spec: Any) -> JobRef:
    """A job named `hook` calling `url`, retried after 0.2 s unless `spec` says otherwise."""
    backoff = {"backoff": {"initialSeconds": 0.2, "jitter": False}}
    return await submit_http(app, cluster, url, "hook", **(backoff | spec))


async def finished(app: App, ref: JobRef) -> Phase:
    async def terminal() -> bool:
        row = await app.ledger.get(ref.uid)
        return row is not None and row.phase.terminal

    await eventually(terminal, timeout=30)
    row = await app.ledger.get(ref.uid)
    assert row is not None
    return row.phase


async def test_retry_after_superscript_on_a_success_completes_with_one_call(
    app: App, cluster: RecordingCluster
) -> None:
    async def success_with_nonsense(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"Retry-After": "²"})

    async with serving(success_with_nonsense) as server, running(app):
        ref = await submit_hook(app, cluster, server.url(), maxAttempts=3)
        assert await finished(app, ref) is Phase.COMPLETED
    assert len(server.seen) == 1


# --- the egress guard, end to end on loopback addresses ------------------------------------------

DENY_SECOND = HttpConfig(egress=EgressPolicy(deny=(ip_network("127.0.0.2/32"),)))


async def test_a_denied_address_is_refused_at_connection_time_whether_literal_or_named() -> None:
    async with (
        serving(ok, host="127.0.0.2") as denied,
        executor(config=DENY_SECOND, names={"hooks.test": lambda: "127.0.0.2"}) as http,
    ):
        literal = await http.execute(attempt(denied.url()))
        named = await http.execute(attempt(denied.url(host="hooks.test")))
    for result in (literal, named):
        assert (result.outcome, result.reason) == (Outcome.PERMANENT, "TargetForbidden"), result
        assert "127.0.0.2 is in RELAY_HTTP_DENY_CIDRS (127.0.0.2/32)" in result.message
    assert denied.seen == []


async def test_a_name_that_changes_its_answer_cannot_slip_through() -> None:
    """DNS rebinding: each lookup of the name alternates between an allowed and a denied address. A
    guard that looked the name up to check it, and let the connection look it up again, would check
    one answer and connect to the other; the denied server would see requests."""
    answers = iter(["127.0.0.1", "127.0.0.2"] * 10)
    async with serving(ok) as allowed, serving(ok, host="127.0.0.2", port=allowed.port) as denied:
        outcomes = []
        for _ in range(6):
            # A fresh client each time: no DNS cache or kept-alive connection carries an answer over.
            async with executor(config=DENY_SECOND, names={"rebind.test": lambda: next(answers)}) as http:
                result = await http.execute(attempt(allowed.url(host="rebind.test")))
                outcomes.append(result.reason)
    assert denied.seen == [], "a request reached the denied address"
    assert sorted(set(outcomes)) == ["HTTP200", "TargetForbidden"], outcomes
    assert len(allowed.seen) == outcomes.count("HTTP200")


async def test_an_allow_list_refuses_every_other_address() -> None:
    only_first = HttpConfig(egress=EgressPolicy(allow=(ip_network("127.0.0.1/32"),)))
    async with (
        serving(ok) as allowed,
        serving(ok, host="127.0.0.3") as other,
        executor(config=only_first) as http,
    ):
        good = await http.execute(attempt(allowed.url()))
        bad = await http.execute(attempt(other.url()))
    assert good.outcome is Outcome.SUCCEEDED
    assert (bad.outcome, bad.reason) == (Outcome.PERMANENT, "TargetForbidden")
    assert "127.0.0.3 is outside RELAY_HTTP_ALLOW_CIDRS" in bad.message
    assert other.seen == [] and len(allowed.seen) == 1


async def test_through_a_proxy_the_guard_judges_the_proxys_address(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(ok) as proxy:
        # Nothing listens at the target: only the proxy (a plain recorder here) could answer.
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with executor(config=DENY_SECOND) as http:
            via_proxy = await http.execute(attempt("http://127.0.0.2:9/hook"))
        deny_proxy = HttpConfig(egress=EgressPolicy(deny=(ip_network("127.0.0.1/32"),)))
        async with executor(config=deny_proxy) as http:
            proxy_denied = await http.execute(attempt("http://127.0.0.2:9/hook"))
    assert via_proxy.outcome is Outcome.SUCCEEDED, via_proxy
    assert proxy.seen[0].path == "/hook" and len(proxy.seen) == 1
    assert (proxy_denied.reason, "127.0.0.1" in proxy_denied.message) == ("TargetForbidden", True)


async def test_no_proxy_sends_a_target_around_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(ok) as proxy, serving(ok, host="127.0.0.2") as direct:
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        monkeypatch.setenv("NO_PROXY", "127.0.0.2")
        monkeypatch.delenv("no_proxy", raising=False)
        async with executor() as http:
            result = await http.execute(attempt(direct.url("/around")))
    assert result.outcome is Outcome.SUCCEEDED, result
    assert proxy.seen == [] and [s.path for s in direct.seen] == ["/around"]


async def test_a_netrc_lends_no_credentials_to_targets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The operator's own ~/.netrc (a base image's, a debugging session's) is not the users': a
    target never receives its credentials as Basic auth."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login operator password not-for-targets\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with serving(ok) as target, executor() as http:
        result = await http.execute(attempt(target.url("/hook")))
    assert result.outcome is Outcome.SUCCEEDED, result
    assert "Authorization" not in target.seen[0].headers


async def test_egress_settings_reach_the_executor(settings: Settings, cluster: RecordingCluster) -> None:
    denying = settings.model_copy(update={"http_deny_cidrs": [ip_network("127.0.0.2/32")]})
    app = await App.assemble(denying, cluster, "test-worker")
    try:
        async with serving(ok, host="127.0.0.2") as denied, running(app):
            ref = await submit_hook(app, cluster, denied.url(), maxAttempts=3)
            assert await finished(app, ref) is Phase.DEAD_LETTERED
            row = await app.ledger.get(ref.uid)
    finally:
        await app.close()
    assert row is not None and row.attempts == 1
    assert row.last_error is not None and row.last_error.startswith("TargetForbidden")
    assert denied.seen == []
