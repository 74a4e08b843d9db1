"""kopf's first complete list of RelayJobs, as maintenance's first sweep takes it (no I/O)."""

from __future__ import annotations

import uuid
from typing import Any

from controller.runtime.first_list import FirstList

CLUSTER = "https://k8s.test/apis/relay.dev/v1alpha1/relayjobs"


def ns(name: str) -> str:
    return f"https://k8s.test/apis/relay.dev/v1alpha1/namespaces/{name}/relayjobs"


def answer(uids: list[uuid.UUID], more: str | None = None) -> dict[str, Any]:
    return {
        "kind": "RelayJobList",
        "metadata": {"continue": more} if more else {"resourceVersion": "7"},
        "items": [{"metadata": {"uid": str(u)}} for u in uids],
    }


def test_a_list_is_complete_with_its_last_page_and_then_gives_up_what_it_held() -> None:
    known = {uuid.uuid4()}
    pages = [[uuid.uuid4(), uuid.uuid4()], [uuid.uuid4()]]
    first = FirstList(known, scopes=1)
    first.page(f"{CLUSTER}?limit=2", answer(pages[0], more="t1"))
    assert first.take() is None and not first.done.is_set()
    first.page(f"{CLUSTER}?limit=2&continue=t1", answer(pages[1]))
    assert first.done.is_set()
    assert first.take() == (known, {*pages[0], *pages[1]})
    assert first.known == set()


def test_a_list_restarted_midway_counts_only_its_new_pages() -> None:
    """A continue token that expired makes kopf list again from the start: what the abandoned
    list had gathered is not part of the live set, which is one snapshot."""
    gone, kept = uuid.uuid4(), uuid.uuid4()
    first = FirstList(set(), scopes=1)
    first.page(f"{CLUSTER}?limit=1", answer([gone], more="t1"))
    first.page(f"{CLUSTER}?limit=1", answer([kept]))
    assert first.take() == (set(), {kept})


def test_every_listed_namespace_must_complete() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    first = FirstList(set(), scopes=2)
    first.page(f"{ns('a')}?limit=500", answer([a]))
    assert first.take() is None
    first.page(f"{ns('b')}?limit=500", answer([b]))
    assert first.take() == (set(), {a, b})


def test_pages_of_a_list_whose_start_was_not_seen_and_lists_after_the_first_are_ignored() -> None:
    early, late = uuid.uuid4(), uuid.uuid4()
    first = FirstList(set(), scopes=1)
    first.page(f"{CLUSTER}?limit=1&continue=t9", answer([early]))
    assert not first.done.is_set()
    first.page(f"{CLUSTER}?limit=1", answer([]))
    first.page(f"{CLUSTER}?limit=1", answer([late]))
    assert first.take() == (set(), set())


def test_items_without_a_uid_that_parses_are_skipped() -> None:
    good = uuid.uuid4()
    first = FirstList(set(), scopes=1)
    page = answer([good])
    page["items"] += [{"metadata": {"uid": "not-a-uid"}}, {"metadata": {}}, "junk"]
    first.page(CLUSTER, page)
    assert first.take() == (set(), {good})
