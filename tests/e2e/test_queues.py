"""RelayQueue as users see it, through the real API server with operators as real processes:
`kubectl get rq`, limits that hold across two replicas, pause and resume, a queue that does not
exist yet, a replica killed while it holds slots, the queue's defaults, and the API server's own
validation (`kubectl explain`, CEL).

Timings are measured at the target (tests/support/target.py records each call's arrival), so
they show what a rate-limited API would see.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.jobs import all_jobs, apply, events, get, wait_all, wait_for, wait_phase
from tests.support.target import Target

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "queue.yaml"
# Queue status every second (5 s by default), so `kubectl get rq` catches up within a test.
FAST_STATUS = {"RELAY_QUEUE_STATUS_SECONDS": "1"}
# Two replicas: the first handles the resources' events, both claim and run jobs.
REPLICAS = tuple({"RELAY_STANDALONE": "false", "RELAY_PEERING_PRIORITY": p} for p in ("10", "5"))


@pytest.fixture
def namespace(control_plane: Any) -> str:
    """A namespace per test, so that each test's queues and jobs are its own."""
    name = f"rq-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply_queue(kube: Any, ns: str, name: str, spec: dict[str, Any], check: bool = True) -> Any:
    doc = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayQueue", "metadata": {"name": name}, "spec": spec}
    return kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=check)


def get_queue(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kube.kubectl("get", "-n", ns, f"rq/{name}", "-o", "json").stdout))


