"""Admission: whether a RelayJob as written may enter the queue at all.

Nullifier conflicts are not decided here: only the ledger's unique constraint can decide a race
between two replicas, so admission returns the parsed spec and the ledger says the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from controller.model.phases import Reason
from controller.model.spec import RelayJobSpec


@dataclass(frozen=True)
class Admitted:
    spec: RelayJobSpec


@dataclass(frozen=True)
class Refused:
    reason: Reason
    message: str


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "; ".join(parts)


MAX_PAYLOAD_DEPTH = 100


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    if not text.isascii() and not _encodable(text):
        return "contains a lone UTF-16 surrogate, which is not Unicode text"
    return None


def _document_problem(raw_spec: Mapping[str, Any]) -> Refused | None:
    """What the ledger could not store, or the code after it could not walk, found before either
    tries: PostgreSQL's jsonb refuses NUL characters, and its parser, Python's json and every
    copy recurse once per level, so nesting is capped (below what the watch decoder truncates).
    A lone surrogate (JSON's "\\ud800") is not text at all: the payload's size cannot even be
    measured. The walk keeps its own stack: no payload can exhaust Python's."""
    pending = [(str(field), value, 0) for field, value in raw_spec.items()]
    while pending:
        field, value, depth = pending.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            reason = Reason.PAYLOAD_TOO_DEEP if field == "payload" else Reason.INVALID_SPEC
            return Refused(reason, f"spec.{field} nests deeper than {MAX_PAYLOAD_DEPTH} levels")
        if isinstance(value, str):
            problem = _text_problem(value)
        elif isinstance(value, dict):
            problem = next((p for p in map(_text_problem, value) if p), None)
            pending.extend((field, item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            problem = None
            pending.extend((field, item, depth + 1) for item in value)
        else:
            problem = None
        if problem:
            return Refused(Reason.INVALID_SPEC, f"spec.{field} {problem}")
    return None


# The last instant Python's datetime (and so the ledger's reads) can hold, in UTC.
LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def _beyond_the_calendar(spec: RelayJobSpec) -> Refused | None:
    """A `notBefore` that RFC 3339 can write but no datetime can hold once in UTC (9999-12-31 with
    a negative offset): the job could never be scheduled. One as far before year 1 is merely past."""
    if spec.not_before is None or spec.not_before <= LAST_INSTANT:
        return None
    return Refused(
        Reason.INVALID_SPEC,
        f"spec.notBefore {spec.not_before.isoformat()} is after {LAST_INSTANT:%Y-%m-%dT%H:%M:%SZ} "
        "in UTC, the last instant a job can be scheduled for",
    )


def admit(
    raw_spec: Mapping[str, Any], payload_limit_bytes: int, executors: Collection[str]
) -> Admitted | Refused:
    refused = _document_problem(raw_spec)
    if refused:
        return refused
    try:
        spec = RelayJobSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        return Refused(Reason.INVALID_SPEC, _describe(error))
    refused = _beyond_the_calendar(spec)
    if refused:
        return refused
    size = spec.payload_size()
    if size > payload_limit_bytes:
        return Refused(
            Reason.PAYLOAD_TOO_LARGE,
            f"spec.payload is {size} bytes; the limit is {payload_limit_bytes} (RELAY_PAYLOAD_LIMIT_BYTES)",
        )
    if spec.target.executor not in executors:
        return Refused(
            Reason.UNKNOWN_EXECUTOR,
            f"spec.target.{spec.target.executor}: no executor of that name is installed "
            f"(available: {', '.join(sorted(executors))})",
        )
    return Admitted(spec)
