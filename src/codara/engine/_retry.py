"""Retry with exponential backoff for steps."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failing step is tried again.

    An exception with ``non_retryable = True`` (every Codara user error, for one) is never
    retried. Waits grow by ``backoff`` from ``initial_delay`` up to ``max_delay`` seconds,
    with up to 10% random jitter so that many runs do not retry in lock step.
    """

    max_attempts: int = 3
    initial_delay: float = 0.2
    backoff: float = 2.0
    max_delay: float = 30.0

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        if getattr(exc, "non_retryable", False):
            return False
        return attempt < self.max_attempts

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.initial_delay * self.backoff ** (attempt - 1))
        return base * (1 + 0.1 * random.random())  # noqa: S311 - jitter, not security


NO_RETRY = RetryPolicy(max_attempts=1)
