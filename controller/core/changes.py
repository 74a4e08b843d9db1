"""What a newer generation of a RelayJob changes, under batch/v1 Job's mutability model.

Only `priority`, `ttlSecondsAfterFinished` and `suspend` may change after creation; the CRD's CEL
transition rules make the API server refuse every other change. A RelayJob may still carry one (a
CRD installed without those rules, or an object written before they existed): the operator keeps
running the spec it admitted and names the ignored fields, rather than sending half-changed work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.model.jobs import SpecChange
from controller.model.spec import RelayJobSpec

MUTABLE_FIELDS = frozenset({"priority", "ttlSecondsAfterFinished", "suspend"})


@dataclass(frozen=True)
class Followed:
    """The change to apply, and the immutable fields (by their API names) that were changed anyway."""

    change: SpecChange
    ignored: tuple[str, ...]


def _immutable_view(spec: RelayJobSpec) -> dict[str, Any]:
    return spec.model_dump(by_alias=True, exclude={"priority", "ttl_seconds_after_finished", "suspend"})


def follow(admitted: RelayJobSpec | None, raw: Mapping[str, Any], generation: int) -> Followed:
    """The mutable fields of `raw` (generation `generation`), and which immutable fields differ
    from `admitted`, the spec the job was admitted with (None for a job rejected as invalid).

    A generation whose spec does not validate changes nothing but the generation: every field it
    names is reported as ignored."""
    try:
        spec = RelayJobSpec.model_validate(dict(raw))
    except ValidationError:
        kept = admitted or RelayJobSpec.model_validate({"target": {"noop": {}}})
        unchanged = SpecChange(
            generation=generation,
            priority=kept.priority,
            ttl_seconds=kept.ttl_seconds_after_finished,
            suspend=kept.suspend,
        )
        return Followed(unchanged, tuple(sorted(str(k) for k in raw)))
    change = SpecChange(
        generation=generation,
        priority=spec.priority,
        ttl_seconds=spec.ttl_seconds_after_finished,
        suspend=spec.suspend,
    )
    if admitted is None:
        return Followed(change, ())
    before, after = _immutable_view(admitted), _immutable_view(spec)
    ignored = tuple(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))
    return Followed(change, ignored)


def ignored_message(fields: tuple[str, ...]) -> str:
    """The Event text for immutable fields that changed anyway."""
    names = ", ".join(f"spec.{name}" for name in fields)
    return (
        f"{names} changed after creation and cannot change (only spec.priority, spec.suspend and "
        "spec.ttlSecondsAfterFinished may); the job keeps running as created: create a new RelayJob"
    )
