"""Tenancy through the sandbox API server, with real users: nobody borrows the operator's rights.

Users are impersonated by the sandbox's admin (`kubectl --as`): the API server authorizes each
of them with RBAC alone, and the Secret-reference policy (manifests/secret-policy.yaml, installed
by the sandbox for every test) sees them as the requester, as it would anyone with credentials of
their own. The users' roles come from the chart (manifests/install.yaml is its rendering).

The sandbox runs no kube-controller-manager, so the aggregation controller never copies our
roles' rules into the built-in `edit`/`view`: the tests check, on the live objects, that those
built-in roles' own selectors pick our roles, and then bind our roles directly and ask the API
server with `kubectl auth can-i`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from devtools.operator_process import OperatorProcess
from devtools.sandbox import DEFAULT_SECRET_POLICY, KubeTools
from devtools.servers import PostgresServer, free_port
from tests.support.databases import create_database
from tests.support.target import Target

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install.yaml"
SUFFIX = uuid.uuid4().hex[:6]
POLICY = "relayjob-operator-secret-references"
SECRET_VALUE = f"Bearer {uuid.uuid4().hex}"

# Who is who, in the module's namespace:
# - alice may create RelayJobs and may not get any Secret;
# - carol may also get the one Secret `hook-credentials`, by name;
# - bob may also get every Secret.
AUTHOR_VERBS = "get,list,watch,create,update,patch"


def denied(secret: str, user: str, namespace: str) -> str:
    return (
        f'RelayJob may reference Secret "{secret}" only if you may get it: '
        f'user "{user}" cannot get secrets/{secret} in namespace "{namespace}"'
    )


def http_job(name: str, url: str, *secrets: str, **spec: Any) -> dict[str, Any]:
    headers = [
        {"name": f"X-Header-{i}", "secretKeyRef": {"name": secret, "key": "authorization"}}
        for i, secret in enumerate(secrets)
    ]
    return {
        "apiVersion": "relay.dev/v1alpha1",
        "kind": "RelayJob",
        "metadata": {"name": name},
        "spec": {"payload": {"job": name}, "target": {"http": {"url": url, "headersFrom": headers}}, **spec},
    }


def as_user(
    kube: KubeTools, user: str, *args: str, document: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return kube.kubectl(
        f"--as={user}", *args, input=None if document is None else json.dumps(document), check=False
    )


def can_i(kube: KubeTools, user: str, question: str, namespace: str) -> bool:
    result = as_user(kube, user, "auth", "can-i", *question.split(), "-n", namespace)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def tenants(control_plane: KubeTools, namespace: str) -> str:
    """The users' rights and the Secrets in the module's namespace; returns once the API server
    enforces the policy (it loads a new policy within a second or so)."""
    kube, ns = control_plane, namespace
    for secret in ("db-root", "hook-credentials"):
        kube.kubectl(
            "create", "secret", "generic", secret, "-n", ns, f"--from-literal=authorization={SECRET_VALUE}"
        )
    roles = {
        "relayjob-author": (f"--verb={AUTHOR_VERBS}", "--resource=relayjobs.relay.dev"),
        "hook-reader": ("--verb=get", "--resource=secrets", "--resource-name=hook-credentials"),
        "secret-reader": ("--verb=get", "--resource=secrets"),
    }
    for role, rule in roles.items():
        kube.kubectl("create", "role", role, "-n", ns, *rule)
    for binding, role, user in (
        ("alice-author", "relayjob-author", "alice"),
        ("carol-author", "relayjob-author", "carol"),
        ("carol-hook", "hook-reader", "carol"),
        ("bob-author", "relayjob-author", "bob"),
        ("bob-secrets", "secret-reader", "bob"),
    ):
        kube.kubectl("create", "rolebinding", binding, "-n", ns, f"--role={role}", f"--user={user}")
    probe = http_job("policy-probe", "http://127.0.0.1:9/", "db-root")
    deadline = time.monotonic() + 30
    while True:
        result = as_user(kube, "alice", "create", "--dry-run=server", "-n", ns, "-f", "-", document=probe)
        if denied("db-root", "alice", ns) in result.stderr:
            return ns
        assert time.monotonic() < deadline, f"the policy is not enforced after 30 s: {result.stderr}"
        time.sleep(0.5)


# -- the policy, on RelayJobs -----------------------------------------------------------------------


def test_a_user_who_may_not_get_a_secret_cannot_reference_it(control_plane: KubeTools, tenants: str) -> None:
    ns = tenants
    assert can_i(control_plane, "alice", "create relayjobs.relay.dev", ns)
    assert not can_i(control_plane, "alice", "get secrets/db-root", ns)
    job = http_job("alice-steals", "http://127.0.0.1:9/collect", "db-root")
    result = as_user(control_plane, "alice", "apply", "-n", ns, "-f", "-", document=job)
    assert result.returncode != 0
    assert denied("db-root", "alice", ns) in result.stderr, result.stderr
    assert "is forbidden" in result.stderr  # 403, as for any other authorization refusal
    gone = control_plane.kubectl("get", "rj/alice-steals", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_a_signing_key_is_a_secret_reference_like_any_other(control_plane: KubeTools, tenants: str) -> None:
    """On the RelayJob CRD itself, which has `target.http.signing`."""
    ns = tenants
    job = http_job("alice-signs", "http://127.0.0.1:9/collect")
    job["spec"]["target"]["http"]["signing"] = {"secretKeyRef": {"name": "db-root", "key": "authorization"}}
    refused = as_user(control_plane, "alice", "create", "--dry-run=server", "-n", ns, "-f", "-", document=job)
    assert denied("db-root", "alice", ns) in refused.stderr, refused.stderr
    job["spec"]["target"]["http"]["signing"]["secretKeyRef"]["name"] = "hook-credentials"
    allowed = as_user(control_plane, "carol", "create", "--dry-run=server", "-n", ns, "-f", "-", document=job)
    assert allowed.returncode == 0, allowed.stderr


def test_a_user_who_may_get_the_secret_by_name_runs_a_job_that_uses_it(
    control_plane: KubeTools, tenants: str, operator: OperatorProcess, target: Target
) -> None:
    ns = tenants
    assert can_i(control_plane, "carol", "get secrets/hook-credentials", ns)
    assert not can_i(control_plane, "carol", "get secrets", ns)
    job = http_job("carol-notifies", target.url("/ok"), "hook-credentials", "hook-credentials")
    result = as_user(control_plane, "carol", "apply", "-n", ns, "-f", "-", document=job)
    assert result.returncode == 0, result.stderr
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Succeeded", "rj/carol-notifies", "--timeout=60s")
    (call,) = [c for c in target.calls if c.body == {"job": "carol-notifies"}]
    assert call.headers["X-Header-0"] == call.headers["X-Header-1"] == SECRET_VALUE
    # Naming a Secret she may get alongside one she may not is refused, naming the latter.
    both = http_job("carol-overreaches", target.url("/ok"), "hook-credentials", "db-root")
    refused = as_user(control_plane, "carol", "apply", "-n", ns, "-f", "-", document=both)
    assert refused.returncode != 0 and denied("db-root", "carol", ns) in refused.stderr, refused.stderr


def test_a_user_who_may_get_every_secret_may_reference_any(control_plane: KubeTools, tenants: str) -> None:
    ns = tenants
    job = http_job("bob-uses-root", "http://127.0.0.1:9/", "db-root", "hook-credentials")
    result = as_user(control_plane, "bob", "create", "--dry-run=server", "-n", ns, "-f", "-", document=job)
    assert result.returncode == 0, result.stderr


def test_jobs_without_secrets_and_updates_that_keep_the_targets_are_anyones(
    control_plane: KubeTools, tenants: str
) -> None:
    ns = tenants
    noop = {
        "apiVersion": "relay.dev/v1alpha1",
        "kind": "RelayJob",
        "metadata": {"name": "alice-noop"},
        "spec": {"target": {"noop": {}}, "suspend": True},
    }
    result = as_user(control_plane, "alice", "apply", "-n", ns, "-f", "-", document=noop)
    assert result.returncode == 0, result.stderr
    # carol's job names a Secret alice may not get; alice may still label it and suspend it,
    # since neither changes where a Secret's value goes.
    hook = http_job("carol-suspended", "http://127.0.0.1:9/", "hook-credentials", suspend=True)
    assert as_user(control_plane, "carol", "apply", "-n", ns, "-f", "-", document=hook).returncode == 0
    labelled = as_user(control_plane, "alice", "label", "rj/carol-suspended", "-n", ns, "seen-by=alice")
    assert labelled.returncode == 0, labelled.stderr
    patched = as_user(
        control_plane, "alice", "patch", "rj/carol-suspended", "-n", ns, "--type=merge",
        "-p", '{"spec": {"priority": 7}}',
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr


def test_an_update_that_adds_a_forbidden_reference_is_refused(control_plane: KubeTools, tenants: str) -> None:
    ns = tenants
    job = http_job("carol-grows", "http://127.0.0.1:9/", "hook-credentials", suspend=True)
    assert as_user(control_plane, "carol", "apply", "-n", ns, "-f", "-", document=job).returncode == 0
    grown = http_job("carol-grows", "http://127.0.0.1:9/", "hook-credentials", "db-root", suspend=True)
    result = as_user(control_plane, "carol", "apply", "-n", ns, "-f", "-", document=grown)
    assert result.returncode != 0
    # The CRD may refuse first when spec.target is immutable; either way nothing changed.
    assert denied("db-root", "carol", ns) in result.stderr or "spec.target is immutable" in result.stderr, (
        result.stderr
    )
    stored = json.loads(control_plane.kubectl("get", "rj/carol-grows", "-n", ns, "-o", "json").stdout)
    names = [h["secretKeyRef"]["name"] for h in stored["spec"]["target"]["http"]["headersFrom"]]
    assert names == ["hook-credentials"]


def test_the_shipped_policy_is_accepted_although_the_crd_lacks_signing_and_callbacks(
    control_plane: KubeTools, tenants: str
) -> None:
    """Its rules read `signing`, `onCompletion` and `onFailure`, which the RelayJob CRD does not
    have (yet): the API server compiles them all the same, and the tests above and below see them
    evaluate on objects with and without those fields."""
    result = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=tenancy-test",
        "-f", str(DEFAULT_SECRET_POLICY),
    )  # fmt: skip
    assert f"validatingadmissionpolicy.admissionregistration.k8s.io/{POLICY}" in result.stdout
    installed = json.loads(
        control_plane.kubectl("get", f"validatingadmissionpolicy/{POLICY}", "-o", "json").stdout
    )
    expressions = " ".join(v["expression"] for v in installed["spec"]["variables"])
    for field in ("onCompletion", "onFailure", "signing"):
        assert field in expressions


# -- the policy's rules, on a RelayJob-shaped resource that has signing and callbacks already -------


def _ref(secret: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": secret, "key": "authorization"}}


@dataclass
class Probe:
    """The shipped policy re-bound to `relayjobs` of a test group whose spec takes any field."""

    kube: KubeTools
    namespace: str
    group: str

    def document(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{self.group}/v1",
            "kind": "RelayJob",
            "metadata": {"name": name},
            "spec": spec,
        }

    def create(self, user: str, name: str, spec: dict[str, Any], *, dry_run: bool = True) -> str:
        """'' when admitted, else the API server's refusal."""
        args = ("create", *(("--dry-run=server",) if dry_run else ()), "-n", self.namespace, "-f", "-")
        result = as_user(self.kube, user, *args, document=self.document(name, spec))
        return "" if result.returncode == 0 else result.stderr

    def patch(self, user: str, name: str, patch: dict[str, Any]) -> str:
        result = as_user(
            self.kube, user, "patch", f"relayjobs.{self.group}/{name}", "-n", self.namespace,
            "--type=merge", "-p", json.dumps(patch),
        )  # fmt: skip
        return "" if result.returncode == 0 else result.stderr


