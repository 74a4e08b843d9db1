"""What start-up makes of the Secret-reference policy and its binding, given what the API answers.

The real API server's answers (found, absent, 403) are in tests/e2e/test_tenancy.py; here a small
typed fake stands in for it, to pin every branch of the decision and its wording.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from controller.adapters.kube import KubeError
from controller.runtime.secret_policy import (
    BINDINGS,
    POLICIES,
    PolicyState,
    SecretPolicy,
    announce,
    inspect,
    judge,
)

NAME = "relayjob-operator-secret-references"
POLICY: dict[str, Any] = {"kind": "ValidatingAdmissionPolicy", "metadata": {"name": NAME}}
DENYING: dict[str, Any] = {"spec": {"policyName": NAME, "validationActions": ["Deny"]}}


class Api:
    def __init__(self, objects: dict[str, dict[str, Any]], error: KubeError | None = None) -> None:
        self.objects = objects
        self.error = error
        self.asked: list[tuple[str, str]] = []

    async def get_admission_object(self, plural: str, name: str) -> dict[str, Any] | None:
        self.asked.append((plural, name))
        if self.error is not None:
            raise self.error
        return self.objects.get(plural)


def test_policy_with_a_denying_binding_is_installed() -> None:
    found = judge(NAME, POLICY, DENYING)
    assert found.state is PolicyState.INSTALLED and found.installed
    assert found.readiness() == "installed"


@pytest.mark.parametrize(
    ("policy", "binding", "detail"),
    [
        (None, DENYING, f'ValidatingAdmissionPolicy "{NAME}" is not installed'),
        (POLICY, None, f'ValidatingAdmissionPolicyBinding "{NAME}" is not installed'),
        (
            None,
            None,
            f'ValidatingAdmissionPolicy "{NAME}" and ValidatingAdmissionPolicyBinding "{NAME}" '
            "are not installed",
        ),
        (
            POLICY,
            {"spec": {"policyName": "other", "validationActions": ["Deny"]}},
            f'ValidatingAdmissionPolicyBinding "{NAME}" binds policy "other", not "{NAME}"',
        ),
        (
            POLICY,
            {"spec": {"policyName": NAME, "validationActions": ["Warn", "Audit"]}},
            f'ValidatingAdmissionPolicyBinding "{NAME}" does not deny (validationActions: Warn, Audit)',
        ),
    ],
)
def test_absent_or_toothless_policy_is_missing_and_says_what(
    policy: dict[str, Any] | None, binding: dict[str, Any] | None, detail: str
) -> None:
    found = judge(NAME, policy, binding)
    assert found.state is PolicyState.MISSING and not found.installed
    assert found.detail == detail
    assert found.readiness() == f"missing: {detail}"


async def test_inspect_reads_both_objects_by_name() -> None:
    api = Api({POLICIES: POLICY, BINDINGS: DENYING})
    assert (await inspect(api, NAME)).installed
    assert api.asked == [(POLICIES, NAME), (BINDINGS, NAME)]


async def test_forbidden_to_read_them_means_cannot_tell() -> None:
    found = await inspect(Api({}, KubeError(403, '{"reason":"Forbidden"}')), NAME)
    assert found.state is PolicyState.UNKNOWN
    assert found.detail.startswith(f'cannot tell whether ValidatingAdmissionPolicy "{NAME}" is installed')
    assert "403 Forbidden" in found.detail and f"{POLICIES}/{NAME}" in found.detail


async def test_an_api_server_that_does_not_answer_means_cannot_tell() -> None:
    found = await inspect(Api({}, KubeError(0, "GET /apis/...: ClientConnectorError")), NAME)
    assert found.state is PolicyState.UNKNOWN and "ClientConnectorError" in found.detail


def test_missing_policy_is_a_warning_naming_the_consequence(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert announce(judge(NAME, None, None), required=False) is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f'ValidatingAdmissionPolicy "{NAME}"' in record.getMessage()
    assert "any Secret of its namespace" in record.getMessage()
    assert "RELAY_REQUIRE_SECRET_POLICY=true" in record.getMessage()


@pytest.mark.parametrize("state", [PolicyState.MISSING, PolicyState.UNKNOWN])
def test_required_policy_not_known_installed_stops_start_up_naming_the_setting(
    state: PolicyState, caplog: pytest.LogCaptureFixture
) -> None:
    found = SecretPolicy(NAME, state, "cannot tell, or not installed")
    refusal = announce(found, required=True)
    assert refusal is not None and refusal.startswith("RELAY_REQUIRE_SECRET_POLICY=true, but ")
    assert found.detail in refusal
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_installed_policy_is_announced_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert announce(judge(NAME, POLICY, DENYING), required=True) is None
    assert all(r.levelno == logging.INFO for r in caplog.records)
