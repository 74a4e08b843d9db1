"""The chart and the plain manifests, checked without a cluster: `helm template` output read as data.

What needs a cluster (install, RBAC really sufficient and really least, uninstall) is in
tests/e2e/test_helm_chart.py; the Dockerfile is in tests/integration/test_dockerfile_install.py.
Last, what the image's install holds of the Python package.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from setuptools import find_namespace_packages

from controller.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "relayjob-operator"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"
Doc = dict[str, Any]
# Release "relay": what the operator reads at start-up, by name, and nothing more.
POLICY_NAME = "relay-relayjob-operator-secret-references"
POLICY_RULE = {
    "apiGroups": ["admissionregistration.k8s.io"],
    "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
    "resourceNames": [POLICY_NAME],
    "verbs": ["get"],
}
USER_ROLES = ("relay-relayjob-operator-edit", "relay-relayjob-operator-view")


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


def test_chart_peering_crds_are_the_manifests() -> None:
    copy = CHART / "crds" / "kopf-peerings.yaml"
    assert copy.read_bytes() == (REPO / "manifests" / "peering-crds.yaml").read_bytes(), (
        f"{copy} differs from manifests/peering-crds.yaml; run `python scripts/render-manifests.py`"
    )


def test_chart_crds_dir_holds_only_kopfs_peering_kinds() -> None:
    # The RelayJob CRD is a template, so that `helm upgrade` updates it; kopf's never change.
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["kopf-peerings.yaml"]


def _by_name(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs}


def test_chart_templates_each_relay_crd_as_its_manifest_kept_on_uninstall(helm: Path) -> None:
    paths = [REPO / "manifests" / "crd.yaml", *sorted((REPO / "manifests").glob("crd-*.yaml"))]
    sources = _by_name([yaml.safe_load(path.read_text()) for path in paths])
    assert {"relayjobs.relay.dev", "relayqueues.relay.dev"} <= set(sources)
    rendered = _by_name(of_kind(render(helm), "CustomResourceDefinition"))
    assert set(rendered) == set(sources)
    for name, crd in rendered.items():
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}, name
        assert crd == sources[name], name
    unkept = _by_name(of_kind(render(helm, "--set", "crds.keep=false"), "CustomResourceDefinition"))
    assert unkept == sources
    assert not of_kind(render(helm, "--set", "crds.enabled=false"), "CustomResourceDefinition")


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
    cluster_scoped = (
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    )
    for doc in docs[1:]:
        if doc["kind"] not in cluster_scoped:
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


def operator_container(docs: list[Doc]) -> Doc:
    (deployment,) = [
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "relay-relayjob-operator"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def operator_env(docs: list[Doc]) -> dict[str, Doc]:
    return {item["name"]: item for item in operator_container(docs)["env"]}


def test_replicas_roll_with_one_always_up_and_never_share_a_peering_priority(helm: Path) -> None:
    docs = render(helm)
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    env = operator_env(docs)
    # Each replica draws its own priority (controller/settings.py); one for all freezes them all.
    assert "RELAY_PEERING_PRIORITY" not in env
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # With one replica a budget of one would block every node drain.
    assert not of_kind(render(helm, "--set", "replicaCount=1"), "PodDisruptionBudget")
    assert not of_kind(render(helm, "--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget")


def test_finished_relayjobs_expire_after_a_day_by_default(helm: Path) -> None:
    assert operator_env(render(helm))["RELAY_DEFAULT_TTL_SECONDS_AFTER_FINISHED"]["value"] == "86400"
    env = operator_env(render(helm, "--set", "config.defaultTtlSecondsAfterFinished=600"))
    assert env["RELAY_DEFAULT_TTL_SECONDS_AFTER_FINISHED"]["value"] == "600"


def test_redis_password_and_ca_come_from_secrets_into_the_url(helm: Path) -> None:
    docs = render(
        helm,
        "--set", "redis.passwordSecret.name=redis-auth",
        "--set", "redis.tls.caSecret.name=redis-ca", "--set", "redis.tls.caSecret.key=ca.pem",
    )  # fmt: skip
    env = operator_env(docs)
    names = [item["name"] for item in operator_container(docs)["env"]]
    # The kubelet expands $(VAR) only for variables defined earlier in the list.
    assert (
        names.index("CHART_REDIS_URL") < names.index("CHART_REDIS_PASSWORD") < names.index("RELAY_REDIS_URL")
    )
    assert env["CHART_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "relayjob-redis", "key": "url"}
    assert env["CHART_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }
    assert env["RELAY_REDIS_URL"]["value"] == (
        "$(CHART_REDIS_URL)?password=$(CHART_REDIS_PASSWORD)&ssl_ca_certs=/etc/relayjob/redis-ca/ca.pem"
    )
    container = operator_container(docs)
    assert {"name": "redis-ca", "mountPath": "/etc/relayjob/redis-ca", "readOnly": True} in container[
        "volumeMounts"
    ]
    (deployment,) = of_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["redis-ca"]["secret"] == {
        "secretName": "redis-ca",
        "items": [{"key": "ca.pem", "path": "ca.pem"}],
    }
    # Only the CA: the URL keeps its own credentials.
    only_ca = operator_env(render(helm, "--set", "redis.tls.caSecret.name=redis-ca"))
    assert (
        only_ca["RELAY_REDIS_URL"]["value"] == "$(CHART_REDIS_URL)?ssl_ca_certs=/etc/relayjob/redis-ca/ca.crt"
    )
    assert "CHART_REDIS_PASSWORD" not in only_ca


def test_postgresql_password_and_ca_come_from_secrets_as_libpq_variables(helm: Path) -> None:
    docs = render(
        helm,
        "--set", "postgresql.passwordSecret.name=db-auth", "--set", "postgresql.passwordSecret.key=pw",
        "--set", "postgresql.tls.caSecret.name=db-ca",
    )  # fmt: skip
    env = operator_env(docs)
    assert env["RELAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "relayjob-postgresql",
        "key": "url",
    }
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "db-auth", "key": "pw"}
    assert env["PGSSLROOTCERT"]["value"] == "/etc/relayjob/postgresql-ca/ca.crt"
    mounts = operator_container(docs)["volumeMounts"]
    assert {"name": "postgresql-ca", "mountPath": "/etc/relayjob/postgresql-ca", "readOnly": True} in mounts


def test_without_secrets_of_their_own_the_urls_are_the_secrets_untouched(helm: Path) -> None:
    docs = render(helm)
    env = operator_env(docs)
    assert not {"CHART_REDIS_URL", "CHART_REDIS_PASSWORD", "PGPASSWORD", "PGSSLROOTCERT"} & set(env)
    assert not {"HTTPS_PROXY", "NO_PROXY"} & set(env)
    assert [m["name"] for m in operator_container(docs)["volumeMounts"]] == ["tmp"]


def test_proxy_extra_env_and_extra_volumes_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "proxy": {"https": "http://proxy.corp:3128", "noProxy": "10.0.0.0/8,.svc"},
                "extraEnv": [{"name": "RELAY_CONCURRENCY_NOTE", "value": "x"}],
                "extraVolumes": [{"name": "bundle", "configMap": {"name": "ca-bundle"}}],
                "extraVolumeMounts": [{"name": "bundle", "mountPath": "/etc/bundle", "readOnly": True}],
            }
        )
    )
    docs = render(helm, "-f", str(values))
    env = operator_env(docs)
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp:3128"
    assert env["NO_PROXY"]["value"] == "10.0.0.0/8,.svc"
    assert env["RELAY_CONCURRENCY_NOTE"]["value"] == "x"
    assert {"name": "bundle", "mountPath": "/etc/bundle", "readOnly": True} in operator_container(docs)[
        "volumeMounts"
    ]
    (deployment,) = of_kind(docs, "Deployment")
    assert {"name": "bundle", "configMap": {"name": "ca-bundle"}} in deployment["spec"]["template"]["spec"][
        "volumes"
    ]


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
    """The rules of every (Cluster)Role bound to the operator's ServiceAccount."""
    bound = {
        (doc["roleRef"]["kind"], doc["roleRef"]["name"], doc["metadata"].get("namespace"))
        for doc in docs
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["name"] == "relay-relayjob-operator" for s in doc["subjects"])
    }
    return [
        rule
        for doc in docs
        if (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")) in bound
        for rule in doc["rules"]
    ]


def test_rbac_cluster_scope(helm: Path) -> None:
    docs = render(helm)
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "relay-relayjob-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "relay-relayjob-operator", "namespace": "relay-system"}
    ]
    (peering,) = of_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "relay-relayjob-operator"
    _assert_least(_rules(docs), "clusterkopfpeerings")


