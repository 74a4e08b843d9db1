"""The RelayQueue spec, its defaults for jobs, and the status document it gets."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from pydantic import ValidationError

from controller.model.queues import IMPLICIT, QueueDefaults, QueueRef, RelayQueueSpec


def test_defaults_fill_only_the_fields_a_job_leaves_out() -> None:
    defaults = QueueDefaults.model_validate(
        {
            "maxAttempts": 2,
            "timeoutSeconds": 5,
            "backoff": {"initialSeconds": 3},
            "ttlSecondsAfterFinished": 0,
        }
    )
    filled = defaults.fill({"maxAttempts": 7, "target": {"noop": {}}, "timeoutSeconds": None})
    assert filled["maxAttempts"] == 7
    assert filled["timeoutSeconds"] == 5 and filled["ttlSecondsAfterFinished"] == 0
    assert filled["backoff"]["initialSeconds"] == 3 and filled["target"] == {"noop": {}}


def test_no_defaults_leave_a_spec_as_it_is() -> None:
    spec = {"target": {"noop": {}}}
    assert QueueDefaults().fill(spec) == spec


@pytest.mark.parametrize(
    "raw",
    [
        {"maxConcurrency": 0},
        {"rateLimit": {"perSecond": 0}},
        {"rateLimit": {"perSecond": 5, "burst": 0}},
        {"weight": 0},
        {"defaults": {"maxAttempts": 101}},
    ],
)
def test_out_of_bounds_limits_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RelayQueueSpec.model_validate(raw)


def test_the_implicit_default_queue_has_no_limits() -> None:
    assert IMPLICIT.max_concurrency is None and IMPLICIT.rate_limit is None and not IMPLICIT.paused
    assert QueueRef("team-a", "default").implicit and not QueueRef("team-a", "bulk").implicit
    assert QueueRef("team-a", "bulk").id == "team-a/bulk"


def test_a_queue_status_document_counts_and_says_paused() -> None:
    from controller.core.queues import KnownQueue, queue_status

    known = KnownQueue(uuid4(), 3, RelayQueueSpec(paused=True))
    status = queue_status(known, 4, 1, 0, 2, 0.51234, datetime(2026, 1, 1, tzinfo=UTC))
    assert (status["ready"], status["delayed"], status["running"], status["deadLettered"]) == (4, 1, 0, 2)
    assert status["dispatchedPerSecond"] == 0.512 and status["observedGeneration"] == 3
    condition = status["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Paused", "True", "Paused")
