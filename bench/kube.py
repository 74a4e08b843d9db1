"""The bench's calls to the sandbox's API server, as cluster-admin, and the operator as a process.

Every call goes through the operator's own client (`controller.adapters.kube`): the creates, the
ServiceAccount the operator runs as, and the "physical limit", how fast a client patches RelayJob
status on the same API server with exactly the operator's request. The watch that times each
`Completed` is in `bench.tracker`, in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.env import PYTHON
from controller.adapters.kube import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Credentials,
    KubeClient,
    KubeError,
)
from controller.model.jobs import JobRef
from devtools.operator_process import OperatorProcess
from devtools.servers import KubeAPIServer

WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE", "APPLY")
NOOP: dict[str, Any] = {"target": {"noop": {}}}
# What the bench's own client allowed each call before it used the operator's (whose default is 30 s),
# so that a burst of 64 creates fails no sooner than it did.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=60)
_T = TypeVar("_T")


def jobs_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def admin(server: KubeAPIServer) -> Credentials:
    """The sandbox's cluster-admin identity, its client certificate."""
    pki = server.pki
    return Credentials(
        server.url,
        ca_path=str(pki.ca_cert),
        certificate_path=str(pki.admin_cert),
        private_key_path=str(pki.admin_key),
    )


def client(credentials: Credentials, connections: int) -> KubeClient:
    """The operator's API client, for the bench's calls (it reads no Secret, so caches none)."""
    return KubeClient(
        credentials, "relayjob-bench", "bench", secret_cache_seconds=0, max_connections=connections
    )


async def retrying(call: Callable[[], Awaitable[_T]], what: str) -> _T:
    """`call`, again while the API server sheds load (429) or fails (5xx), as a just-started one
    does under a burst of creates."""
    for attempt in range(5):
        try:
            return await call()
        except KubeError as error:
            if error.status != 429 and error.status < 500:
                raise
        await asyncio.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"{what}: the API server kept refusing")


async def request(api: KubeClient, method: str, path: str, **kwargs: Any) -> Any:
    return await retrying(lambda: api.call(method, path, timeout=CALL_TIMEOUT, **kwargs), f"{method} {path}")


async def create_namespace(api: KubeClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await request(api, "POST", "/api/v1/namespaces", json=body)


async def create_job(
    api: KubeClient, namespace: str, name: str, spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec or NOOP}
    created: dict[str, Any] = await request(api, "POST", jobs_path(namespace), json=body)
    return created


async def list_version(api: KubeClient, namespace: str) -> str:
    page = await request(api, "GET", jobs_path(namespace), params={"limit": "1"})
    return str(page["metadata"]["resourceVersion"])


async def bounded(limit: int, work: Iterable[Any]) -> list[Any]:
    """Run awaitables with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with gate:
            return await item

    return list(await asyncio.gather(*(one(w) for w in work)))


def request_counts(server: KubeAPIServer) -> Iterator[tuple[dict[str, str], float]]:
    """Each `apiserver_request_total` sample the API server publishes: its labels and its count."""
    for family in text_string_to_metric_families(server.metrics()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def request_key(labels: dict[str, str]) -> str:
    """ "VERB resource[/subresource]", as the bench's tables name a kind of request."""
    sub = labels.get("subresource", "")
    return f"{labels.get('verb')} {labels.get('resource')}{'/' + sub if sub else ''}"


def write_counts(server: KubeAPIServer) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total summed by (verb, resource, subresource), for write verbs on
    relayjobs and events."""
    counts: dict[tuple[str, str, str], float] = {}
    for labels, value in request_counts(server):
        if labels.get("resource") not in ("relayjobs", "events") or labels.get("verb") not in WRITE_VERBS:
            continue
        key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
        counts[key] = counts.get(key, 0.0) + value
    return counts


def refusals(server: KubeAPIServer) -> dict[str, float]:
    """Requests the API server answered 429 (too many requests in flight), by verb and resource."""
    counts: dict[str, float] = {}
    for labels, value in request_counts(server):
        if labels.get("code") == "429":
            key = request_key(labels)
            counts[key] = counts.get(key, 0.0) + value
    return counts


def request_seconds(server: KubeAPIServer) -> dict[str, tuple[float, float]]:
    """The API server's own time on relayjobs requests (`apiserver_request_duration_seconds`): by
    verb and subresource, the seconds summed and the requests counted."""
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(server.metrics()):
        if family.name != "apiserver_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("resource") != "relayjobs" or labels.get("verb") == "WATCH":
                continue
            sub = labels.get("subresource", "")
            key = f"{labels.get('verb')} relayjobs{'/' + sub if sub else ''}"
            total, count = out.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                out[key] = (total + sample.value, count)
            elif sample.name.endswith("_count"):
                out[key] = (total, count + sample.value)
    return out


def delta(
    before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    keys = set(before) | set(after)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys if after.get(k, 0.0) != before.get(k, 0.0)
    }


async def service_account_token(api: KubeClient, namespace: str) -> str:
    """A token for a cluster-admin ServiceAccount of `namespace`, from the TokenRequest API: how
    the operator authenticates in a cluster (a projected token). A client certificate, as in the
    sandbox's admin kubeconfig, is verified on every request (8% of the API server's CPU in a
    profile of the e2e bench); a token is verified once and then cached."""
    account = "relayjob-bench"
    await request(
        api,
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
    await request(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json=binding)
    issued = await request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    return str(issued["status"]["token"])


def completed_status(n: int) -> dict[str, Any]:
    """A status document shaped like the operator's `Completed` one."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
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


async def raw_status_patch_rate(
    server: KubeAPIServer, namespace: str, objects: int, patches: int, concurrency: int
) -> dict[str, Any]:
    """Patches per second the operator's own status write (`KubeClient.patch_status`) reaches on
    RelayJob status, from a process doing nothing else (nobody watching); and, the same way, the
    creates per second of the `objects` RelayJobs it patches (`creates_per_s`)."""
    api = client(admin(server), connections=concurrency)
    try:
        await create_namespace(api, namespace)
        await bounded(concurrency, (create_job(api, namespace, f"warm-{i}") for i in range(concurrency)))
        began = time.perf_counter()
        created = await bounded(concurrency, (create_job(api, namespace, f"raw-{i}") for i in range(objects)))
        creates_per_s = objects / (time.perf_counter() - began)
        refs = [
            JobRef(uid=UUID(c["metadata"]["uid"]), namespace=namespace, name=c["metadata"]["name"])
            for c in created
        ]

        async def patch(i: int) -> None:
            ref = refs[i % len(refs)]
            if not await retrying(lambda: api.patch_status(ref, completed_status(i)), f"status of {ref}"):
                raise RuntimeError(f"RelayJob {ref} vanished during the bench")

        await bounded(concurrency, (patch(i) for i in range(min(200, patches))))  # warm-up
        began = time.perf_counter()
        await bounded(concurrency, (patch(i) for i in range(patches)))
        seconds = time.perf_counter() - began
    finally:
        await api.close()
    return {
        "patches": patches,
        "seconds": seconds,
        "per_s": patches / seconds,
        "concurrency": concurrency,
        "creates_per_s": creates_per_s,
    }


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
