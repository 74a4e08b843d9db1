"""The e2e bench's watch on RelayJobs, in a process of its own.

    python -m bench.tracker URL CA_CERT CLIENT_CERT CLIENT_KEY NAMESPACE RESOURCE_VERSION

Prints `{"name": ..., "at": <time.time()>}` for each RelayJob the first time it is seen
`Completed`. In the bench's own process this watch shared an event loop with 64 concurrent
creates; it fell behind, the API server closed it as unresponsive, and every `Completed` after
that was timed late.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

from bench.kube import Api


class Credentials:
    """The sandbox API server as `bench.kube.Api` needs it, from its URL and certificate files."""

    def __init__(self, url: str, ca: str, cert: str, key: str) -> None:
        self.url = url
        self._ssl = ssl.create_default_context(cafile=ca)
        self._ssl.load_cert_chain(cert, key)

    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl


async def main(url: str, ca: str, cert: str, key: str, namespace: str, version: str) -> None:
    api = Api(Credentials(url, ca, cert, key), connections=2)
    seen: set[str] = set()
    try:
        async for event in api.watch(namespace, version):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if (obj.get("status") or {}).get("phase") == "Completed" and name not in seen:
                seen.add(name)
                print(json.dumps({"name": name, "at": time.time()}), flush=True)
    finally:
        await api.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
