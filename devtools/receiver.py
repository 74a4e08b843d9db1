"""A webhook target on loopback for trying the operator: it prints each request it gets and answers.

    .venv/bin/python -m devtools.receiver [--port 8000] [--fail-first N]

Answers 200 with `{"received": true}`; with `--fail-first N` it answers 503 to the first N
requests of each Idempotency-Key first, so a job shows `Retrying` before it completes. Each
request is printed on one line: method, path, the relay headers, and the body as sent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

from aiohttp import web

RELAY_HEADERS = ("Idempotency-Key", "Relay-Job-Namespace", "Relay-Job-Name", "Relay-Attempt")


def application(fail_first: int = 0, out: list[str] | None = None) -> web.Application:
    """The receiver's app; each request's line goes to `out` when given, else to stdout."""
    seen: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        body = (await request.read()).decode(errors="replace")
        key = request.headers.get("Idempotency-Key", "")
        seen[key] += 1
        status = 503 if seen[key] <= fail_first else 200
        relay = " ".join(f"{h}={request.headers[h]}" for h in RELAY_HEADERS if h in request.headers)
        line = f"{request.method} {request.path_qs} {relay} -> {status}: {body}"
        if out is not None:
            out.append(line)
        else:
            print(line, flush=True)
        if status != 200:
            return web.json_response({"received": False, "retry": True}, status=status)
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


async def serve(port: int, fail_first: int) -> None:
    runner = web.AppRunner(application(fail_first))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"receiver: listening on http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--fail-first", type=int, default=0, help="answer 503 to the first N tries of each job"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.fail_first))
    except KeyboardInterrupt:
        return 0
    except OSError as error:
        print(f"receiver: cannot listen on 127.0.0.1:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