def test_rbac_namespaced_scope_has_nothing_cluster_wide_but_reading_its_policy(helm: Path) -> None:
    docs = render(helm, "-f", str(NAMESPACED_VALUES))
    # Cluster-wide, the operator may only read its own Secret-reference policy and binding; the
    # other ClusterRoles are the users' aggregated ones, bound to nobody by the chart.
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    reader = next(
        d for d in of_kind(docs, "ClusterRole") if d["metadata"]["name"] == binding["roleRef"]["name"]
    )
    assert reader["rules"] == [POLICY_RULE]
    assert {d["metadata"]["name"] for d in of_kind(docs, "ClusterRole")} == {
        "relay-relayjob-operator-secret-policy",
        *USER_ROLES,
    }
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
        ("relay.dev", "relayjobs"): {"list", "watch", "create", "delete"},
        ("relay.dev", "relayjobs/status"): {"patch"},
        ("relay.dev", "relayqueues"): {"get", "list", "watch"},
        ("relay.dev", "relayqueues/status"): {"patch"},
        ("relay.dev", "relayschedules"): {"get", "list", "watch"},
        ("relay.dev", "relayschedules/status"): {"get", "patch"},
        ("", "events"): {"create"},
        ("", "secrets"): {"get"},
        ("kopf.dev", peering_resource): {"list", "watch", "patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("admissionregistration.k8s.io", "validatingadmissionpolicies"): {"get"},
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"): {"get"},
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
                if group == "admissionregistration.k8s.io":
                    assert rule == POLICY_RULE, "read only its own policy and binding, by name"
                seen.add(key)
    assert {key for key in allowed if key[1] != "customresourcedefinitions"} <= seen


def test_secret_access_can_be_turned_off(helm: Path) -> None:
    rules = _rules(render(helm, "--set", "rbac.readSecrets=false"))
    assert all("secrets" not in rule["resources"] for rule in rules)


# -- the Secret-reference policy and the users' roles ------------------------------------------


def test_secret_policy_is_rendered_by_default_and_named_for_the_operator(helm: Path) -> None:
    docs = render(helm)
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert policy["metadata"]["name"] == binding["metadata"]["name"] == POLICY_NAME
    assert binding["spec"] == {"policyName": POLICY_NAME, "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["relay.dev"],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["relayjobs"],
        }
    ]
    # Every refusal is Forbidden and says what is missing; one authorizer check per expression.
    for validation in spec["validations"]:
        assert validation["reason"] == "Forbidden" and validation["messageExpression"]
        assert validation["expression"].count(".check(") <= 1
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_SECRET_POLICY_NAME"] == POLICY_NAME
    assert env["RELAY_REQUIRE_SECRET_POLICY"] == "false"
    assert POLICY_RULE in _rules(docs)


