"""The ready-queue score: higher priority first, then admission order (FIFO within a priority).

Redis sorted-set scores are doubles, exact for integers below 2**53. The admission sequence gets
the low 45 bits (35 trillion jobs) and the inverted priority (0..200) the bits above, so the
score stays an exact integer and ZPOPMIN yields the right job without a tie-break on member.
"""

from __future__ import annotations

SEQ_BITS = 45
MAX_SEQ = (1 << SEQ_BITS) - 1
MIN_PRIORITY, MAX_PRIORITY = -100, 100


def ready_score(priority: int, seq: int) -> int:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority {priority} outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence {seq} outside 0..{MAX_SEQ}")
    return ((MAX_PRIORITY - priority) << SEQ_BITS) | seq
