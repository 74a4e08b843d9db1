"""The ledger's cache of parsed specs (`adapters.ledger._spec`), without a database: records are
plain mappings with the columns the cache reads."""

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters import ledger


def _record(payload: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = {"target": {"noop": {}}, "payload": payload or {}}
    return {"uid": uuid.uuid4(), "phase": "Queued", "spec": json.dumps(spec)}


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    ledger._specs.clear()
    yield
    ledger._specs.clear()


def test_the_least_recently_used_spec_leaves_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "SPEC_CACHE_SIZE", 3)
    first, second, third, fourth = (_record() for _ in range(4))
    for record in (first, second, third):
        ledger._spec(record)
    kept = ledger._spec(first)  # used again: now the most recent
    ledger._spec(fourth)
    assert list(ledger._specs) == [third["uid"], first["uid"], fourth["uid"]]
    assert ledger._spec(first) is kept


def test_a_large_spec_is_parsed_but_not_kept() -> None:
    record = _record({"blob": "x" * ledger.SPEC_CACHE_MAX_CHARS})
    spec = ledger._spec(record)
    assert spec is not None and spec.payload["blob"].startswith("x")
    assert record["uid"] not in ledger._specs


def test_the_spec_text_is_parsed_as_json_keeping_its_numbers() -> None:
    record = _record({"huge": 2**80, "big": 1e300})
    spec = ledger._spec(record)
    assert spec is not None and spec.payload == {"huge": 2**80, "big": 1e300}
