"""kopf's settings as the operator configures them."""

from __future__ import annotations

from typing import cast

import kopf

from controller.adapters.kube import GROUP, PLURAL, VERSION
from controller.handlers import build_registry, configure
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