def test_secret_policy_can_be_turned_off_and_required(helm: Path) -> None:
    docs = render(helm, "--set", "secretPolicy.enabled=false", "--set", "secretPolicy.required=true")
    assert not of_kind(docs, "ValidatingAdmissionPolicy")
    assert not of_kind(docs, "ValidatingAdmissionPolicyBinding")
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_REQUIRE_SECRET_POLICY"] == "true"


def test_secret_policy_refuses_a_cluster_older_than_1_30_with_the_way_out(helm: Path) -> None:
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.29.4")
    assert result.returncode != 0
    assert "secretPolicy.enabled needs Kubernetes 1.30 or later" in result.stderr, result.stderr
    assert "set secretPolicy.enabled=false" in result.stderr
    old = helm_run(
        helm,
        "template",
        "relay",
        str(CHART),
        "--kube-version",
        "1.29.4",
        "--set",
        "secretPolicy.enabled=false",
    )
    assert old.returncode == 0, old.stderr


def test_plain_secret_policy_is_what_the_operator_looks_for_by_default() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "secret-policy.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    default = Settings.model_fields["secret_policy_name"].default
    assert {d["metadata"]["name"] for d in docs} == {default}
    assert docs[1]["spec"]["policyName"] == default


def test_users_roles_aggregate_into_the_built_in_roles(helm: Path) -> None:
    for args in ((), ("-f", str(NAMESPACED_VALUES))):
        roles = {
            d["metadata"]["name"]: d
            for d in of_kind(render(helm, *args), "ClusterRole")
            if d["metadata"]["name"] in USER_ROLES
        }
        edit, view = roles[USER_ROLES[0]], roles[USER_ROLES[1]]
        aggregate = "rbac.authorization.k8s.io/aggregate-to-"
        assert {
            k for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"
        } == {
            f"{aggregate}admin",
            f"{aggregate}edit",
        }
        assert {
            k for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"
        } == {f"{aggregate}view"}
        assert _verbs(view) == {
            "relayjobs": {"get", "list", "watch"},
            "relayjobs/status": {"get", "list", "watch"},
            "relayqueues": {"get", "list", "watch"},
            "relayqueues/status": {"get", "list", "watch"},
            "relayschedules": {"get", "list", "watch"},
            "relayschedules/status": {"get", "list", "watch"},
        }
        assert _verbs(edit) == {
            "relayjobs": {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
            "relayjobs/status": {"get", "list", "watch"},
            "relayqueues": {"get", "list", "watch", "create", "update", "patch", "delete"},
            "relayqueues/status": {"get", "list", "watch"},
            "relayschedules": {
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            },
            "relayschedules/status": {"get", "list", "watch"},
        }
    docs = render(helm, "--set", "rbac.aggregateClusterRoles=false")
    assert not {d["metadata"]["name"] for d in of_kind(docs, "ClusterRole")} & set(USER_ROLES)


def _verbs(role: Doc) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["relay.dev"] and not rule.get("resourceNames")
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


# -- the NetworkPolicy -------------------------------------------------------------------------

LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
OPERATOR_PODS = {
    "app.kubernetes.io/name": "relayjob-operator",
    "app.kubernetes.io/instance": "relay",
    "app.kubernetes.io/component": "operator",
}
DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
API_SERVER = ["10.96.0.1/32", "172.18.0.2/32"]
API_SERVER_RULE = {
    "to": [{"ipBlock": {"cidr": cidr}} for cidr in API_SERVER],
    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
}
# The least a NetworkPolicy needs besides the bundled servers: where the API server is.
NETWORK_POLICY_ON = (
    "--set",
    "networkPolicy.enabled=true",
    "--set-json",
    f"networkPolicy.egress.apiServer.cidrs={json.dumps(API_SERVER)}",
)
BUNDLED = ("--set", "redis.bundled.enabled=true", "--set", "postgresql.bundled.enabled=true")


def readme_network_policy_example() -> str:
    """The values of the chart README's example ("targets only in 10.0.0.0/8 port 443")."""
    section = (CHART / "README.md").read_text().split("## Network policy", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return example


def network_policy(docs: list[Doc]) -> Doc:
    (policy,) = of_kind(docs, "NetworkPolicy")
    return policy


def pods_labels(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for doc in docs
        if doc["kind"] == "Deployment"
    }


def assert_never_link_local(policy: Doc) -> None:
    """No rule reaches 169.254.0.0/16: every rule names its peers (none means everywhere), and no
    ipBlock overlaps the range without excepting all of it."""
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), f"a rule without peers allows every address: {rule}"
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if not block:
                continue
            network = ipaddress.ip_network(block["cidr"])
            if network.version != 4 or not network.overlaps(LINK_LOCAL):
                continue
            excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
            assert any(LINK_LOCAL.subnet_of(e) for e in excepted), f"{block} reaches {LINK_LOCAL}"


def test_network_policy_is_off_by_default(helm: Path) -> None:
    assert not of_kind(render(helm), "NetworkPolicy")
    assert not of_kind(render(helm, *BUNDLED), "NetworkPolicy")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    assert defaults["enabled"] is False
    assert defaults["egress"]["targets"] == [] and defaults["egress"]["apiServer"]["cidrs"] == []


def test_network_policy_of_the_readme_example_allows_exactly_its_egress(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(readme_network_policy_example())
    docs = render(helm, "-f", str(values))
    policy = network_policy(docs)
    assert policy["metadata"]["name"] == "relay-relayjob-operator"
    assert policy["metadata"]["namespace"] == "relay-system"
    spec = policy["spec"]
    # It selects the operator's pods, and only them: not the bundled servers'.
    assert spec["podSelector"] == {"matchLabels": OPERATOR_PODS}
    selected = {name for name, labels in pods_labels(docs).items() if OPERATOR_PODS.items() <= labels.items()}
    assert selected == {"relay-relayjob-operator"}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    server = {"app.kubernetes.io/name": "relayjob-operator", "app.kubernetes.io/instance": "relay"}
    assert spec["egress"] == [
        DNS_RULE,
        API_SERVER_RULE,
        {
            "to": [{"podSelector": {"matchLabels": {**server, "app.kubernetes.io/component": "redis"}}}],
            "ports": [{"protocol": "TCP", "port": 6379}],
        },
        {
            "to": [{"podSelector": {"matchLabels": {**server, "app.kubernetes.io/component": "postgresql"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        },
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 443}]},
    ]
    # The bundled servers' pods carry the labels the rules select, on the ports they name.
    labels = pods_labels(docs)
    assert (
        labels["relay-relayjob-operator-redis"].items()
        >= spec["egress"][2]["to"][0]["podSelector"]["matchLabels"].items()
    )
    assert (
        labels["relay-relayjob-operator-postgresql"].items()
        >= spec["egress"][3]["to"][0]["podSelector"]["matchLabels"].items()
    )
    assert_never_link_local(policy)


def test_network_policy_reaches_external_servers_and_admits_only_the_given_scrapers(
    helm: Path, tmp_path: Path
) -> None:
    redis = [{"ipBlock": {"cidr": "10.20.0.5/32"}}]
    postgresql = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "databases"}}}]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    targets = [
        {
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        },
        {"to": [{"namespaceSelector": {"matchLabels": {"team": "hooks"}}}]},
    ]
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "config": {"httpPort": 9090},
                "networkPolicy": {
                    "ingress": {"from": prometheus},
                    "egress": {
                        "redis": {"to": redis, "ports": [{"protocol": "TCP", "port": 6380}]},
                        "postgresql": {"to": postgresql},
                        "targets": targets,
                    },
                },
            }
        )
    )
    docs = render(helm, *NETWORK_POLICY_ON, "-f", str(values))
    spec = network_policy(docs)["spec"]
    assert spec["egress"] == [
        DNS_RULE,
        API_SERVER_RULE,
        {"to": redis, "ports": [{"protocol": "TCP", "port": 6380}]},
        {"to": postgresql, "ports": [{"protocol": "TCP", "port": 5432}]},
        *targets,
    ]
    # `helm test` reads /readyz from a pod of its own: it is let in along with the given peers.
    (test_pod,) = of_kind(render(helm, "--show-only", "templates/tests/test-readyz.yaml"), "Pod")
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    assert rule["from"][:-1] == prometheus
    assert test_pod["metadata"]["labels"].items() >= rule["from"][-1]["podSelector"]["matchLabels"].items()
    assert_never_link_local(network_policy(docs))


