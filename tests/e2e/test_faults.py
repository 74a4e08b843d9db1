"""The fault suite: 500 jobs in flight through an HTTP target that counts calls per
Idempotency-Key, and one fault each: operator killed, a replica killed, Redis, PostgreSQL and the
API server restarted or unreachable for 30 s. Afterwards every job is Completed, ledger and status
agree, no job ran more often than its attempts, no nullifier is spent twice, and the operator that
was not deliberately killed is still alive. A table of the results is printed at the end."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devtools.operator_process import OperatorProcess
from devtools.sandbox import COMPONENTS, DEFAULT_CRD, Sandbox
from tests.support.target import Target

pytestmark = pytest.mark.e2e

JOBS = 500
OUTAGE_SECONDS = 30.0
RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Servers of this module's own, so that breaking them disturbs no other test."""
    box = Sandbox(tmp_path_factory.mktemp("faults"), components=COMPONENTS, helm=False)
    box.up()
    box.kube_tools().install_crd(DEFAULT_CRD)
    yield box
    box.down()
    box.postgres.remove_data()


@dataclass
class Scenario:
    name: str
    sandbox: Sandbox
    target: Target
    workdir: Path
    replicas: int = 1

    def __post_init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.namespace = f"fault-{suffix}"
        self.database = f"fault_{suffix}"
        self.kube = self.sandbox.kube_tools()
        self.kube.kubectl("create", "namespace", self.namespace)
        asyncio.run(_sql(self.sandbox.postgres.dsn, f'CREATE DATABASE "{self.database}"'))
        self.env = {
            **self.sandbox.env(),
            "RELAY_DATABASE_URL": self.sandbox.postgres.dsn_for(self.database),
            "RELAY_KEY_PREFIX": f"f{suffix}",
            "RELAY_NAMESPACES": self.namespace,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_LEASE_SECONDS": "5",
            "RELAY_RECONCILE_INTERVAL_SECONDS": "5",
            "RELAY_STATUS_FLUSH_SECONDS": "0.2",
        }
        self.operators = [self.start_operator(i) for i in range(self.replicas)]
        self.killed: set[int] = set()

    def start_operator(self, index: int) -> OperatorProcess:
        log = self.workdir / f"{self.namespace}-op{index}-{len(getattr(self, 'operators', []))}.log"
        return OperatorProcess(self.env, log).start(ready_timeout=90)

    def submit(self) -> threading.Thread:
        url = self.target.url("/delay/50")
        docs = "\n---\n".join(
            json.dumps({"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob",
                        "metadata": {"name": f"job-{i}"},
                        "spec": {"nullifier": f"{self.namespace}.{i}", "target": {"http": {"url": url}},
                                 "backoff": {"initialSeconds": 0.5, "maxSeconds": 5}, "maxAttempts": 20}})
            for i in range(JOBS))  # fmt: skip

        def apply() -> None:
            # The API server may be away (or shutting down gracefully) for a while: keep applying
            # the same documents, which is idempotent, until they all went in.
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                args = ("apply", "-n", self.namespace, "-f", "-")
                if self.kube.kubectl(*args, input=docs, check=False, timeout=300).returncode == 0:
                    return
                time.sleep(2)

        thread = threading.Thread(target=apply, daemon=True)
        thread.start()
        return thread

    def calls(self) -> int:
        return sum(1 for c in self.target.calls if c.key.startswith(self.namespace + "."))

    def wait_for_calls(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.calls() < n:
            assert time.monotonic() < deadline, f"only {self.calls()} calls reached the target"
            time.sleep(0.1)

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = self.kube.kubectl("get", "rj", "-n", self.namespace, "-o", "json", check=False, timeout=60)
        if out.returncode != 0:
            return {}
        return {i["metadata"]["uid"]: i for i in json.loads(out.stdout)["items"]}

    def wait_terminal(self, timeout: float = 240) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            items = self.statuses()
            done = [i for i in items.values() if i.get("status", {}).get("phase") == "Completed"]
            if len(items) == JOBS and len(done) == JOBS:
                return items
            if time.monotonic() > deadline:
                return items
            time.sleep(1)

    def stop(self) -> None:
        for op in self.operators:
            op.kill()


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _ledger(dsn: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT uid::text, phase, attempts FROM jobs")
        doubled = await conn.fetch(
            "SELECT nullifier FROM jobs WHERE nullifier_state = 'spent'"
            " GROUP BY nullifier HAVING count(*) > 1"
        )
    finally:
        await conn.close()
    return {r["uid"]: dict(r) for r in rows}, [r["nullifier"] for r in doubled]


def check(scenario: Scenario, fault_ended: float) -> None:
    items = scenario.wait_terminal()
    recovered = time.monotonic() - fault_ended
    ledger, doubled = asyncio.run(_ledger(scenario.env["RELAY_DATABASE_URL"]))
    by_key = scenario.target.by_key()
    completed = [i for i in items.values() if i.get("status", {}).get("phase") == "Completed"]
    duplicates = [
        i["metadata"]["name"] for i in items.values()
        if by_key[i["spec"]["nullifier"]] > i.get("status", {}).get("attempts", 0)
    ]  # fmt: skip

    def recorded(item: dict[str, Any]) -> tuple[Any, Any]:
        row = ledger.get(item["metadata"]["uid"], {})
        return row.get("phase"), row.get("attempts")

    def shown(item: dict[str, Any]) -> tuple[Any, Any]:
        return item.get("status", {}).get("phase"), item.get("status", {}).get("attempts")

    disagree = [i["metadata"]["name"] for i in items.values() if recorded(i) != shown(i)]
    alive = [op for n, op in enumerate(scenario.operators) if n not in scenario.killed]
    RESULTS.append({
        "fault": scenario.name, "jobs": JOBS, "completed": len(completed), "duplicates": len(duplicates),
        "lost": JOBS - len(completed), "recover_s": round(recovered, 1),
        "calls": sum(by_key[i["spec"]["nullifier"]] for i in items.values()),
    })  # fmt: skip
    try:
        assert len(items) == JOBS, f"{len(items)} RelayJobs exist, expected {JOBS}"
        assert len(completed) == JOBS, f"{JOBS - len(completed)} jobs did not complete"
        assert not duplicates, f"executed more often than attempted: {duplicates[:5]}"
        assert not disagree, f"ledger and status disagree: {disagree[:5]}"
        assert not doubled, f"nullifiers spent twice: {doubled[:5]}"
        for op in alive:
            assert op.proc is not None and op.proc.poll() is None, "operator died:\n" + op.logs()[-3000:]
            assert op.probe("/healthz") == 200
            assert "Traceback" not in op.logs(), op.logs()[-3000:]
    finally:
        scenario.stop()


Fault = Callable[[Scenario], None]


def kill_operator(s: Scenario) -> None:
    s.operators[0].kill()
    s.killed.add(0)
    s.operators.append(s.start_operator(1))


def kill_one_replica(s: Scenario) -> None:
    s.operators[0].kill()
    s.killed.add(0)


def restart_redis_empty(s: Scenario) -> None:
    s.sandbox.redis.restart()  # started with --save "" and no AOF: it comes back empty


def pause(server: Callable[[Scenario], Any]) -> Fault:
    def fault(s: Scenario) -> None:
        target = server(s)
        target.pause()
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            target.resume()

    return fault


SCENARIOS: list[tuple[str, Fault, int]] = [
    ("operator SIGKILL + restart", kill_operator, 1),
    ("2 replicas, one SIGKILLed", kill_one_replica, 2),
    ("redis restart, data lost", restart_redis_empty, 1),
    ("redis unreachable 30s", pause(lambda s: s.sandbox.redis), 1),
    ("postgres restart", lambda s: s.sandbox.postgres.restart(), 1),
    ("postgres unreachable 30s", pause(lambda s: s.sandbox.postgres), 1),
    ("kube-apiserver restart", lambda s: s.sandbox.apiserver.restart(), 1),
    ("kube-apiserver unreachable 30s", pause(lambda s: s.sandbox.apiserver), 1),
]


@pytest.mark.parametrize(("name", "fault", "replicas"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_fault(
    sandbox: Sandbox, target: Target, tmp_path: Path, name: str, fault: Fault, replicas: int
) -> None:
    scenario = Scenario(name, sandbox, target, tmp_path, replicas)
    submitting = scenario.submit()
    scenario.wait_for_calls(100)  # work is in flight when the fault strikes
    fault(scenario)
    ended = time.monotonic()
    submitting.join(300)
    check(scenario, ended)


def fault_table() -> str:
    header = (f"{'fault':34} {'jobs':>5} {'completed':>9} {'duplicates':>10} {'lost':>5} "
              f"{'calls':>6} {'recover s':>9}")  # fmt: skip
    lines = [header, "-" * len(header)]
    lines += [f"{r['fault']:34} {r['jobs']:>5} {r['completed']:>9} {r['duplicates']:>10} {r['lost']:>5} "
              f"{r['calls']:>6} {r['recover_s']:>9}" for r in RESULTS]  # fmt: skip
    return "\n".join(lines)


def wait_probe(op: OperatorProcess, path: str, code: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while op.probe(path) != code:
        assert time.monotonic() < deadline, f"{path} never answered {code}"
        time.sleep(0.2)


@pytest.mark.parametrize("server", ["redis", "postgres", "apiserver"])
def test_readiness_follows_each_dependency(
    sandbox: Sandbox, target: Target, tmp_path: Path, server: str
) -> None:
    """/readyz turns 503 while a dependency is unreachable and 200 when it is back; /healthz stays
    200 throughout, so the kubelet stops routing to the pod instead of restarting it."""
    scenario = Scenario(f"readiness {server}", sandbox, target, tmp_path)
    op = scenario.operators[0]
    wait_probe(op, "/readyz", 200)
    dependency = getattr(sandbox, server)
    dependency.pause()
    try:
        wait_probe(op, "/readyz", 503)
        assert op.probe("/healthz") == 200
    finally:
        dependency.resume()
    wait_probe(op, "/readyz", 200, timeout=60)
    scenario.stop()
