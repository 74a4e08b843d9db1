"""A real HTTP target on loopback that behaves as each test needs and counts calls.

Paths:
  /ok                 200
  /fail/{n}           503 for the first n calls of an Idempotency-Key, then 200
  /status/{code}      always that status
  /retry-after/{s}    429 with `Retry-After: s` on the first call of a key, then 200
  /ok-retry-after/{s} 200 with `Retry-After: s` (s percent-decoded: any text a target may send)
  /hang               never answers within any sane timeout
  /hang-once          the first call of a key hangs, later ones get 200
  /hang-first/{n}     the first n calls to this path hang, later ones get 200
  /delay/{ms}         200 after ms milliseconds (work that takes time, so faults find it in flight)
  /slow/{ms}/{code}   that status after ms milliseconds (a slow attempt that fails)
Every call is recorded with its arrival time, Idempotency-Key, headers, and body (decoded JSON, or
None, and the raw bytes).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Call:
    path: str
    key: str
    at: float
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


@dataclass
class Target:
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"  # any loopback address: tests bind 127.0.0.2 and up for the egress guard
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def by_key(self) -> Counter[str]:
        return Counter(c.key for c in self.calls)

    def calls_for(self, key: str) -> list[Call]:
        return [c for c in self.calls if c.key == key]

    async def _record(self, request: web.Request) -> int:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        key = request.headers.get("Idempotency-Key", "")
        self.calls.append(Call(request.path, key, time.monotonic(), dict(request.headers), body, raw))
        return sum(1 for c in self.calls if c.key == key and c.path == request.path)

    async def _ok(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"ok": True})

    async def _fail(self, request: web.Request) -> web.Response:
        n = await self._record(request)
        if n <= int(request.match_info["n"]):
            return web.json_response({"ok": False}, status=503)
        return web.json_response({"ok": True})

    async def _status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({}, status=int(request.match_info["code"]))

    async def _retry_after(self, request: web.Request) -> web.Response:
        n = await self._record(request)
        if n == 1:
            return web.json_response({}, status=429, headers={"Retry-After": request.match_info["s"]})
        return web.json_response({"ok": True})

    async def _ok_retry_after(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"ok": True}, headers={"Retry-After": request.match_info["s"]})

    async def _hang(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(3600)
        return web.json_response({})

    async def _hang_once(self, request: web.Request) -> web.Response:
        if await self._record(request) == 1:
            await asyncio.sleep(3600)
        return web.json_response({"ok": True})

    async def _hang_first(self, request: web.Request) -> web.Response:
        await self._record(request)
        if sum(1 for c in self.calls if c.path == request.path) <= int(request.match_info["n"]):
            await asyncio.sleep(3600)
        return web.json_response({"ok": True})

    async def _delay(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.json_response({"ok": True})

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.json_response({}, status=int(request.match_info["code"]))

    async def start(self) -> Target:
        app = web.Application()
        app.router.add_route("*", "/ok", self._ok)
        app.router.add_route("*", "/fail/{n}", self._fail)
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_route("*", "/retry-after/{s}", self._retry_after)
        app.router.add_route("*", "/ok-retry-after/{s}", self._ok_retry_after)
        app.router.add_route("*", "/hang", self._hang)
        app.router.add_route("*", "/hang-once", self._hang_once)
        app.router.add_route("*", "/hang-first/{n}", self._hang_first)
        app.router.add_route("*", "/delay/{ms}", self._delay)
        app.router.add_route("*", "/slow/{ms}/{code}", self._slow)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ThreadedTarget:
    """The same target served from a thread of its own, for synchronous (e2e) tests."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading

        self.target = Target(host=host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Target:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.target.start(), self._loop).result(10)
        return self.target

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.target.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