def patch_queue(kube: Any, ns: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl("patch", "-n", ns, f"rq/{name}", "--type=merge", "-p", json.dumps({"spec": spec}))


def paused_condition(kube: Any, ns: str, name: str) -> str | None:
    """The status of the queue's Paused condition, None while it has none."""
    conditions = get_queue(kube, ns, name).get("status", {}).get("conditions", [])
    return next((c["status"] for c in conditions if c["type"] == "Paused"), None)


def wait_queued(kube: Any, ns: str, count: int, timeout: float = 120) -> list[str]:
    """The uids of `count` admitted jobs, once all of them are Queued (waiting for the queue)."""
    items = wait_all(kube, ns, "Queued", count, timeout=timeout)
    return [i["metadata"]["uid"] for i in items]


def starts(target: Target, keys: set[str]) -> list[float]:
    """Arrival times of the calls made for these jobs, in order."""
    return sorted(c.at for c in list(target.calls) if c.key in keys)


def most_within(times: list[float], window: float) -> int:
    """The largest number of the (sorted) `times` inside any half-open interval of `window` s."""
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def http(target: Target, path: str, **spec: Any) -> dict[str, Any]:
    return {"target": {"http": {"url": target.url(path)}}, **spec}


# -- what users see ----------------------------------------------------------------------------


def test_get_rq_shows_the_columns_with_live_counts(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    start_operator("columns", **FAST_STATUS)
    apply_queue(kube, namespace, "shown", {"paused": True, "maxConcurrency": 1})
    fast = {"initialSeconds": 0.1, "maxSeconds": 0.2, "jitter": False}
    apply(
        kube,
        namespace,
        {f"slow-{i}": http(target, "/delay/1500", queue="shown") for i in range(3)}
        | {"broken": http(target, "/status/500", queue="shown", maxAttempts=1, backoff=fast, priority=10)},
    )

    def row() -> dict[str, str]:
        header, line = kube.kubectl("get", "rq", "shown", "-n", namespace).stdout.splitlines()
        names = header.split()
        assert names == ["NAME", "PAUSED", "READY", "RUNNING", "DEAD", "RATE", "AGE"]
        # Cut at the header's offsets: a column without a value yet (no status) is blank.
        starts = [header.index(name) for name in names]
        ends = [*starts[1:], None]
        return {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}

    paused = wait_for("READY 4 while paused", lambda: (r := row())["READY"] == "4" and r)
    assert (paused["PAUSED"], paused["RUNNING"], paused["DEAD"]) == ("true", "0", "0")
    patch_queue(kube, namespace, "shown", {"paused": False})
    running = wait_for("RUNNING 1", lambda: (r := row())["RUNNING"] == "1" and r)
    assert running["PAUSED"] == "false"
    wait_all(kube, namespace, "Completed", 3, timeout=120)
    # The ledger records the dead letter before Redis hands back its lease: a status written in
    # between shows DEAD 1 beside RUNNING 1 for one interval, so all three are waited for at once.
    done = wait_for(
        "DEAD 1, nothing ready or running",
        lambda: (r := row())["DEAD"] == "1" and r["READY"] == "0" and r["RUNNING"] == "0" and r,
    )
    assert float(done["RATE"]) > 0, done


def explain(kube: Any, field: str) -> str:
    # The API server publishes a new CRD's OpenAPI a few seconds after the CRD is Established.
    found = wait_for(
        f"kubectl explain {field}",
        lambda: (r := kube.kubectl("explain", field, check=False)).returncode == 0 and r,
    )
    return " ".join(found.stdout.split())


def test_explain_documents_the_queue(control_plane: Any) -> None:
    burst = explain(control_plane, "rq.spec.rateLimit.burst")
    assert "FIELD: burst <integer>" in burst and "default 1" in burst, burst
    assert "burst <integer>" in explain(control_plane, "relayqueues.spec.rateLimit")
    queue = explain(control_plane, "rj.spec.queue")
    assert "Name of a RelayQueue in this namespace; omitted means `default`" in queue, queue


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"rateLimit": {"perSecond": 0}}, "spec.rateLimit.perSecond in body should be greater than 0"),
        ({"rateLimit": {"burst": 3}}, "spec.rateLimit.perSecond: Required value"),
        (
            {"rateLimit": {"perSecond": 5, "burst": 0}},
            "spec.rateLimit.burst in body should be greater than or",
        ),
        ({"maxConcurrency": 0}, "spec.maxConcurrency in body should be greater than or equal to 1"),
        ({"weight": 1001}, "spec.weight in body should be less than or equal to 1000"),
        ({"defaults": {"maxAttempts": 101}}, "spec.defaults.maxAttempts in body should be less than or"),
        ({"defaults": {"backoff": {"initialSeconds": 10, "maxSeconds": 5}}}, "maxSeconds must be at least"),
        ({"defaults": {"backoff": {"initialSeconds": 600}}}, "maxSeconds must be at least initialSeconds"),
    ],
)
def test_the_api_server_refuses_a_bad_queue_saying_why(
    control_plane: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    refused = apply_queue(control_plane, namespace, "bad", spec, check=False)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


def test_queue_names_are_those_a_job_can_name(control_plane: Any, namespace: str) -> None:
    refused = apply_queue(control_plane, namespace, "a.b", {}, check=False)
    assert refused.returncode != 0 and "must be a DNS-1123 label" in refused.stderr, refused.stderr
    job = {"target": {"noop": {}}, "queue": "Not.A.Label", "suspend": True}
    doc = {"apiVersion": "relay.dev/v1alpha1", "kind": "RelayJob", "metadata": {"name": "j"}, "spec": job}
    bad = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    assert bad.returncode != 0 and "spec.queue in body should match" in bad.stderr, bad.stderr
    apply(control_plane, namespace, {"j": job | {"queue": "first"}})
    moved = control_plane.kubectl(
        "patch", "-n", namespace, "rj/j", "--type=merge", "-p", '{"spec":{"queue":"second"}}', check=False
    )
    assert moved.returncode != 0 and "spec.queue is immutable" in moved.stderr, moved.stderr
    # Left out, the queue's defaults apply: the API server stores no default of its own.
    spec = get(control_plane, namespace, "j")["spec"]
    assert not {"maxAttempts", "backoff", "timeoutSeconds"} & set(spec), spec


def test_the_sample_queue_protects_its_api(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("sample")
    docs = list(yaml.safe_load_all(SAMPLE.read_text()))
    for doc in docs:
        if doc["kind"] == "RelayJob":
            doc["spec"]["target"]["http"]["url"] = target.url("/ok")
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs)
    )
    items = wait_all(control_plane, namespace, "Completed", 2, timeout=60)
    assert {i["spec"]["queue"] for i in items} == {"partner-api"}
    assert get_queue(control_plane, namespace, "partner-api")["spec"]["rateLimit"] == {
        "perSecond": 5,
        "burst": 5,
    }