@pytest.fixture(scope="module")
def probe(control_plane: KubeTools, tenants: str) -> Iterator[Probe]:
    kube, ns = control_plane, tenants
    group = f"t{SUFFIX}.tenancy.relay.dev"
    schema = {
        "type": "object",
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"relayjobs.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": "RelayJob",
                "plural": "relayjobs",
                "singular": "relayjob",
                "listKind": "RelayJobList",
            },
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }
    policy, binding = [d for d in yaml.safe_load_all(DEFAULT_SECRET_POLICY.read_text()) if d]
    name = f"tenancy-probe-{SUFFIX}"
    policy["metadata"] = binding["metadata"] = {"name": name}
    policy["spec"]["matchConstraints"]["resourceRules"][0]["apiGroups"] = [group]
    binding["spec"]["policyName"] = name
    objects = json.dumps({"apiVersion": "v1", "kind": "List", "items": [crd, policy, binding]})
    kube.kubectl("apply", "-f", "-", input=objects)
    try:
        kube.kubectl("wait", "--for=condition=Established", f"crd/relayjobs.{group}", "--timeout=60s")
        resource = f"--resource=relayjobs.{group}"
        kube.kubectl("create", "role", "probe-author", "-n", ns, f"--verb={AUTHOR_VERBS}", resource)
        for user in ("alice", "bob", "carol"):
            kube.kubectl(
                "create", "rolebinding", f"{user}-probe", "-n", ns, "--role=probe-author", f"--user={user}"
            )
        found = Probe(kube, ns, group)
        deadline = time.monotonic() + 30
        while denied("db-root", "alice", ns) not in found.create(
            "alice", "x", {"target": {"http": {"signing": _ref("db-root")}}}
        ):
            assert time.monotonic() < deadline, "the re-bound policy is not enforced after 30 s"
            time.sleep(0.5)
        yield found
    finally:
        kube.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=objects, check=False)


