"""The e2e bench's watch on RelayJobs, in a process of its own.

    python -m bench.tracker URL CA_CERT CLIENT_CERT CLIENT_KEY NAMESPACE RESOURCE_VERSION

Prints `{"name": ..., "at": <time.time()>}` for each RelayJob the first time it is seen
`Completed`, and `{"name": ..., "added": <time.time()>}` the first time it is seen at all (when the
API server's watch delivered its creation, the moment kopf's watch could have too).

In the bench's own process this watch shared an event loop with 64 concurrent
creates; it fell behind, the API server closed it as unresponsive, and every `Completed` after
that was timed late.

The operator's client has no watch (kopf watches for it): the stream is read here, on a session of
its own made from that client's credentials, which makes the other calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bench.env import log
from bench.kube import client, jobs_path, request
from controller.adapters.kube import Credentials, KubeClient


async def watch(api: KubeClient, namespace: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
    """Watch events, resumed from the last version seen when the server closes the stream.

    A refused watch is retried after a pause (a just-installed CRD's watch cache answers 429
    for a while; retrying at once spun this loop thousands of times). When the server no
    longer has our version (410), the current list is yielded as MODIFIED events, so a
    transition in the gap is seen late rather than never."""
    version = resource_version
    credentials = api.credentials
    async with aiohttp.ClientSession(
        base_url=credentials.server,
        connector=aiohttp.TCPConnector(ssl=credentials.ssl, limit=2),
        headers=credentials.headers,
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:
        while True:
            params = {
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "600",
            }
            gone = False
            async with session.get(jobs_path(namespace), params=params) as response:
                if response.status != 200:
                    log(f"  bench watch refused ({response.status}); retrying in 0.5s")
                    await asyncio.sleep(0.5)
                    continue
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        gone = True
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        yield event
            if gone:
                log("  bench watch expired (410); resuming from a fresh list")
                page = await request(api, "GET", jobs_path(namespace))
                for item in page["items"]:
                    yield {"type": "MODIFIED", "object": item}
                version = str(page["metadata"]["resourceVersion"])
            else:
                # The API server ends a watch that falls behind ("unresponsive"); the bench says
                # so, since a late watch would make every Completed after it look late.
                log(f"  bench watch ended by the server; resuming from {version}")


async def main(url: str, ca: str, cert: str, key: str, namespace: str, version: str) -> None:
    api = client(Credentials(url, ca_path=ca, certificate_path=cert, private_key_path=key), connections=2)
    seen: set[str] = set()
    added: set[str] = set()
    try:
        async for event in watch(api, namespace, version):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if name not in added:
                added.add(name)
                print(json.dumps({"name": name, "added": time.time()}), flush=True)
            if (obj.get("status") or {}).get("phase") == "Completed" and name not in seen:
                seen.add(name)
                print(json.dumps({"name": name, "at": time.time()}), flush=True)
    finally:
        await api.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