def test_queue_defaults_fill_what_a_job_leaves_out(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    start_operator("defaults")
    fast = {"initialSeconds": 0.1, "maxSeconds": 0.2, "jitter": False}
    apply_queue(control_plane, namespace, "twice", {"defaults": {"maxAttempts": 2, "backoff": fast}})
    apply(
        control_plane,
        namespace,
        {
            "inherits": http(target, "/status/503", queue="twice"),
            "own": http(target, "/status/503", queue="twice", maxAttempts=3),
        },
    )
    inherits = wait_phase(control_plane, namespace, "inherits", "DeadLettered", timeout=60)
    own = wait_phase(control_plane, namespace, "own", "DeadLettered", timeout=60)
    assert inherits["status"]["attempts"] == 2
    assert own["status"]["attempts"] == 3


# -- limits across replicas ----------------------------------------------------------------------


def test_rate_limit_holds_across_two_replicas(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    for i, env in enumerate(REPLICAS):
        start_operator(f"rate-{i}", **env)
    # Paused while the 100 jobs are admitted, so that the start rate measured is the limit's alone.
    apply_queue(kube, namespace, "api", {"paused": True, "rateLimit": {"perSecond": 5, "burst": 1}})
    apply(kube, namespace, {f"call-{i}": http(target, "/ok", queue="api") for i in range(100)})
    uids = set(wait_queued(kube, namespace, 100))
    patch_queue(kube, namespace, "api", {"paused": False})
    wait_all(kube, namespace, "Completed", 100, timeout=180)
    times = starts(target, uids)
    assert len(times) == 100
    # Every full 10 s window of the run: 50 starts, give or take the machine's noise.
    counts = [sum(1 for t in times if start <= t < start + 10) for start in times if start + 10 <= times[-1]]
    assert counts, times
    assert min(counts) >= 45 and max(counts) <= 55, (min(counts), max(counts))


def test_max_concurrency_holds_across_two_replicas(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    for i, env in enumerate(REPLICAS):
        start_operator(f"cap-{i}", **env)
    apply_queue(kube, namespace, "narrow", {"paused": True, "maxConcurrency": 3})
    n = 15
    apply(kube, namespace, {f"slow-{i}": http(target, "/slow/1000/200", queue="narrow") for i in range(n)})
    uids = set(wait_queued(kube, namespace, n))
    patch_queue(kube, namespace, "narrow", {"paused": False})
    wait_all(kube, namespace, "Completed", n, timeout=180)
    times = starts(target, uids)
    assert len(times) == n
    # Each call takes 1 s at the target, and a slot comes back only after its answer: no more than
    # three calls ever start within one second (less 50 ms for the target's own scheduling noise).
    assert most_within(times, 0.95) <= 3, times
    assert most_within(times, 1.0) == 3, "the cap was never reached: the test proved nothing"


def test_a_paused_queue_starts_nothing_until_resumed(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    start_operator("pause", **FAST_STATUS)
    apply_queue(kube, namespace, "held", {"paused": True})
    apply(kube, namespace, {f"held-{i}": http(target, "/ok", queue="held") for i in range(50)})
    uids = set(wait_queued(kube, namespace, 50))
    wait_for("condition Paused True", lambda: paused_condition(kube, namespace, "held") == "True")
    time.sleep(10)
    assert starts(target, uids) == []
    patch_queue(kube, namespace, "held", {"paused": False})
    wait_all(kube, namespace, "Completed", 50, timeout=120)
    assert len(starts(target, uids)) == 50
    wait_for(
        "a QueueResumed event",
        lambda: [e for e in events(kube, namespace, "held") if e["reason"] == "QueueResumed"],
    )
    wait_for("condition Paused False", lambda: paused_condition(kube, namespace, "held") == "False")


def test_a_job_waits_for_a_missing_queue_and_runs_once_it_exists(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    start_operator("missing")
    apply(kube, namespace, {"early": http(target, "/ok", queue="later")})
    waiting = wait_for(
        "reason QueueNotFound",
        lambda: (j := get(kube, namespace, "early")).get("status", {}).get("reason") == "QueueNotFound" and j,
    )
    assert waiting["status"]["phase"] == "Queued"
    assert "later" in waiting["status"]["message"]
    wait_for(
        "a QueueNotFound event",
        lambda: [e for e in events(kube, namespace, "early") if e["reason"] == "QueueNotFound"],
    )
    uid = waiting["metadata"]["uid"]
    time.sleep(2)
    assert target.calls_for(uid) == []
    apply_queue(kube, namespace, "later", {})
    wait_phase(kube, namespace, "early", "Completed", timeout=60)
    assert len(target.calls_for(uid)) == 1


def test_slots_of_a_killed_replica_return_within_one_lease(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    lease = 3.0
    env = {"RELAY_LEASE_SECONDS": str(lease)}
    holder = start_operator("holder", **env, **REPLICAS[0])
    apply_queue(kube, namespace, "pair", {"maxConcurrency": 2})
    # Their first attempt hangs: the holder keeps both of the queue's slots until it dies.
    apply(
        kube,
        namespace,
        {f"stuck-{i}": http(target, "/hang-once", queue="pair", timeoutSeconds=120) for i in range(2)},
    )
    stuck = {i["metadata"]["uid"] for i in all_jobs(kube, namespace)}
    wait_for("both slots taken", lambda: len(starts(target, stuck)) == 2)
    start_operator("survivor", **env, **REPLICAS[1])
    apply(kube, namespace, {f"after-{i}": http(target, "/ok", queue="pair", priority=10) for i in range(3)})
    after = {i["metadata"]["uid"] for i in wait_all(kube, namespace, "Queued", 3, timeout=60)} - stuck
    assert len(after) == 3
    time.sleep(lease)  # still no free slot, whatever the leases do while the holder lives
    assert starts(target, after) == []
    holder.kill()
    killed = time.monotonic()
    wait_all(kube, namespace, "Completed", 5, timeout=120)
    first = starts(target, after)[0]
    # One lease, plus a claim round and the machine's noise.
    assert first - killed <= lease + 3, f"the slots came back {first - killed:.1f} s after the kill"
    for uid in stuck:
        assert len(target.calls_for(uid)) == 2  # the hung attempt, then one after its lease expired


def test_a_job_that_waited_for_its_queue_takes_the_queues_defaults(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    start_operator("late-defaults")
    apply(kube, namespace, {"early": http(target, "/status/503", queue="later")})
    wait_for(
        "reason QueueNotFound",
        lambda: get(kube, namespace, "early").get("status", {}).get("reason") == "QueueNotFound",
    )
    fast = {"initialSeconds": 0.1, "maxSeconds": 0.2, "jitter": False}
    apply_queue(kube, namespace, "later", {"defaults": {"maxAttempts": 2, "backoff": fast}})
    dead = wait_phase(kube, namespace, "early", "DeadLettered", timeout=60)
    assert dead["status"]["attempts"] == 2


def test_deleting_a_queue_leaves_its_waiting_jobs_waiting_for_it(
    control_plane: Any, namespace: str, target: Target, start_operator: Any
) -> None:
    kube = control_plane
    start_operator("deleted")
    apply_queue(kube, namespace, "gone", {"paused": True})
    apply(kube, namespace, {"orphan": http(target, "/ok", queue="gone")})
    wait_phase(kube, namespace, "orphan", "Queued")
    kube.kubectl("delete", "-n", namespace, "rq/gone")
    wait_for(
        "reason QueueNotFound",
        lambda: get(kube, namespace, "orphan").get("status", {}).get("reason") == "QueueNotFound",
    )
    apply_queue(kube, namespace, "gone", {})
    done = wait_phase(kube, namespace, "orphan", "Completed", timeout=60)
    assert len(target.calls_for(done["metadata"]["uid"])) == 1
