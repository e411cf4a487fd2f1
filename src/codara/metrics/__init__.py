"""Metrics: the business metric a workflow declares up front, and the gate (docs/metrics.md).

The statistics: :func:`wilson` is the interval of a proportion (Wilson score, not the
normal approximation, which misbehaves near 0 and 1 and for small samples);
:func:`weighted_proportion` estimates a proportion from cases sampled with known
probabilities (inverse-probability weights, Hájek's estimator) with a Wilson interval over
Kish's effective sample size; :func:`verdict` compares an interval's bound, never its point,
with a target, and says ``not enough evidence`` when the bound does not settle it or too few
cases were judged.

The metric: :func:`load_metric` reads ``[workflows.NAME.metric]`` (CEL over a case's
fields, :data:`CASE_FIELDS`); :func:`evaluate` applies it to cases; :func:`live_cases` makes
cases of a version's runs and the verdicts people gave; :func:`check`, :func:`promote` and
:func:`rollback` are the gate between the stages ``pilot``, ``shadow`` and ``production``.
"""

from codara.metrics._definition import CASE_FIELDS, Guardrail, MetricDefinition, load_metric
from codara.metrics._evaluate import Figure, MetricReport, evaluate
from codara.metrics._evidence import label_of, live_cases
from codara.metrics._stages import (
    EXIT_FAIL,
    EXIT_NOT_ENOUGH,
    STAGES,
    GateRefusedError,
    Stage,
    StageState,
    check,
    history,
    promote,
    record_definition,
    rollback,
    stage_of,
)
from codara.metrics._stats import (
    Interval,
    Verdict,
    mean_interval,
    quantile_interval,
    verdict,
    weighted_proportion,
    wilson,
)

__all__ = [
    "CASE_FIELDS",
    "EXIT_FAIL",
    "EXIT_NOT_ENOUGH",
    "STAGES",
    "Figure",
    "GateRefusedError",
    "Guardrail",
    "Interval",
    "MetricDefinition",
    "MetricReport",
    "Stage",
    "StageState",
    "Verdict",
    "check",
    "evaluate",
    "history",
    "label_of",
    "live_cases",
    "load_metric",
    "mean_interval",
    "promote",
    "quantile_interval",
    "record_definition",
    "rollback",
    "stage_of",
    "verdict",
    "weighted_proportion",
    "wilson",
]
