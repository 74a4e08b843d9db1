"""Admission: whether a RelayJob as written may enter the queue at all.

Nullifier conflicts are not decided here: only the ledger's unique constraint can decide a race
between two replicas, so admission returns the parsed spec and the ledger says the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
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


def _payload_problem(value: Any, depth: int = 0) -> str | None:
    """What the ledger could not store, found before it tries: PostgreSQL's jsonb refuses NUL
    characters, and its parser recurses, so very deep nesting exhausts its stack. A lone surrogate
    (JSON's "\\ud800") is not text at all: the payload's size cannot even be measured."""
    if depth > MAX_PAYLOAD_DEPTH:
        return f"nests deeper than {MAX_PAYLOAD_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\u0000)"
        if not value.isascii() and not _encodable(value):
            return "contains a lone UTF-16 surrogate, which is not Unicode text"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _payload_problem(key, depth) or _payload_problem(item, depth + 1)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _payload_problem(item, depth + 1)
            if problem:
                return problem
    return None


def admit(
    raw_spec: Mapping[str, Any], payload_limit_bytes: int, executors: Collection[str]
) -> Admitted | Refused:
    try:
        spec = RelayJobSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        return Refused(Reason.INVALID_SPEC, _describe(error))
    problem = _payload_problem(spec.payload)
    if problem:
        return Refused(Reason.INVALID_SPEC, f"spec.payload {problem}")
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
