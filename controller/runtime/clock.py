"""Wall-clock time in the unit Redis scores and lease deadlines use: milliseconds since the epoch."""

from __future__ import annotations

import time


def epoch_ms(seconds: float | None = None) -> int:
    """`seconds` since the epoch (now when None) as whole milliseconds."""
    return int((time.time() if seconds is None else seconds) * 1000)
