"""The Helm chart against a real control plane with RBAC authorization on.

The proof that the chart's RBAC is sufficient is the operator itself: after `helm install`, it
runs locally under the chart's ServiceAccount (a TokenRequest token in a kubeconfig of its own)
and must take RelayJobs through their whole life, including the paths that need extra rights
(a Secret for headersFrom, Events, deletion after ttlSecondsAfterFinished, kopf peering). The
proof that it is not more than needed is the API server's own answer, as that ServiceAccount:
a SelfSubjectRulesReview and `kubectl auth can-i`.

No pod runs here (there is no kubelet): the Deployment is checked as an object, the process is ours.

The RelayJob CRD's life through Helm (install in a fresh cluster, an upgrade that changes it,
uninstall that keeps it, adopting one that exists) runs with Helm 3 and with Helm 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from devtools.sandbox import CONTROL_PLANE, KubeTools
from devtools.servers import PostgresServer, RedisServer
from tests.conftest import running_sandbox
from tests.support.databases import create_database

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "relayjob-operator"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"
SUFFIX = uuid.uuid4().hex[:6]

# Granted to every authenticated user by the default roles; not the chart's doing.
SELF_REVIEWS = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTools]:
    """A control plane of this module's own, without any CRD or admission policy, so that `helm
    install` is what installs them and `helm uninstall` is seen to leave the CRDs (the shared one
    has the CRD and the sandbox's policy already)."""
    if os.environ.get("RELAY_E2E_USE_KUBECONFIG") == "1":
        yield request.getfixturevalue("control_plane")
        return
    directory = tmp_path_factory.mktemp("helm-cluster")
    with running_sandbox(directory, CONTROL_PLANE, crd=None, secret_policy=None, helm=True) as sandbox:
        yield sandbox.kube_tools()


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    peering: str
    watched: list[str]
    notes: str

    @property
    def secret_policy(self) -> str:
        """The ValidatingAdmissionPolicy and binding of this release, and the name the chart gives
        the operator in RELAY_SECRET_POLICY_NAME."""
        return f"{self.service_account}-secret-references"


def helm_install(cluster: KubeTools, name: str, namespace: str, *args: str) -> Release:
    result = cluster.helm("install", name, str(CHART), "--namespace", namespace, *args)
    status = json.loads(cluster.helm("status", name, "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    values = json.loads(cluster.helm("get", "values", name, "-n", namespace, "--all", "-o", "json").stdout)
    fullname = f"{name}-relayjob-operator"
    watched = (values["watchNamespaces"] or [namespace]) if values["scope"] == "namespaced" else []
    return Release(name, namespace, fullname, fullname, watched, result.stdout)


def create_namespaces(cluster: KubeTools, *names: str) -> None:
    for name in names:
        if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", name)


@pytest.fixture(scope="module")
def cluster_release(
    cluster: KubeTools, redis_server: RedisServer, postgres_server: PostgresServer
) -> Release:
    namespace = f"relay-system-{SUFFIX}"
    create_namespaces(cluster, namespace)
    # The Secrets the default values name, as a user creates them before installing.
    for secret, url in (("relayjob-redis", redis_server.url), ("relayjob-postgresql", postgres_server.dsn)):
        cluster.kubectl("-n", namespace, "create", "secret", "generic", secret, f"--from-literal=url={url}")
    return helm_install(cluster, f"rj-{SUFFIX}", namespace)


@pytest.fixture(scope="module")
def namespaced_release(cluster: KubeTools) -> Release:
    namespace = f"relay-ns-{SUFFIX}"
    watched = yaml.safe_load(NAMESPACED_VALUES.read_text())["watchNamespaces"]
    # The watched namespaces are fixed by the CI values file; the release namespace is not among
    # them, which shows the operator needs nothing in its own namespace either.
    create_namespaces(cluster, namespace, *watched, f"outside-{SUFFIX}")
    # The cluster release owns the CRD: a second installation leaves it to that one.
    return helm_install(
        cluster, f"rjns-{SUFFIX}", namespace, "-f", str(NAMESPACED_VALUES), "--set", "crds.enabled=false"
    )


# -- the operator as the chart's ServiceAccount -------------------------------------------------


def service_account_kubeconfig(cluster: KubeTools, release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the release's ServiceAccount and nothing else."""
    token = cluster.kubectl(
        "create", "token", release.service_account, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "yaml").stdout
    )
    server = admin["clusters"][0]["cluster"]
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": release.service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": release.service_account}}],
        "current-context": "sa",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(document, handle)
    return path


def as_sa(
    cluster: KubeTools, kubeconfig: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.kubectl_path), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@contextlib.contextmanager
def run_operator(
    kubeconfig: Path,
    release: Release,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    log: Path,
) -> Iterator[Operator]:
    database = f"helm_{release.name.replace('-', '_')}"
    asyncio.run(create_database(postgres_server.dsn, database))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "KUBECONFIG"}
    env.update(
        KUBECONFIG=str(kubeconfig),
        RELAY_REDIS_URL=redis_server.url,
        RELAY_DATABASE_URL=urlunsplit(urlsplit(postgres_server.dsn)._replace(path=f"/{database}")),
        RELAY_KEY_PREFIX=release.name.replace("-", ""),
        RELAY_NAMESPACES=",".join(release.watched),
        # The peering object the chart created: kopf stays paused until it sees it.
        RELAY_PEERING_NAME=release.peering,
        RELAY_SECRET_POLICY_NAME=release.secret_policy,
        RELAY_HTTP_PORT=str(port),
        RELAY_LOG_FORMAT="json",
        RELAY_LOG_LEVEL="INFO",
    )
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "run"], cwd=REPO, env=env, stdout=sink, stderr=sink
        )
    operator = Operator(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"operator exited {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                if operator.get("/healthz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"operator did not serve /healthz within 60s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield operator
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def forbidden_lines(operator: Operator) -> list[str]:
    return [
        line
        for line in operator.lines()
        if "forbidden" in line.lower() or "not enough permissions" in line.lower() or " 403" in line
    ]


# -- a local HTTP target for the http executor ---------------------------------------------------


@dataclass
class Target:
    port: int = 0
    calls: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    state = Target()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.calls.append({k.lower(): v for k, v in self.headers.items()})
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def apply(cluster: KubeTools, namespace: str, document: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))


def relayjob(name: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "relay.dev/v1alpha1",
        "kind": "RelayJob",
        "metadata": {"name": name},
        "spec": {"payload": {"test": name}, "target": target, **spec},
    }


def exercise(
    cluster: KubeTools, namespace: str, target: Target, operator: Operator, *, first_timeout: int
) -> None:
    """Every API path the operator has: watch, status, Events, a Secret, delete, peering, and its
    start-up read of the release's Secret-reference policy."""
    secret_value = f"Bearer {uuid.uuid4().hex}"
    apply(cluster, namespace, relayjob("hello", {"noop": {}}))
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "relayjob/hello", f"--timeout={first_timeout}s",
        timeout=first_timeout + 30,
    )  # fmt: skip
    status = json.loads(cluster.kubectl("get", "-n", namespace, "relayjob/hello", "-o", "json").stdout)[
        "status"
    ]
    assert status["phase"] == "Completed" and status["attempts"] == 1

    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hook-credentials"},
            "stringData": {"authorization": secret_value},
        },
    )
    http = {
        "http": {
            "url": f"http://127.0.0.1:{target.port}/hook",
            "headersFrom": [
                {
                    "name": "Authorization",
                    "secretKeyRef": {"name": "hook-credentials", "key": "authorization"},
                }
            ],
        }
    }
    apply(cluster, namespace, relayjob("with-secret", http))
    apply(cluster, namespace, relayjob("short-lived", {"noop": {}}, ttlSecondsAfterFinished=1))
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "relayjob/with-secret", "--timeout=60s"
    )
    assert secret_value in [call.get("authorization") for call in target.calls]
    # Deleted by the operator after its TTL: the `delete` rule is used and sufficient.
    cluster.kubectl("wait", "-n", namespace, "--for=delete", "relayjob/short-lived", "--timeout=60s")

    events = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=hello", "-o", "json"
        ).stdout
    )["items"]
    assert events and {e["source"].get("component") for e in events} == {"relayjob-operator"}

    code, body = operator.get("/readyz")
    assert code == 200, body
    assert json.loads(body)["secretPolicy"] == "installed", body
    code, body = operator.get("/metrics")
    assert code == 200 and "relayjob_jobs_total" in body
    assert "relayjob_secret_policy_installed 1.0" in body


def peering_status(cluster: KubeTools, release: Release) -> list[dict[str, Any]]:
    if release.watched:
        objects = [
            json.loads(cluster.kubectl("get", "kopfpeering", release.peering, "-n", ns, "-o", "json").stdout)
            for ns in release.watched
        ]
    else:
        objects = [
            json.loads(cluster.kubectl("get", "clusterkopfpeering", release.peering, "-o", "json").stdout)
        ]
    return [obj.get("status") or {} for obj in objects]


# -- RBAC as the API server sees it ---------------------------------------------------------------


def rules_review(cluster: KubeTools, kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    # No client-side validation: it would list CRDs, which this identity may not do.
    result = as_sa(
        cluster, kubeconfig, "create", "--validate=false", "-o", "json", "-f", "-", input=json.dumps(review)
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["status"]
    assert not status.get("incomplete"), status.get("evaluationError")
    rules: list[dict[str, Any]] = status["resourceRules"]
    return rules


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, ...]], set[str]]:
    """(group-qualified resource, resourceNames) -> verbs, from a rules review."""
    out: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule["resources"]:
                name = f"{resource}.{group}" if group else resource
                out.setdefault((name, tuple(rule.get("resourceNames", []))), set()).update(rule["verbs"])
    return out


def assert_least_privilege(rules: list[dict[str, Any]], peering_resource: str, peering: str) -> None:
    writes_allowed = {
        ("relayjobs.relay.dev", ()): {"create", "delete"},
        ("relayjobs/status.relay.dev", ()): {"patch"},
        ("relayqueues/status.relay.dev", ()): {"patch"},
        ("relayschedules/status.relay.dev", ()): {"patch"},
        ("events", ()): {"create"},
        (f"{peering_resource}.kopf.dev", (peering,)): {"patch"},
    }
    for (resource, names), verbs in granted(rules).items():
        assert "*" not in verbs, f"wildcard verb on {resource}"
        assert "*" not in resource, f"wildcard resource {resource}"
        if resource in SELF_REVIEWS:
            continue
        writes = verbs & WRITE_VERBS
        if writes:
            assert writes <= writes_allowed.get((resource, names), set()), (
                f"{sorted(writes)} on {resource} {list(names)} is more than the operator needs"
            )
        if resource == "secrets":
            assert verbs == {"get"} and not names, f"Secrets: {sorted(verbs)}; only `get` is needed"


def can_i(cluster: KubeTools, kubeconfig: Path, *args: str) -> bool:
    result = as_sa(cluster, kubeconfig, "auth", "can-i", *args)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def assert_can_i(cluster: KubeTools, kubeconfig: Path, table: list[tuple[bool, str]]) -> None:
    wrong = [
        f"can-i {question}: {'yes' if not expected else 'no'}, want {'yes' if expected else 'no'}"
        for expected, question in table
        if can_i(cluster, kubeconfig, *question.split()) != expected
    ]
    assert not wrong, "\n".join(wrong)


def needed_in(namespace: str, peering_resource: str, peering: str) -> list[tuple[bool, str]]:
    """What the operator must be able to do in a namespace it serves, and neighbouring refusals."""
    n = f"-n {namespace}"
    return [
        (True, f"list relayjobs.relay.dev {n}"),
        (True, f"watch relayjobs.relay.dev {n}"),
        (True, f"delete relayjobs.relay.dev {n}"),
        (True, f"patch relayjobs.relay.dev --subresource=status {n}"),
        (True, f"get relayqueues.relay.dev/anything {n}"),
        (True, f"list relayqueues.relay.dev {n}"),
        (True, f"watch relayqueues.relay.dev {n}"),
        (True, f"patch relayqueues.relay.dev --subresource=status {n}"),
        (False, f"create relayqueues.relay.dev {n}"),
        (False, f"update relayqueues.relay.dev {n}"),
        (False, f"patch relayqueues.relay.dev {n}"),
        (False, f"delete relayqueues.relay.dev {n}"),
        (False, f"deletecollection relayqueues.relay.dev {n}"),
        (False, f"update relayqueues.relay.dev --subresource=status {n}"),
        (True, f"get relayschedules.relay.dev/anything {n}"),
        (True, f"list relayschedules.relay.dev {n}"),
        (True, f"watch relayschedules.relay.dev {n}"),
        (True, f"patch relayschedules.relay.dev --subresource=status {n}"),
        (False, f"create relayschedules.relay.dev {n}"),
        (False, f"update relayschedules.relay.dev {n}"),
        (False, f"patch relayschedules.relay.dev {n}"),
        (False, f"delete relayschedules.relay.dev {n}"),
        (False, f"update relayschedules.relay.dev --subresource=status {n}"),
        (False, f"update relayschedules.relay.dev --subresource=finalizers {n}"),
        (True, f"create events {n}"),
        (True, f"get secrets/anything {n}"),
        (False, f"list secrets {n}"),
        (False, f"watch secrets {n}"),
        (False, f"create secrets {n}"),
        (False, f"update secrets {n}"),
        (False, f"delete secrets {n}"),
        (True, f"create relayjobs.relay.dev {n}"),
        (False, f"update relayjobs.relay.dev {n}"),
        (False, f"patch relayjobs.relay.dev {n}"),
        (False, f"deletecollection relayjobs.relay.dev {n}"),
        (False, f"update relayjobs.relay.dev --subresource=status {n}"),
        (False, f"get events {n}"),
        (False, f"patch events {n}"),
        (False, f"delete events {n}"),
        (False, f"create pods {n}"),
        (False, f"get configmaps {n}"),
        (False, f"create serviceaccounts/token {n}"),
        (False, f"create rolebindings.rbac.authorization.k8s.io {n}"),
        (False, f"patch {peering_resource}.kopf.dev/someone-else {n}"),
        (False, f"create {peering_resource}.kopf.dev {n}"),
        (False, f"delete {peering_resource}.kopf.dev/{peering} {n}"),
        (True, f"patch {peering_resource}.kopf.dev/{peering} {n}"),
        (True, f"list {peering_resource}.kopf.dev {n}"),
        (True, f"watch {peering_resource}.kopf.dev {n}"),
    ]


def policy_reads(release: Release) -> list[tuple[bool, str]]:
    """The operator reads its own Secret-reference policy and binding, by name, and nothing else."""
    policies = "validatingadmissionpolicies.admissionregistration.k8s.io"
    bindings = "validatingadmissionpolicybindings.admissionregistration.k8s.io"
    return [
        (True, f"get {policies}/{release.secret_policy}"),
        (True, f"get {bindings}/{release.secret_policy}"),
        (False, f"get {policies}/someone-else"),
        (False, f"list {policies}"),
        (False, f"watch {bindings}"),
        (False, f"update {policies}/{release.secret_policy}"),
        (False, f"delete {bindings}/{release.secret_policy}"),
        (False, f"create {bindings}"),
    ]


NEVER_CLUSTER_WIDE = [
    (False, "create customresourcedefinitions.apiextensions.k8s.io"),
    (False, "update customresourcedefinitions.apiextensions.k8s.io"),
    (False, "delete customresourcedefinitions.apiextensions.k8s.io"),
    (False, "create clusterroles.rbac.authorization.k8s.io"),
    (False, "create clusterrolebindings.rbac.authorization.k8s.io"),
    (False, "escalate clusterroles.rbac.authorization.k8s.io"),
    (False, "bind clusterroles.rbac.authorization.k8s.io"),
    (False, "impersonate users"),
    (False, "impersonate serviceaccounts"),
    (False, "create namespaces"),
    (False, "delete namespaces"),
    (False, "create nodes"),
    (False, "list secrets --all-namespaces"),
]


# -- the tests ----------------------------------------------------------------------------------


def test_schema_rejects_a_wrong_type_at_install(cluster: KubeTools, tmp_path: Path) -> None:
    values = tmp_path / "wrong-type.yaml"
    values.write_text("replicaCount: two\nconfig:\n  concurrency: many\n")
    result = cluster.helm(
        "install", f"bad-{SUFFIX}", str(CHART), "-n", "default", "-f", str(values), check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "at '/replicaCount': got string, want integer" in result.stderr
    assert "at '/config/concurrency': got string, want integer" in result.stderr
    assert cluster.helm("status", f"bad-{SUFFIX}", "-n", "default", check=False).returncode != 0


def readme_network_policy_example() -> str:
    """The values of the chart README's NetworkPolicy example (HTTPS targets in 10.0.0.0/8 only)."""
    section = (CHART / "README.md").read_text().split("## Network policy", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return example


def test_rendered_network_policy_is_accepted_by_the_api_server(cluster: KubeTools, tmp_path: Path) -> None:
    """The chart's NetworkPolicy passes the API server's own validation of peers, CIDRs, excepts
    and ports, as the README's example and with external servers, scrapers and wide targets.
    Whether it is enforced cannot be tested here: NetworkPolicy is enforced by the network plugin,
    and the sandbox runs none (nor any pod); so `--dry-run=server`, which stores nothing."""
    namespace = f"netpol-{SUFFIX}"
    create_namespaces(cluster, namespace)
    external = {
        "networkPolicy": {
            "enabled": True,
            "ingress": {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
            "egress": {
                "dns": {"to": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]},
                "apiServer": {"cidrs": ["10.96.0.1/32", "fd00::1/128"]},
                "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]},
                "postgresql": {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"name": "databases"}},
                            "podSelector": {
                                "matchExpressions": [{"key": "app", "operator": "In", "values": ["pg"]}]
                            },
                        }
                    ]
                },
                "targets": [
                    {
                        "to": [
                            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}
                        ],
                        "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8999}],
                    },
                    {"to": [{"namespaceSelector": {}}]},
                ],
            },
        }
    }
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    for name, values in (("readme", readme_network_policy_example()), ("external", yaml.safe_dump(external))):
        path = tmp_path / f"{name}.yaml"
        path.write_text(values)
        rendered = cluster.helm(
            "template", "relay", str(CHART), "--namespace", namespace, "--kube-version", version,
            "-f", str(path), "--show-only", "templates/networkpolicy.yaml",
        ).stdout  # fmt: skip
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-", input=rendered, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        accepted = json.loads(result.stdout)
        expected = yaml.safe_load(rendered)
        assert accepted["kind"] == "NetworkPolicy", name
        # As rendered, but for the protocol the API server fills in where a rule leaves it out.
        for rule in expected["spec"]["egress"]:
            for port in rule.get("ports", []):
                port.setdefault("protocol", "TCP")
        assert accepted["spec"] == expected["spec"], name
    assert cluster.kubectl("get", "networkpolicies", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_cluster_mode_installs_crds_and_rbac(cluster: KubeTools, cluster_release: Release) -> None:
    release = cluster_release
    for crd in (
        "relayjobs.relay.dev",
        "relayqueues.relay.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ):
        cluster.kubectl("get", "crd", crd)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    ns = ("-n", release.namespace)
    cluster.kubectl("get", "serviceaccount", release.service_account, *ns)
    cluster.kubectl("get", "clusterrole", release.service_account)
    binding = json.loads(
        cluster.kubectl("get", "clusterrolebinding", release.service_account, "-o", "json").stdout
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}
    ]
    cluster.kubectl("get", "clusterkopfpeering", release.peering)
    cluster.kubectl("get", "validatingadmissionpolicy", release.secret_policy)
    policy_binding = json.loads(
        cluster.kubectl("get", "validatingadmissionpolicybinding", release.secret_policy, "-o", "json").stdout
    )
    assert policy_binding["spec"]["policyName"] == release.secret_policy
    assert policy_binding["spec"]["validationActions"] == ["Deny"]
    for role in ("edit", "view"):
        cluster.kubectl("get", "clusterrole", f"{release.service_account}-{role}")
    cluster.kubectl("get", "deployment", release.service_account, *ns)
    cluster.kubectl("get", "service", f"{release.service_account}-metrics", *ns)
    assert not cluster.kubectl(
        "get", "roles,rolebindings", "-A", "-l", f"app.kubernetes.io/instance={release.name}", "-o", "name"
    ).stdout.strip()
    # The Secrets exist, so NOTES has no warning, and it says how to apply a first RelayJob.
    assert "WARNING" not in release.notes
    assert "kind: RelayJob" in release.notes and "--for=condition=Succeeded" in release.notes


def test_charts_policy_refuses_a_secret_the_user_may_not_get(
    cluster: KubeTools, cluster_release: Release
) -> None:
    """The chart's policy works as installed: in this module's own cluster it is the only one, so
    the refusal is its own (a cluster given by KUBECONFIG may have others that refuse first)."""
    namespace = f"tenant-{SUFFIX}"
    create_namespaces(cluster, namespace)
    cluster.kubectl(
        "create", "role", "author", "-n", namespace, "--verb=get,create", "--resource=relayjobs.relay.dev"
    )
    cluster.kubectl("create", "rolebinding", "mallory", "-n", namespace, "--role=author", "--user=mallory")
    job = relayjob(
        "borrow",
        {"http": {"url": "http://127.0.0.1:9/", "headersFrom": [
            {"name": "Authorization", "secretKeyRef": {"name": "db-root", "key": "password"}}
        ]}},
    )  # fmt: skip
    expected = (
        'RelayJob may reference Secret "db-root" only if you may get it: '
        f'user "mallory" cannot get secrets/db-root in namespace "{namespace}"'
    )
    deadline = time.monotonic() + 30
    while True:
        result = cluster.kubectl(
            "--as=mallory", "create", "--dry-run=server", "-n", namespace, "-f", "-",
            input=json.dumps(job), check=False,
        )  # fmt: skip
        if expected in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # a new policy takes the API server a moment to load
    assert expected in result.stderr, result.stderr
    if cluster.sandbox is not None:
        assert f"ValidatingAdmissionPolicy '{cluster_release.secret_policy}'" in result.stderr


def test_cluster_mode_operator_runs_with_the_charts_identity(
    cluster: KubeTools,
    cluster_release: Release,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    target: Target,
    tmp_path: Path,
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, cluster_release, tmp_path / "sa-kubeconfig")
    whoami = as_sa(cluster, kubeconfig, "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{cluster_release.namespace}:{cluster_release.service_account}"
    )
    namespace = f"team-{SUFFIX}"
    create_namespaces(cluster, namespace)
    with run_operator(
        kubeconfig, cluster_release, redis_server, postgres_server, tmp_path / "operator.log"
    ) as op:
        exercise(cluster, namespace, target, op, first_timeout=60)
        peers = peering_status(cluster, cluster_release)
        assert all(peers), f"the operator never announced itself in its peering object: {peers}"
        refused = forbidden_lines(op)
    assert not refused, "the chart's RBAC refused the operator:\n" + "\n".join(refused)


def test_cluster_mode_rbac_is_least_privilege(
    cluster: KubeTools, cluster_release: Release, tmp_path: Path
) -> None:
    release = cluster_release
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa-kubeconfig")
    for namespace in ("default", release.namespace):
        assert_least_privilege(
            rules_review(cluster, kubeconfig, namespace), "clusterkopfpeerings", release.peering
        )
        table = needed_in(namespace, "clusterkopfpeerings", release.peering)
        # Cluster-scoped peering: the namespaced kind is never used.
        table = [(exp, q) for exp, q in table if "clusterkopfpeerings" not in q or "-n" not in q]
        assert_can_i(cluster, kubeconfig, table)
    assert_can_i(
        cluster,
        kubeconfig,
        [
            (True, "list relayjobs.relay.dev --all-namespaces"),
            (True, "watch relayjobs.relay.dev --all-namespaces"),
            (True, "list relayqueues.relay.dev --all-namespaces"),
            (True, "watch relayqueues.relay.dev --all-namespaces"),
            (True, "list clusterkopfpeerings.kopf.dev"),
            (True, "watch clusterkopfpeerings.kopf.dev"),
            (True, f"patch clusterkopfpeerings.kopf.dev/{release.peering}"),
            (False, "patch clusterkopfpeerings.kopf.dev/someone-else"),
            (False, "create clusterkopfpeerings.kopf.dev"),
            (False, f"delete clusterkopfpeerings.kopf.dev/{release.peering}"),
            (True, "list customresourcedefinitions.apiextensions.k8s.io"),
            (True, "watch customresourcedefinitions.apiextensions.k8s.io"),
            # headersFrom may name a Secret in any namespace the operator serves: here, all.
            (True, "get secrets --all-namespaces"),
            (False, "list namespaces"),
            *policy_reads(release),
            *NEVER_CLUSTER_WIDE,
        ],
    )


def test_namespaced_mode_installs_namespaced_rbac_and_one_policy_reader(
    cluster: KubeTools, namespaced_release: Release
) -> None:
    release = namespaced_release
    instance = f"app.kubernetes.io/instance={release.name}"
    # Cluster-wide, only what reads its Secret-reference policy (a resource that exists only there)
    # and the users' roles, which the chart binds to nobody.
    cluster_wide = cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l", instance, "-o", "name")
    reader = f"{release.service_account}-secret-policy"
    assert sorted(cluster_wide.stdout.split()) == sorted(
        [
            f"clusterrole.rbac.authorization.k8s.io/{reader}",
            f"clusterrole.rbac.authorization.k8s.io/{release.service_account}-edit",
            f"clusterrole.rbac.authorization.k8s.io/{release.service_account}-view",
            f"clusterrolebinding.rbac.authorization.k8s.io/{reader}",
        ]
    )
    cluster.kubectl(
        "get", "validatingadmissionpolicy,validatingadmissionpolicybinding", release.secret_policy
    )
    roles = cluster.kubectl(
        "get", "roles", "-A", "-l", instance, "-o", "jsonpath={.items[*].metadata.namespace}"
    )
    assert sorted(roles.stdout.split()) == sorted(release.watched)
    bindings = cluster.kubectl(
        "get", "rolebindings", "-A", "-l", instance, "-o", "jsonpath={.items[*].metadata.namespace}"
    )
    assert sorted(bindings.stdout.split()) == sorted(release.watched)
    for namespace in release.watched:
        cluster.kubectl("get", "kopfpeering", release.peering, "-n", namespace)
    # No Secrets were created for this release: NOTES says which ones to create, and how.
    assert 'WARNING: Secret "relayjob-redis" does not exist' in release.notes
    assert f"kubectl -n {release.namespace} create secret generic relayjob-postgresql" in release.notes


def test_namespaced_mode_operator_runs_with_the_charts_identity(
    cluster: KubeTools,
    namespaced_release: Release,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    target: Target,
    tmp_path: Path,
) -> None:
    release = namespaced_release
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa-kubeconfig")
    outside = f"outside-{SUFFIX}"
    apply(cluster, outside, relayjob("not-mine", {"noop": {}}))
    with run_operator(kubeconfig, release, redis_server, postgres_server, tmp_path / "operator.log") as op:
        exercise(cluster, release.watched[0], target, op, first_timeout=60)
        apply(cluster, release.watched[1], relayjob("second", {"noop": {}}))
        cluster.kubectl(
            "wait", "-n", release.watched[1], "--for=condition=Succeeded", "relayjob/second", "--timeout=60s"
        )
        assert all(peering_status(cluster, release)), "the operator never announced itself in a namespace"
        refused = forbidden_lines(op)
    untouched = json.loads(cluster.kubectl("get", "relayjob", "not-mine", "-n", outside, "-o", "json").stdout)
    assert not untouched.get("status"), "a RelayJob outside the served namespaces was handled"
    # The operator disables kopf's cluster-wide scanning when given namespaces, so a namespaced
    # identity is never refused anything: any 403 means the chart misses a rule.
    assert not refused, "the chart's RBAC refused the operator:\n" + "\n".join(refused)


def test_namespaced_mode_rbac_is_least_privilege(
    cluster: KubeTools, namespaced_release: Release, tmp_path: Path
) -> None:
    release = namespaced_release
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa-kubeconfig")
    for namespace in release.watched:
        assert_least_privilege(rules_review(cluster, kubeconfig, namespace), "kopfpeerings", release.peering)
        assert_can_i(cluster, kubeconfig, needed_in(namespace, "kopfpeerings", release.peering))
    # Outside the served namespaces, including its own, it can do nothing at all: the one rule
    # left is its read of two cluster-scoped objects, by name.
    policy_rule = {
        "verbs": ["get"],
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
        "resourceNames": [release.secret_policy],
    }
    for namespace in (release.namespace, f"outside-{SUFFIX}", "default"):
        rules = rules_review(cluster, kubeconfig, namespace)
        extra = [
            r
            for r in rules
            if not set(r["resources"]) <= {n.split(".")[0] for n in SELF_REVIEWS} and r != policy_rule
        ]
        assert not extra, f"permissions in {namespace}, which is not served: {extra}"
        assert_can_i(
            cluster,
            kubeconfig,
            [(False, q) for expected, q in needed_in(namespace, "kopfpeerings", release.peering) if expected],
        )
    assert_can_i(
        cluster,
        kubeconfig,
        [
            (False, "list relayjobs.relay.dev --all-namespaces"),
            (False, "list relayqueues.relay.dev --all-namespaces"),
            (False, "list customresourcedefinitions.apiextensions.k8s.io"),
            (False, "list namespaces"),
            (False, "watch namespaces"),
            (False, "list clusterkopfpeerings.kopf.dev"),
            (False, "get secrets --all-namespaces"),
            *policy_reads(release),
            *NEVER_CLUSTER_WIDE,
        ],
    )


def test_uninstall_keeps_the_crds_and_the_relayjobs(cluster: KubeTools, cluster_release: Release) -> None:
    release = cluster_release
    namespace = f"keep-{SUFFIX}"
    create_namespaces(cluster, namespace)
    apply(cluster, namespace, relayjob("survivor", {"noop": {}}))
    before = json.loads(cluster.kubectl("get", "relayjobs", "-A", "-o", "json").stdout)["items"]
    cluster.helm("uninstall", release.name, "-n", release.namespace)
    for crd in (
        "relayjobs.relay.dev",
        "relayqueues.relay.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ):
        cluster.kubectl("get", "crd", crd)
    after = json.loads(cluster.kubectl("get", "relayjobs", "-A", "-o", "json").stdout)["items"]
    assert {(j["metadata"]["namespace"], j["metadata"]["name"], j["metadata"]["uid"]) for j in after} == {
        (j["metadata"]["namespace"], j["metadata"]["name"], j["metadata"]["uid"]) for j in before
    }
    assert any(j["metadata"]["name"] == "survivor" for j in after)
    gone = cluster.kubectl("get", "clusterrole", release.service_account, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_plain_install_yaml_applies_and_grants_the_same(cluster: KubeTools, tmp_path: Path) -> None:
    """manifests/install.yaml, as a user without Helm applies it (the CRDs are there already)."""
    install = REPO / "manifests" / "install.yaml"
    cluster.kubectl("apply", "-f", str(install))
    try:
        cluster.kubectl("get", "deployment", "relayjob-operator", "-n", "relayjob-system")
        cluster.kubectl("get", "clusterkopfpeering", "relayjob-operator")
        release = Release(
            "relayjob-operator", "relayjob-system", "relayjob-operator", "relayjob-operator", [], ""
        )
        kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa-kubeconfig")
        assert_least_privilege(
            rules_review(cluster, kubeconfig, "default"), "clusterkopfpeerings", "relayjob-operator"
        )
        assert_can_i(
            cluster, kubeconfig, [(True, "patch relayjobs.relay.dev --subresource=status -n default")]
        )
    finally:
        # Without a namespace controller a deleted namespace never finishes terminating: do not wait.
        cluster.kubectl("delete", "--wait=false", "--ignore-not-found", "-f", str(install))


# -- the RelayJob CRD through install, upgrade and uninstall, with Helm 3 and Helm 4 --------------

# The flags the chart's README tells users to add when the CRD already exists: --take-ownership
# adopts it into the release (Helm 3.17+ and 4), and Helm 4's server-side apply needs
# --force-conflicts to take the fields another field manager (the sandbox, `kubectl apply
# --server-side`) applied.
ADOPT_FLAGS = {"helm": ("--take-ownership",), "helm4": ("--take-ownership", "--force-conflicts")}
EXTRA_COLUMN = "        - name: OWNER\n          type: string\n          jsonPath: .metadata.labels.owner\n"


