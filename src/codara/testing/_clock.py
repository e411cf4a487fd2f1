"""A clock that tests move by hand, for timers, deadlines and leases."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Pass as ``App(clock=...)``; ``advance`` moves time forward, nothing else does."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
