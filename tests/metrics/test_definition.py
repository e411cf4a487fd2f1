"""The metric declared in codara.toml: loading, versions, bad config, and its figures on
cases worked out by hand (weights, Kish's n, Wilson's bounds)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from codara.errors import ConfigError
from codara.metrics import evaluate, load_metric, mean_interval, quantile_interval

SENSITIVE = ["compromised_card", "card_payment_not_recognised"]

TABLE: dict[str, Any] = {
    "triage": {
        "metric": {
            "name": "answered automatically and correctly",
            "step": "reply",
            "label_field": "intent",
            "success": "automated && correct",
            "target": 0.6,
            "min_cases": 300,
            "guardrails": [
                {
                    "name": "wrong automatic answers",
                    "over": "automated",
                    "counts": "!correct",
                    "at_most": 0.15,
                },
                {
                    "name": "sensitive answered automatically",
                    "counts": f"automated && label in {SENSITIVE}",
                    "max_count": 0,
                },
            ],
        }
    }
}


def table(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TABLE)
    raw["triage"]["metric"].update(changes)
    return raw


def case(key: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"key": str(key), "automated": False, "correct": None, "label": None,
                            "judged": False, "probability": 1.0}  # fmt: skip
    return {**base, **fields}


def worked_cases() -> list[dict[str, Any]]:
    """1,000 tickets: 300 sent to people (250 approved, 50 corrected), 700 answered
    automatically, of which a 10% audit judged 70 (68 right, 2 wrong)."""
    cases = [case(i, correct=True, label="a", judged=True) for i in range(250)]
    cases += [case(250 + i, correct=False, label="b", judged=True) for i in range(50)]
    audited = [(True, "a")] * 68 + [(False, "b")] * 2
    for i, (right, label) in enumerate(audited):
        cases.append(case(300 + i, automated=True, correct=right, label=label, judged=True,
                          probability=0.1, sampled=True))  # fmt: skip
    cases += [case(370 + i, automated=True) for i in range(630)]  # nobody audited them
    return cases


def test_the_metric_loads_with_a_stable_version() -> None:
    definition = load_metric(TABLE, "triage")
    assert definition is not None
    assert definition.step == "reply"
    assert definition.version == load_metric(copy.deepcopy(TABLE), "triage").version  # type: ignore[union-attr]
    changed = load_metric(table(target=0.7), "triage")
    assert changed is not None
    assert changed.version != definition.version
    assert load_metric({"triage": {}}, "triage") is None


def test_the_worked_case() -> None:
    definition = load_metric(TABLE, "triage")
    assert definition is not None
    report = evaluate(definition, worked_cases())
    metric = report.metric
    # The 300 taken over by people are not automatic successes, whatever their label:
    # known without a verdict, they weigh 1. The 70 audited stand for 700 (weight 10).
    # The 630 unaudited automatic answers stand for nothing. Point: 680 / 1000 = 68%.
    assert metric.interval is not None
    assert metric.interval.point == pytest.approx(0.68)
    # Kish's n: (300 + 70·10)² / (300 + 70·10²) = 1,000,000 / 7,300
    assert metric.interval.n == pytest.approx(1e6 / 7300)
    assert metric.interval.low == pytest.approx(0.597891, abs=1e-6)
    assert metric.interval.high == pytest.approx(0.752289, abs=1e-6)
    assert metric.judged == 70  # the verdicts it needed: the audits, not the takeovers
    wrong, sensitive = report.guardrails
    assert wrong.interval is not None
    assert wrong.interval.point == pytest.approx(2 / 70)  # equal weights: plain 2 of 70
    assert wrong.interval.n == pytest.approx(70)
    assert wrong.interval.high == pytest.approx(0.098323, abs=1e-6)
    assert wrong.cases == 70
    assert sensitive.count == 0


def test_a_bound_short_of_the_target_is_not_a_pass() -> None:
    definition = load_metric(table(target=0.6, min_cases=60), "triage")
    assert definition is not None
    report = evaluate(definition, worked_cases())
    # 68% looks well above 60%, but the lower bound is 59.79%: not settled
    assert report.metric.verdict.outcome == "not enough evidence"
    assert report.outcome == "not enough evidence"
    assert "spans the target" in report.metric.verdict.reason


def test_too_few_judged_cases_give_no_verdict() -> None:
    definition = load_metric(table(target=0.5, min_cases=500), "triage")
    assert definition is not None
    report = evaluate(definition, worked_cases())
    assert report.metric.verdict.outcome == "not enough evidence"
    assert "70 judged case(s), 500 needed" in report.metric.verdict.reason


def test_pass_and_fail() -> None:
    passing = load_metric(table(target=0.55, min_cases=60), "triage")
    assert passing is not None
    report = evaluate(passing, worked_cases())
    assert report.metric.verdict.outcome == "pass"
    assert report.outcome == "pass"
    failing = load_metric(table(target=0.9, min_cases=60), "triage")
    assert failing is not None
    assert evaluate(failing, worked_cases()).outcome == "fail"  # upper bound 75.2% < 90%


def test_one_sensitive_ticket_answered_automatically_fails_the_count() -> None:
    definition = load_metric(table(target=0.55, min_cases=60), "triage")
    assert definition is not None
    cases = worked_cases()
    cases[300]["label"] = "compromised_card"  # an audited automatic answer, truly sensitive
    cases[300]["correct"] = False
    report = evaluate(definition, cases)
    sensitive = report.guardrails[1]
    assert sensitive.count == 1
    assert sensitive.verdict.outcome == "fail"
    assert report.outcome == "fail"


def test_mean_and_quantile_worked() -> None:
    mean = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959964 * math.sqrt(5 / 3) / 2  # s² = 5/3, n = 4
    assert mean.point == 2.5
    assert mean.low == pytest.approx(2.5 - half, abs=1e-5)
    assert mean.high == pytest.approx(2.5 + half, abs=1e-5)
    p95 = quantile_interval([float(v) for v in range(1, 101)], 0.95)
    # nearest rank ⌈95⌉ = 95; ranks 95 ± 1.96·√(100·0.95·0.05) = 95 ± 4.27 → 90 and 100
    assert (p95.point, p95.low, p95.high) == (95.0, 90.0, 100.0)


def test_mean_and_quantile_guardrails() -> None:
    guardrails = [
        {"name": "cost per ticket", "mean": "cost_usd", "at_most": 0.002, "unit": "USD"},
        {"name": "p95 time", "value": "latency_s", "quantile": 0.95, "at_most": 2.0, "unit": "s"},
    ]
    definition = load_metric(table(target=0.55, min_cases=10, guardrails=guardrails), "triage")
    assert definition is not None
    cases = [case(i, cost_usd=0.001, latency_s=0.01 * (i + 1)) for i in range(100)]
    cost, p95 = evaluate(definition, cases).guardrails
    assert cost.verdict.outcome == "pass"
    assert p95.interval is not None
    assert p95.interval.point == pytest.approx(0.95)
    assert p95.verdict.outcome == "pass"
    assert "USD" in cost.verdict.reason


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"success": "automated &&"}, ["success", "not valid CEL"]),
        ({"success": "automatd && correct"}, ["cannot be evaluated", "automated, outcome"]),
        ({"success": "cost_usd"}, ["success", "must give true or false"]),
        ({"target": 1.5}, ["target", "less than or equal to 1"]),
        ({"min_cases": 0}, ["min_cases", "greater than or equal to 1"]),
        ({"colour": "red"}, ["colour", "Extra inputs are not permitted"]),
        (
            {
                "guardrails": [
                    {"name": "x", "counts": "!correct", "mean": "cost_usd", "at_most": 0.1}
                ]
            },
            ["exactly one of counts"],
        ),
        (
            {"guardrails": [{"name": "x", "counts": "!correct", "at_most": 2}]},
            ["between 0 and 1"],
        ),
        (
            {"guardrails": [{"name": "x", "mean": "cost_usd", "max_count": 2}]},
            ["max_count is a number of cases"],
        ),
        (
            {"guardrails": [{"name": "x", "mean": "label", "at_most": 2}]},
            ["guardrail 'x'", "must give a number"],
        ),
        (
            {"guardrails": [{"name": "x", "mean": "cost_usd", "at_most": 1}] * 2},
            ["names must differ"],
        ),
    ],
)
def test_a_broken_metric_stops_at_load(changes: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_metric(table(**changes), "triage")
    message = str(caught.value)
    assert "[workflows.triage.metric]" in message
    for word in words:
        assert word in message, message


def test_a_metric_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        load_metric({"triage": {"metric": "80%"}}, "triage")
