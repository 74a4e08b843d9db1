"""The garbage collector, set for a process that keeps many small objects for its whole life.

Python's default collects the youngest generation every 700 new containers, and each full
collection walks every object alive: in the worker's hot path (a row, a task and a status
document per job) that cost about a quarter of the operator's CPU. Objects built during
start-up (modules, kopf's registry, pools) are frozen out of collections, and collections come
less often; reference counting still frees everything that is not in a cycle at once.
"""

from __future__ import annotations

import gc

YOUNG = 50_000
OLDER = 20


def keep_startup_objects() -> None:
    """Call once start-up has built what the process keeps until it exits."""
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)
