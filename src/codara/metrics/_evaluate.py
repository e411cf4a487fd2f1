"""A metric definition applied to cases: each figure with its interval and verdict.

A case is a mapping with the fields of :data:`~codara.metrics._definition.CASE_FIELDS`, plus
``key`` and ``probability``: the chance the case had of being judged (an audited automatic
answer: the sampling rate; anything else: 1). Where a figure depends on a verdict, each
decided case weighs ``1 / probability`` (Hájek's estimator, Wilson's interval over Kish's
effective n), so a 5% audit of automatic answers stands for all of them, and cases a person
reviewed because they were uncertain are never mixed in as if they were a sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from codara.metrics._definition import Expression, Guardrail, MetricDefinition
from codara.metrics._stats import (
    Interval,
    Verdict,
    mean_interval,
    percent,
    quantile_interval,
    verdict,
    weighted_proportion,
)

__all__ = ["Figure", "MetricReport", "evaluate"]

Outcome = Literal["pass", "fail", "not enough evidence"]


@dataclass(frozen=True)
class Figure:
    """One figure of a report: the metric itself or a guardrail."""

    name: str
    kind: Literal["metric", "share", "count", "mean", "quantile"]
    limit: str
    """In words: ``at least 80.00%``, ``at most 0.0020 USD``, ``at most 0 cases``."""
    interval: Interval | None
    cases: int
    """Cases the figure could be computed on."""
    judged: int
    """Of those, the cases whose verdict (a person's, or a dataset's label) the figure
    needed and had: the evidence ``min_cases`` asks for."""
    verdict: Verdict
    count: int | None = None
    """For a count guardrail: the judged cases where it held."""

    def as_dict(self) -> dict[str, Any]:
        iv = self.interval
        return {
            "name": self.name,
            "kind": self.kind,
            "limit": self.limit,
            "estimate": None if iv is None else iv.point,
            "low": None if iv is None else iv.low,
            "high": None if iv is None else iv.high,
            "effective_n": None if iv is None else iv.n,
            "confidence": None if iv is None else iv.confidence,
            "method": None if iv is None else iv.method,
            "cases": self.cases,
            "judged": self.judged,
            "count": self.count,
            "verdict": self.verdict.outcome,
            "reason": self.verdict.reason,
        }


@dataclass(frozen=True)
class MetricReport:
    definition: MetricDefinition
    metric: Figure
    guardrails: list[Figure]
    cases: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        """pass when the metric and every guardrail pass; fail when any fails."""
        outcomes = [self.metric.verdict.outcome, *(g.verdict.outcome for g in self.guardrails)]
        if "fail" in outcomes:
            return "fail"
        if all(o == "pass" for o in outcomes):
            return "pass"
        return "not enough evidence"

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.definition.workflow,
            "metric": self.definition.name,
            "definition_version": self.definition.version,
            "outcome": self.outcome,
            "cases": self.cases,
            "figures": [self.metric.as_dict(), *(g.as_dict() for g in self.guardrails)],
            **self.extra,
        }


def _decide(expression: Expression, case: Mapping[str, Any]) -> tuple[bool, float, bool] | None:
    """(holds, probability, judged) of a case for a share, or None when it cannot say.

    What holds without the verdict (``automated && correct`` of an answer a person took
    over is false whatever the label) weighs 1: it is known for every case, and it is no
    evidence of the verdicts the figure is about (``judged`` is False). Only what needs the
    verdict takes the case's chance of having been judged, and counts as judged."""
    blind = expression.value(case, blind=True)
    if blind is not None:
        return bool(blind), 1.0, False
    if not case.get("judged"):
        return None  # e.g. an automatic answer nobody audited: it stands for nothing
    holds = expression.value(case)
    if holds is None:
        return None  # e.g. an automatic answer nobody audited: it stands for nothing
    probability = float(case.get("probability") or 1.0)
    if not 0 < probability <= 1:
        raise ValueError(f"case {case.get('key')!r}: probability {probability} not in (0, 1]")
    return bool(holds), probability, bool(case.get("judged"))


