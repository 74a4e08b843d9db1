"""The container image, built from the Dockerfile with podman and run the way the chart runs it.

The image is built on a Debian base made locally (devtools/image.py). It runs with the chart's
securityContext (read-only root, its uid, every capability dropped, no privilege escalation, a
tmpfs where the chart gives an emptyDir) and exactly the environment the chart's Deployment
renders, as the chart's ServiceAccount (its RBAC from the rendered chart, a TokenRequest token in
a mounted kubeconfig), against the sandbox API server, Redis and PostgreSQL on loopback. There
is no kubelet here: podman plays it, so the only thing not from the chart is that kubeconfig,
which stands in for the token a pod gets mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from devtools.image import ULIMITS, ImageError, Podman, build_image
from devtools.sandbox import KubeTools
from devtools.servers import PostgresServer, RedisServer
from tests.support.databases import create_database

# A first run makes the base image with debootstrap and installs every dependency: minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "relayjob-operator"
SUFFIX = uuid.uuid4().hex[:6]
RELEASE = f"img-{SUFFIX}"
KUBECONFIG_IN_CONTAINER = "/var/run/relayjob/kubeconfig"
# The kinds that give the ServiceAccount its identity and rights, and kopf its peering object.
IDENTITY_KINDS = {"ServiceAccount", "KopfPeering", "ClusterKopfPeering"}
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


@dataclass(frozen=True)
class Built:
    podman: Podman
    tag: str
    seconds: float
    size_bytes: int


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Built:
    started = time.monotonic()
    try:
        podman = Podman.find()
        tag = build_image(podman)
    except ImageError as error:
        pytest.fail(str(error), pytrace=False)
    built = Built(podman, tag, time.monotonic() - started, podman.size_bytes(tag))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nimage {tag}: {built.size_bytes / 1e6:.0f} MB, built in {built.seconds:.0f}s", flush=True)
    return built


def in_image(image: Built, script: str) -> dict[str, Any]:
    result = image.podman.run(
        "run",
        "--rm",
        "--network",
        "none",
        *ULIMITS,
        "--entrypoint",
        "sh",
        image.tag,
        "-c",
        script,
        timeout=120,
    )
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_the_image_holds_no_compiler_pip_or_test_code(image: Built) -> None:
    found = in_image(
        image,
        "set -u; tools=''; for t in gcc cc c++ make pip pip3; do "
        'command -v "$t" >/dev/null 2>&1 && tools="$tools\\"$t\\","; done; '
        "python - <<EOF\n"
        "import importlib.util as u, json, pathlib, sys, sysconfig\n"
        "site = pathlib.Path(sysconfig.get_paths()['purelib'])\n"
        "print(json.dumps({\n"
        "  'tools': [${tools%,}],\n"
        "  'modules': [m for m in ('pip', 'setuptools', 'devtools', 'tests') if u.find_spec(m)],\n"
        "  'site': sorted(p.name for p in site.iterdir() if p.name in ('tests', 'devtools', 'bench')),\n"
        "  'src': pathlib.Path('/src').exists(),\n"
        "  'operator': u.find_spec('controller') is not None,\n"
        "  'prefix': sys.prefix,\n"
        "}))\n"
        "EOF",
    )
    assert found["operator"] and found["prefix"] == "/opt/relayjob", found
    assert found["tools"] == [], f"the image carries build tools: {found['tools']}"
    assert found["modules"] == [], f"importable in the image: {found['modules']}"
    assert found["site"] == [] and found["src"] is False, found
    assert image.size_bytes < 400e6, f"the image is {image.size_bytes / 1e6:.0f} MB"


# -- the chart, rendered ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_chart(kube: KubeTools, namespace: str, port: int) -> list[dict[str, Any]]:
    server = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    rendered = kube.helm(
        "template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds",
        "--kube-version", server,
        "--set", "scope=namespaced", "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"config.httpPort={port}", "--set", f"config.keyPrefix=img{SUFFIX}",
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def the_deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployments = [doc for doc in documents if doc["kind"] == "Deployment" and "operator" in str(doc)]
    operator = [d for d in deployments if d["spec"]["template"]["spec"].get("serviceAccountName")]
    assert len(operator) == 1, [d["metadata"]["name"] for d in deployments]
    return operator[0]


def service_account_objects(documents: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """The ServiceAccount, the peering objects, and the (Cluster)Roles bound to the account."""
    bindings = [
        doc
        for doc in documents
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("kind") == "ServiceAccount" and s["name"] == account for s in doc.get("subjects", []))
    ]
    roles = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace")) for b in bindings}
    bound = [
        doc
        for doc in documents
        if doc["kind"] in ("Role", "ClusterRole")
        and (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")) in roles
    ]
    identity = [doc for doc in documents if doc["kind"] in IDENTITY_KINDS]
    return identity + bound + bindings


def install_identity(kube: KubeTools, documents: list[dict[str, Any]], account: str) -> list[str]:
    """Create the CRDs the cluster lacks (kopf's peering kinds) and the account's objects; return
    the cluster-scoped ones created, for removal."""
    for crd in (doc for doc in documents if doc["kind"] == "CustomResourceDefinition"):
        name = crd["metadata"]["name"]
        if kube.kubectl("get", "crd", name, check=False).returncode != 0:
            kube.kubectl("create", "-f", "-", input=json.dumps(crd))
            kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    objects = service_account_objects(documents, account)
    assert {doc["kind"] for doc in objects} >= {"ServiceAccount", "KopfPeering", "Role", "RoleBinding"}
    kube.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(doc) for doc in objects))
    return [
        f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        for doc in objects
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]


def service_account_kubeconfig(kube: KubeTools, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with the account's TokenRequest token, readable only by the image's user."""
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout)
    cluster = admin["clusters"][0]["cluster"]
    assert urlsplit(cluster["server"]).hostname in ("127.0.0.1", "::1", "localhost"), cluster["server"]
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "sandbox", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(document))
    return path


