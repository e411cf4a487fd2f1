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

``read.SOURCE.FIELD[KEY=ARG]`` picks, instead of the first row, the row of that batch whose
``KEY`` equals the argument ``ARG``: "the amount of *this* transaction, among those the run
read for the ticket's customer" (no such row: denied, with the reason). ``review.STEP.FIELD``
is the field of what a person approved or edited at the workflow's gate step ``STEP``
(``ReviewGate.check``): a policy allowing it is not a person's decision and is no fact.

Two tables of ``policy_input`` are computed here, never taken from the arguments:

- ``provenance = { ARG = "string" }``: where the argument's value comes from, established
  from what the run recorded, not claimed by anyone: ``trusted`` when it equals a value of
  the run's input or of a row the run read through a governed source; else ``untrusted``
  when it appears inside longer text of the input or of a read (words a customer wrote);
  else ``model`` when it appears in a model's answer in this run; else ``workflow``. A
  model's output can never make a value ``trusted``: it cannot write the input or a read.
- ``foreign = { ARG = "int" }``: how many personal values (tokens) in the argument are
  none of the run's own: not in its input, nor in what it read. A reply with another
  customer's IBAN has ``foreign.body > 0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from codara.engine._effects import Verdict
from codara.engine._privacy import privacy
from codara.errors import ConfigError
from codara.privacy import TOKEN
from codara.review.policy import load_policies

if TYPE_CHECKING:
    from codara.engine import App, Context, Effect
    from codara.review._gate import ReviewGate

__all__ = ["install_effect_policies"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = re.compile(
    rf"^(input(\.{_NAME})+|read\.[A-Za-z0-9_-]+\.{_NAME}(\[{_NAME}={_NAME}\])?"
    rf"|review\.[A-Za-z0-9_-]+(\.{_NAME})+)$"
)
_PICK = re.compile(rf"^(?P<field>{_NAME})\[(?P<key>{_NAME})=(?P<arg>{_NAME})\]$")
_COMPUTED = ("provenance", "foreign")
_MISSING = object()


class _Policed:
    """One effect's gate: its policies, its facts, and how to ask."""

    def __init__(self, name: str, gate: ReviewGate, facts: Mapping[str, str]) -> None:
        self.name = name
        self.gate = gate
        self.facts = dict(facts)
        self.shape = dict(gate.policies.policy_input)
        self.fields = tuple(self.shape)

    async def __call__(self, ctx: Context, effect: Effect, args: Any) -> Verdict:
        given = args if isinstance(args, Mapping) else {}
        known = {name: _fact(ctx, path, given) for name, path in self.facts.items()}
        missing = [f"{name} ({self.facts[name]})" for name, v in known.items() if v is _MISSING]
        if missing:
            return Verdict(False, args, f"fact(s) not known in this run: {', '.join(missing)}")
        inputs = {f: known[f] if f in known else given.get(f) for f in self.fields}
        computed = [f for f in _COMPUTED if isinstance(self.shape.get(f), Mapping)]
        if computed:
            seen = _Seen(ctx)
            for f in computed:
                judge = seen.provenance if f == "provenance" else seen.foreign
                inputs[f] = {arg: judge(given.get(arg)) for arg in self.shape[f]}
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


def _fact(ctx: Context, path: str, args: Mapping[str, Any]) -> Any:
    root, *rest = path.split(".")
    if root == "input":
        value: Any = ctx._run_input
    elif root == "review":  # what a person approved or edited at gate step STEP
        step, *rest = rest
        if step not in ctx._reviewed:
            return _MISSING
        value = ctx._reviewed[step]
    else:
        source, field = rest
        rows = ctx._read_rows.get(source)
        if not rows:
            return _MISSING
        pick = _PICK.match(field)
        if pick is None:
            value, rest = rows[0], [field]
        else:  # the row whose KEY is the argument ARG, among the rows the run read
            want = args.get(pick["arg"], _MISSING)
            found = [r for r in rows if isinstance(r, Mapping) and r.get(pick["key"]) == want]
            if want is _MISSING or not found:
                return _MISSING
            value, rest = found[0], [pick["field"]]
    for part in rest:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


class _Seen:
    """What the run holds that no model wrote (its input, its reads), and what models said:
    the ground for ``provenance`` and ``foreign``."""

    def __init__(self, ctx: Context) -> None:
        held = [ctx._run_input, *ctx._read_rows.values(), *ctx._reviewed.values()]
        leaves = [v for v in _leaves(held) if v is not None and not isinstance(v, bool)]
        self.values = {v for v in leaves if isinstance(v, str | int | float)}
        self.texts = [v for v in leaves if isinstance(v, str)]
        self.tokens = {t for text in self.texts for t in TOKEN.findall(text)}
        self.said = ctx._model_said

    def provenance(self, value: Any) -> str:
        if value is None or isinstance(value, bool | Mapping | list):
            return "workflow"
        if value in self.values:
            return "trusted"
        text = str(value)
        if text and any(text in t for t in self.texts):
            return "untrusted"
        if text and any(text in said for said in self.said):
            return "model"
        return "workflow"

    def foreign(self, value: Any) -> int:
        texts = [text for text in _leaves(value) if isinstance(text, str)]
        found = {t for text in texts for t in TOKEN.findall(text)}
        _, raw = privacy().mask(texts)  # personal values not masked yet: their tokens
        return len((found | {f.token for f in raw}) - self.tokens)


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
                    hint='write "input.FIELD" (the run\'s input), "read.SOURCE.FIELD" (the '
                    'latest read of a governed source), "read.SOURCE.FIELD[KEY=ARG]" (its '
                    'row whose KEY is the argument ARG) or "review.STEP.FIELD" (what a person '
                    "approved or edited at the gate step STEP)",
                )
            if fact not in policies.policy_input:
                raise ConfigError(
                    f"[effects.{name}] facts.{fact} in {where} is not in its policy_input",
                    hint=f'declare its type: [effects.{name}.policy_input] {fact} = "string"',
                )
        for table_name, kind in (("provenance", "string"), ("foreign", "int")):
            computed = policies.policy_input.get(table_name)
            if computed is None:
                continue
            if (
                table_name in facts
                or not isinstance(computed, Mapping)
                or any(spec != kind for spec in computed.values())
            ):
                raise ConfigError(
                    f"[effects.{name}] policy_input.{table_name} in {where} is computed by "
                    f'Codara: declare it as a table of ARG = "{kind}"',
                    hint=f'e.g. [effects.{name}.policy_input.{table_name}] iban = "{kind}"',
                )
        gate = ReviewGate(policies, workflow=f"effects.{name}", notify=notify)
        app._effects.gates[str(name)] = _Policed(str(name), gate, facts)