PLACES = {
    "target.http.signing": lambda ref: {"target": {"http": {"url": "http://127.0.0.1:9/", "signing": ref}}},
    "onCompletion.http.headersFrom": lambda ref: {
        "onCompletion": {"http": {"headersFrom": [{"name": "A", **ref}]}}
    },
    "onCompletion.http.signing": lambda ref: {"onCompletion": {"http": {"signing": ref}}},
    "onFailure.http.headersFrom": lambda ref: {
        "onFailure": {"http": {"headersFrom": [{"name": "A", **ref}]}}
    },
    "onFailure.http.signing": lambda ref: {"onFailure": {"http": {"signing": ref}}},
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_signing_and_callback_secrets_are_checked_too(probe: Probe, place: str) -> None:
    spec = {"target": {"noop": {}}, **PLACES[place](_ref("db-root"))}
    assert denied("db-root", "alice", probe.namespace) in probe.create("alice", "steal", spec)
    assert denied("db-root", "carol", probe.namespace) in probe.create("carol", "steal", spec)
    assert probe.create("bob", "allowed", spec) == ""
    assert (
        probe.create("carol", "allowed", {"target": {"noop": {}}, **PLACES[place](_ref("hook-credentials"))})
        == ""
    )


def test_an_update_that_sends_a_secret_elsewhere_needs_the_right_to_get_it(probe: Probe) -> None:
    ns = probe.namespace
    spec = {
        "target": {"http": {"url": "http://127.0.0.1:9/a"}},
        "onFailure": {
            "http": {
                "url": "http://127.0.0.1:9/b",
                "headersFrom": [{"name": "A", **_ref("hook-credentials")}],
            }
        },
    }
    assert probe.create("carol", "carol-callback", spec, dry_run=False) == ""
    # alice may edit the object, but pointing carol's Secret at her own URL is lending it to her.
    moved = probe.patch(
        "alice", "carol-callback", {"spec": {"onFailure": {"http": {"url": "http://127.0.0.1:9/alice"}}}}
    )
    assert denied("hook-credentials", "alice", ns) in moved, moved
    # What leaves the targets alone is anyone's with the right to edit.
    assert (
        probe.patch(
            "alice", "carol-callback", {"metadata": {"labels": {"seen": "alice"}}, "spec": {"priority": 3}}
        )
        == ""
    )
    added = probe.patch(
        "carol", "carol-callback", {"spec": {"onCompletion": {"http": {"signing": _ref("db-root")}}}}
    )
    assert denied("db-root", "carol", ns) in added, added
    assert (
        probe.patch(
            "carol", "carol-callback", {"spec": {"onFailure": {"http": {"url": "http://127.0.0.1:9/c"}}}}
        )
        == ""
    )


def test_access_by_name_covers_up_to_16_references(probe: Probe) -> None:
    """Each authorizer check costs the API server's CEL budget a fixed share: past 16 references,
    only a user who may get every Secret of the namespace (one check) may name more."""
    ns = probe.namespace

    def headers(count: int) -> dict[str, Any]:
        refs = [{"name": f"H{i}", **_ref("hook-credentials")} for i in range(count)]
        return {"target": {"http": {"url": "http://127.0.0.1:9/", "headersFrom": refs}}}

    assert probe.create("carol", "sixteen", headers(16)) == ""
    refused = probe.create("carol", "seventeen", headers(17))
    assert (
        "RelayJob names Secrets 17 times; more than 16 only if you may get every Secret of the namespace: "
        f'user "carol" cannot get secrets in namespace "{ns}"'
    ) in refused, refused
    assert probe.create("bob", "thirty-two", headers(32)) == ""


def test_only_requests_that_send_a_secret_somewhere_are_judged(probe: Probe) -> None:
    """The shipped policy's match, re-bound with one validation that always fails and only warns:
    a warning says the API server evaluated the policy for that request. A RelayJob that names no
    Secret, and an update that leaves the http blocks alone, are not evaluated (each evaluation
    cost 0.4 ms of API server CPU per create, a fifth of the create); they were before."""
    kube, ns, group = probe.kube, probe.namespace, probe.group
    policy = next(d for d in yaml.safe_load_all(DEFAULT_SECRET_POLICY.read_text()) if d)
    name = f"tenancy-judged-{SUFFIX}"
    spec = {
        "failurePolicy": "Fail",
        "matchConstraints": {**policy["spec"]["matchConstraints"], "resourceRules": [
            {**policy["spec"]["matchConstraints"]["resourceRules"][0], "apiGroups": [group]}
        ]},
        "matchConditions": policy["spec"].get("matchConditions", []),
        "validations": [{"expression": "false", "message": "judged"}],
    }  # fmt: skip
    judged = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Warn"]},
    }
    objects = json.dumps({"apiVersion": "v1", "kind": "List", "items": [judged, binding]})
    kube.kubectl("apply", "-f", "-", input=objects)

    def warned(*args: str, document: dict[str, Any] | None = None) -> bool:
        result = as_user(kube, "bob", *args, "-n", ns, document=document)
        assert result.returncode == 0, result.stderr
        return "judged" in result.stderr

    secret = {"target": {"http": {"url": "http://127.0.0.1:9/", "signing": _ref("hook-credentials")}}}
    try:
        deadline = time.monotonic() + 30
        while not warned("create", "--dry-run=server", "-f", "-", document=probe.document("w", secret)):
            assert time.monotonic() < deadline, "the re-bound policy is not evaluated after 30 s"
            time.sleep(0.5)
        plain = {"target": {"http": {"url": "http://127.0.0.1:9/"}}, "onFailure": {"noop": {}}}
        assert not warned("create", "-f", "-", document=probe.document("plain", plain))
        assert warned("create", "-f", "-", document=probe.document("signed", secret))
        resource = f"relayjobs.{group}/signed"
        assert not warned("label", resource, "seen=bob")
        assert not warned("patch", resource, "--type=merge", "-p", '{"spec": {"priority": 3}}')
        moved = {"spec": {"target": {"http": {"url": "http://127.0.0.1:9/elsewhere"}}}}
        assert warned("patch", resource, "--type=merge", "-p", json.dumps(moved))
        # Dropping the last reference sends no Secret anywhere.
        assert not warned(
            "patch", resource, "--type=merge", "-p", '{"spec": {"target": {"http": {"signing": null}}}}'
        )
    finally:
        kube.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=objects, check=False)


