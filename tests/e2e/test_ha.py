"""Two replicas as the chart runs them, restarted one after the other as a rollout does, under load.

The operators get the environment of the chart's rendered Deployment (peering on, each replica
named after its pod, no RELAY_PEERING_PRIORITY: each draws its own), with only what a pod gets
from outside the chart put in: the Secrets' URLs and the pod's name. They run against a control
plane of this module's own, so kopf's peering CRDs, which peering needs, exist here and nowhere
else: the other e2e modules run without peering in the shared sandbox.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml

from devtools.operator_process import OperatorProcess
from devtools.sandbox import CONTROL_PLANE, DEFAULT_CRD, KubeTools
from devtools.servers import PostgresServer, RedisServer
from tests.conftest import running_sandbox
from tests.support.databases import create_database
from tests.support.target import Target

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "relayjob-operator"
PEERING_CRDS = REPO / "manifests" / "peering-crds.yaml"
SUFFIX = uuid.uuid4().hex[:6]
RELEASE = f"ha{SUFFIX}"
NAMESPACE = f"ha-{SUFFIX}"
JOBS = 500
TARGET_MS = 1000
# Jobs are created at this pace while the replicas restart, so admission is watched throughout.
BATCH = 10
BATCH_EVERY_SECONDS = 0.5
# "A few seconds": a replica's exit hands RelayJob handling to its peer at once (kopf removes
# itself from the peering object on a graceful exit), so no job waits for a peering timeout.
MAX_ADMISSION_SECONDS = 8.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTools]:
    directory = tmp_path_factory.mktemp("ha-cluster")
    with running_sandbox(directory, CONTROL_PLANE, crd=DEFAULT_CRD, secret_policy=None) as sandbox:
        tools = sandbox.kube_tools()
        tools.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
        tools.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(PEERING_CRDS))
        yield tools


def rendered(cluster: KubeTools, template: str) -> list[dict[str, Any]]:
    out = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.36.0",
        "--set", "scope=namespaced", "--set", f"config.keyPrefix={RELEASE}",
        "--show-only", template,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def chart_env(
    cluster: KubeTools, redis_server: RedisServer, postgres_server: PostgresServer
) -> dict[str, str]:
    """The Deployment's environment as the kubelet would give it, but for POD_ID (set per pod)."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    for doc in rendered(cluster, "templates/peering.yaml"):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    (deployment,) = rendered(cluster, "templates/deployment.yaml")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "RELAY_PEERING_PRIORITY" not in env, "one priority for every replica freezes them all"
    assert "RELAY_STANDALONE" not in env
    database = f"ha_{SUFFIX}"
    asyncio.run(create_database(postgres_server.dsn, database))
    from_secrets = {
        "RELAY_REDIS_URL": redis_server.url,
        "RELAY_DATABASE_URL": urlunsplit(urlsplit(postgres_server.dsn)._replace(path=f"/{database}")),
    }
    assert set(from_secrets) | {"POD_ID"} == {name for name, value in env.items() if value is None}
    literal = {name: value for name, value in env.items() if value is not None}
    # OperatorProcess sets the port (two processes share this host), and the e2e status flush.
    literal.pop("RELAY_HTTP_PORT")
    return {**literal, **from_secrets, "KUBECONFIG": str(cluster.kubeconfig)}


def job(i: int, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "relay.dev/v1alpha1",
        "kind": "RelayJob",
        "metadata": {"name": f"ha-{i}", "namespace": NAMESPACE},
        "spec": {"nullifier": f"ha.{i}", "target": {"http": {"url": url}}, "maxAttempts": 5},
    }


def create_steadily(cluster: KubeTools, url: str, errors: list[str]) -> None:
    for start in range(0, JOBS, BATCH):
        began = time.monotonic()
        documents = "\n---\n".join(json.dumps(job(i, url)) for i in range(start, start + BATCH))
        result = cluster.kubectl("apply", "-f", "-", input=documents, check=False)
        if result.returncode != 0:
            errors.append(result.stderr)
            return
        time.sleep(max(0.0, BATCH_EVERY_SECONDS - (time.monotonic() - began)))


