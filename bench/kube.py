"""A plain async client of the sandbox's API server, as cluster-admin, and the operator as a process.

The bench's creates and its watch go through here; so does the "physical limit": how fast a plain
client patches RelayJob status on the same API server, with the same kind of body the operator sends.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.env import PYTHON, log
from controller.sandbox.operator_process import OperatorProcess
from controller.sandbox.servers import KubeAPIServer

GROUP_PATH = "/apis/relay.dev/v1alpha1"
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE", "APPLY")
NOOP: dict[str, Any] = {"target": {"noop": {}}}


def jobs_path(namespace: str) -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/relayjobs"


class Endpoint(Protocol):
    """What a client needs of an API server: where it is, and a TLS context with credentials."""

    @property
    def url(self) -> str: ...

    def ssl_context(self) -> ssl.SSLContext: ...


class Api:
    def __init__(self, server: Endpoint, connections: int = 64) -> None:
        self.session = aiohttp.ClientSession(
            base_url=server.url,
            connector=aiohttp.TCPConnector(ssl=server.ssl_context(), limit=connections),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(5):
            async with self.session.request(method, path, **kwargs) as response:
                if response.status == 429 or response.status >= 500:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                if response.status >= 300:
                    raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
                return await response.json()
        raise RuntimeError(f"{method} {path}: API server kept refusing")

    async def create_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await self.request("POST", "/api/v1/namespaces", json=body)

    async def create_job(
        self, namespace: str, name: str, spec: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelayJob",
            "metadata": {"name": name},
            "spec": spec or NOOP,
        }
        created: dict[str, Any] = await self.request("POST", jobs_path(namespace), json=body)
        return created

    async def list_version(self, namespace: str) -> str:
        page = await self.request("GET", jobs_path(namespace), params={"limit": "1"})
        return str(page["metadata"]["resourceVersion"])

    async def watch(self, namespace: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events, resumed from the last version seen when the server closes the stream.

        A refused watch is retried after a pause (a just-installed CRD's watch cache answers 429
        for a while; retrying at once spun this loop thousands of times). When the server no
        longer has our version (410), the current list is yielded as MODIFIED events, so a
        transition in the gap is seen late rather than never."""
        version = resource_version
        while True:
            params = {
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "600",
            }
            gone = False
            async with self.session.get(
                jobs_path(namespace), params=params, timeout=aiohttp.ClientTimeout(total=None)
            ) as response:
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
                page = await self.request("GET", jobs_path(namespace))
                for item in page["items"]:
                    yield {"type": "MODIFIED", "object": item}
                version = str(page["metadata"]["resourceVersion"])
            else:
                # The API server ends a watch that falls behind ("unresponsive"); the bench says
                # so, since a late watch would make every Completed after it look late.
                log(f"  bench watch ended by the server; resuming from {version}")


async def bounded(limit: int, work: Iterable[Any]) -> list[Any]:
    """Run awaitables with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with gate:
            return await item

    return list(await asyncio.gather(*(one(w) for w in work)))


def write_counts(server: KubeAPIServer) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total summed by (verb, resource, subresource), for write verbs on
    relayjobs and events."""
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(server.metrics()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            if labels.get("resource") not in ("relayjobs", "events") or labels.get("verb") not in WRITE_VERBS:
                continue
            key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def delta(
    before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    keys = set(before) | set(after)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys if after.get(k, 0.0) != before.get(k, 0.0)
    }


async def service_account_token(api: Api, namespace: str) -> str:
    """A token for a cluster-admin ServiceAccount of `namespace`, from the TokenRequest API: how
    the operator authenticates in a cluster (a projected token). A client certificate, as in the
    sandbox's admin kubeconfig, is verified on every request (8% of the API server's CPU in a
    profile of the e2e bench); a token is verified once and then cached."""
    account = "relayjob-bench"
    await api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
    )
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{namespace}-{account}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    await api.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json=binding)
    issued = await api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    return str(issued["status"]["token"])


def status_body(uid: str, n: int) -> list[dict[str, Any]]:
    """A status document shaped like the operator's `Completed` one, as the same JSON patch."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Completed",
        "attempts": 1,
        "retries": 0,
        "queuedAt": stamp,
        "startedAt": stamp,
        "completedAt": stamp,
        "observedGeneration": 1,
        "result": {"n": n},
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "Succeeded",
                "message": "noop target",
                "lastTransitionTime": stamp,
                "observedGeneration": 1,
            },
            {
                "type": "Failed",
                "status": "False",
                "reason": "Succeeded",
                "message": "",
                "lastTransitionTime": stamp,
                "observedGeneration": 1,
            },
        ],
    }
    return [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": "/status", "value": status},
    ]


async def raw_status_patch_rate(
    server: KubeAPIServer, namespace: str, objects: int, patches: int, concurrency: int
) -> dict[str, Any]:
    """Patches per second a plain aiohttp client reaches on RelayJob status (nobody watching)."""
    api = Api(server, connections=concurrency)
    try:
        await api.create_namespace(namespace)
        created = await bounded(concurrency, (api.create_job(namespace, f"raw-{i}") for i in range(objects)))
        refs = [(c["metadata"]["name"], c["metadata"]["uid"]) for c in created]
        headers = {"Content-Type": "application/json-patch+json"}

        async def patch(i: int) -> None:
            name, uid = refs[i % len(refs)]
            await api.request(
                "PATCH", f"{jobs_path(namespace)}/{name}/status", json=status_body(uid, i), headers=headers
            )

        await bounded(concurrency, (patch(i) for i in range(min(200, patches))))  # warm-up
        began = time.perf_counter()
        await bounded(concurrency, (patch(i) for i in range(patches)))
        seconds = time.perf_counter() - began
    finally:
        await api.close()
    return {"patches": patches, "seconds": seconds, "per_s": patches / seconds, "concurrency": concurrency}


class Operator(OperatorProcess):
    """The operator process of the e2e and memory benchmarks."""

    def started(self) -> None:
        """With BENCH_PYSPY=<file>, py-spy samples the operator until it exits (raw stacks)."""
        out = os.environ.get("BENCH_PYSPY")
        if out and self.proc is not None:
            spy = Path(PYTHON).with_name("py-spy")
            argv = [str(spy), "record", "--pid", str(self.proc.pid), "-r", "100", "-f", "raw", "-o", out]
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def metric_values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out
