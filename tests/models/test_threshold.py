"""Choosing the auto-answer threshold: on the precision itself, or on its Wilson lower bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from codara.metrics import wilson
from codara.models import NEVER, pick_threshold

# z for a two-sided 95% interval, squared: a run of n correct answers has a Wilson lower
# bound of n / (n + Z2), the formula the hand-worked cases below use.
Z2 = 1.959964**2


def test_pick_threshold_examples() -> None:
    conf = [0.99, 0.95, 0.9, 0.8, 0.6, 0.5]
    assert pick_threshold(conf, [True] * 6, 0.98) == 0.5  # all correct: automate all
    assert pick_threshold(conf, [False] * 6, 0.5) == NEVER
    assert NEVER > 1.0
    assert pick_threshold([], [], 0.9) == NEVER
    # 3/3 correct down to 0.9, then 3/4, 4/5, 4/6.
    correct = [True, True, True, False, True, False]
    assert pick_threshold(conf, correct, 1.0) == 0.9
    assert pick_threshold(conf, correct, 0.8) == 0.6
    assert pick_threshold(conf, correct, 0.75) == 0.6
    assert pick_threshold(conf, correct, 0.6) == 0.5
    # Ties are decided together: 0.9 covers both items at 0.9, one of them wrong.
    assert pick_threshold([0.99, 0.9, 0.9], [True, True, False], 0.9) == 0.99
    with pytest.raises(ValueError, match="3 confidences but 2"):
        pick_threshold([0.1, 0.2, 0.3], [True, False], 0.9)
    with pytest.raises(ValueError, match="target_precision"):
        pick_threshold([0.5], [True], 0.0)
    with pytest.raises(ValueError, match="probabilities"):
        pick_threshold([1.5], [True], 0.9)


def _precision_at(conf: np.ndarray, ok: np.ndarray, threshold: float) -> float:
    chosen = conf >= threshold
    return float(ok[chosen].sum() / chosen.sum())


@given(
    st.lists(
        st.tuples(st.sampled_from([i / 20 for i in range(21)]), st.booleans()),
        max_size=60,
    ),
    st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.98, 1.0]),
)
def test_pick_threshold_is_the_lowest_that_reaches_the_target(
    items: list[tuple[float, bool]], target: float
) -> None:
    conf = np.array([c for c, _ in items], dtype=np.float64)
    ok = np.array([k for _, k in items], dtype=bool)
    threshold = pick_threshold(conf, ok, target)
    candidates = sorted(set(conf.tolist()))
    reaching = [c for c in candidates if _precision_at(conf, ok, c) >= target]
    if threshold == NEVER:
        assert reaching == []
    else:
        assert threshold in candidates
        assert _precision_at(conf, ok, threshold) >= target
        assert threshold == min(reaching)


def test_wilson_threshold_needs_enough_evidence_hand_worked() -> None:
    conf = [1 - i / 100 for i in range(25)]  # 1.00, 0.99, ... 0.76
    right = [True] * 20 + [False] * 5  # the last five wrong
    # n correct of n has a lower bound n / (n + 3.84): 20 / 23.84 = 0.839. With one wrong
    # more, 20 of 21 is [0.773, 0.992]; 20 of 25 is 0.8 exactly, and its bound 0.609.
    assert wilson(20, 20).low == pytest.approx(20 / (20 + Z2)) == pytest.approx(0.839, abs=5e-4)
    assert wilson(20, 21).low == pytest.approx(0.773, abs=5e-4)
    assert pick_threshold(conf, right, 0.8, confidence=0.95) == conf[19]
    assert pick_threshold(conf, right, 0.8) == conf[24]  # the point: all 25, 20 of them right
    # 0.85 needs n / (n + 3.84) >= 0.85, n >= 22: twenty right answers are not enough evidence.
    assert pick_threshold(conf, right, 0.85, confidence=0.95) == NEVER
    assert pick_threshold(conf, right, 0.85) == conf[22]  # 20 of 23 = 0.870; of 24, 0.833
    # a looser interval (80%, z = 1.2816) asks for less: 20 / (20 + 1.6424) = 0.924.
    assert pick_threshold(conf, right, 0.9, confidence=0.8) == conf[19]
    assert pick_threshold(conf, right, 0.93, confidence=0.8) == NEVER


def test_wilson_threshold_with_a_mistake_hand_worked() -> None:
    conf = [1 - i / 100 for i in range(50)]  # 1.00 ... 0.51
    right = [True] * 50
    right[40] = False  # the 41st, at 0.60
    # 40 of 40: 40 / 43.84 = 0.912 >= 0.9. 40 of 41: p = 0.976, Wilson [0.874, 0.996]; 49 of
    # 50: [0.895, 0.996]: neither lower end reaches 0.9, although both points do.
    assert wilson(40, 41).low == pytest.approx(0.874, abs=5e-4)
    assert wilson(49, 50).low == pytest.approx(0.895, abs=5e-4)
    assert pick_threshold(conf, right, 0.9, confidence=0.95) == conf[39]
    assert pick_threshold(conf, right, 0.9) == conf[49]
    assert pick_threshold(conf, right, 0.85, confidence=0.95) == conf[49]


def test_wilson_threshold_refuses_a_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        pick_threshold([0.5], [True], 0.9, confidence=1.0)
    with pytest.raises(ValueError, match="confidence must be in"):
        pick_threshold([0.5], [True], 0.9, confidence=0.2)


def _wilson_low_at(conf: np.ndarray, ok: np.ndarray, threshold: float) -> float:
    chosen = conf >= threshold
    return wilson(int(ok[chosen].sum()), int(chosen.sum())).low


@given(
    st.lists(
        st.tuples(st.sampled_from([i / 20 for i in range(21)]), st.booleans()),
        max_size=80,
    ),
    st.sampled_from([0.5, 0.7, 0.8, 0.9]),
)
def test_wilson_threshold_is_the_lowest_whose_bound_reaches_the_target(
    items: list[tuple[float, bool]], target: float
) -> None:
    conf = np.array([c for c, _ in items], dtype=np.float64)
    ok = np.array([k for _, k in items], dtype=bool)
    threshold = pick_threshold(conf, ok, target, confidence=0.95)
    candidates = sorted(set(conf.tolist()))
    reaching = [c for c in candidates if _wilson_low_at(conf, ok, c) >= target]
    if threshold == NEVER:
        assert reaching == []
    else:
        assert threshold == min(reaching)
        assert threshold >= pick_threshold(conf, ok, target)  # never looser than the point
