"""How many Kubernetes Events may be posted, and which kind gives way first.

A token bucket refilled at `rate` per second, holding at most `max(1, rate)`. Warnings (a job
retrying, dead-lettered, rejected) may spend every token; Normal events (completed, re-driven)
only the tokens above a reserve of half the bucket. A burst of completions therefore cannot spend
the budget a dead-letter needs: the reserve is left for warnings, and Normal events are the ones
dropped. Below one Event per second the bucket holds one token and both kinds take turns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EventBudget:
    rate: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, now: float) -> EventBudget:
        return cls(rate=rate, tokens=max(1.0, rate), stamp=now)

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def take(self, now: float, warning: bool) -> bool:
        """Spend a token on one Event at `now` (monotonic seconds); False means drop it."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        reserve = 0.0 if warning else (self.capacity - 1) / 2
        if self.tokens >= 1 + reserve:
            self.tokens -= 1
            return True
        return False
