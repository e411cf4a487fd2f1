"""Intervals of proportions and the verdict a gate takes from them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

__all__ = ["Interval", "Verdict", "verdict", "weighted_proportion", "wilson"]


@dataclass(frozen=True, slots=True)
class Interval:
    """A proportion's estimate and its two-sided interval at ``confidence``; ``n`` is the
    number of cases (for a weighted estimate, Kish's effective number)."""

    point: float
    low: float
    high: float
    n: float
    confidence: float
    method: str


def _z(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), not {confidence!r}")
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def _wilson(p: float, n: float, confidence: float, method: str) -> Interval:
    z = _z(confidence)
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact at the edges: a rounding error must not put 0/n's lower bound below 0
    low = 0.0 if p == 0 else max(0.0, centre - half)
    high = 1.0 if p == 1 else min(1.0, centre + half)
    return Interval(p, low, high, n, confidence, method)


def wilson(successes: int, n: int, *, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of ``successes`` out of ``n``."""
    if n <= 0:
        raise ValueError("a proportion needs at least one case")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    return _wilson(successes / n, n, confidence, "wilson")


def weighted_proportion(
    cases: Iterable[tuple[bool, float]], *, confidence: float = 0.95
) -> Interval:
    """A proportion from cases ``(success, sampling_probability)``: each weighs
    ``1 / probability`` (Hájek's estimator), and the interval is Wilson's over Kish's
    effective sample size ``(Σw)² / Σw²``. Cases reviewed because they were uncertain
    (probability 1 by construction, not by sampling) belong in another estimate."""
    total = hits = squares = 0.0
    for success, probability in cases:
        if not 0 < probability <= 1:
            raise ValueError(f"a sampling probability must be in (0, 1], not {probability!r}")
        weight = 1 / probability
        total += weight
        squares += weight * weight
        hits += weight if success else 0.0
    if total == 0:
        raise ValueError("a proportion needs at least one case")
    n_eff = total * total / squares
    return _wilson(hits / total, n_eff, confidence, "wilson, Kish effective n, IPW")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``pass``, ``fail`` or ``not enough evidence``, and why, in words."""

    outcome: Literal["pass", "fail", "not enough evidence"]
    reason: str


def verdict(
    interval: Interval,
    target: float,
    *,
    at_least: bool = True,
    min_cases: int = 0,
    judged: int | None = None,
) -> Verdict:
    """Compare ``interval`` with ``target`` (``at_least``: the proportion must be at least
    the target; else at most). Pass only when the whole interval is on the right side,
    fail only when all of it is on the wrong side; between, or with fewer than
    ``min_cases`` judged cases (``judged``, default the interval's n), not enough evidence."""
    judged_n = interval.n if judged is None else judged
    pct = f"{interval.confidence:.0%}"
    shown = f"{interval.point:.2%} [{interval.low:.2%}, {interval.high:.2%}] ({pct})"
    if judged_n < min_cases:
        why = f"{judged_n:g} judged case(s), {min_cases} needed; so far {shown}"
        return Verdict("not enough evidence", why)
    word = "at least" if at_least else "at most"
    if at_least:
        settled_pass, settled_fail = interval.low >= target, interval.high < target
        side = interval.low if settled_pass else interval.high
    else:
        settled_pass, settled_fail = interval.high <= target, interval.low > target
        side = interval.high if settled_pass else interval.low
    if settled_pass:
        return Verdict("pass", f"{shown}: its bound {side:.2%} is {word} {target:.2%}")
    if settled_fail:
        return Verdict("fail", f"{shown}: even its bound {side:.2%} misses {word} {target:.2%}")
    return Verdict("not enough evidence", f"{shown} spans the target {target:.2%}")
