"""Intervals of proportions and the verdict a gate takes from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

__all__ = [
    "Interval",
    "Verdict",
    "mean_interval",
    "percent",
    "quantile_interval",
    "verdict",
    "weighted_proportion",
    "wilson",
]


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


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with a normal-approximation interval (mean ± z·s/√n, with the
    sample standard deviation s): sound for the many cases a gate asks for (the central
    limit theorem), rough for a handful, which ``min_cases`` keeps from a verdict."""
    n = len(values)
    if n == 0:
        raise ValueError("a mean needs at least one case")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, confidence, "mean, normal approximation")
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = _z(confidence) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n, confidence, "mean, normal approximation")


def quantile_interval(values: Sequence[float], q: float, *, confidence: float = 0.95) -> Interval:
    """The ``q`` quantile (nearest rank) with a distribution-free interval between two order
    statistics: the ranks ``n·q ± z·√(n·q·(1-q))`` (the normal approximation to the
    binomial count of values below the true quantile), widened outward to whole ranks."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile must be strictly between 0 and 1, not {q!r}")
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("a quantile needs at least one case")
    point = ordered[max(0, math.ceil(n * q) - 1)]
    spread = _z(confidence) * math.sqrt(n * q * (1 - q))
    lo_rank, hi_rank = math.floor(n * q - spread), math.ceil(n * q + spread)
    low = ordered[lo_rank - 1] if lo_rank >= 1 else -math.inf
    high = ordered[hi_rank - 1] if hi_rank <= n else math.inf
    return Interval(point, low, high, n, confidence, f"p{q * 100:g}, order statistics")


def percent(value: float) -> str:
    return f"{value:.2%}"


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
    show: Callable[[float], str] = percent,
) -> Verdict:
    """Compare ``interval`` with ``target`` (``at_least``: the proportion must be at least
    the target; else at most). Pass only when the whole interval is on the right side,
    fail only when all of it is on the wrong side; between, or with fewer than
    ``min_cases`` judged cases (``judged``, default the interval's n), not enough evidence.
    ``show`` writes a value (a percentage by default; a cost or a duration otherwise)."""
    judged_n = interval.n if judged is None else judged
    pct = f"{interval.confidence:.0%}"
    shown = f"{show(interval.point)} [{show(interval.low)}, {show(interval.high)}] ({pct})"
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
        return Verdict("pass", f"{shown}: its bound {show(side)} is {word} {show(target)}")
    if settled_fail:
        return Verdict("fail", f"{shown}: even its bound {show(side)} misses {word} {show(target)}")
    return Verdict("not enough evidence", f"{shown} spans the target {show(target)}")