# -- the users' roles --------------------------------------------------------------------------------


def test_users_roles_join_the_built_in_ones_and_grant_what_they_say(
    control_plane: KubeTools, tenants: str
) -> None:
    kube, ns = control_plane, tenants
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    roles = [
        d
        for d in docs
        if d["kind"] == "ClusterRole"
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "user-roles"
    ]
    names = {d["metadata"]["name"] for d in roles}
    assert names == {"relayjob-operator-edit", "relayjob-operator-view"}
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": roles}))
    try:
        for built_in, ours in (("admin", "edit"), ("edit", "edit"), ("view", "view")):
            selected = _aggregated_by(kube, built_in)
            assert f"relayjob-operator-{ours}" in selected, (
                f"{built_in} does not pick relayjob-operator-{ours}"
            )
        assert "relayjob-operator-edit" not in _aggregated_by(kube, "view")
        for user, role in (("erin", "relayjob-operator-edit"), ("frank", "relayjob-operator-view")):
            kube.kubectl("create", "rolebinding", user, "-n", ns, f"--clusterrole={role}", f"--user={user}")
        writes = ("create", "update", "patch", "delete", "deletecollection")
        table = [
            *[("erin", f"{verb} relayjobs.relay.dev", True) for verb in ("get", "list", "watch", *writes)],
            ("erin", "get relayjobs.relay.dev --subresource=status", True),
            ("erin", "patch relayjobs.relay.dev --subresource=status", False),
            ("erin", "update relayjobs.relay.dev --subresource=status", False),
            ("erin", "get secrets", False),
            *[("frank", f"{verb} relayjobs.relay.dev", True) for verb in ("get", "list", "watch")],
            *[("frank", f"{verb} relayjobs.relay.dev", False) for verb in writes],
            ("frank", "get relayjobs.relay.dev --subresource=status", True),
            ("frank", "patch relayjobs.relay.dev --subresource=status", False),
            *[
                ("erin", f"{verb} relayqueues.relay.dev", True)
                for verb in ("get", "list", "watch", *writes[:4])
            ],
            ("erin", "patch relayqueues.relay.dev --subresource=status", False),
            *[("frank", f"{verb} relayqueues.relay.dev", True) for verb in ("get", "list", "watch")],
            *[("frank", f"{verb} relayqueues.relay.dev", False) for verb in writes],
            ("frank", "get relayqueues.relay.dev --subresource=status", True),
        ]
        wrong = [
            f"{u} can-i {q}: want {'yes' if want else 'no'}"
            for u, q, want in table
            if can_i(kube, u, q, ns) != want
        ]
        assert not wrong, "\n".join(wrong)
        # A RoleBinding grants in its namespace only.
        assert not can_i(kube, "erin", "create relayjobs.relay.dev", "default")
    finally:
        kube.kubectl("delete", "--ignore-not-found", "clusterrole", *sorted(names), check=False)


