"""Callbacks: which finished jobs are owed one, the callback RelayJob derived from the job alone
(name, owner, labels, outcome payload), the CRD's callback fields, and what creating one does
with each answer of the API server."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.callback_ledger import CallbackRecord
from controller.adapters.kube import API_VERSION, KIND, KubeError
from controller.adapters.metrics import Metrics
from controller.core.callbacks import (
    CALLBACK_KIND_LABEL,
    CALLBACK_OF_LABEL,
    CallbackKind,
    callback_job,
    callback_name,
    callback_of_label,
    owed,
)
from controller.model.jobs import JobRow
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec
from controller.runtime.callbacks import Callbacks, Unanswered
from tests.unit.fakes import NOW, FakeEvents, in_background, job_row, until

CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HOOK = {"http": {"url": "http://127.0.0.1:9/hook", "signing": {"secretKeyRef": {"name": "s", "key": "k"}}}}


def finished(phase: Phase, run: int = 1, name: str = "job", **spec: Any) -> JobRow:
    row = job_row(phase, attempts=2, **spec)
    return row.model_copy(
        update={
            "ref": row.ref.model_copy(update={"name": name}),
            "reason": Reason.SUCCEEDED if phase is Phase.COMPLETED else Reason.PERMANENT_FAILURE,
            "message": "attempt succeeded" if phase is Phase.COMPLETED else "HTTP404: no such hook",
            "result": {"status": 200},
            "finished_at": NOW + timedelta(seconds=3),
            "run": run,
        }
    )


@pytest.mark.parametrize(
    ("phase", "spec", "kind"),
    [
        (Phase.COMPLETED, {"onCompletion": HOOK}, CallbackKind.ON_COMPLETION),
        (Phase.COMPLETED, {"onFailure": HOOK}, None),
        (Phase.DEAD_LETTERED, {"onFailure": HOOK}, CallbackKind.ON_FAILURE),
        (Phase.DEAD_LETTERED, {"onCompletion": HOOK}, None),
        (Phase.REJECTED, {"onCompletion": HOOK, "onFailure": HOOK}, None),
        (Phase.RETRYING, {"onCompletion": HOOK, "onFailure": HOOK}, None),
        (Phase.COMPLETED, {}, None),
    ],
)
def test_a_job_is_owed_the_callback_of_how_it_ended(
    phase: Phase, spec: dict[str, Any], kind: CallbackKind | None
) -> None:
    assert owed(finished(phase, **spec)) == kind


def test_a_callback_is_named_after_its_job_and_a_redriven_run_gets_its_own() -> None:
    assert callback_name("notify", CallbackKind.ON_COMPLETION, 1) == "notify-on-completion"
    assert callback_name("notify", CallbackKind.ON_FAILURE, 1) == "notify-on-failure"
    assert callback_name("notify", CallbackKind.ON_FAILURE, 3) == "notify-on-failure-3"


@pytest.mark.parametrize("length", [238, 239, 240, 253])
@pytest.mark.parametrize("filler", ["a", "a.b-", "ab.", "a-"])
def test_a_name_near_the_limit_keeps_a_valid_name_unique_to_its_job(length: int, filler: str) -> None:
    job = (filler * 300)[: length - 1] + "z"
    other = job[:-1] + "y"
    for kind in CallbackKind:
        for run in (1, 12):
            name = callback_name(job, kind, run)
            assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), name
            assert name == callback_name(job, kind, run)
            assert name != callback_name(other, kind, run)


@pytest.mark.parametrize("job", ["short", "x" * 63, "a." * 40 + "z", "b-" * 100 + "z"])
def test_the_callback_of_label_is_a_valid_label_value(job: str) -> None:
    value = callback_of_label(job)
    assert len(value) <= 63 and LABEL_VALUE.match(value)
    assert (value == job) == (len(job) <= 63)


def test_the_callback_job_is_owned_by_the_job_and_carries_the_outcome() -> None:
    row = finished(Phase.COMPLETED, onCompletion=HOOK, onFailure=HOOK, queue="mail")
    body = callback_job(row, CallbackKind.ON_COMPLETION, API_VERSION, KIND)
    meta = body["metadata"]
    assert meta["name"] == "job-on-completion" and meta["namespace"] == row.ref.namespace
    assert meta["labels"] == {CALLBACK_OF_LABEL: "job", CALLBACK_KIND_LABEL: "onCompletion"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "relay.dev/v1alpha1",
            "kind": "RelayJob",
            "name": "job",
            "uid": str(row.ref.uid),
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]
    assert body["spec"]["payload"] == {
        "phase": "Completed",
        "reason": "Succeeded",
        "message": "attempt succeeded",
        "attempts": 2,
        "result": {"status": 200},
        "completedAt": "2026-12-01T12:00:03Z",
        "job": {"namespace": row.ref.namespace, "name": "job", "uid": str(row.ref.uid)},
    }
    assert body["spec"]["queue"] == "mail"
    # The callback's own target, signing included, and no callbacks of its own: they never chain.
    spec = RelayJobSpec.model_validate(body["spec"])
    assert row.spec.on_completion is not None and spec.target.http == row.spec.on_completion.http
    assert spec.on_completion is None and spec.on_failure is None
    assert set(body["spec"]) == {"target", "payload", "queue"}


def test_the_failure_callback_tells_why_the_job_was_dead_lettered() -> None:
    row = finished(Phase.DEAD_LETTERED, run=2, onFailure=HOOK)
    body = callback_job(row, CallbackKind.ON_FAILURE, API_VERSION, KIND)
    assert body["metadata"]["name"] == "job-on-failure-2"
    payload = body["spec"]["payload"]
    assert (payload["phase"], payload["reason"]) == ("DeadLettered", "PermanentFailure")
    assert payload["message"] == "HTTP404: no such hook"


# --- the CRD ---------------------------------------------------------------------------------


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _without_words(node: Any) -> Any:
    """A schema without its descriptions and messages: what the API server enforces."""
    if isinstance(node, dict):
        return {k: _without_words(v) for k, v in node.items() if k not in ("description", "message")}
    if isinstance(node, list):
        return [_without_words(v) for v in node]
    return node


@pytest.mark.parametrize("field", ["onCompletion", "onFailure"])
def test_a_callback_takes_exactly_what_target_http_takes(field: str) -> None:
    """The CRD repeats target.http's schema under each callback (a CRD schema has no references):
    a field added to one and not the others fails here."""
    spec = _spec_schema()
    callback = spec["properties"][field]
    assert callback["required"] == ["http"] and set(callback["properties"]) == {"http"}
    target_http = copy.deepcopy(spec["properties"]["target"]["properties"]["http"])
    assert _without_words(callback["properties"]["http"]) == _without_words(target_http)
    messages = re.findall(r"message: ([^\n]*)", yaml.safe_dump(callback))
    assert all("target.http" not in m for m in messages), "a callback's messages name its own field"


@pytest.mark.parametrize("field", ["onCompletion", "onFailure"])
def test_a_callback_is_immutable_like_the_target(field: str) -> None:
    rules = {r.get("fieldPath"): r for r in _spec_schema()["x-kubernetes-validations"]}
    assert f"self.{field} == oldSelf.{field}" in rules[f".{field}"]["rule"]
    assert rules[f".{field}"]["message"].startswith(f"spec.{field} is immutable")


# --- creating the callback job ---------------------------------------------------------------


class Creator:
    """The API server's create: AlreadyExists for a name it holds, or the error it is told to give."""

    def __init__(self) -> None:
        self.created: dict[str, dict[str, Any]] = {}
        self.error: KubeError | None = None

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        if self.error is not None:
            raise self.error
        name = body["metadata"]["name"]
        if name in self.created:
            return False
        self.created[name] = body
        return True


