"""What the e2e tests do with RelayJobs through kubectl: create them, read them, wait for phases."""

from __future__ import annotations

import json
import time
from typing import Any


def apply(kube: Any, ns: str, jobs: dict[str, dict[str, Any]]) -> None:
    docs = [
        json.dumps(
            {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": name}, "spec": spec}
        )
        for name, spec in jobs.items()
    ]
    kube.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(docs), timeout=300)


def get(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kube.kubectl("get", "-n", ns, f"rj/{name}", "-o", "json").stdout))


def all_jobs(kube: Any, ns: str) -> list[dict[str, Any]]:
    return list(json.loads(kube.kubectl("get", "-n", ns, "rj", "-o", "json", timeout=300).stdout)["items"])


def wait_phase(kube: Any, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = get(kube, ns, name)
        if obj.get("status", {}).get("phase") == phase:
            return obj
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {obj.get('status')}, not {phase}")
        time.sleep(0.3)


def wait_all(kube: Any, ns: str, phase: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = all_jobs(kube, ns)
        done = [i for i in items if i.get("status", {}).get("phase") == phase]
        if len(done) >= count:
            return items
        if time.monotonic() > deadline:
            phases = sorted({i.get("status", {}).get("phase", "-") for i in items})
            raise AssertionError(f"{len(done)} of {count} are {phase}; phases seen: {phases}")
        time.sleep(1)


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    """`check()`'s first truthy answer, polled every 0.3 s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return found


def events(kube: Any, ns: str, name: str) -> list[dict[str, Any]]:
    """The Events about the object `name` in namespace `ns`."""
    out = kube.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])
