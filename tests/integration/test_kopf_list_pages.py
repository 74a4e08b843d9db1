"""kopf's own list code, through the session the operator logs in with, against a canned API server
on loopback that answers a list of RelayJobs in two pages: each page goes through the operator's
page handler before kopf sees it, kopf delivers only what the handler leaves, and kopf does not ask
for the next page until the handler is done (the list waits for the handling, so a list of
100,000 RelayJobs cannot pile up in memory)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import auth, fetching
from kopf._cogs.structs import credentials

from controller.adapters.kube import GROUP, PLURAL, VERSION
from controller.handlers import bounded_session

pytestmark = pytest.mark.integration
PATH = f"/apis/{GROUP}/{VERSION}/namespaces/ns/{PLURAL}"
PAGES = {"": (["a", "b"], "page-2"), "page-2": (["c", "d"], "")}
RESOURCE = kopf.Resource(GROUP, VERSION, PLURAL, namespaced=True)
LOG = logging.getLogger("test")


def relayjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RelayJob",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "7"},
        "spec": {"target": {"noop": {}}},
    }


class PagedServer:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def answer(self, request: web.Request) -> web.Response:
        token = request.query.get("continue", "")
        self.asked.append(token)
        names, next_token = PAGES[token]
        return web.json_response(
            {
                "kind": "RelayJobList",
                "metadata": {"resourceVersion": "7", "continue": next_token},
                "items": [relayjob(name) for name in names],
            }
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[PagedServer, str]]:
    paged = PagedServer()
    app = web.Application()
    app.router.add_get(PATH, paged.answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    yield paged, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    await runner.cleanup()


async def test_each_page_of_relayjobs_is_handled_before_kopf_reads_the_next_and_sees_only_the_rest(
    server: tuple[PagedServer, str],
) -> None:
    paged, url = server
    handled: list[list[str]] = []
    first, release = asyncio.Event(), asyncio.Event()

    async def page(items: list[Any]) -> list[Any]:
        handled.append([item["metadata"]["name"] for item in items])
        if len(handled) == 1:
            first.set()
            await release.wait()
        return [item for item in items if item["metadata"]["name"] in ("b", "c")]

    info = bounded_session(kopf.ConnectionInfo(server=url), page)
    token = auth.vault_var.set(credentials.Vault({"operator": info}))
    settings = kopf.OperatorSettings()
    settings.watching.chunk_size = 2
    try:

        async def listed() -> list[str]:
            return [
                obj["metadata"]["name"]
                async for chunk, _ in fetching.fetch_objs(
                    settings=settings, resource=RESOURCE, namespace="ns", logger=LOG
                )
                for obj in chunk
            ]

        listing = asyncio.create_task(listed())
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(0.2)
        assert paged.asked == [""], "kopf asked for the next page while the first was being handled"
        release.set()
        assert await asyncio.wait_for(listing, 10) == ["b", "c"]
        assert handled == [["a", "b"], ["c", "d"]]
        assert paged.asked == ["", "page-2"]
    finally:
        auth.vault_var.reset(token)
        await info.aiohttp_session.close()