def _aggregated_by(kube: KubeTools, built_in: str) -> set[str]:
    """The ClusterRoles that the built-in role's own aggregation selectors pick, as the aggregation
    controller (which the sandbox does not run) would."""
    role = json.loads(kube.kubectl("get", f"clusterrole/{built_in}", "-o", "json").stdout)
    picked: set[str] = set()
    for selector in role["aggregationRule"]["clusterRoleSelectors"]:
        labels = ",".join(f"{k}={v}" for k, v in selector["matchLabels"].items())
        listed = kube.kubectl("get", "clusterroles", "-l", labels, "-o", "jsonpath={.items[*].metadata.name}")
        picked.update(listed.stdout.split())
    return picked


# -- the operator's start-up check ---------------------------------------------------------------------


def readyz(process: OperatorProcess) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def side_env(
    operator_env: dict[str, str], postgres_server: PostgresServer, control_plane: KubeTools
) -> dict[str, str]:
    """Settings for operators started beside the module's own: a database, key prefix and (empty)
    namespace of their own, so their reconciliation never meets the module's jobs."""
    database = f"tenancy_{SUFFIX}"
    asyncio.run(create_database(postgres_server.dsn, database))
    namespace = f"tenancy-side-{SUFFIX}"
    control_plane.kubectl("create", "namespace", namespace)
    return {
        **operator_env,
        "RELAY_DATABASE_URL": urlunsplit(urlsplit(postgres_server.dsn)._replace(path=f"/{database}")),
        "RELAY_KEY_PREFIX": f"side{SUFFIX}",
        "RELAY_NAMESPACES": namespace,
    }


