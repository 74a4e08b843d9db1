"""RelayJobs are selected by status.phase, spec.nullifier and spec.queue on the API server (the CRD's
selectableFields), and the README's bulk recipes compose kubectl with those selectors."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import pytest

from tests.e2e.jobs import apply, get, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e


def selected(kube: Any, ns: str, selector: str) -> set[str]:
    out = kube.kubectl("get", "rj", "-n", ns, "--field-selector", selector, "-o", "name").stdout
    return {line.split("/", 1)[1] for line in out.split()}


def shell(kube: Any, script: str) -> None:
    """`script` as a user types it: kubectl from PATH, the cluster from KUBECONFIG."""
    path = f"{kube.kubectl_path.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "KUBECONFIG": str(kube.kubeconfig)}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{script}\nexit {result.returncode}\n{result.stdout}{result.stderr}"


def wait_redriven(kube: Any, ns: str, name: str, phase: str, timeout: float = 60) -> None:
    """Until the job's status is `phase` as of its current relay.dev/redrive value, which a status
    written before that value was acted on does not carry."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(kube, ns, name)
        token = job["metadata"]["annotations"]["relay.dev/redrive"]
        status = job.get("status", {})
        if status.get("phase") == phase and status.get("redriveToken") == token:
            return
        assert time.monotonic() < deadline, f"{name} after re-drive {token}: {status}"
        time.sleep(0.3)


def test_spec_nullifier_and_spec_queue_select_relayjobs(control_plane: Any) -> None:
    # A namespace no operator watches: what is selected depends on the specs alone.
    ns = f"fields-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", ns)
    noop: dict[str, Any] = {"target": {"noop": {}}}
    apply(
        control_plane,
        ns,
        {
            "order-7": {**noop, "nullifier": "order-7"},
            "order-8": {**noop, "nullifier": "order-8"},
            "mail-1": {**noop, "queue": "mail"},
            "mail-2": {**noop, "queue": "mail", "nullifier": "order-7-mail"},
            "plain": noop,
        },
    )
    assert selected(control_plane, ns, "spec.nullifier=order-7") == {"order-7"}
    assert selected(control_plane, ns, "spec.nullifier!=order-7") == {"order-8", "mail-1", "mail-2", "plain"}
    assert selected(control_plane, ns, "spec.queue=mail") == {"mail-1", "mail-2"}
    assert selected(control_plane, ns, "spec.queue=mail,spec.nullifier=order-7-mail") == {"mail-2"}
    assert selected(control_plane, ns, "spec.queue=nowhere") == set()


def test_dead_lettered_jobs_are_redriven_and_completed_ones_deleted_in_bulk(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("bulk")
    # /fail/2 answers 503 to a job's first two calls: each dead-letters on its one attempt, again
    # after the first re-drive, and completes after the second.
    twice: dict[str, Any] = {"target": {"http": {"url": target.url("/fail/2")}}, "maxAttempts": 1}
    dead = {f"dead-{i}": twice for i in range(3)}
    done: dict[str, dict[str, Any]] = {f"done-{i}": {"target": {"noop": {}}} for i in range(3)}
    apply(control_plane, namespace, {**dead, **done})
    uids = {
        name: wait_phase(control_plane, namespace, name, "DeadLettered")["metadata"]["uid"] for name in dead
    }
    for name in done:
        wait_phase(control_plane, namespace, name, "Completed")
    assert selected(control_plane, namespace, "status.phase=DeadLettered") == set(dead)
    assert selected(control_plane, namespace, "status.phase=Completed") == set(done)

    # kubectl takes the objects before the annotation, so xargs substitutes them in place.
    shell(
        control_plane,
        f"kubectl get rj -n {namespace} --field-selector status.phase=DeadLettered -o name"
        f' | xargs -I{{}} kubectl annotate -n {namespace} {{}} relay.dev/redrive="$(date +%s)" --overwrite',
    )
    for name, uid in uids.items():
        wait_redriven(control_plane, namespace, name, "DeadLettered")
        assert len(target.calls_for(uid)) == 2
    time.sleep(1.1)  # the next $(date +%s) is a new value: each value re-drives at most once

    shell(
        control_plane,
        f"kubectl annotate rj -n {namespace} --field-selector status.phase=DeadLettered"
        ' relay.dev/redrive="$(date +%s)" --overwrite',
    )
    for name, uid in uids.items():
        wait_redriven(control_plane, namespace, name, "Completed")
        assert len(target.calls_for(uid)) == 3
    assert selected(control_plane, namespace, "status.phase=DeadLettered") == set()

    shell(control_plane, f"kubectl delete rj -n {namespace} --field-selector status.phase=Completed")
    assert control_plane.kubectl("get", "rj", "-n", namespace, "-o", "name").stdout.split() == []