class Store:
    def __init__(self, owed: list[JobRow] | None = None) -> None:
        self.rows = owed or []
        self.records: list[CallbackRecord] = []

    async def owed(self, older_than: float, namespaces: Sequence[str]) -> list[JobRow]:
        done = {(r.row.ref.uid, r.row.run) for r in self.records}
        return [r for r in self.rows if (r.ref.uid, r.run) not in done]

    async def recorded(self, record: CallbackRecord) -> None:
        self.records.append(record)


def stage(owed_rows: list[JobRow] | None = None) -> tuple[Callbacks, Creator, Store, FakeEvents]:
    creator, store, events = Creator(), Store(owed_rows), FakeEvents()
    callbacks = Callbacks(kube=creator, ledger=store, events=events, metrics=Metrics(), namespaces=[])
    return callbacks, creator, store, events


async def test_a_callback_found_created_already_is_recorded_and_not_created_again() -> None:
    callbacks, creator, store, events = stage()
    row = finished(Phase.COMPLETED, onCompletion=HOOK)
    await callbacks.deliver(row, CallbackKind.ON_COMPLETION)
    await callbacks.deliver(row, CallbackKind.ON_COMPLETION)  # another replica, or after a restart
    assert list(creator.created) == ["job-on-completion"]
    assert [(r.name, r.refusal) for r in store.records] == [("job-on-completion", None)] * 2
    assert [reason for _, _, reason, _ in events.posted] == ["CallbackCreated"]