def run_to_exit(env: dict[str, str]) -> tuple[int, str]:
    """Run the operator expecting it to stop by itself: its exit code and its messages, one a line."""
    full = {**os.environ, **env, "RELAY_HTTP_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "controller", "run"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = []
    for line in output.splitlines():
        try:
            lines.append(str(json.loads(line)["msg"]))
        except (ValueError, KeyError, TypeError):
            lines.append(line)
    return result.returncode, "\n".join(lines)


def test_operator_reports_the_installed_policy(operator: OperatorProcess) -> None:
    code, body = readyz(operator)
    assert code == 200 and body["secretPolicy"] == "installed", body
    assert "relayjob_secret_policy_installed 1.0" in operator.metrics()


def test_operator_without_the_policy_warns_and_says_so_in_readyz(
    side_env: dict[str, str], tmp_path: Path
) -> None:
    absent = f"absent-{SUFFIX}"
    process = OperatorProcess({**side_env, "RELAY_SECRET_POLICY_NAME": absent}, tmp_path / "op.log").start()
    try:
        detail = (
            f'ValidatingAdmissionPolicy "{absent}" and ValidatingAdmissionPolicyBinding "{absent}" '
            "are not installed"
        )
        code, body = readyz(process)
        # Ready all the same: the operator works, and taking it out of service would not help.
        assert code == 200 and body["secretPolicy"] == f"missing: {detail}", body
        assert "relayjob_secret_policy_installed 0.0" in process.metrics()
        (warning,) = [r for r in process.log_records() if r.get("logger") == "relayjob.secret_policy"]
        assert warning["level"] == "WARNING" and detail in warning["msg"], warning
        assert "any Secret of its namespace" in warning["msg"]
        assert warning["setting"] == "RELAY_SECRET_POLICY_NAME"
    finally:
        assert process.stop() == 0


def test_required_policy_absent_stops_start_up_naming_the_setting(side_env: dict[str, str]) -> None:
    absent = f"absent-{SUFFIX}"
    code, output = run_to_exit(
        {**side_env, "RELAY_SECRET_POLICY_NAME": absent, "RELAY_REQUIRE_SECRET_POLICY": "true"}
    )
    assert code == 1, output
    assert f'RELAY_REQUIRE_SECRET_POLICY=true, but ValidatingAdmissionPolicy "{absent}"' in output


@pytest.fixture(scope="module")
def unprivileged_kubeconfig(
    control_plane: KubeTools, side_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A ServiceAccount with the rights the operator uses on RelayJobs in the side namespace, and
    none on admission policies."""
    kube, ns, account = control_plane, side_env["RELAY_NAMESPACES"], "no-policy-reader"
    kube.kubectl("create", "serviceaccount", account, "-n", ns)
    rules = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": account, "namespace": ns},
        "rules": [
            {"apiGroups": ["relay.dev"], "resources": ["relayjobs"], "verbs": ["list", "watch", "delete"]},
            {"apiGroups": ["relay.dev"], "resources": ["relayjobs/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(rules))
    kube.kubectl(
        "create", "rolebinding", account, "-n", ns, f"--role={account}", f"--serviceaccount={ns}:{account}"
    )
    token = kube.kubectl("create", "token", account, "-n", ns, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(
        kube.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "yaml").stdout
    )
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "sandbox", "user": account}}],
        "current-context": account,
    }
    path = Path(tmp_path_factory.mktemp("sa")) / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


def test_operator_that_may_not_read_the_policy_cannot_tell(
    side_env: dict[str, str], unprivileged_kubeconfig: Path, tmp_path: Path
) -> None:
    env = {**side_env, "KUBECONFIG": str(unprivileged_kubeconfig)}
    process = OperatorProcess(env, tmp_path / "op.log").start()
    try:
        code, body = readyz(process)
        assert code == 200, body
        state = body["secretPolicy"]
        assert state.startswith(
            f'unknown: cannot tell whether ValidatingAdmissionPolicy "{POLICY}" is installed'
        )
        assert "403 Forbidden" in state, state
        assert "relayjob_secret_policy_installed 0.0" in process.metrics()
    finally:
        assert process.stop() == 0
    # Required, "cannot tell" is not good enough.
    code, output = run_to_exit({**env, "RELAY_REQUIRE_SECRET_POLICY": "true"})
    assert code == 1 and "RELAY_REQUIRE_SECRET_POLICY=true, but cannot tell" in output, output
