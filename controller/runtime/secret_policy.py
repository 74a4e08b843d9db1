"""Does the API server guard Secret references? Start-up's look at the ValidatingAdmissionPolicy that
lets a RelayJob name only the Secrets its author may `get`, and at its binding.

The operator reads the Secrets a RelayJob names with its own rights, and never learns who wrote
the RelayJob: only the API server, at admission, can hold the author to their own rights. Without
that policy anyone who may create a RelayJob can have any Secret of its namespace sent to a URL of
their choosing, so its absence is said loudly: a warning, a /readyz entry, a metric, or with
RELAY_REQUIRE_SECRET_POLICY a refusal to start.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from controller.adapters.kube import KubeError

log = logging.getLogger("relayjob.secret_policy")

POLICIES = "validatingadmissionpolicies"
BINDINGS = "validatingadmissionpolicybindings"
_CONSEQUENCE = (
    "until it is, anyone who may create a RelayJob can have the operator send any Secret of its "
    "namespace to a URL of their choosing. Install manifests/secret-policy.yaml, or the chart with "
    "secretPolicy.enabled=true (Kubernetes 1.30+); RELAY_REQUIRE_SECRET_POLICY=true refuses to "
    "start without it"
)


class AdmissionObjects(Protocol):
    async def get_admission_object(self, plural: str, name: str) -> dict[str, Any] | None: ...


class PolicyState(enum.StrEnum):
    INSTALLED = "installed"
    # Absent, or its binding does not deny: RelayJobs are admitted unchecked.
    MISSING = "missing"
    # The operator may not read the objects (403) or the API server did not answer.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SecretPolicy:
    name: str
    state: PolicyState
    detail: str

    @property
    def installed(self) -> bool:
        return self.state is PolicyState.INSTALLED

    def readiness(self) -> str:
        """The /readyz entry: the state, and what is wrong when something is."""
        return self.state.value if self.installed else f"{self.state.value}: {self.detail}"


def judge(name: str, policy: dict[str, Any] | None, binding: dict[str, Any] | None) -> SecretPolicy:
    """What the two objects found under `name` (None: not found) amount to."""
    if policy is None or binding is None:
        kinds = (("ValidatingAdmissionPolicy", policy), ("ValidatingAdmissionPolicyBinding", binding))
        missing = [f'{kind} "{name}"' for kind, found in kinds if found is None]
        verb = "are" if len(missing) > 1 else "is"
        return SecretPolicy(name, PolicyState.MISSING, f"{' and '.join(missing)} {verb} not installed")
    spec = binding.get("spec") or {}
    bound = spec.get("policyName")
    if bound != name:
        return SecretPolicy(
            name,
            PolicyState.MISSING,
            f'ValidatingAdmissionPolicyBinding "{name}" binds policy "{bound}", not "{name}"',
        )
    actions = [str(action) for action in spec.get("validationActions") or []]
    if "Deny" not in actions:
        return SecretPolicy(
            name,
            PolicyState.MISSING,
            f'ValidatingAdmissionPolicyBinding "{name}" does not deny '
            f"(validationActions: {', '.join(actions) or 'none'})",
        )
    detail = f'ValidatingAdmissionPolicy "{name}" and its binding are installed and deny'
    return SecretPolicy(name, PolicyState.INSTALLED, detail)


async def inspect(kube: AdmissionObjects, name: str) -> SecretPolicy:
    try:
        policy = await kube.get_admission_object(POLICIES, name)
        binding = await kube.get_admission_object(BINDINGS, name)
    except KubeError as error:
        if error.status == 403:
            why = (
                f"the operator may not get {POLICIES}/{name} and {BINDINGS}/{name} (403 Forbidden); "
                "grant it `get` on both, by name, as the chart's RBAC does"
            )
        else:
            why = f"reading them failed ({error})"
        return SecretPolicy(
            name,
            PolicyState.UNKNOWN,
            f'cannot tell whether ValidatingAdmissionPolicy "{name}" is installed: {why}',
        )
    return judge(name, policy, binding)


def announce(found: SecretPolicy, *, required: bool) -> str | None:
    """Log what start-up found. When the policy is required and not known to be installed, log
    nothing and return why start-up must stop, naming the setting."""
    if found.installed:
        log.info("Secret references are checked: %s", found.detail, extra={"secret_policy": found.name})
        return None
    if required:
        return f"RELAY_REQUIRE_SECRET_POLICY=true, but {found.detail}"
    log.warning(
        "Secret references may go unchecked: %s; %s",
        found.detail,
        _CONSEQUENCE,
        extra={"setting": "RELAY_SECRET_POLICY_NAME", "secret_policy": found.name, "state": found.state},
    )
    return None
