"""A step's name with its options (:class:`Step`), kept apart from the context's code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codara.engine._retry import RetryPolicy

__all__ = ["Step"]


@dataclass(frozen=True, slots=True)
class Step:
    """A step's name with its options: ``await ctx.step(Step("charge", timeout=10), fn, x)``.

    ``retry`` replaces the app's retry policy; ``timeout`` bounds each attempt of an async
    function, in seconds (a sync function runs on the loop and cannot be interrupted);
    ``result_type`` is the type the journaled result is validated into on replay, for a
    function whose return type is not declared (a lambda, a ``functools.partial`` of an
    unannotated function).
    """

    name: str
    retry: RetryPolicy | None = None
    timeout: float | None = None
    result_type: Any = None


_PLAIN_STEPS: dict[str, Step] = {}


def _plain_step(name: str) -> Step:
    """``Step(name)`` with no options, made once per name (names repeat across runs)."""
    step = Step(name)
    if len(_PLAIN_STEPS) < 10_000:
        _PLAIN_STEPS[name] = step
    return step