def _values_file(tmp_path: Path, egress: Doc) -> Path:
    """Values with a NetworkPolicy whose every required peer is set, changed by `egress`."""
    base: Doc = {
        "apiServer": {"cidrs": API_SERVER},
        "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]},
        "postgresql": {"to": [{"ipBlock": {"cidr": "10.20.0.6/32"}}]},
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"networkPolicy": {"enabled": True, "egress": {**base, **egress}}}))
    return path


def _egress_with_block(where: str, block: Doc) -> tuple[str, Doc]:
    """The key an error names and the egress values putting `block` at `where`."""
    if where == "apiServer":
        return "networkPolicy.egress.apiServer.cidrs[0]", {"apiServer": {"cidrs": [block["cidr"]]}}
    if where == "targets":
        return "networkPolicy.egress.targets[0].to[0].ipBlock.cidr", {
            "targets": [{"to": [{"ipBlock": block}]}]
        }
    return f"networkPolicy.egress.{where}.to[0].ipBlock.cidr", {where: {"to": [{"ipBlock": block}]}}


LINK_LOCAL_BLOCKS: list[Doc] = [
    {"cidr": "0.0.0.0/0"},
    {"cidr": "128.0.0.0/1"},
    {"cidr": "169.0.0.0/8"},
    {"cidr": "169.254.0.0/16"},
    {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]},
]