# -- the container ----------------------------------------------------------------------------------


def container_env(
    container: dict[str, Any], secrets: dict[tuple[str, str], str], pod: str, namespace: str
) -> dict[str, str]:
    """The container's environment as the kubelet resolves it, from the Secrets a user creates."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = str(entry.get("value", ""))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets, f"the chart reads Secret {ref}, unknown here"
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
        elif "fieldRef" in source:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            pytest.fail(f"env {entry['name']}: unsupported source {source}", pytrace=False)
    return env


def run_as(pod_spec: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
    context = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    return int(context["runAsUser"]), int(context.get("runAsGroup", context["runAsUser"]))


def security_flags(pod_spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """podman flags for the chart's pod and container securityContext, each one asserted."""
    context = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    uid, gid = run_as(pod_spec, container)
    flags = [
        "--read-only",
        f"--user={uid}:{gid}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"volume {volume} has no stand-in here"
        size = (volume["emptyDir"] or {}).get("sizeLimit", "64Mi").replace("Mi", "m")
        flags.append(f"--tmpfs={mount['mountPath']}:rw,nosuid,nodev,size={size},mode=1777")
    return flags


@dataclass
class Container:
    image: Built
    name: str
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def state(self) -> dict[str, Any]:
        out = self.image.podman.run("inspect", "--format", "{{json .State}}", self.name).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def logs(self) -> str:
        result = self.image.podman.run("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]


@contextlib.contextmanager
def running(
    image: Built, flags: list[str], env: dict[str, str], kubeconfig: Path, port: int
) -> Iterator[Container]:
    container = Container(image, f"relayjob-image-{SUFFIX}", port)
    env_flags = [f"--env={key}={value}" for key, value in env.items()]
    image.podman.run(
        "run", "--detach", "--name", container.name, "--network", "host", *ULIMITS, *flags,
        f"--volume={kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro", *env_flags, image.tag,
        timeout=120,
    )  # fmt: skip
    try:
        yield container
    finally:
        # SIGTERM, as the kubelet stops a pod; the operator must finish cleanly within its grace.
        image.podman.run("stop", "--time", "40", container.name, timeout=90, check=False)
        state = container.state()
        logs = container.logs()
        image.podman.run("rm", "--force", container.name, check=False)
        assert state["ExitCode"] == 0, f"the operator exited {state['ExitCode']} on SIGTERM:\n{logs}"


@pytest.fixture
def http_target() -> Iterator[tuple[str, list[bytes]]]:
    """A target on loopback answering 200, and the bodies it received."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_the_image_runs_a_job_as_the_chart_runs_it(
    image: Built,
    control_plane: KubeTools,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    http_target: tuple[str, list[bytes]],
    tmp_path: Path,
) -> None:
    target, received = http_target
    namespace = f"image-{SUFFIX}"
    control_plane.kubectl("create", "namespace", namespace)
    port = free_port()
    documents = render_chart(control_plane, namespace, port)
    deployment = the_deployment(documents)
    pod_spec = deployment["spec"]["template"]["spec"]
    account = pod_spec["serviceAccountName"]
    created = install_identity(control_plane, documents, account)

    database = f"image_{SUFFIX}"
    asyncio.run(create_database(postgres_server.dsn, database))
    secrets = {
        ("relayjob-redis", "url"): redis_server.url,
        ("relayjob-postgresql", "url"): urlunsplit(
            urlsplit(postgres_server.dsn)._replace(path=f"/{database}")
        ),
    }
    (container_spec,) = [c for c in pod_spec["containers"] if c["name"] == "operator"]
    env = container_env(container_spec, secrets, f"{deployment['metadata']['name']}-0", namespace)
    assert env["RELAY_NAMESPACES"] == namespace and env["RELAY_HTTP_PORT"] == str(port)
    env["KUBECONFIG"] = KUBECONFIG_IN_CONTAINER
    kubeconfig = service_account_kubeconfig(control_plane, namespace, account, tmp_path / "kubeconfig")
    os.chown(kubeconfig, *run_as(pod_spec, container_spec))
    kubeconfig.chmod(0o600)

    try:
        with running(image, security_flags(pod_spec, container_spec), env, kubeconfig, port) as container:
            deadline = time.monotonic() + 90
            ready: tuple[int, str] = (0, "")
            while ready[0] != 200:
                if not container.state()["Running"]:
                    pytest.fail(f"the container stopped:\n{container.logs()}", pytrace=False)
                assert time.monotonic() < deadline, f"/readyz: {ready}\n{container.logs()}"
                with contextlib.suppress(OSError):
                    ready = container.get("/readyz")
                time.sleep(0.5)

            # noop, and an http request to a target on loopback: aiohttp and its C parts in the image.
            targets = {"from-image": {"noop": {}}, "http-from-image": {"http": {"url": f"{target}/hook"}}}
            jobs = [
                {
                    "apiVersion": "relay.dev/v1alpha1",
                    "kind": "RelayJob",
                    "metadata": {"name": name},
                    "spec": {"target": spec, "payload": {"built": "with podman"}},
                }
                for name, spec in targets.items()
            ]
            control_plane.kubectl(
                "apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(job) for job in jobs)
            )
            for name in targets:
                waited = control_plane.kubectl(
                    "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=60s", f"rj/{name}",
                    check=False,
                )  # fmt: skip
                assert waited.returncode == 0, waited.stderr + container.logs()
                status = json.loads(
                    control_plane.kubectl("get", "-n", namespace, f"rj/{name}", "-o", "json").stdout
                )["status"]
                assert status["phase"] == "Completed" and status["attempts"] == 1, status
            assert received == [b'{"built":"with podman"}']
            code, metrics = container.get("/metrics")
            assert code == 200 and "relayjob_jobs_total" in metrics
            forbidden = [
                line for line in container.logs().splitlines() if " 403" in line or "forbidden" in line
            ]
            assert forbidden == [], forbidden
    finally:
        for name in created:
            control_plane.kubectl("delete", name, "--ignore-not-found", check=False)
