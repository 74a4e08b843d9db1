"""Retry delays: exponential with full jitter, capped, and never earlier than a server's Retry-After
(which is capped too)."""

from __future__ import annotations

import random
from collections.abc import Callable

from controller.model.spec import Backoff


def retry_delay(
    backoff: Backoff,
    retries_so_far: int,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after `retries_so_far` earlier retries.

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads a burst of
    failures over the whole window instead of re-synchronising them at its end.
    """
    ceiling = min(backoff.max_seconds, backoff.initial_seconds * backoff.multiplier**retries_so_far)
    delay = ceiling * rand() if backoff.jitter else ceiling
    if retry_after is not None:
        # A target asking for days is not a plan the job signed up for: `maxSeconds` bounds every wait.
        delay = max(delay, min(retry_after, backoff.max_seconds))
    return delay
