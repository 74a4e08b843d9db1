"""Callbacks: the RelayJob that tells a finished job's outcome to its `onCompletion` / `onFailure`.

A Completed job with `spec.onCompletion`, or a DeadLettered one with `spec.onFailure`, is owed one
callback job per run (a re-driven job that finishes again is told again). Everything about that
job is derived from the finished job alone, its name above all, so every replica and every restart
derives the same object, and the API server's AlreadyExists makes creating it exactly-once.

The callback job is an ordinary RelayJob: retried, dead-lettered, signed and re-drivable like any
other. Its spec names no callbacks of its own, so callbacks never chain.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.model.spec import Callback

CALLBACK_OF_LABEL = "relay.dev/callback-of"
CALLBACK_KIND_LABEL = "relay.dev/callback"
MAX_NAME = 253  # a DNS-1123 subdomain, as every object name
MAX_LABEL_VALUE = 63
_DIGEST_CHARS = 10


class CallbackKind(StrEnum):
    """Which callback a job is owed, named as its spec field."""

    ON_COMPLETION = "onCompletion"
    ON_FAILURE = "onFailure"


_SUFFIX = {CallbackKind.ON_COMPLETION: "on-completion", CallbackKind.ON_FAILURE: "on-failure"}
_OWED_IN = {CallbackKind.ON_COMPLETION: Phase.COMPLETED, CallbackKind.ON_FAILURE: Phase.DEAD_LETTERED}


def owed(row: JobRow) -> CallbackKind | None:
    """The callback `row`'s outcome calls for, if its spec asks for one."""
    spec = row.spec_or_none
    if spec is None:
        return None
    if row.phase is Phase.COMPLETED and spec.on_completion is not None:
        return CallbackKind.ON_COMPLETION
    if row.phase is Phase.DEAD_LETTERED and spec.on_failure is not None:
        return CallbackKind.ON_FAILURE
    return None


def owed_in(kind: CallbackKind) -> Phase:
    """The phase whose jobs `kind` is owed to."""
    return _OWED_IN[kind]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def callback_name(job: str, kind: CallbackKind, run: int) -> str:
    """`<job>-on-completion` / `<job>-on-failure`, with `-<run>` after a re-drive. A job name too
    long for the suffix is cut and keeps a digest of the whole name, so two long names that share
    their beginning still get callbacks of their own."""
    suffix = _SUFFIX[kind] if run == 1 else f"{_SUFFIX[kind]}-{run}"
    name = f"{job}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    keep = MAX_NAME - len(suffix) - _DIGEST_CHARS - 2
    # A cut may end a DNS label with '.' or '-'; the name must end each label alphanumeric.
    return f"{job[:keep].rstrip('.-')}-{_digest(job)}-{suffix}"


def callback_of_label(job: str) -> str:
    """The `relay.dev/callback-of` label value: the job's name, or, past the 63 characters a label
    value may hold, its beginning and a digest of the whole name."""
    if len(job) <= MAX_LABEL_VALUE:
        return job
    keep = MAX_LABEL_VALUE - _DIGEST_CHARS - 1
    return f"{job[:keep].rstrip('.-')}-{_digest(job)}"


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def outcome(row: JobRow) -> dict[str, Any]:
    """The callback's payload: how the job ended, and which job it was."""
    told: dict[str, Any] = {
        "phase": row.phase.value,
        "reason": row.reason or row.phase.value,
        "message": row.message or "",
        "attempts": row.attempts,
        "result": row.result or {},
        "job": {"namespace": row.ref.namespace, "name": row.ref.name, "uid": str(row.ref.uid)},
    }
    if row.finished_at is not None:
        told["completedAt"] = _utc(row.finished_at)
    return told


def _callback(row: JobRow, kind: CallbackKind) -> Callback:
    spec = row.spec
    callback = spec.on_completion if kind is CallbackKind.ON_COMPLETION else spec.on_failure
    if callback is None:
        raise ValueError(f"{row.ref} has no spec.{kind}")
    return callback


def callback_job(row: JobRow, kind: CallbackKind, api_version: str, owner_kind: str) -> dict[str, Any]:
    """The whole RelayJob (but `apiVersion`/`kind`) to create for `row`'s `kind` callback: owned by
    the job (not as its controller, and not holding back its deletion), labelled with it, in its
    queue, with the callback's http target and the outcome as payload."""
    callback = _callback(row, kind)
    return {
        "metadata": {
            "name": callback_name(row.ref.name, kind, row.run),
            "namespace": row.ref.namespace,
            "labels": {CALLBACK_OF_LABEL: callback_of_label(row.ref.name), CALLBACK_KIND_LABEL: kind.value},
            "ownerReferences": [
                {
                    "apiVersion": api_version,
                    "kind": owner_kind,
                    "name": row.ref.name,
                    "uid": str(row.ref.uid),
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {
            "target": {"http": callback.http.model_dump(mode="json", by_alias=True, exclude_defaults=True)},
            "payload": outcome(row),
            "queue": row.spec.queue,
        },
    }