@pytest.fixture(params=sorted(ADOPT_FLAGS))
def helm_tool(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[KubeTools]:
    """A control plane of the test's own with no CRD at all: Helm installs them, and the test may
    then change and re-apply the CRD without touching any other test's cluster."""
    with running_sandbox(tmp_path / "cluster", CONTROL_PLANE, crd=None, secret_policy=None) as sandbox:
        yield sandbox.kube_tools()


def crd(cluster: KubeTools) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        cluster.kubectl("get", "crd", "relayjobs.relay.dev", "-o", "json").stdout
    )
    return document


def chart_with_an_extra_column(directory: Path) -> Path:
    """The chart as its next release might change the CRD: one printer column more."""
    chart = directory / "relayjob-operator"
    shutil.copytree(CHART, chart)
    template = chart / "templates" / "crd-relayjobs.yaml"
    text = template.read_text()
    marker = "      additionalPrinterColumns:\n"
    assert text.count(marker) == 1
    template.write_text(text.replace(marker, marker + EXTRA_COLUMN))
    return chart


def test_helm_installs_upgrades_and_keeps_the_crd_and_adopts_an_existing_one(
    fresh_cluster: KubeTools, helm_tool: str, tmp_path: Path
) -> None:
    cluster = fresh_cluster
    name = f"crd-{SUFFIX}"
    create_namespaces(cluster, "relay", "team")

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.helm(*args, tool=helm_tool)

    # A fresh cluster: the release creates the CRD, kept on uninstall.
    helm("install", name, str(CHART), "-n", "relay")
    cluster.kubectl("wait", "--for=condition=Established", "crd/relayjobs.relay.dev", "--timeout=60s")
    annotations = crd(cluster)["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert annotations["meta.helm.sh/release-name"] == name
    job = relayjob("kept", {"noop": {}})
    job["metadata"]["labels"] = {"owner": "team-a"}
    apply(cluster, "team", job)

    # An upgrade that changes the CRD updates it, and the API server serves the change.
    helm("upgrade", name, str(chart_with_an_extra_column(tmp_path)), "-n", "relay")
    columns = [c["name"] for c in crd(cluster)["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "OWNER" in columns, columns
    deadline = time.monotonic() + 30
    while "OWNER" not in (table := cluster.kubectl("get", "rj", "-n", "team").stdout):
        assert time.monotonic() < deadline, table
        time.sleep(0.5)
    assert "team-a" in table

    # Uninstall leaves the CRD, as upgraded, and the RelayJob.
    helm("uninstall", name, "-n", "relay")
    assert "OWNER" in cluster.kubectl("get", "rj", "-n", "team").stdout
    kept = json.loads(cluster.kubectl("get", "rj", "kept", "-n", "team", "-o", "json").stdout)
    assert kept["metadata"]["labels"] == {"owner": "team-a"}

    # The CRD applied by someone else, as `make run` (the sandbox's field manager) or `kubectl
    # apply --server-side -f manifests/crd.yaml` leave it: installing adopts it with the flags the
    # README gives, and the CRD is the chart's again.
    cluster.install_crd(REPO / "manifests" / "crd.yaml")
    other = f"crd2-{SUFFIX}"
    helm("install", other, str(CHART), "-n", "relay", *ADOPT_FLAGS[helm_tool])
    status = json.loads(helm("status", other, "-n", "relay", "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    metadata = crd(cluster)["metadata"]
    assert metadata["annotations"]["meta.helm.sh/release-name"] == other
    assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (
        json.loads(cluster.kubectl("get", "rj", "kept", "-n", "team", "-o", "json").stdout)["metadata"]["uid"]
        == kept["metadata"]["uid"]
    )
