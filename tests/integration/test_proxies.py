"""The Kubernetes API client goes through HTTPS_PROXY unless NO_PROXY names the server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from controller.adapters.kube import Credentials, KubeClient
from devtools.pki import PKI, ensure_pki
from tests.support.proxy import ConnectProxy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return ensure_pki(tmp_path_factory.mktemp("proxy-pki") / "pki")


@pytest.fixture
async def api_server(pki: PKI) -> AsyncIterator[str]:
    """An HTTPS server on loopback that answers /readyz as the API server does."""

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_get("/readyz", readyz)
    runner = web.AppRunner(application)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    server = ConnectProxy()
    await server.start()
    yield server
    await server.close()


async def _ping(server: str, ca: Path) -> None:
    client = KubeClient(Credentials(server, ca_path=str(ca)), "test", "test", 0)
    try:
        await client.ping()
    finally:
        await client.close()


async def test_the_api_client_tunnels_through_https_proxy(
    api_server: str, proxy: ConnectProxy, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    await _ping(api_server, pki.ca_cert)
    assert proxy.tunnels == [api_server.removeprefix("https://")]


async def test_no_proxy_sends_the_api_client_around_the_proxy(
    api_server: str, proxy: ConnectProxy, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    await _ping(api_server, pki.ca_cert)
    assert proxy.tunnels == []


async def test_a_netrc_entry_for_the_api_server_does_not_break_token_auth(
    api_server: str, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's `trust_env` also reads ~/.netrc on every request, and a login found there for the
    # API server's host collided with the Bearer token: every call raised ValueError.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    client = KubeClient(Credentials(api_server, ca_path=str(pki.ca_cert), token="t"), "test", "test", 0)
    try:
        await client.ping()
    finally:
        await client.close()