@pytest.mark.parametrize(
    ("where", "block"),
    [
        (where, block)
        for where in ("targets", "redis", "postgresql", "dns", "apiServer")
        for block in LINK_LOCAL_BLOCKS
        # The API server's entries are plain CIDRs, without except.
        if not (where == "apiServer" and "except" in block)
    ],
)
def test_network_policy_refuses_a_block_containing_link_local(
    helm: Path, tmp_path: Path, where: str, block: Doc
) -> None:
    key, egress = _egress_with_block(where, block)
    path = _values_file(tmp_path, egress)
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.36.0", "-f", str(path))
    assert result.returncode != 0
    assert f"{key} {block['cidr']} contains 169.254.0.0/16" in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["targets", "redis", "postgresql", "dns"])
@pytest.mark.parametrize(
    "block",
    [
        {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]},
        {"cidr": "128.0.0.0/1", "except": ["160.0.0.0/4"]},
        {"cidr": "169.254.20.10/32"},
    ],
)
def test_network_policy_accepts_blocks_that_leave_link_local_out(
    helm: Path, tmp_path: Path, where: str, block: Doc
) -> None:
    """The range excepted whole (or wider), or a single address in it chosen on purpose, such as
    NodeLocal DNSCache's: only a block that takes in all of it by accident is refused."""
    _, egress = _egress_with_block(where, block)
    policy = network_policy(render(helm, "-f", str(_values_file(tmp_path, egress))))
    assert {"ipBlock": block} in [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "networkPolicy.enabled=true", *BUNDLED), "networkPolicy.egress.apiServer.cidrs is empty"),
        (
            NETWORK_POLICY_ON,
            "networkPolicy.egress.redis.to is empty: name where the server in redis.existingSecret",
        ),
        (
            (*NETWORK_POLICY_ON, "--set", "redis.bundled.enabled=true"),
            "networkPolicy.egress.postgresql.to is empty: name where the server in postgresql.existingSecret",
        ),
    ],
)
def test_network_policy_without_a_required_address_fails_naming_it(
    helm: Path, args: tuple[str, ...], message: str
) -> None:
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.36.0", *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("enabled: 'yes'", "at '/networkPolicy/enabled': got string, want boolean"),
        ("egres: {}", "at '/networkPolicy': additional properties 'egres' not allowed"),
        ("egress: {apiServer: {cidrs: [10.0.0.1]}}", "at '/networkPolicy/egress/apiServer/cidrs/0'"),
        ("egress: {apiServer: {cidrs: [10.0.0.300/32]}}", "at '/networkPolicy/egress/apiServer/cidrs/0'"),
        ("egress: {dns: {to: []}}", "at '/networkPolicy/egress/dns/to': minItems: got 0, want 1"),
        ("egress: {redis: {ports: []}}", "at '/networkPolicy/egress/redis/ports': minItems: got 0, want 1"),
        (
            "egress: {targets: [{ports: [{port: 443}]}]}",
            "at '/networkPolicy/egress/targets/0': missing property 'to'",
        ),
        ("egress: {targets: [{to: []}]}", "at '/networkPolicy/egress/targets/0/to': minItems: got 0, want 1"),
        (
            "egress: {targets: [{to: [{ipblock: {cidr: 10.0.0.0/8}}]}]}",
            "at '/networkPolicy/egress/targets/0/to/0': additional properties 'ipblock' not allowed",
        ),
        (
            "egress: {targets: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 70000}]}]}",
            "at '/networkPolicy/egress/targets/0/ports/0/port': maximum",
        ),
        (
            "egress: {targets: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{protocol: ICMP}]}]}",
            "at '/networkPolicy/egress/targets/0/ports/0/protocol'",
        ),
        (
            "ingress: {from: [{ipBlock: {cidr: 10.0.0.0/33}}]}",
            "at '/networkPolicy/ingress/from/0/ipBlock/cidr'",
        ),
    ],
)
def test_schema_rejects_bad_network_policy_values(
    helm: Path, tmp_path: Path, values: str, message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(f"networkPolicy: {{{values}}}\n")
    result = helm_run(helm, "template", "relay", str(CHART), "--kube-version", "1.36.0", "-f", str(path))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


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


# -- the Python package: the product in the image, the dev tools in a clone ---------------------


def test_the_image_context_installs_the_operator_and_none_of_the_dev_tools(tmp_path: Path) -> None:
    """Package discovery as pyproject.toml configures it, over exactly what the Dockerfile COPYs
    into the build stage (tests/integration/test_dockerfile_install.py runs the install itself)."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    dockerfile = (REPO / "Dockerfile").read_text()
    for args in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        for source in args.split()[:-1]:
            if (REPO / source).is_dir():
                shutil.copytree(
                    REPO / source, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(REPO / source, tmp_path / source)
    in_image = find_namespace_packages(str(tmp_path), include=find["include"])
    assert "controller.adapters" in in_image
    assert [p for p in in_image if p.split(".")[0] != "controller" or "sandbox" in p.split(".")] == []
    in_clone = find_namespace_packages(str(REPO), include=find["include"])
    assert "devtools" in in_clone
