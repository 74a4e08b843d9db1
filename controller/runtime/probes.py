"""HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz, /metrics.

/readyz answers 503 when Redis, PostgreSQL, the API server or the RelayJob watch does not; it
also says, as `secretPolicy`, what start-up found of the Secret-reference admission policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.runtime.app import App


def build(app: App, watching: Callable[[], str | None]) -> web.Application:
    """`watching` returns None while the resource watch is healthy, else why it is not."""

    async def healthz(_: web.Request) -> web.Response:
        problem = watching()
        if problem:
            return web.json_response({"ok": False, "watch": problem}, status=503)
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        checks = await app.ping()
        problem = watching()
        checks["watch"] = problem or "ok"
        ok = all(v == "ok" for v in checks.values())
        # Reported, never a reason to be unready: taking the pod out of its Service would not
        # install the policy, and RELAY_REQUIRE_SECRET_POLICY already refuses to start without it.
        if app.secret_policy is not None:
            checks["secretPolicy"] = app.secret_policy.readiness()
        return web.Response(
            text=json.dumps(checks), status=200 if ok else 503, content_type="application/json"
        )

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(app.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    web_app = web.Application()
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics)
    return web_app


async def serve(web_app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
