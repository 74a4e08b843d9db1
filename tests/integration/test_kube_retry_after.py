"""The Kubernetes API client sends a call again when the API server answers that it did not carry
it out and says when to retry (429 with Retry-After, as API Priority and Fairness and a resource
whose storage is initialising answer; a read's 5xx with Retry-After), as client-go does. A loopback
HTTP server stands in for the API server's answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from controller.adapters import kube
from controller.adapters.kube import Credentials, KubeClient, KubeError

Answer = Callable[[int], web.Response]
STORAGE_INITIALISING = (
    '{"kind":"Status","status":"Failure","message":"storage is (re)initializing","code":429}'
)


class ApiServer:
    """Answers every call with `answer(n)`, n counting the calls from 1."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer: Answer = lambda _: web.json_response({"kind": "Status"})

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(request.method)
        return self.answer(len(self.calls))


def busy(retry_after: str | None, status: int = 429) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return web.Response(
        status=status, text=STORAGE_INITIALISING, headers=headers, content_type="application/json"
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[ApiServer, KubeClient]]:
    api = ApiServer()
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = KubeClient(Credentials(f"http://127.0.0.1:{runner.addresses[0][1]}"), "test", "test", 0)
    yield api, client
    await client.close()
    await runner.cleanup()


async def test_a_call_answered_429_with_retry_after_is_sent_again_after_the_wait(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, client = server
    api.answer = lambda n: busy("1") if n == 1 else web.json_response({"items": []})
    began = time.monotonic()
    assert await client.call("GET", "/apis/relay.dev/v1alpha1/relayqueues") == {"items": []}
    assert api.calls == ["GET", "GET"] and time.monotonic() - began >= 1.0


async def test_a_write_answered_429_was_not_carried_out_and_is_sent_again(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, client = server
    api.answer = lambda n: busy("0") if n < 3 else web.json_response({"kind": "RelayJob"})
    await client.call("PATCH", "/apis/relay.dev/v1alpha1/namespaces/a/relayjobs/b/status", json=[])
    assert api.calls == ["PATCH"] * 3


async def test_a_write_answered_5xx_may_have_been_carried_out_and_is_not_sent_again(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, client = server
    api.answer = lambda _: busy("0", status=503)
    with pytest.raises(KubeError) as raised:
        await client.call("POST", "/api/v1/namespaces/a/events", json={})
    assert raised.value.status == 503 and api.calls == ["POST"]
    api.calls.clear()
    with pytest.raises(KubeError):
        await client.call("GET", "/api/v1/namespaces/a/secrets/s")
    assert api.calls == ["GET"] * kube.RETRY_AFTER_TRIES  # a read is retried like client-go's


async def test_without_retry_after_the_429_goes_to_the_caller_at_once(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, client = server
    for header in (None, "soon", "-1"):
        api.calls.clear()
        api.answer = lambda _, h=header: busy(h)  # type: ignore[misc]
        with pytest.raises(KubeError) as raised:
            await client.call("GET", "/apis/relay.dev/v1alpha1/relayqueues")
        assert raised.value.status == 429 and api.calls == ["GET"], header


async def test_retries_stop_after_the_last_try_and_long_waits_are_capped(
    server: tuple[ApiServer, KubeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, client = server
    monkeypatch.setattr(kube, "RETRY_AFTER_MAX_SECONDS", 0.05)
    api.answer = lambda _: busy("3600")
    began = time.monotonic()
    with pytest.raises(KubeError) as raised:
        await client.call("GET", "/apis/relay.dev/v1alpha1/relayqueues")
    assert raised.value.status == 429 and raised.value.retry_after == 3600
    assert len(api.calls) == kube.RETRY_AFTER_TRIES
    assert time.monotonic() - began < 5


async def test_a_readiness_check_reports_a_busy_api_server_at_once(
    server: tuple[ApiServer, KubeClient],
) -> None:
    api, client = server
    api.answer = lambda _: busy("5", status=503)
    began = time.monotonic()
    with pytest.raises(KubeError) as raised:
        await client.ping()
    assert raised.value.status == 503 and api.calls == ["GET"]
    assert time.monotonic() - began < 1
