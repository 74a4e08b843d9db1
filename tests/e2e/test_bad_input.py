"""Bad input through the real API server: each RelayJob is either refused by the CRD with a
message naming the field, or admitted and ends in a well-defined phase; the operator never
crashes or stalls. Plus a canary secret that must never surface anywhere users look."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devtools.operator_process import OperatorProcess
from tests.support.target import Target

pytestmark = pytest.mark.e2e
TERMINAL = {"Completed", "DeadLettered", "Rejected"}


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": "ü"}
    for _ in range(depth):
        node = {"n": node}
    return node


payloads = st.one_of(
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=40), st.booleans()), max_size=5
    ),
    st.integers(min_value=1, max_value=140).map(nested),
    st.integers(min_value=60_000, max_value=120_000).map(lambda n: {"blob": "x" * n}),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200).map(lambda t: {"text": t}),
    st.just({"nul": "a\x00b"}),
)
urls = st.sampled_from(
    ["/ok", "/status/400", "/status/503", "UNREACHABLE", "not a url", "ftp://x/y", "http://"]
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly valid values with the odd invalid one, so both branches of the property get exercised.
    spec: dict[str, Any] = {"payload": draw(payloads), "maxAttempts": draw(st.sampled_from([1, 2, 2, 3, 0])),
                            "backoff": {"initialSeconds": 0.1, "maxSeconds": 0.3},
                            "timeoutSeconds": draw(st.sampled_from([0.5, 2, 2, 0]))}  # fmt: skip
    if draw(st.booleans()):
        spec["priority"] = draw(st.integers(-150, 150))
    if draw(st.booleans()):
        spec["nullifier"] = draw(
            st.one_of(st.text(max_size=140), st.from_regex(r"[a-z0-9.:-]{1,20}", fullmatch=True))
        )
    if draw(st.booleans()):
        spec["delaySeconds"] = draw(st.integers(-1, 1))
    if draw(st.booleans()):
        spec["notBefore"] = draw(st.sampled_from(["2020-01-01T00:00:00Z", "yesterday"]))
    kinds = draw(st.lists(st.sampled_from(["noop", "http", "mystery"]), max_size=2, unique=True))
    target: dict[str, Any] = {}
    for kind in kinds:
        if kind == "http":
            http: dict[str, Any] = {"url": draw(urls)}
            if draw(st.booleans()):
                http["headersFrom"] = [{"name": "X-Token", "secretKeyRef": {"name": "absent", "key": "k"}}]
            target["http"] = http
        else:
            target[kind] = {}
    spec["target"] = target
    return spec


@st.composite
def schema_valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs the CRD accepts, so the operator's side is exercised: odd payloads (huge, deep, NUL,
    unicode), unreachable or failing targets, a missing Secret, plug-in names nobody installed."""
    http: dict[str, Any] = {
        "url": draw(st.sampled_from(["/ok", "/status/400", "/status/503", "UNREACHABLE"]))
    }
    if draw(st.booleans()):
        http["headersFrom"] = [{"name": "X-Token", "secretKeyRef": {"name": "absent", "key": "k"}}]
    target = draw(st.sampled_from([{"noop": {}}, {"http": http}, {"http": http}, {"mystery": {"x": 1}}]))
    return {"payload": draw(payloads), "maxAttempts": draw(st.integers(1, 2)), "target": target,
            "backoff": {"initialSeconds": 0.1, "maxSeconds": 0.3}, "timeoutSeconds": 2,
            "priority": draw(st.integers(-100, 100)),
            "nullifier": draw(st.from_regex(r"[A-Za-z0-9_:.-]{1,40}", fullmatch=True))}  # fmt: skip


def resolve(spec: dict[str, Any], target: Target) -> dict[str, Any]:
    http = spec["target"].get("http")
    if http:
        if http["url"].startswith("/"):
            http["url"] = target.url(http["url"])
        elif http["url"] == "UNREACHABLE":
            http["url"] = "http://127.0.0.1:1/nothing-listens-here"
    return spec


