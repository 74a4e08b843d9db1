"""kopf's settings as the operator configures them."""

from __future__ import annotations

import kopf

from controller.handlers import configure
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
