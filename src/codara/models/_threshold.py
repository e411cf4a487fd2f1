"""Choosing the confidence above which a classifier's answers go out without a person."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from codara.metrics import wilson

#: What :func:`pick_threshold` returns when no threshold reaches the target: automate nothing.
NEVER = math.nextafter(1.0, 2.0)


def pick_threshold(
    confidences: Sequence[float] | npt.ArrayLike,
    correct: Sequence[bool] | npt.ArrayLike,
    target_precision: float,
    *,
    confidence: float | None = None,
) -> float:
    """The lowest confidence threshold whose automatic decisions reach ``target_precision``.

    A prediction is decided automatically when its confidence is ``>= threshold``; among
    those, the fraction that is ``correct`` must be at least ``target_precision`` on this
    tuning data. With ``confidence`` (e.g. 0.95) it is the lower end of that fraction's
    two-sided Wilson interval at that confidence (:func:`codara.metrics.wilson`) that must
    reach the target, not the fraction itself: a threshold that is right 20 times out of 20
    has not shown 98% precision. The lowest such threshold automates the most. When none
    reaches the target (or there is no data) it returns :data:`NEVER`, a value above 1.0
    that automates nothing.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences but {ok.size} correctness flags")
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if confidence is not None and not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if conf.size and not (np.isfinite(conf).all() and conf.min() >= 0.0 and conf.max() <= 1.0):
        raise ValueError("confidences must be probabilities in [0, 1]")
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    hits = np.cumsum(ok)
    # Every item tied at a confidence is decided together: look only at the last of each tie.
    last_of_tie = np.append(conf[1:] != conf[:-1], True) if conf.size else np.zeros(0, bool)
    counts = np.arange(1, conf.size + 1)
    meets = last_of_tie & (hits / counts >= target_precision)
    if confidence is not None:  # Wilson's interval holds the point: test only where it meets
        for i in np.flatnonzero(meets):
            low = wilson(int(hits[i]), int(counts[i]), confidence=confidence).low
            meets[i] = low >= target_precision
    if not meets.any():
        return NEVER
    return float(conf[np.flatnonzero(meets)[-1]])
