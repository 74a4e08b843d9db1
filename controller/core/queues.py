"""A RelayQueue as the operator knows it, and the status document it is given (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from controller.model.queues import RelayQueueSpec


@dataclass(frozen=True)
class KnownQueue:
    uid: UUID
    generation: int
    spec: RelayQueueSpec
    # Why the spec on the object could not be used, when it could not (the queue is then paused).
    problem: str | None = None


def queue_status(
    known: KnownQueue, ready: int, delayed: int, running: int, dead: int, rate: float, now: datetime
) -> dict[str, Any]:
    """The status document of one RelayQueue (conditions as the API conventions shape them)."""
    paused = known.spec.paused
    reason = "InvalidSpec" if known.problem else ("Paused" if paused else "Dispatching")
    message = known.problem or ("spec.paused is true: no attempt starts" if paused else "jobs start")
    return {
        "ready": ready,
        "delayed": delayed,
        "running": running,
        "deadLettered": dead,
        "dispatchedPerSecond": round(rate, 3),
        "observedGeneration": known.generation,
        "conditions": [
            {
                "type": "Paused",
                "status": "True" if paused else "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "observedGeneration": known.generation,
            }
        ],
    }


def same_status(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Equal but for the transition time, which only changes with the condition's status."""
    strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in after["conditions"]]
    kept = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in before["conditions"]]
    return strip == kept and {k: v for k, v in before.items() if k != "conditions"} == {
        k: v for k, v in after.items() if k != "conditions"
    }
