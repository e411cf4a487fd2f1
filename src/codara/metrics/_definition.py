"""The business metric a workflow declares up front: ``[workflows.NAME.metric]``.

The metric and each guardrail are CEL expressions over one *case* (a run, or a dataset
row), whose fields :data:`CASE_FIELDS` lists. An expression that needs a field the case
does not have (``correct`` of an answer nobody judged) gives no value: the case is left out
of that figure, never counted as a success or a failure. The definition's version is the
sha256 of its canonical JSON; a change is recorded (``_record.py``) and shown in reports.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal, Self

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from codara.errors import ConfigError

__all__ = [
    "CASE_FIELDS",
    "VERDICT_FIELDS",
    "Expression",
    "Guardrail",
    "MetricDefinition",
    "load_metric",
]

CASE_FIELDS: dict[str, str] = {
    "automated": "bool: the step went ahead on a policy's allow, no person deciding",
    "outcome": "string: allowed, denied, approved, edited, rejected, held, pending",
    "correct": "bool, or null until judged: the proposal matched its label",
    "label": "string, or null: the right answer (a reviewer's, an auditor's, a dataset's)",
    "predicted": "string, or null: what the workflow proposed (its label field)",
    "role": "string, or null: who was asked",
    "sampled": "bool: picked for an audit after the fact",
    "judged": "bool: a person or a dataset gave a verdict",
    "cost_usd": "double, or null: the run's model calls at the configured prices",
    "latency_s": "double, or null: from the run's start to its end",
    "error": "string, or null: how the run failed",
}
"""What a metric's expressions can read of a case, and what each is."""

_ENV = celpy.Environment()

_SAMPLE: dict[str, Any] = {
    "automated": True,
    "outcome": "allowed",
    "correct": True,
    "label": "x",
    "predicted": "x",
    "role": "support",
    "sampled": False,
    "judged": True,
    "cost_usd": 0.001,
    "latency_s": 0.5,
    "error": "",
}


VERDICT_FIELDS = ("correct", "label", "judged")
"""What only a verdict gives. An expression that still decides without them (``automated
&& correct`` of an answer a person took over) is known for every case."""


def activation(case: Mapping[str, Any], *, blind: bool = False) -> dict[str, Any]:
    """A case's fields as CEL values (None stays null); ``blind`` leaves out the verdict's
    fields, so that an expression reading them fails instead of reading null."""
    names = [n for n in CASE_FIELDS if not (blind and n in VERDICT_FIELDS)]
    return {name: json_to_cel(case.get(name)) for name in names}


