"""Running the operator's top coroutine on the event loop its settings name."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], event_loop: str = "uvloop") -> T:
    """`asyncio.run(main)` on uvloop's loop, or on the standard library's with `event_loop="asyncio"`
    (settings.event_loop). Raises whatever `main` raises."""
    factory = uvloop.new_event_loop if event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
