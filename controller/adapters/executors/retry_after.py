"""The `Retry-After` header of a target's answer, read as RFC 9110 §10.2.3 defines it and no looser.

A target is not trusted: its header may carry any bytes. Only delta-seconds in ASCII digits and an
HTTP-date count; anything else (`²`, Arabic-Indic digits, `-1`, `1e9`, `soon`) is ignored, so the
job's own backoff applies. The caller caps what is left by `backoff.maxSeconds`.
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC

# `re.ASCII` keeps `\d`-style classes out of it: the class is spelled out, and only these ten count.
_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31. Parsing no more than
# these digits keeps a 8 KiB header of nines from costing a big-integer conversion.
DELTA_SECONDS_LIMIT = 2**31
_DELTA_DIGITS = len(str(DELTA_SECONDS_LIMIT))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value, or None when it is absent or not one of its forms."""
    if value is None:
        return None
    # Optional whitespace around a field value is only space and tab (RFC 9110 §5.5).
    value = value.strip(" \t")
    if _DELTA_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        if len(digits) > _DELTA_DIGITS:
            return float(DELTA_SECONDS_LIMIT)
        return float(min(int(digits), DELTA_SECONDS_LIMIT))
    if not value.isascii():
        # The date parser reads Unicode digits as numbers too.
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        # The asctime form carries no zone; every HTTP-date is GMT.
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return min(max(0.0, when.timestamp() - current), float(DELTA_SECONDS_LIMIT))
