"""Metrics: the statistics a gate decides on (docs/metrics.md).

:func:`wilson` is the interval of a proportion (Wilson score, not the normal
approximation, which misbehaves near 0 and 1 and for small samples);
:func:`weighted_proportion` estimates a proportion from cases sampled with known
probabilities (inverse-probability weights, Hájek's estimator) with a Wilson interval over
Kish's effective sample size; :func:`verdict` compares an interval's bound, never its point,
with a target, and says ``not enough evidence`` when the bound does not settle it or too few
cases were judged.
"""

from codara.metrics._stats import (
    Interval,
    Verdict,
    verdict,
    weighted_proportion,
    wilson,
)

__all__ = ["Interval", "Verdict", "verdict", "weighted_proportion", "wilson"]
