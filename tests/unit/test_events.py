import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from controller.adapters.metrics import Metrics
from controller.core.event_budget import EventBudget
from controller.model.jobs import JobRef
from controller.runtime.events import EventPoster


class Recorder:
    """The API server as the poster sees it: every Event accepted, and kept."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        self.posted.append((kind, reason))

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        raise AssertionError("not used")

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("not used")

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[uuid.UUID]:
        raise AssertionError("not used")

    async def delete_job(self, ref: JobRef) -> bool:
        raise AssertionError("not used")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def ref(i: int) -> JobRef:
    return JobRef(uid=uuid.uuid4(), namespace="ns", name=f"job-{i}")


async def test_a_burst_of_completions_leaves_room_for_a_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead-letter's Warning used to be dropped when completions had spent the budget first."""
    monkeypatch.setattr("controller.runtime.events.time.monotonic", lambda: 1000.0)  # no refill
    cluster, metrics = Recorder(), Metrics()
    poster = EventPoster(cluster, metrics, per_second=20)
    for i in range(200):
        poster.post(ref(i), "Normal", "Completed", "attempt succeeded")
    poster.post(ref(200), "Warning", "DeadLettered", "5 of 5 attempts failed")
    await poster.drain()
    assert ("Warning", "DeadLettered") in cluster.posted
    assert cluster.posted.count(("Normal", "Completed")) == 10
    assert metrics.events_dropped._value.get() == 190


def test_normal_events_stop_at_the_reserve_and_warnings_do_not() -> None:
    budget = EventBudget.full(rate=20, now=0.0)
    normal = sum(budget.take(0.0, warning=False) for _ in range(50))
    warnings = sum(budget.take(0.0, warning=True) for _ in range(50))
    assert (normal, warnings) == (10, 10)


def test_the_bucket_refills_at_its_rate_and_holds_no_more_than_a_second() -> None:
    budget = EventBudget.full(rate=20, now=0.0)
    assert sum(budget.take(0.0, warning=True) for _ in range(50)) == 20
    assert sum(budget.take(0.5, warning=True) for _ in range(50)) == 10
    assert sum(budget.take(100.0, warning=True) for _ in range(50)) == 20


def test_below_one_per_second_both_kinds_take_turns() -> None:
    budget = EventBudget.full(rate=0.5, now=0.0)
    assert budget.take(0.0, warning=False)
    assert not budget.take(1.0, warning=True)
    assert budget.take(2.0, warning=True)
    assert budget.take(4.0, warning=False)
