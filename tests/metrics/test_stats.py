"""The statistics a gate decides on, against cases worked by hand.

Wilson score interval, for k successes in n at z (1.959964 for 95%):
    centre = (p + z²/2n) / (1 + z²/n),  half = z √(p(1-p)/n + z²/4n²) / (1 + z²/n)
"""

from __future__ import annotations

import math

import pytest

from codara.metrics import verdict, weighted_proportion, wilson

Z = 1.959963984540054


def test_wilson_for_8_of_10_is_the_textbook_interval() -> None:
    # p = 0.8, z² = 3.841459, z²/n = 0.3841459; centre = 0.992073 / 1.384146 = 0.716738;
    # half = 1.959964 * sqrt(0.016 + 0.0096036) / 1.384146 = 0.226580
    ci = wilson(8, 10)
    assert ci.point == 0.8
    assert ci.low == pytest.approx(0.49016, abs=1e-5)
    assert ci.high == pytest.approx(0.94332, abs=1e-5)
    assert (ci.n, ci.confidence, ci.method) == (10, 0.95, "wilson")


def test_wilson_at_the_edges_is_exact() -> None:
    # 0 of 10: the upper bound is z²/(n + z²) = 3.84146 / 13.84146
    none = wilson(0, 10)
    assert (none.low, none.point) == (0.0, 0.0)
    assert none.high == pytest.approx(Z**2 / (10 + Z**2), abs=1e-12)
    # 10 of 10: the lower bound is n/(n + z²)
    every = wilson(10, 10)
    assert every.high == 1.0
    assert every.low == pytest.approx(10 / (10 + Z**2), abs=1e-12)


def test_wilson_for_half_of_100_and_a_99_percent_level() -> None:
    ci = wilson(50, 100)
    assert ci.low == pytest.approx(0.40383, abs=1e-5)
    assert ci.high == pytest.approx(0.59617, abs=1e-5)
    wider = wilson(50, 100, confidence=0.99)
    assert wider.low < ci.low
    assert wider.high > ci.high


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_wilson_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError, match=r"proportion|successes"):
        wilson(k, n)


def test_a_weighted_proportion_with_equal_weights_is_the_plain_one() -> None:
    cases = [(True, 0.05)] * 8 + [(False, 0.05)] * 2
    ci = weighted_proportion(cases)
    plain = wilson(8, 10)
    assert ci.point == pytest.approx(0.8)
    assert ci.n == pytest.approx(10)
    assert ci.low == pytest.approx(plain.low)
    assert ci.high == pytest.approx(plain.high)


def test_a_weighted_proportion_weighs_by_the_inverse_probability() -> None:
    # two strata: 1 case sampled at 0.5 (wrong, weight 2), 3 at 0.1 (right, weight 10 each)
    # point = 30 / 32 = 0.9375; Kish n = 32² / (4 + 300) = 3.3684
    ci = weighted_proportion([(False, 0.5), (True, 0.1), (True, 0.1), (True, 0.1)])
    assert ci.point == pytest.approx(30 / 32)
    assert ci.n == pytest.approx(1024 / 304)
    z2 = Z**2
    n = 1024 / 304
    p = 30 / 32
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    assert ci.low == pytest.approx(centre - half)
    assert ci.high == pytest.approx(centre + half)
    assert "Kish" in ci.method


@pytest.mark.parametrize("probability", [0.0, -0.1, 1.5])
def test_a_sampling_probability_outside_0_1_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="sampling probability"):
        weighted_proportion([(True, probability)])


def test_the_verdict_reads_the_bound_not_the_point() -> None:
    # 8/10 = 80%, above a 70% target, but its lower bound is 49%: not enough evidence
    assert verdict(wilson(8, 10), 0.70).outcome == "not enough evidence"
    # 800/1000: lower bound 77.4% > 70%: pass
    passed = verdict(wilson(800, 1000), 0.70)
    assert passed.outcome == "pass"
    assert "77." in passed.reason
    # 600/1000: upper bound 63.0% < 70%: fail
    assert verdict(wilson(600, 1000), 0.70).outcome == "fail"


def test_a_guardrail_is_an_upper_limit() -> None:
    # wrong answers at most 1.5%: 5 of 1000 (upper bound 1.17%) passes, 40 of 1000 fails
    assert verdict(wilson(5, 1000), 0.015, at_least=False).outcome == "pass"
    assert verdict(wilson(40, 1000), 0.015, at_least=False).outcome == "fail"
    # 12 of 1000: 1.2%, but the upper bound is 2.09%: not settled
    assert verdict(wilson(12, 1000), 0.015, at_least=False).outcome == "not enough evidence"


def test_too_few_judged_cases_is_never_a_verdict() -> None:
    ci = wilson(100, 100)  # a perfect score over 100 cases
    too_few = verdict(ci, 0.5, min_cases=500)
    assert too_few.outcome == "not enough evidence"
    assert "100 judged case(s), 500 needed" in too_few.reason
