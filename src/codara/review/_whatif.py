"""What-if: a workflow's journaled policy decisions, taken again under another policy set.

A review gate journals every decision as the result of its ``policy:STEP`` step, with the
values the policies saw (``inputs_seen``, masked as everything in the journal is).
:func:`simulate` reads those decisions for the runs created since a time, a page of runs at
a time, evaluates each again with the policies of another file, under the same decision key
(``RUN:STEP``, so sampling picks the same decisions when the rate is the same), and counts:
old and new outcomes, the transitions between them, the policy that decided, the decisions
that changed, and those that cannot be taken again (with the reason). Where people decided
a review of a decision, that decision carries a label (:func:`review_label`), and the share
of correct automatic answers is estimated among the labelled ones, for the old policies and
for the new (:mod:`codara.review._whatif_report`).

Decisions of effect gates (``policy:effect:NAME``) are taken again with the file's
``[effects.NAME]`` policies when it has them, and left out (counted, with the reason) when
it does not. Nothing here keeps more than one page of runs in memory.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codara.config import load_settings
from codara.errors import ConfigError, InputError, UnknownWorkflowError
from codara.metrics import label_of
from codara.review._whatif_report import Change, Simulation, kind_of
from codara.review.policy import PolicyInputError, WorkflowPolicies, load_policies
from codara.store import Store
from codara.store import decisions as repo

__all__ = ["PolicySet", "load_policy_file", "parse_since", "review_label", "simulate"]

PAGE_RUNS = 500
"""Runs read per page (one read transaction each): memory stays flat with the window."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def parse_since(text: str, now: float) -> float:
    """The start of the window: ``7d``/``36h``/``90m``/``2w`` before ``now``, or a date or
    time (``2026-11-01``, ``2026-11-01T08:00``; UTC unless it names its offset)."""
    match = _AGO.match(text)
    if match:
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"--since {text!r} is neither a duration nor a date",
            hint="write a duration before now (7d, 36h, 90m, 2w) or a date (2026-11-01, "
            "2026-11-01T08:00, UTC unless an offset is given)",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    start = when.timestamp()
    if start > now:
        raise InputError(
            f"--since {text!r} is in the future: no run can have been created since then",
            hint="give a time in the past, e.g. --since 7d",
        )
    return start


@dataclass(frozen=True)
class PolicySet:
    """The policies to try: the workflow's, and the effects' that the file declares."""

    source: str
    workflow_name: str
    workflow: WorkflowPolicies | None
    effects: Mapping[str, WorkflowPolicies]

    def for_step(self, step: str) -> tuple[WorkflowPolicies | None, str]:
        """The policies that decide gate step ``step``, or None and why there are none."""
        if step.startswith("effect:"):
            name = step.removeprefix("effect:")
            found = self.effects.get(name)
            return found, "" if found else f"{self.source} has no [effects.{name}]"
        why = "" if self.workflow else f"{self.source} has no [workflows.{self.workflow_name}]"
        return self.workflow, why


def load_policy_file(path: Path, workflow: str) -> PolicySet:
    """The policies of ``path``, a codara.toml-shaped file: ``[workflows.WORKFLOW]`` and any
    ``[effects.NAME]``. Broken policies raise the loader's :class:`PolicyError`."""
    try:
        settings = load_settings(path, environ={})  # the file alone: no CODARA_* overrides
    except ConfigError as exc:
        raise ConfigError(
            f"--policies: {exc.message}",
            hint="give a file shaped like codara.toml with the [workflows.NAME] tables to try",
        ) from None
    section = settings.section("workflows")
    policies = load_policies(section, workflow=workflow) if workflow in section else None
    effects: dict[str, WorkflowPolicies] = {}
    for name, table in settings.section("effects").items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[effects.{name}] in {path} must be a table")
        rules = {k: v for k, v in table.items() if k != "facts"}
        effects[str(name)] = load_policies(rules, workflow=f"effects.{name}")
    if policies is None and not effects:
        raise ConfigError(
            f"{path} has no [workflows.{workflow}] table (nor any [effects.NAME]): no "
            "policies to try",
            hint=f"declare [workflows.{workflow}.policy_input] and "
            f"[[workflows.{workflow}.policies]] in it, as in codara.toml",
        )
    return PolicySet(str(path), workflow, policies, effects)


def review_label(review: repo.DecidedReview, label_field: str) -> bool | None:
    """Was the proposal correct, by the people who decided its review? True when approved,
    or edited without changing ``label_field``; False when rejected, or edited with
    ``label_field`` changed; None when no person decided (a deadline did) or the proposal
    has no ``label_field`` to judge an edit by."""
    try:
        result = json.loads(review.result) if review.result else {}
    except json.JSONDecodeError:
        return None
    if not isinstance(result, dict) or result.get("by_deadline"):
        return None
    outcome = result.get("outcome", review.outcome)
    proposal = None
    if outcome == "edited":  # judged by the label field: it must be there on both sides
        try:
            proposal = json.loads(review.proposal)
        except json.JSONDecodeError:
            return None
        after = result.get("proposal")
        if not isinstance(proposal, dict) or label_field not in proposal:
            return None
        if not isinstance(after, dict):
            return None
    return label_of(outcome, proposal, result, label_field)[1]


