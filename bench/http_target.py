"""The HTTP section's target: one loopback server, in a process of its own, shared by every system
measured; it answers each request `200 ok` after DELAY_S.

    python -m bench.http_target DELAY_S

Once listening it prints one JSON line, {"port", "control_port"}, and serves until SIGTERM. It
counts the TCP connections it accepts and the requests it answers on `port`. The control port
(a listener of its own, so asking does not count) answers `GET /stats` with those counts and
`POST /reset` by zeroing them, which the section does before each run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass

from aiohttp import web

LOOPBACK = "127.0.0.1"
# 200 clients connecting at once must not overflow the accept queue: a dropped SYN is retried
# after a second, which would show as the target's latency.
BACKLOG = 4096


@dataclass
class Counts:
    accepted: int = 0
    requests: int = 0


async def serve(delay: float) -> None:
    counts = Counts()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(delay)
        counts.requests += 1
        return web.Response(text="ok")

    async def control(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/reset":
            counts.accepted = counts.requests = 0
        return web.json_response(asdict(counts))

    target = web.Server(answer)
    loop = asyncio.get_running_loop()

    def accept() -> asyncio.Protocol:
        counts.accepted += 1
        return target()

    listener = await loop.create_server(accept, LOOPBACK, 0, backlog=BACKLOG)
    controller = await loop.create_server(web.Server(control), LOOPBACK, 0)
    ports = {"port": _port(listener), "control_port": _port(controller)}
    print(json.dumps(ports), flush=True)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    listener.close()
    controller.close()
    await target.shutdown(1.0)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


if __name__ == "__main__":
    asyncio.run(serve(float(sys.argv[1])))
