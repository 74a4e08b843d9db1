"""kopf's own list and watch code, through the session the operator logs in with, reading a
RelayJob nested 10,000 levels deep (the deepest the API server stores) from a canned API answer
on loopback: both decode it, cut at json_guard's bound, where plain decoding stopped kopf.

The real API server is the e2e tier's (tests/e2e/test_hostile_input.py); this one isolates kopf's
two decoding paths, which a restart and a running watch take respectively.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import auth, fetching, watching
from kopf._cogs.structs import credentials

from controller.adapters import json_guard
from controller.adapters.kube import GROUP, PLURAL, VERSION
from controller.handlers import bound_watch_decoding, bounded_session

pytestmark = pytest.mark.integration
PATH = f"/apis/{GROUP}/{VERSION}/namespaces/ns/{PLURAL}"
DEEP = 9_997


def relayjob(name: str, payload: str) -> str:
    return (
        f'{{"apiVersion":"{GROUP}/{VERSION}","kind":"RelayJob","metadata":{{"name":"{name}",'
        f'"namespace":"ns","uid":"uid-{name}","resourceVersion":"7"}},'
        f'"spec":{{"target":{{"noop":{{}}}},"payload":{payload}}}}}'
    )


DEEP_JOB = relayjob("deep", '{"root":' + "[" * DEEP + '"leaf"' + "]" * DEEP + "}")
PLAIN_JOB = relayjob("plain", '{"order":42}')


async def answer(request: web.Request) -> web.StreamResponse:
    if request.query.get("watch") != "true":
        body = (
            f'{{"kind":"RelayJobList","metadata":{{"resourceVersion":"7"}},"items":[{DEEP_JOB},{PLAIN_JOB}]}}'
        )
        return web.Response(text=body, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for job in (DEEP_JOB, PLAIN_JOB):
        await response.write(f'{{"type":"MODIFIED","object":{job}}}\n'.encode())
    return response


@pytest.fixture
async def api_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(PATH, answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    await runner.cleanup()


@pytest.fixture
async def logged_in(api_server: str) -> AsyncIterator[None]:
    """kopf's credentials as the operator's login handler gives them, for kopf's API calls."""
    bound_watch_decoding()  # as the operator does at startup
    info = bounded_session(kopf.ConnectionInfo(server=api_server))
    token = auth.vault_var.set(credentials.Vault({"operator": info}))
    yield
    auth.vault_var.reset(token)
    await info.aiohttp_session.close()


def payload_depth(job: dict[str, Any]) -> tuple[int, Any]:
    levels, node = 0, job["spec"]["payload"]["root"]
    while isinstance(node, list):
        levels, node = levels + 1, node[0]
    return levels, node


RESOURCE = kopf.Resource(GROUP, VERSION, PLURAL, namespaced=True)
LOG = logging.getLogger("test")


@pytest.mark.usefixtures("logged_in")
async def test_kopf_lists_relayjobs_of_any_depth_and_cuts_the_deep_one() -> None:
    listed = [
        obj
        async for chunk, _ in fetching.fetch_objs(
            settings=kopf.OperatorSettings(), resource=RESOURCE, namespace="ns", logger=LOG
        )
        for obj in chunk
    ]
    assert [o["metadata"]["name"] for o in listed] == ["deep", "plain"]
    assert listed[1]["spec"]["payload"] == {"order": 42}
    # items (2), the object (3), spec, payload, root: the lists below start at level 6.
    assert payload_depth(listed[0]) == (json_guard.MAX_DEPTH - 5, json_guard.TRUNCATED)


async def _watched() -> list[Any]:
    """The events kopf's own watch yields from the loopback server's stream, resumed after "7"."""
    stopper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stream = watching.watch_objs(
        settings=kopf.OperatorSettings(),
        resource=RESOURCE,
        namespace="ns",
        since="7",
        operator_pause_waiter=stopper,
    )
    return [event async for event in stream]


@pytest.mark.usefixtures("logged_in")
async def test_kopf_watches_relayjobs_of_any_depth_and_cuts_the_deep_one() -> None:
    events = await _watched()
    assert [e["object"]["metadata"]["name"] for e in events] == ["deep", "plain"]
    assert events[1]["object"]["spec"]["payload"] == {"order": 42}
    assert payload_depth(events[0]["object"]) == (json_guard.MAX_DEPTH - 4, json_guard.TRUNCATED)


@pytest.mark.usefixtures("logged_in")
async def test_kopf_gets_a_bookmark_for_a_relayjob_event_that_needs_no_handling() -> None:
    bound_watch_decoding(lambda body: body["metadata"]["name"] == "plain")
    events = await _watched()
    assert [e["type"] for e in events] == ["MODIFIED", "BOOKMARK"]
    assert events[0]["object"]["metadata"]["name"] == "deep"
    assert events[1]["object"] == {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RelayJob",
        "metadata": {"resourceVersion": "7"},
    }