def phases(cluster: KubeTools) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("get", "rj", "-n", NAMESPACE, "-o", "json", check=False, timeout=60)
    if out.returncode != 0:
        return {}
    return {item["metadata"]["name"]: item for item in json.loads(out.stdout)["items"]}


async def ledger(dsn: str) -> tuple[dict[str, datetime], dict[str, int]]:
    """Each job's admission time (its ledger row) and its recorded attempts, by nullifier."""
    connection = await asyncpg.connect(dsn)
    try:
        admitted = await connection.fetch(
            "SELECT nullifier, created_at FROM jobs WHERE starts_with(nullifier, 'ha.')"
        )
        attempts = await connection.fetch(
            "SELECT j.nullifier, count(*) AS n FROM attempts a JOIN jobs j ON j.uid = a.job_uid"
            " WHERE starts_with(j.nullifier, 'ha.') GROUP BY j.nullifier"
        )
    finally:
        await connection.close()
    return (
        {row["nullifier"]: row["created_at"] for row in admitted},
        {row["nullifier"]: int(row["n"]) for row in attempts},
    )


def test_two_replicas_restarted_one_after_the_other_lose_duplicate_and_stall_nothing(
    cluster: KubeTools, chart_env: dict[str, str], target: Target, tmp_path: Path
) -> None:
    def replica(pod: str) -> OperatorProcess:
        return OperatorProcess({**chart_env, "POD_ID": pod}, tmp_path / f"{pod}.log").start()

    replicas = [replica(f"{RELEASE}-old-a"), replica(f"{RELEASE}-old-b")]
    errors: list[str] = []
    creator = threading.Thread(
        target=create_steadily, args=(cluster, target.url(f"/delay/{TARGET_MS}"), errors), daemon=True
    )
    try:
        creator.start()
        time.sleep(5)  # both replicas busy, and jobs still arriving
        # A rollout with maxSurge 1, maxUnavailable 0: a new pod is ready before an old one stops.
        for i, pod in enumerate(("new-a", "new-b")):
            replicas.append(replica(f"{RELEASE}-{pod}"))
            old = replicas[i]
            assert old.stop(timeout=60) == 0, old.logs()[-3000:]
            time.sleep(3)
        creator.join(timeout=120)
        assert not errors, errors
        deadline = time.monotonic() + 240
        while True:
            items = phases(cluster)
            done = [i for i in items.values() if i.get("status", {}).get("phase") == "Completed"]
            if len(done) == JOBS:
                break
            assert time.monotonic() < deadline, (
                f"{len(done)} of {JOBS} Completed; phases: "
                f"{sorted({i.get('status', {}).get('phase', 'pending') for i in items.values()})}"
            )
            time.sleep(1)
        for process in replicas[2:]:
            assert process.stop(timeout=60) == 0, process.logs()[-3000:]
    finally:
        for process in replicas:
            process.kill()

    admitted, attempts = asyncio.run(ledger(chart_env["RELAY_DATABASE_URL"]))
    calls = target.by_key()
    nullifiers = {f"ha.{i}" for i in range(JOBS)}
    assert set(attempts) == nullifiers
    assert {key: calls[key] for key in nullifiers} == attempts, "target calls differ from recorded attempts"
    waits = {
        item["metadata"]["name"]: (
            admitted[item["spec"]["nullifier"]]
            - datetime.fromisoformat(item["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        ).total_seconds()
        for item in items.values()
    }
    slowest = max(waits, key=waits.__getitem__)
    print(f"HA: slowest admission {waits[slowest]:.1f}s ({slowest}); attempts {sum(attempts.values())}")
    assert waits[slowest] < MAX_ADMISSION_SECONDS, f"{slowest} waited {waits[slowest]:.1f}s to be admitted"
    # Each replica drew a priority of its own: kopf never paused peers for sharing one.
    shared = [
        record["msg"] for process in replicas for record in process.log_records()
        if "with the same priority" in str(record.get("msg"))
    ]  # fmt: skip
    assert not shared, shared
