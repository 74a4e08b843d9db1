"""Poison objects through the real API server, at one running operator: whatever RelayJob the API
server accepts ends in a phase with a named reason, the operator never stops or restarts, and
the ordinary jobs beside it complete.

The deepest documents the API server stores are 10,000 levels (apimachinery's `maxDepth`): a
payload of 9,997 nested lists, or of 9,992 nested objects (managedFields mirror an object's keys
eight levels deeper). Objects of 9,993 to 9,996 nested keys are never created here: the API server
answers an error but stores them anyway, and then cannot list RelayJobs at all (its own decoder
refuses their managedFields) until they are deleted from etcd.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import pytest

from controller.adapters.json_guard import loads as bounded_loads
from controller.model.phases import Reason
from devtools.operator_process import OperatorProcess
from tests.e2e.jobs import apply
from tests.support.target import Target

pytestmark = pytest.mark.e2e
TERMINAL = {"Completed", "DeadLettered", "Rejected"}
# Phases a job may rest in with a reason, when its spec says so (a start years away, suspend).
WAITING = {"Queued", "Suspended"}
DEEPEST_LIST = 9_997
DEEPEST_OBJECT = 9_992
SEED = 14
RAW = "@raw@"


def nested_objects(levels: int) -> str:
    """The reported shape: `{"root":{"k":{"k":...}}}`, as text (json.dumps would recurse)."""
    return '{"root":' + '{"k":' * levels + '"leaf"' + "}" * levels + "}"


def nested_lists(levels: int) -> str:
    return '{"root":' + "[" * levels + '"leaf"' + "]" * levels + "}"


def relayjob(name: str, spec: dict[str, Any], raw: str | None = None, **meta: Any) -> str:
    """A RelayJob as JSON text; `raw` is JSON text Python cannot build or print as it is (deep
    nesting, 1e400, lone surrogates), put where the spec holds `RAW`."""
    body = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": name, **meta}}
    text = json.dumps({**body, "spec": spec})
    return text if raw is None else text.replace(json.dumps(RAW), raw)


def create(kube: Any, namespace: str, text: str) -> tuple[bool, str]:
    done = kube.kubectl("create", "-n", namespace, "-f", "-", input=text, check=False)
    return done.returncode == 0, done.stderr.strip()


def statuses(kube: Any, namespace: str) -> dict[str, dict[str, Any]]:
    """Every RelayJob's status by name. Read raw and decoded with its nesting bounded: kubectl's
    own decoder refuses a list holding a document 10,000 levels deep, and so would Python's."""
    raw = kube.kubectl("get", "--raw", f"/apis/relay.dev/v1alpha1/namespaces/{namespace}/relayjobs").stdout
    return {i["metadata"]["name"]: i.get("status") or {} for i in bounded_loads(raw)["items"] or []}