def _cel_message(exc: BaseException) -> str:
    """celpy's message without the activation it dumps after it."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split(" (in activation", 1)[0]


class Expression:
    """One compiled CEL expression of a metric; ``kind`` is what it must give."""

    __slots__ = ("kind", "program", "text")

    def __init__(self, text: str, kind: Literal["bool", "number"], setting: str) -> None:
        self.text = text
        self.kind = kind
        try:
            self.program = _ENV.program(_ENV.compile(text))
        except Exception as exc:  # celpy's parse errors carry the position in their text
            raise ValueError(f"{setting} {json.dumps(text)} is not valid CEL: {exc}") from None
        result: object
        try:
            result = self.program.evaluate(activation(_SAMPLE))
        except Exception as exc:
            result = exc
        if isinstance(result, BaseException):
            known = ", ".join(CASE_FIELDS)
            raise ValueError(
                f"{setting} {json.dumps(text)} cannot be evaluated ({_cel_message(result)}); "
                f"a case has: {known}"
            )
        if kind == "bool" and not isinstance(result, celtypes.BoolType):
            raise ValueError(f"{setting} {json.dumps(text)} must give true or false")
        if kind == "number" and (
            isinstance(result, celtypes.BoolType)
            or not isinstance(result, (celtypes.IntType, celtypes.DoubleType))
        ):
            raise ValueError(f"{setting} {json.dumps(text)} must give a number")

    def value(self, case: Mapping[str, Any], *, blind: bool = False) -> bool | float | None:
        """The expression on ``case``, or None when the case cannot decide it (``blind``:
        without the verdict's fields)."""
        try:
            result = self.program.evaluate(activation(case, blind=blind))
        except Exception:  # a field it needs is missing or of the wrong type: no value
            return None
        if isinstance(result, CELEvalError):
            return None
        if isinstance(result, celtypes.BoolType):
            return bool(result) if self.kind == "bool" else None
        if self.kind == "number" and isinstance(result, (celtypes.IntType, celtypes.DoubleType)):
            number = float(result)
            return number if math.isfinite(number) else None
        return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Guardrail(_Strict):
    """A limit the workflow must keep while it meets its metric (``[[...guardrails]]``)."""

    name: str = Field(min_length=1, max_length=200)
    over: str = "true"
    """Which cases it looks at (CEL, true or false)."""
    counts: str | None = None
    """A proportion: the share of ``over`` cases where this holds (CEL, true or false)."""
    mean: str | None = None
    """A mean: of this number (CEL) over the ``over`` cases."""
    quantile: float | None = Field(default=None, gt=0, lt=1)
    value: str | None = None
    """With ``quantile``: that quantile of this number (CEL), e.g. p95 of latency_s."""
    at_most: float | None = None
    at_least: float | None = None
    max_count: int | None = Field(default=None, ge=0)
    """With ``counts``: no more than this many judged cases where it holds (e.g. 0)."""
    unit: str | None = Field(default=None, max_length=20)
    """How values are shown: ``USD``, ``s``; none for a proportion."""

    @model_validator(mode="after")
    def _one_measure(self) -> Self:
        measures = [k for k in ("counts", "mean", "value") if getattr(self, k) is not None]
        if len(measures) != 1:
            raise ValueError(
                "say what the guardrail measures with exactly one of counts (a share), "
                "mean (an average) or value with quantile (e.g. p95)"
            )
        if (self.value is None) != (self.quantile is None):
            raise ValueError("value and quantile go together (e.g. quantile = 0.95)")
        limits = [k for k in ("at_most", "at_least", "max_count") if getattr(self, k) is not None]
        if len(limits) != 1:
            raise ValueError("give exactly one limit: at_most, at_least or max_count")
        if self.max_count is not None and self.counts is None:
            raise ValueError("max_count is a number of cases: it goes with counts")
        if self.counts is not None and limits[0] != "max_count":
            limit = float(getattr(self, limits[0]))
            if not 0 <= limit <= 1:
                raise ValueError(f"{limits[0]} of a share must be between 0 and 1, not {limit}")
        return self

    def compiled(self) -> dict[str, Expression]:
        out = {"over": Expression(self.over, "bool", "over")}
        if self.counts is not None:
            out["measure"] = Expression(self.counts, "bool", "counts")
        else:
            text = self.mean if self.mean is not None else self.value
            assert text is not None
            out["measure"] = Expression(text, "number", "mean" if self.mean else "value")
        return out

    @property
    def kind(self) -> Literal["share", "count", "mean", "quantile"]:
        if self.counts is not None:
            return "count" if self.max_count is not None else "share"
        return "mean" if self.mean is not None else "quantile"

    @property
    def limit(self) -> tuple[Literal["at_most", "at_least"], float]:
        if self.at_least is not None:
            return "at_least", self.at_least
        if self.at_most is not None:
            return "at_most", self.at_most
        return "at_most", float(self.max_count or 0)


class MetricDefinition(_Strict):
    """``[workflows.NAME.metric]``: the one figure that says whether the workflow works."""

    workflow: str
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    step: str = Field(min_length=1, max_length=300)
    """The gated step (``gate.check(ctx, STEP, ...)``) whose decisions are judged."""
    label_field: str | None = Field(default=None, max_length=200)
    """The proposal's field a label names (``intent``); none compares whole proposals."""
    success: str
    """A case counts as a success when this holds (CEL, true or false)."""
    over: str = "true"
    """The cases the share is taken over (CEL; all by default)."""
    target: float = Field(gt=0, le=1)
    """The share must be at least this: its interval's lower bound, not its point."""
    min_cases: int = Field(ge=1)
    """Judged cases needed before any verdict."""
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    guardrails: tuple[Guardrail, ...] = ()

    @field_validator("guardrails")
    @classmethod
    def _unique(cls, value: tuple[Guardrail, ...]) -> tuple[Guardrail, ...]:
        names = [g.name for g in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"guardrail names must differ: {', '.join(twice)} twice")
        return value

    def compiled(self) -> dict[str, Expression]:
        return {
            "success": Expression(self.success, "bool", "success"),
            "over": Expression(self.over, "bool", "over"),
        }

    @property
    def version(self) -> str:
        """sha256 of the definition's canonical JSON: a change is a new version."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_metric(
    workflows: Mapping[str, Any], workflow: str, *, where: str = "codara.toml"
) -> MetricDefinition | None:
    """The metric of ``workflow`` from the ``[workflows]`` table, or None if it has none.
    Every expression is compiled and tried on a sample case; a mistake is a ConfigError
    naming the setting."""
    table = workflows.get(workflow)
    if not isinstance(table, Mapping) or "metric" not in table:
        return None
    raw = table["metric"]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[workflows.{workflow}.metric] in {where} must be a table")
    try:
        definition = MetricDefinition.model_validate({**raw, "workflow": workflow})
        definition.compiled()
        for guardrail in definition.guardrails:
            try:
                guardrail.compiled()
            except ValueError as exc:
                raise ValueError(f"guardrail {guardrail.name!r}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metric'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"[workflows.{workflow}.metric] in {where}: {problems}",
            hint="see docs/metrics.md for the keys and the fields a case has",
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"[workflows.{workflow}.metric] in {where}: {exc}",
            hint="see docs/metrics.md for the keys and the fields a case has",
        ) from None
    return definition
