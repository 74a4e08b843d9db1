"""The ideal relay of the e2e bench, in a process of its own: the most any operator could do here.

    RELAY_BENCH_IDEAL_TOKEN=... python -m bench.ideal URL CA_CERT NAMESPACE RESOURCE_VERSION

It watches RelayJobs and patches each new one `Completed` at once, with the operator's own status
write (`KubeClient.patch_status`), authenticated as the operator is (a ServiceAccount token), and
`CONCURRENCY` patches in flight. It keeps nothing: no ledger, no queue, no Events, one write per
job. Measured like the operator, in the same run, its share of the raw status-patch limit is the
ceiling the machine puts on that share when the API server, etcd, the bench's creates and the
relay share its CPU.
"""

from __future__ import annotations

import asyncio
import os
import sys
from uuid import UUID

from bench.kube import client, completed_status, retrying
from bench.tracker import watch
from controller.adapters.kube import Credentials, KubeClient
from controller.model.jobs import JobRef

CONCURRENCY = 64  # patches in flight, as many as the bench has creates in flight
TOKEN_ENV = "RELAY_BENCH_IDEAL_TOKEN"  # the ServiceAccount token, kept off the command line


async def relay(api: KubeClient, namespace: str, version: str) -> None:
    """Patch each RelayJob the watch shows without a status `Completed`, until cancelled."""
    slots = asyncio.Semaphore(CONCURRENCY)
    running: set[asyncio.Task[None]] = set()

    async def complete(ref: JobRef, n: int) -> None:
        try:
            await retrying(lambda: api.patch_status(ref, completed_status(n)), f"status of {ref}")
        finally:
            slots.release()

    n = 0
    patched: set[str] = set()  # a relist after a 410 shows jobs again, as MODIFIED
    async for event in watch(api, namespace, version):
        body = event["object"]
        meta = body["metadata"]
        if event["type"] == "DELETED" or body.get("status") or meta["uid"] in patched:
            continue
        patched.add(meta["uid"])
        await slots.acquire()
        n += 1
        task = asyncio.create_task(
            complete(JobRef(uid=UUID(meta["uid"]), namespace=namespace, name=meta["name"]), n)
        )
        running.add(task)
        task.add_done_callback(running.discard)


async def main(url: str, ca: str, namespace: str, version: str) -> None:
    token = os.environ[TOKEN_ENV]
    api = client(Credentials(url, ca_path=ca, token=token), connections=CONCURRENCY)
    try:
        await relay(api, namespace, version)
    finally:
        await api.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