def settle(
    kube: Any, operator: OperatorProcess, namespace: str, done: dict[str, set[str]], timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait until each named job is in one of its phases, the operator alive all along."""
    deadline = time.monotonic() + timeout
    while True:
        assert operator.proc is not None and operator.proc.poll() is None, operator.logs()[-3000:]
        seen = statuses(kube, namespace)
        behind = {n: seen.get(n) for n, phases in done.items() if seen.get(n, {}).get("phase") not in phases}
        if not behind:
            return seen
        assert time.monotonic() < deadline, (
            f"{len(behind)} jobs not settled: {dict(list(behind.items())[:8])}"
        )
        time.sleep(1)


def assert_never_stopped(operator: OperatorProcess) -> None:
    assert operator.proc is not None and operator.proc.poll() is None, operator.logs()[-3000:]
    assert operator.probe("/healthz") == 200
    logs = operator.logs()
    critical = [r for r in operator.log_records() if r.get("level") == "CRITICAL"]
    assert not critical and "Traceback" not in logs and "CRITICAL" not in logs, logs[-3000:]


def ordinary(prefix: str, count: int) -> dict[str, dict[str, Any]]:
    return {f"{prefix}-{i}": {"target": {"noop": {}}} for i in range(count)}


def test_deep_relayjobs_are_rejected_and_every_other_job_completes(
    control_plane: Any, operator: OperatorProcess, namespace: str
) -> None:
    apply(control_plane, namespace, ordinary("before-deep", 5))
    deep = {
        "deep-985": nested_objects(985),  # the report: 6 KB, accepted by kubectl apply
        "deep-objects": nested_objects(DEEPEST_OBJECT),
        "deep-lists": nested_lists(DEEPEST_LIST),
    }
    for name, payload in deep.items():
        text = relayjob(name, {"target": {"noop": {}}, "payload": RAW}, payload)
        created, error = create(control_plane, namespace, text)
        assert created, f"{name}: {error}"
    apply(control_plane, namespace, ordinary("after-deep", 5))
    want = {n: {"Completed"} for n in [*ordinary("before-deep", 5), *ordinary("after-deep", 5)]}
    seen = settle(control_plane, operator, namespace, want | {n: {"Rejected"} for n in deep}, timeout=60)
    for name in deep:
        assert seen[name]["reason"] == "PayloadTooDeep", seen[name]
        assert "spec.payload nests deeper than 100 levels" in seen[name]["message"], seen[name]
    assert_never_stopped(operator)

    # A restart lists every RelayJob at once (kopf, and the reconciler's pass), deep ones included.
    assert operator.stop() == 0, operator.logs()[-3000:]
    operator.start()
    apply(control_plane, namespace, ordinary("after-restart", 5))
    settle(control_plane, operator, namespace, {n: {"Completed"} for n in ordinary("after-restart", 5)}, 60)
    time.sleep(6)  # past one reconcile interval (RELAY_RECONCILE_INTERVAL_SECONDS=5 in these tests)
    seen = statuses(control_plane, namespace)
    assert all(seen[name]["reason"] == "PayloadTooDeep" for name in deep), seen
    assert_never_stopped(operator)


@dataclass(frozen=True)
class Hostile:
    name: str
    text: str
    waits: bool = False  # may rest Queued/Suspended with a reason: a start years away, suspend


def hostile_jobs(rng: random.Random, target: Target) -> list[Hostile]:  # noqa: PLR0915
    jobs: list[Hostile] = []

    def add(spec: dict[str, Any], raw: str | None = None, waits: bool = False, name: str | None = None,
            **meta: Any) -> None:  # fmt: skip
        name = name or f"hostile-{len(jobs):02d}"
        spec = {"target": {"noop": {}}, **spec}
        jobs.append(Hostile(name, relayjob(name, spec, raw, **meta), waits))

    ok, failing = target.url("/ok"), {"http": {"url": target.url("/status/503")}}
    odd = ["\u202e", "\u200b", "\u200d", "\ufeff", "\u2066", "\u0301", "\U0001f600", "\u00a0", "\u2028", "ﷺ"]
    # Deep payloads, of every shape, up to the deepest the API server stores.
    for levels in (101, rng.randint(150, 900), 2_000, rng.randint(3_000, 9_000)):
        add({"payload": RAW}, nested_objects(levels))
    add({"payload": RAW}, nested_lists(rng.randint(1_000, DEEPEST_LIST)))
    add({"payload": RAW}, '{"a":' + '[{"b":' * 2_000 + "1" + "}]" * 2_000 + "}")
    add(
        {"payload": RAW},
        json.dumps({f"b{i}": 0 for i in range(50)})[:-1] + ',"deep":' + nested_objects(150) + "}",
    )
    add({"target": {"mystery": RAW}}, nested_objects(5_000))
    # Wide payloads: the schema's key limit, past it, past the operator's byte cap.
    add({"payload": {f"k{i}": rng.choice(odd) * 3 for i in range(1024)}})
    add({"payload": {f"k{i}": i for i in range(1025)}})
    add({"payload": {"items": [{"i": i, "s": "x"} for i in range(20_000)]}})
    add({"payload": {"s": "x" * 60_000}})
    add({"payload": {"s": "y" * 1_000_000}})
    add({"payload": RAW}, '{"list":[' + ",".join("[]" for _ in range(30_000)) + "]}")
    # Odd numbers, as JSON text Python would not print.
    add(
        {"payload": RAW},
        '{"a":1e308,"b":-1e308,"c":5e-324,"d":1e-320,"e":-0,"f":-0.0,"g":1.7976931348623157e308}',
    )
    add({"payload": RAW}, '{"a":9223372036854775807,"b":-9223372036854775808,"c":18446744073709551616}')
    add({"payload": RAW}, '{"a":1e400}')
    add({"payload": RAW}, '{"a":' + "9" * 5_000 + "}")
    # Odd strings: NUL, lone surrogates by escape, bidi and zero-width text, odd and long keys.
    add({"payload": {"s": "a\x00b"}})
    add({"payload": RAW}, '{"s":"x\\ud800y","t":"\\udfff","u":"\\udc00\\ud800"}')
    add({"payload": {"".join(rng.choices(odd, k=8)): "".join(rng.choices(odd, k=200)), "": "empty key"}})
    add({"payload": {"k" * 10_000: 1, "nul\x00key": 2}})
    add({"target": {"http": {"url": ok, "headers": {"X-Nul": "a\x00b"}}}})
    # Odd names: the longest the API server takes, one longer, dots and digits.
    add({}, name="h" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=252)))
    add({}, name="h" * 254)
    add({}, name="1.2.3-a.b" + str(rng.randint(0, 99)))
    add({"nullifier": "n" * 128})
    add({"nullifier": "n" * 129})
    add({}, annotations={"relay.dev/redrive": "".join(rng.choices(odd, k=20_000))})
    add({}, annotations={"example.com/huge": "z" * 200_000})
    # Extreme dates: the first and last instants RFC 3339 can write, offsets that carry them
    # outside any calendar, days that do not exist, more precision than Python keeps.
    add({"notBefore": "0001-01-01T00:00:00Z"})
    add({"notBefore": "9999-12-31T23:59:59Z"}, waits=True)
    add({"notBefore": "9999-12-31T23:59:59-23:59"})
    add({"notBefore": "0001-01-01T00:00:00+23:59"})
    add({"notBefore": "2026-02-30T00:00:00Z"})
    add({"notBefore": "2020-01-01T00:00:00.123456789Z"})
    add({"notBefore": "2016-12-31T23:59:60Z"})
    # Extreme durations and bounds.
    add({"delaySeconds": 31_536_000}, waits=True)
    add({"delaySeconds": 2_147_483_648})
    tiny = {"initialSeconds": 1e-320, "maxSeconds": 1e-320, "multiplier": 10}
    daily = {"initialSeconds": 86_400, "maxSeconds": 86_400, "multiplier": 1, "jitter": False}
    add({"target": {"http": {"url": ok}}, "timeoutSeconds": 1e-320, "maxAttempts": 2, "backoff": tiny})
    add({"target": failing, "maxAttempts": 3, "backoff": tiny})
    add({"target": failing, "maxAttempts": 1, "backoff": daily})
    add(
        {
            "maxAttempts": 100,
            "priority": 100,
            "timeoutSeconds": 3600,
            "ttlSecondsAfterFinished": 2_147_483_647,
        }
    )
    add({"maxAttempts": 0})
    add({"priority": -101})
    add({"suspend": True}, waits=True)
    # Executors: unknown, two at once, headers at the schema's limits.
    add({"target": {"mystery": {"x": 1}}})
    add({"target": {"noop": {}, "http": {"url": ok}}})
    add({"target": {"http": {"url": ok, "headers": {f"X-H{i}": "v" * 8192 for i in range(64)}}}})
    odd_headers = {"X-Ünï": "v", "bad name": "v", "X-Injected": "a\r\nX-Evil: 1"}
    add({"target": {"http": {"url": ok, "headers": odd_headers}}, "maxAttempts": 2, "backoff": tiny})
    return jobs


def test_hostile_relayjobs_are_refused_or_settle_with_a_reason_beside_ordinary_jobs(
    control_plane: Any, operator: OperatorProcess, namespace: str, target: Target
) -> None:
    rng = random.Random(SEED)
    jobs = hostile_jobs(rng, target)
    assert len(jobs) >= 30
    began, pid = time.monotonic(), operator.pid
    apply(control_plane, namespace, ordinary("beside-a", 25))
    accepted: dict[str, Hostile] = {}
    for job in jobs:
        created, error = create(control_plane, namespace, job.text)
        if created:
            accepted[job.name] = job
        else:
            assert error, f"{job.name} was refused without a message"
    apply(control_plane, namespace, ordinary("beside-b", 25))
    done = {n: TERMINAL | (WAITING if job.waits else set()) for n, job in accepted.items()}
    done |= {n: {"Completed"} for n in [*ordinary("beside-a", 25), *ordinary("beside-b", 25)]}
    seen = settle(control_plane, operator, namespace, done, timeout=90)
    for name in accepted:
        assert seen[name].get("reason") in set(Reason) and seen[name].get("message"), f"{name}: {seen[name]}"
    assert len(accepted) >= 30, sorted(accepted)

    # Another client writes a status as deep as the API server allows over a completed job's.
    deep_status = '{"status":{"result":' + nested_objects(9_000) + "}}"
    control_plane.kubectl(
        "patch", "-n", namespace, "rj/beside-a-0", "--subresource=status", "--type=merge", "-p", deep_status
    )
    time.sleep(2)
    settle(control_plane, operator, namespace, {"beside-a-0": {"Completed"}}, timeout=30)
    assert operator.pid == pid
    assert_never_stopped(operator)
    assert time.monotonic() - began < 120