@pytest.mark.parametrize("status", [0, 429, 500, 503])
async def test_an_api_server_that_does_not_decide_leaves_the_callback_owed(status: int) -> None:
    callbacks, creator, store, events = stage()
    creator.error = KubeError(status, "etcdserver: request timed out")
    with pytest.raises(Unanswered):
        await callbacks.deliver(finished(Phase.COMPLETED, onCompletion=HOOK), CallbackKind.ON_COMPLETION)
    assert store.records == [] and events.posted == []


async def test_a_refusal_for_good_is_recorded_and_told_on_the_job() -> None:
    callbacks, creator, store, events = stage()
    body = '{"kind":"Status","message":"RelayJob.relay.dev \\"job-on-failure\\" is invalid: spec.x"}'
    creator.error = KubeError(422, body)
    row = finished(Phase.DEAD_LETTERED, onFailure=HOOK)
    await callbacks.deliver(row, CallbackKind.ON_FAILURE)
    (record,) = store.records
    assert record.name == "job-on-failure" and record.refusal is not None
    assert 'RelayJob.relay.dev "job-on-failure" is invalid' in record.refusal and "{" not in record.refusal
    assert [(uid, kind, reason) for uid, kind, reason, _ in events.posted] == [
        (row.ref.uid, "Warning", "CallbackRefused")
    ]


async def test_the_sweep_creates_what_a_stopped_process_left_owed_once() -> None:
    rows = [finished(Phase.COMPLETED, onCompletion=HOOK), finished(Phase.DEAD_LETTERED, onFailure=HOOK)]
    rows[1] = rows[1].model_copy(update={"ref": rows[1].ref.model_copy(update={"name": "other"})})
    callbacks, creator, _, _ = stage(rows)
    assert await callbacks.sweep() == 2
    assert sorted(creator.created) == ["job-on-completion", "other-on-failure"]
    assert await callbacks.sweep() == 0


async def test_offered_rows_are_created_in_the_background_and_others_ignored() -> None:
    callbacks, creator, store, _ = stage()
    done = finished(Phase.COMPLETED, onCompletion=HOOK)
    callbacks.offer([done, finished(Phase.COMPLETED), finished(Phase.RETRYING, onCompletion=HOOK)])
    async with in_background(callbacks.run()):
        await until(lambda: bool(store.records))
    assert list(creator.created) == ["job-on-completion"]


async def test_every_outcome_the_worker_records_is_offered_to_the_callbacks() -> None:
    from tests.unit.worker.test_settling import PERMANENT, SUCCEEDED, Stage

    worker = Stage(2, onCompletion=HOOK, onFailure=HOOK)
    done, dead = worker.rows
    async with worker.running():
        worker.end(done, SUCCEEDED)
        worker.end(dead, PERMANENT)
        await worker.settled()
    offered = {r.ref.uid: owed(r) for r in worker.callbacks.offered}
    assert offered == {done.ref.uid: CallbackKind.ON_COMPLETION, dead.ref.uid: CallbackKind.ON_FAILURE}


async def test_a_job_dead_lettered_by_its_lost_last_lease_is_offered_to_the_callbacks() -> None:
    from tests.unit.worker.test_claiming import Stage

    (row,) = rows = [job_row(Phase.PROCESSING, attempts=2, maxAttempts=2, onFailure=HOOK)]
    worker = Stage(rows)
    async with worker.claiming_loop():
        await until(lambda: str(row.ref.uid) in worker.queue.dead)
    assert [owed(r) for r in worker.callbacks.offered] == [CallbackKind.ON_FAILURE]
