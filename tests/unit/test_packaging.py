"""The chart and the plain manifests, checked without a cluster: `helm template` output read as data.

What needs a cluster (install, RBAC really sufficient and really least, uninstall) is in
tests/e2e/test_helm_chart.py; the Dockerfile is in tests/integration/test_dockerfile_install.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.sandbox.binaries import Binaries, BinaryError

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "relayjob-operator"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return Binaries().ensure("helm")
    except BinaryError as error:
        pytest.fail(str(error), pytrace=False)


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def render(helm: Path, *args: str, namespace: str = "relay-system", release: str = "relay") -> list[Doc]:
    result = helm_run(
        helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", "1.36.0", *args
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc["metadata"]["name"], doc["spec"]


# -- single sources, generated copies ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "copy"),
    [
        ("manifests/crd.yaml", "helm/relayjob-operator/crds/relayjobs.relay.dev.yaml"),
        ("manifests/peering-crds.yaml", "helm/relayjob-operator/crds/kopf-peerings.yaml"),
    ],
)
def test_chart_crds_are_the_manifests(source: str, copy: str) -> None:
    assert (REPO / copy).read_bytes() == (REPO / source).read_bytes(), (
        f"{copy} differs from {source}; run `python scripts/render-manifests.py`"
    )


def test_chart_crds_dir_holds_only_those_copies() -> None:
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [
        "kopf-peerings.yaml",
        "relayjobs.relay.dev.yaml",
    ]


def test_generated_manifests_are_up_to_date(helm: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render-manifests.py"), "--check", "--helm", str(helm)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_peering_crds_are_the_kinds_kopf_uses() -> None:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "peering-crds.yaml").read_text()))
    kinds = {doc["metadata"]["name"]: (doc["spec"]["scope"], doc["spec"]["names"]["kind"]) for doc in docs}
    # kopf's selectors: kopf.dev/v1 clusterkopfpeerings (cluster) and kopfpeerings (namespaced).
    assert kinds == {
        "clusterkopfpeerings.kopf.dev": ("Cluster", "ClusterKopfPeering"),
        "kopfpeerings.kopf.dev": ("Namespaced", "KopfPeering"),
    }
    for doc in docs:
        assert [v["name"] for v in doc["spec"]["versions"]] == ["v1"]


def test_install_yaml_is_the_default_chart_in_its_namespace() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "relayjob-system",
            "labels": {
                "app.kubernetes.io/part-of": "relayjob-operator",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    assert not of_kind(docs, "CustomResourceDefinition"), "CRDs are applied from their own files first"
    assert not of_kind(docs, "Pod"), "helm test hooks do not belong in a plain install"
    for doc in docs[1:]:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert doc["metadata"]["namespace"] == "relayjob-system", doc["metadata"]


# -- the chart's objects -----------------------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(helm: Path) -> None:
    docs = render(helm, "--set", "redis.bundled.enabled=true", "--set", "postgresql.bundled.enabled=true")
    docs += render(helm, "--show-only", "templates/tests/test-readyz.yaml")
    specs = dict(pod_specs(docs))
    assert set(specs) == {
        "relay-relayjob-operator",
        "relay-relayjob-operator-redis",
        "relay-relayjob-operator-postgresql",
        "relay-relayjob-operator-test-readyz",
    }
    for name, spec in specs.items():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged"), where
            assert context.get("runAsUser", pod.get("runAsUser", 0)) != 0, where
            assert "resources" in container and container["resources"].get("limits"), where


def test_operator_deployment(helm: Path) -> None:
    (deployment,) = of_kind(render(helm), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "relayjob-operator:0.1.0"
    env = {item["name"]: item for item in container["env"]}
    # Credentials only ever come from Secrets, never from plain values.
    assert env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "relayjob-redis", "key": "url"}
    assert env["RELAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "relayjob-postgresql",
        "key": "url",
    }
    assert env["RELAY_NAMESPACES"]["value"] == ""
    assert env["RELAY_PEERING_NAME"]["value"] == "relay-relayjob-operator"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert spec["serviceAccountName"] == "relay-relayjob-operator"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_bundled_servers_feed_the_operator_their_own_secrets(helm: Path) -> None:
    docs = render(helm, "--set", "redis.bundled.enabled=true", "--set", "postgresql.bundled.enabled=true")
    secrets = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Secret")}
    assert set(secrets) == {"relay-relayjob-operator-redis", "relay-relayjob-operator-postgresql"}
    operator = next(
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "relay-relayjob-operator"
    )
    env = {item["name"]: item for item in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "relay-relayjob-operator-redis"
    assert (
        env["RELAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "relay-relayjob-operator-postgresql"
    )


def test_bundled_servers_are_off_by_default(helm: Path) -> None:
    docs = render(helm)
    assert [d["metadata"]["name"] for d in of_kind(docs, "Deployment")] == ["relay-relayjob-operator"]
    assert not of_kind(docs, "Secret")


def _rules(docs: list[Doc]) -> list[Doc]:
    return [rule for doc in docs if doc["kind"] in ("Role", "ClusterRole") for rule in doc["rules"]]


def test_rbac_cluster_scope(helm: Path) -> None:
    docs = render(helm)
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "relay-relayjob-operator", "namespace": "relay-system"}
    ]
    (peering,) = of_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "relay-relayjob-operator"
    _assert_least(_rules(docs), "clusterkopfpeerings")


def test_rbac_namespaced_scope_has_nothing_cluster_wide(helm: Path) -> None:
    docs = render(helm, "-f", str(NAMESPACED_VALUES))
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert not of_kind(docs, "ClusterKopfPeering")
    watched = ["relay-apps", "relay-batch"]
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert sorted(d["metadata"]["namespace"] for d in of_kind(docs, kind)) == watched, kind
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "relay-system"
    _assert_least(_rules(docs), "kopfpeerings")
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_NAMESPACES"] == "relay-apps,relay-batch"


def test_namespaced_scope_defaults_to_the_release_namespace(helm: Path) -> None:
    docs = render(helm, "--set", "scope=namespaced", namespace="jobs")
    assert [d["metadata"]["namespace"] for d in of_kind(docs, "Role")] == ["jobs"]


def _assert_least(rules: list[Doc], peering_resource: str) -> None:
    allowed: dict[tuple[str, str], set[str]] = {
        ("relay.dev", "relayjobs"): {"list", "watch", "delete"},
        ("relay.dev", "relayjobs/status"): {"patch"},
        ("", "events"): {"create"},
        ("", "secrets"): {"get"},
        ("kopf.dev", peering_resource): {"list", "watch", "patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    seen: set[tuple[str, str]] = set()
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key in allowed, f"unexpected permission on {key}"
                assert set(rule["verbs"]) <= allowed[key], (key, rule["verbs"])
                if "patch" in rule["verbs"] and resource == peering_resource:
                    assert rule.get("resourceNames") == ["relay-relayjob-operator"], (
                        "patch only its own peering"
                    )
                seen.add(key)
    assert {key for key in allowed if key[1] != "customresourcedefinitions"} <= seen


def test_secret_access_can_be_turned_off(helm: Path) -> None:
    rules = _rules(render(helm, "--set", "rbac.readSecrets=false"))
    assert all("secrets" not in rule["resources"] for rule in rules)


# -- values validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("replicaCount: two\n", "at '/replicaCount': got string, want integer"),
        ("config:\n  concurrency: 0\n", "at '/config/concurrency': minimum: got 0, want 1"),
        ("config:\n  logFormat: yaml\n", "at '/config/logFormat'"),
        ("scope: everywhere\n", "at '/scope'"),
        ("replicas: 2\n", "additional properties 'replicas' not allowed"),
        ("watchNamespaces: [Not_A_Namespace]\n", "at '/watchNamespaces/0'"),
    ],
)
def test_schema_rejects_bad_values_with_a_message_naming_the_key(
    helm: Path, tmp_path: Path, values: str, message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.36.0", "-f", str(path))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "watchNamespaces={a}"), "watchNamespaces [a] is only used with scope: namespaced"),
        (("--set", "redis.existingSecret="), "redis.existingSecret is empty"),
        (("--set", "postgresql.existingSecret="), "postgresql.existingSecret is empty"),
    ],
)
def test_cross_field_rules_fail_with_a_clear_message(helm: Path, args: tuple[str, ...], message: str) -> None:
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.36.0", *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("values", [None, NAMESPACED_VALUES])
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


# -- skaffold.yaml (no skaffold binary here: its references are checked against the chart) -----


def _dotted(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"skaffold sets {key}, which values.yaml lacks"
        node = node[part]
    return node


@pytest.mark.parametrize("profile", [None, "namespaced"])
def test_skaffold_deploys_the_image_it_builds_with_the_chart(helm: Path, profile: str | None) -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    (artifact,) = config["build"]["artifacts"]
    assert artifact["docker"]["dockerfile"] == "Dockerfile" and artifact["context"] == "."
    (release,) = config["deploy"]["helm"]["releases"]
    values_files = list(release.get("valuesFiles", []))
    hooks: dict[str, Any] = {}
    if profile:
        (found,) = [p for p in config["profiles"] if p["name"] == profile]
        for patch in found["patches"]:
            assert patch["op"] == "add"
            if patch["path"] == "/deploy/helm/releases/0/valuesFiles":
                values_files = patch["value"]
            else:
                assert patch["path"] == "/deploy/helm/hooks"
                hooks = patch["value"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    sanitized = artifact["image"].replace("-", "_").replace(".", "_").replace("/", "_")
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{sanitized}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{sanitized}}}}}",
    }
    args = ["--set", "image.repository=registry.local/relayjob-operator", "--set", "image.tag=abc123"]
    for key, value in release["setValues"].items():
        _dotted(defaults, key)
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for path in values_files:
        assert (REPO / path).is_file(), path
        args += ["-f", str(REPO / path)]
    docs = render(helm, *args, namespace=release["namespace"], release=release["name"])
    assert (REPO / release["chartPath"]).resolve() == CHART
    operator = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == release["name"])
    assert (
        operator["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.local/relayjob-operator:abc123"
    )
    (forward,) = config["portForward"]
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    assert forward["resourceName"] in services and forward["namespace"] == release["namespace"]
    assert forward["port"] == services[forward["resourceName"]]["spec"]["ports"][0]["port"]
    if profile == "namespaced":
        # The hook creates exactly the namespaces the values file serves.
        watched = yaml.safe_load(NAMESPACED_VALUES.read_text())["watchNamespaces"]
        command = hooks["before"][0]["host"]["command"][-1]
        assert f"for ns in {' '.join(watched)};" in command
        assert sorted(d["metadata"]["namespace"] for d in of_kind(docs, "Role")) == sorted(watched)
