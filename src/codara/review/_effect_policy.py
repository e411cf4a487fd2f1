"""Policies on effects: ``[effects.NAME]`` decides, before an effect is claimed, whether it
may happen (``allow``), must not (``deny``) or needs a person (``ask``), with the same
policy language, review queue and deadlines as a workflow's reviews (docs/effects.md).

A policy sees the effect's arguments (what the workflow, and so perhaps a model, proposes)
and **facts**: values Codara takes itself from what the run did not write, named by a path
in ``facts = { NAME = "PATH" }``:

- ``input.FIELD...``: the run's input, as it was stored when the run started;
- ``read.SOURCE.FIELD``: the field of the first row of the latest batch the run read from
  the governed source SOURCE (``[sources.SOURCE]``).

A model's output can change the arguments, never a fact: a rule such as ``iban ==
iban_on_file`` (``iban_on_file = "read.crm.iban"``) holds only for the IBAN the CRM has. A
fact the run has not read (no such read, no row, no field) denies the effect, with the
reason. ``policy_input`` declares the type of every argument and fact a policy uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from codara.engine._effects import Verdict
from codara.errors import ConfigError
from codara.review.policy import load_policies

if TYPE_CHECKING:
    from codara.engine import App, Context, Effect
    from codara.review._gate import ReviewGate

__all__ = ["install_effect_policies"]

_PATH = re.compile(
    r"^(input(\.[A-Za-z_][A-Za-z0-9_]*)+|read\.[A-Za-z0-9_-]+\.[A-Za-z_][A-Za-z0-9_]*)$"
)
_MISSING = object()


class _Policed:
    """One effect's gate: its policies, its facts, and how to ask."""

    def __init__(self, name: str, gate: ReviewGate, facts: Mapping[str, str]) -> None:
        self.name = name
        self.gate = gate
        self.facts = dict(facts)
        self.fields = tuple(gate.policies.policy_input)

    async def __call__(self, ctx: Context, effect: Effect, args: Any) -> Verdict:
        known = {name: _fact(ctx, path) for name, path in self.facts.items()}
        missing = [f"{name} ({self.facts[name]})" for name, v in known.items() if v is _MISSING]
        if missing:
            return Verdict(False, args, f"fact(s) not known in this run: {', '.join(missing)}")
        given = args if isinstance(args, Mapping) else {}
        inputs = {f: known[f] if f in known else given.get(f) for f in self.fields}
        result = await self.gate.check(
            ctx, f"effect:{self.name}", args, inputs=inputs,
            context={"effect": self.name, "args": args, "facts": known},
        )  # fmt: skip
        if result.go_ahead:
            return Verdict(True, result.proposal, result.outcome)
        decision = result.decision or {}
        why = decision.get("reason") or decision.get("policy") or result.outcome
        if result.review is not None and result.review.reason_code:
            why = f"rejected by {', '.join(result.review.reviewers)}: {result.review.reason_code}"
        return Verdict(False, args, f"{result.outcome} ({why})")


def _fact(ctx: Context, path: str) -> Any:
    root, *rest = path.split(".")
    if root == "input":
        value: Any = ctx._run_input
    else:
        source, *rest = rest
        rows = ctx._read_rows.get(source)
        if not rows:
            return _MISSING
        value = rows[0]
    for part in rest:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def install_effect_policies(app: App) -> None:
    """Gate the app's effects named in ``[effects.NAME]`` with their policies (called by
    :func:`~codara.review.install_reviews`). A broken table stops here, with the reason."""
    from codara.review._gate import ReviewGate
    from codara.review._notify import notifier_from_settings

    section = app.settings.section("effects")
    where = app.settings.source_file or "the configuration"
    notify = notifier_from_settings(app.settings)
    for name, table in section.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[effects.{name}] in {where} must be a table")
        facts = table.get("facts", {})
        if not isinstance(facts, Mapping):
            raise ConfigError(f"[effects.{name}] facts in {where} must be a table of NAME = PATH")
        policies = load_policies(
            {k: v for k, v in table.items() if k != "facts"}, workflow=f"effects.{name}"
        )
        for fact, path in facts.items():
            if not isinstance(path, str) or not _PATH.match(path):
                raise ConfigError(
                    f"[effects.{name}] facts.{fact} in {where}: {path!r} is not a fact path",
                    hint='write "input.FIELD" (the run\'s input) or "read.SOURCE.FIELD" (the '
                    "latest read of a governed source)",
                )
            if fact not in policies.policy_input:
                raise ConfigError(
                    f"[effects.{name}] facts.{fact} in {where} is not in its policy_input",
                    hint=f'declare its type: [effects.{name}.policy_input] {fact} = "string"',
                )
        gate = ReviewGate(policies, workflow=f"effects.{name}", notify=notify)
        app._effects.gates[str(name)] = _Policed(str(name), gate, facts)