def _recorded(inputs: Mapping[str, Any], path: str) -> bool:
    value: Any = inputs
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _at(tree: Mapping[str, Any], path: str) -> Any:
    value: Any = tree
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _revive(inputs: Mapping[str, Any], shape: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded values, with the non-finite doubles the journal holds as text
    ("NaN", "Infinity") numbers again where the new shape declares a double."""
    out = dict(inputs)
    for name, spec in shape.items():
        value = out.get(name)
        if isinstance(spec, Mapping) and isinstance(value, Mapping):
            out[name] = _revive(value, spec)
        elif spec == "double" and isinstance(value, str) and value in _NON_FINITE:
            out[name] = _NON_FINITE[value]
    return out


_WHAT = {bool: "true/false", int: "a whole number", float: "a number", str: "text", dict: "a table"}


def _misfit(exc: PolicyInputError, inputs: Mapping[str, Any], policies: WorkflowPolicies) -> str:
    """Why recorded values do not fit the new declared types, without the values."""
    recorded = _WHAT.get(type(_at(inputs, exc.field)), "another type")
    declared = _at(policies.policy_input, exc.field)
    declared_as = "a table" if isinstance(declared, Mapping) else str(declared)
    return f"input '{exc.field}' was recorded as {recorded}, the new policies declare {declared_as}"


@dataclass
class _Pairing:
    """The labels of a page's runs: the i-th ask of a gate step pairs with its i-th review."""

    labels: dict[tuple[str, str], list[bool | None]] = field(default_factory=dict)
    taken: Counter[tuple[str, str]] = field(default_factory=Counter)

    def next(self, run_id: str, step: str) -> bool | None:
        key = (run_id, step)
        found = self.labels.get(key, [])
        index = self.taken[key]
        self.taken[key] += 1
        return found[index] if index < len(found) else None


async def simulate(
    store: Store,
    workflow: str,
    policies: PolicySet,
    *,
    since: float,
    until: float,
    step: str | None = None,
    label_field: str = "intent",
    show_inputs: bool = False,
    first: int = 20,
    page: int = PAGE_RUNS,
) -> Simulation:
    """Take again every journaled decision of ``workflow``'s runs created in
    [``since``, ``until``] under ``policies`` (of gate step ``step`` only, if given)."""
    if step is not None:
        found, why = policies.for_step(step)
        if found is None:
            raise ConfigError(f"cannot simulate step {step!r}: {why}")
    async with store.tx() as tx:
        if not await repo.workflow_known(tx, workflow):
            names = await repo.known_workflows(tx)
            raise UnknownWorkflowError(
                f"no workflow {workflow!r} in {store.url_redacted}: no App registered it and "
                "no run of it exists",
                hint=f"known workflows: {', '.join(names) or 'none'}",
            )
    sim = Simulation(workflow, policies.source, since, until, step, label_field, first)
    sim.note_versions(policies.workflow, policies.effects)
    after: repo.RunKey | None = None
    while True:
        async with store.tx() as tx:
            runs = await repo.run_page(tx, workflow, since, until, after, page)
            ids = [r.id for r in runs]
            rows = await repo.decision_rows(tx, ids, step)
            reviews = await repo.decided_reviews(tx, ids)
        if not runs:
            if step is not None and sim.nothing_to_simulate and sim.runs:
                async with store.tx() as tx:
                    sim.other_steps = await repo.gate_steps(tx, workflow, since, until)
            return sim
        after = runs[-1]
        sim.runs += len(runs)
        pairing = _Pairing()
        for review in reviews:
            pairing.labels.setdefault((review.run_id, review.step), []).append(
                review_label(review, label_field)
            )
        for row in rows:
            _take_again(sim, policies, row, pairing, show_inputs)


def _take_again(
    sim: Simulation,
    policies: PolicySet,
    row: repo.DecisionRow,
    pairing: _Pairing,
    show_inputs: bool,
) -> None:
    key = f"{row.run_id}:{row.step}"
    sim.steps[row.step] += 1
    target, why = policies.for_step(row.step)
    if target is None:
        sim.left_out[why] += 1
        return
    try:
        old = json.loads(row.output) if row.status == "ok" and row.output else None
    except json.JSONDecodeError:
        old = None
    if row.status != "ok":
        sim.skip(key, "the gate's own evaluation failed in the run: no decision was made")
        return
    if not isinstance(old, dict) or old.get("outcome") not in ("allow", "ask", "deny"):
        sim.skip(key, "the journaled decision is not a decision record")
        return
    # The i-th review (or audit) of a step came from its i-th ask or sampled decision: pair
    # them before anything is skipped.
    reviewed = old["outcome"] == "ask" or bool(old.get("sampled"))
    label = pairing.next(row.run_id, row.step) if reviewed else None
    seen = old.get("inputs_seen")
    inputs: dict[str, Any] = seen if isinstance(seen, dict) else {}
    missing = [p for p in target.paths_read if not _recorded(inputs, p)]
    if missing:
        sim.skip(key, f"not recorded (the policies then did not declare it): {', '.join(missing)}")
        return
    try:
        new = target.evaluate(_revive(inputs, target.policy_input), decision_key=key).as_record()
    except PolicyInputError as exc:
        sim.skip(key, _misfit(exc, inputs, target))
        return
    sim.count(old, new, label)
    if kind_of(old) != kind_of(new):
        sim.change(Change(key, old, new, inputs if show_inputs else None))
