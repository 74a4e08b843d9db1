"""kopf's settings as the operator configures them."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._core.intents.causes import Activity

from controller.adapters.kube import GROUP, PLURAL, VERSION
from controller.handlers import WatchDecoder, build_registry, configure
from controller.runtime.app import App
from controller.settings import Settings


def test_kopf_workers_turn_over_faster_than_a_burst_arrives() -> None:
    """kopf keeps one worker per object until no event has come for `idle_timeout`, and runs at
    most `worker_limit` of them. With the default 5 s, 2,000 RelayJobs created at 300/s filled
    all 1,000 workers in about 3 s, and admission stopped for 2-3 s until the first went idle.
    The pool must take in new objects at least as fast as the API server can create them."""
    settings = kopf.OperatorSettings()
    configure(settings, Settings(redis_url="redis://x", database_url="postgresql://x"))
    limit, idle = settings.queueing.worker_limit, settings.queueing.idle_timeout
    assert limit is not None
    assert limit / idle >= 1000  # new objects per second


def test_no_diff_base_is_built_because_no_handler_needs_one() -> None:
    """kopf deep-copies every object into a diff base for on.create/on.update handlers. The
    operator registers none (that is what makes skipping it safe), and builds no copy."""
    registry = build_registry(cast(App, None))
    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    assert registry._watching.has_handlers(resource=resource)
    assert not registry._changing.has_handlers(resource=resource)
    assert not registry._spawning.has_handlers(resource=resource)
    settings = kopf.OperatorSettings()
    configure(settings, Settings(redis_url="redis://x", database_url="postgresql://x"))
    body = kopf.Body({"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"payload": {}}})
    storage = settings.persistence.diffbase_storage
    assert storage.fetch(body=body) is None
    assert storage.build(body=body) == {}


def test_the_startup_handler_binds_watch_decoding_to_the_apps_admissions() -> None:
    """kopf opens its watches after the startup handlers; the operator's startup binds kopf's watch
    decoding to the app's `Admissions.unchanged`, so that its own status echoes become bookmarks.
    Building the registry alone binds nothing (it needs no app yet)."""

    def unchanged(body: Mapping[str, Any]) -> bool:
        return False

    app = SimpleNamespace(
        settings=Settings(redis_url="redis://x", database_url="postgresql://x"),
        admissions=SimpleNamespace(unchanged=unchanged),
    )
    registry = build_registry(cast(App, app))
    (startup,) = registry._activities.get_handlers(activity=Activity.STARTUP)
    startup.fn(settings=kopf.OperatorSettings())  # type: ignore[call-arg]
    decoder = kopf_api.json  # type: ignore[attr-defined]
    assert isinstance(decoder, WatchDecoder)
    assert decoder.unchanged is unchanged