def _share(
    name: str,
    kind: Literal["metric", "share"],
    limit: tuple[str, float],
    decided: Sequence[tuple[bool, float, bool]],
    definition: MetricDefinition,
) -> Figure:
    side, target = limit
    words = f"{side.replace('_', ' ')} {percent(target)}"
    judged = sum(1 for _, _, j in decided if j)
    if not decided:
        why = f"no case decides it yet; {definition.min_cases} judged needed"
        return Figure(name, kind, words, None, 0, 0, Verdict("not enough evidence", why))
    interval = weighted_proportion(
        ((s, p) for s, p, _ in decided), confidence=definition.confidence
    )
    if all(p == 1.0 for _, p, _ in decided):  # no sampling weights: plain Wilson
        interval = Interval(
            interval.point, interval.low, interval.high, interval.n, interval.confidence,
            "wilson",
        )  # fmt: skip
    v = verdict(
        interval, target, at_least=side == "at_least", min_cases=definition.min_cases,
        judged=judged,
    )  # fmt: skip
    return Figure(name, kind, words, interval, len(decided), judged, v)


def _guardrail(g: Guardrail, cases: Sequence[Mapping[str, Any]], d: MetricDefinition) -> Figure:
    parts = g.compiled()
    over, measure = parts["over"], parts["measure"]
    chosen = [c for c in cases if over.value(c) is True]
    side, target = g.limit
    unit = f" {g.unit}" if g.unit else ""
    if g.kind in ("share", "count"):
        decided = [x for c in chosen if (x := _decide(measure, c)) is not None]
        if g.kind == "share":
            return _share(g.name, "share", (side, target), decided, d)
        seen = sum(1 for h, _, j in decided if h and j)
        judged = sum(1 for _, _, j in decided if j)
        limit = int(target)
        words = f"at most {limit} judged case(s)"
        if seen > limit:
            v = Verdict("fail", f"{seen} judged case(s) where it holds, {limit} allowed")
        elif judged < d.min_cases:
            v = Verdict("not enough evidence", f"{judged} judged case(s), {d.min_cases} needed")
        else:
            v = Verdict("pass", f"{seen} of {judged} judged case(s), {limit} allowed")
        return Figure(g.name, "count", words, None, len(decided), judged, v, count=seen)
    values = [n for c in chosen if (n := measure.value(c)) is not None]
    words = f"{side.replace('_', ' ')} {target:g}{unit}"
    if not values:
        v = Verdict("not enough evidence", "no case has a value yet")
        return Figure(g.name, g.kind, words, None, 0, 0, v)
    numbers = [float(x) for x in values]
    if g.kind == "mean":
        interval = mean_interval(numbers, confidence=d.confidence)
    else:
        assert g.quantile is not None
        interval = quantile_interval(numbers, g.quantile, confidence=d.confidence)
    v = verdict(
        interval, target, at_least=side == "at_least", min_cases=d.min_cases,
        judged=len(numbers), show=lambda x: f"{x:.4g}{unit}",
    )  # fmt: skip
    return Figure(g.name, g.kind, words, interval, len(numbers), len(numbers), v)


def evaluate(
    definition: MetricDefinition,
    cases: Iterable[Mapping[str, Any]],
    **extra: Any,
) -> MetricReport:
    """The metric and its guardrails over ``cases``, each with its interval and verdict."""
    rows = list(cases)
    parts = definition.compiled()
    over, success = parts["over"], parts["success"]
    decided = [
        x for case in rows if over.value(case) is True and (x := _decide(success, case)) is not None
    ]
    metric = _share(definition.name, "metric", ("at_least", definition.target), decided, definition)
    guardrails = [_guardrail(g, rows, definition) for g in definition.guardrails]
    return MetricReport(definition, metric, guardrails, len(rows), dict(extra))