def submit_and_settle(
    kube: Any, operator: OperatorProcess, namespace: str, target: Target, spec: dict[str, Any]
) -> None:
    """The property: refused with a message naming the field, or admitted and terminal in time."""
    name = f"prop-{uuid.uuid4().hex[:10]}"
    body = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": name},
            "spec": resolve(spec, target)}  # fmt: skip
    created = kube.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    if created.returncode != 0:
        assert "spec" in created.stderr, f"refusal does not name the field: {created.stderr}"
        event("refused by the API server")
        return
    deadline = time.monotonic() + 45
    while True:
        got = kube.kubectl("get", "-n", namespace, f"rj/{name}", "-o", "json")
        status = json.loads(got.stdout).get("status", {})
        if status.get("phase") in TERMINAL:
            break
        assert time.monotonic() < deadline, f"{spec} stalled in {status}"
        time.sleep(0.3)
    event(f"admitted, ended {status['phase']} ({status.get('reason')})")
    if status["phase"] == "Rejected":
        assert status["message"], status
    assert operator.proc is not None and operator.proc.poll() is None, operator.logs()[-3000:]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs())
def test_any_relayjob_is_refused_clearly_or_ends_well(
    control_plane: Any, operator: OperatorProcess, namespace: str, target: Target, spec: dict[str, Any]
) -> None:
    submit_and_settle(control_plane, operator, namespace, target, spec)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=schema_valid_specs())
def test_admitted_relayjobs_always_reach_a_terminal_phase(
    control_plane: Any, operator: OperatorProcess, namespace: str, target: Target, spec: dict[str, Any]
) -> None:
    submit_and_settle(control_plane, operator, namespace, target, spec)


def test_operator_survived_the_property_run(operator: OperatorProcess) -> None:
    assert operator.probe("/healthz") == 200 and operator.probe("/readyz") == 200
    assert "Traceback" not in operator.logs(), operator.logs()[-3000:]


def test_canary_secret_never_surfaces(
    control_plane: Any, operator: OperatorProcess, namespace: str, target: Target
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    control_plane.kubectl(
        "create", "secret", "generic", "hook", "-n", namespace, f"--from-literal=token={canary}"
    )
    jobs = {
        "canary-ok": "/ok",
        "canary-fails": "/status/503",
        "canary-refused": "/status/401",
        "canary-down": "http://127.0.0.1:1/x",
    }
    for name, path in jobs.items():
        url = target.url(path) if path.startswith("/") else path
        spec = {"maxAttempts": 2, "backoff": {"initialSeconds": 0.1, "maxSeconds": 0.2},
                "target": {"http": {"url": url, "headersFrom": [
                    {"name": "Authorization", "secretKeyRef": {"name": "hook", "key": "token"}},
                    {"name": "X-Missing", "secretKeyRef": {"name": "hook", "key": "absent"}}
                    if name == "canary-down" else
                    {"name": "X-Token", "secretKeyRef": {"name": "hook", "key": "token"}}]}}}  # fmt: skip
        body = {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelayJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    for name in jobs:
        phase = "Completed" if name == "canary-ok" else "DeadLettered"
        control_plane.kubectl("wait", "-n", namespace, f"rj/{name}", "--timeout=60s",
                              "--for=jsonpath={.status.phase}=" + phase)  # fmt: skip
    assert any(c.headers.get("Authorization") == canary for c in target.calls), "the secret was not sent"
    places = {
        "logs": operator.logs(),
        "events": control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "status": control_plane.kubectl("get", "rj", "-n", namespace, "-o", "json").stdout,
        "metrics": operator.metrics(),
    }
    for where, text in places.items():
        assert canary not in text, f"the secret value appeared in {where}"


def test_metrics_cover_the_contract(operator: OperatorProcess) -> None:
    text = operator.metrics()
    for series in (
        'relayjob_jobs_total{outcome="completed"}', 'relayjob_jobs_total{outcome="dead_lettered"}',
        'relayjob_jobs_total{outcome="rejected"}', "relayjob_attempts_total", "relayjob_retries_total",
        "relayjob_stale_skips_total", 'relayjob_queue_depth{set="ready"}',
        'relayjob_queue_depth{set="delayed"}', 'relayjob_queue_depth{set="leased"}',
        'relayjob_queue_depth{set="dead"}',
        "relayjob_attempt_duration_seconds_bucket", 'relayjob_pool_connections_in_use{pool="redis"}',
        'relayjob_pool_connections_in_use{pool="postgres"}', "relayjob_reconcile_runs_total",
    ):  # fmt: skip
        assert series in text, f"{series} missing from /metrics"
