"""Errors of review policies, and pydantic's validation errors in the TOML author's words."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from codara.errors import ConfigError, InputError

__all__ = [
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "Problems",
    "did_you_mean",
    "problems_from_validation",
    "show",
]


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a workflow's policies (a :class:`PolicyError` holds one or more)."""

    workflow: str
    policy: str | None
    """The policy's name (``"policy #2"`` when it has none); None for workflow-level settings."""
    setting: str | None
    """The setting at fault: ``when``, ``deadline``, ``policy_input.x``, ``sampling.rate``."""
    reason: str
    line: int | None = None
    """1-based line within the ``when`` expression, when the fault has a position."""
    column: int | None = None
    """1-based column within that line."""
    source: str | None = None
    """The ``when`` text, to point at the position."""

    @property
    def position(self) -> str | None:
        """``"line:column"`` within the ``when`` expression, if known."""
        if self.line is None or self.column is None:
            return None
        return f"{self.line}:{self.column}"

    def describe(self) -> str:
        where = []
        if self.policy is not None:
            where.append(f"policy '{self.policy}'")
        if self.setting is not None:
            where.append(self.setting)
        head = ", ".join(where)
        if self.position is not None:
            head += f" at {self.position}"
        text = f"{head}: {self.reason}" if head else self.reason
        pointer = self._pointer()
        return f"{text}\n{pointer}" if pointer else text

    def _pointer(self) -> str:
        if self.source is None or self.line is None or self.column is None:
            return ""
        lines = self.source.splitlines() or [""]
        if not 1 <= self.line <= len(lines):
            return ""
        text = lines[self.line - 1]
        return f"      {text}\n      {' ' * (self.column - 1)}^"


class PolicyError(ConfigError):
    """A workflow's review policies in ``codara.toml`` cannot be used.

    ``problems`` lists every fault found; the message names the workflow, each policy, the
    position within its ``when`` condition where there is one, and what to change.
    """

    code = "policy_error"

    def __init__(self, workflow: str, problems: Sequence[PolicyProblem]) -> None:
        self.workflow = workflow
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        if len(self.problems) == 1:
            message = f"workflow '{workflow}': {self.problems[0].describe()}"
        else:
            items = "\n".join(
                f"  {i}. {problem.describe()}" for i, problem in enumerate(self.problems, 1)
            )
            message = (
                f"workflow '{workflow}' has {len(self.problems)} problems in its review "
                f"policies:\n{items}"
            )
        super().__init__(
            message,
            hint=(
                f"fix [workflows.{workflow}] in codara.toml; a policy's `when` is a CEL "
                f"condition over the fields declared in [workflows.{workflow}.policy_input]"
            ),
        )

    @property
    def policy(self) -> str | None:
        """The policy named by the first problem."""
        return self.problems[0].policy if self.problems else None

    @property
    def line(self) -> int | None:
        return self.problems[0].line if self.problems else None

    @property
    def column(self) -> int | None:
        return self.problems[0].column if self.problems else None

    @property
    def reason(self) -> str:
        return self.problems[0].reason if self.problems else ""


class PolicyInputError(InputError):
    """A value handed to :meth:`WorkflowPolicies.evaluate` cannot be read as its declared type."""

    code = "policy_input_error"

    def __init__(self, message: str, *, workflow: str, field: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.workflow = workflow
        self.field = field


class Problems(ValueError):
    """Several (setting, reason) faults from one validator, kept apart for the error message."""

    def __init__(self, items: Sequence[tuple[str | None, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in items))
        self.items = tuple(items)


def show(value: object) -> str:
    """A value as the TOML author wrote it, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` when a choice is close to ``word``, else the empty string."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


_SETTING_HELP = {
    "name": ' (a short unique name, e.g. name = "low-confidence")',
    "when": ' (the condition under which the policy applies, e.g. when = "confidence < 0.85")',
    "outcome": ' (what the policy decides: outcome = "allow", "deny" or "ask")',
    "rate": " (the share of automatic approvals to review, e.g. rate = 0.05)",
}
_KIND_WORDS = {
    "string_type": "text in quotes",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_BOUND_KINDS = frozenset(
    {"greater_than_equal", "less_than_equal", "string_too_short", "string_too_long"}
)


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel]
) -> list[tuple[str | None, str]]:
    """Turn pydantic's errors into (setting, reason) pairs in the TOML author's words."""
    out: list[tuple[str | None, str]] = []
    known = [*model.model_fields, "four_eyes"]
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        setting = str(loc[0]) if loc else None
        kind = err["type"]
        given = err.get("input")
        error = err.get("ctx", {}).get("error")
        if isinstance(error, Problems):
            out.extend(error.items)
        elif kind == "missing":
            help_text = _SETTING_HELP.get(str(setting), "")
            out.append((setting, f"the setting '{setting}' is missing{help_text}"))
        elif kind == "extra_forbidden":
            out.append(
                (
                    setting,
                    f"unknown setting '{setting}'.{did_you_mean(str(setting), known)}"
                    f" Known settings: {', '.join(sorted(known))}",
                )
            )
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            out.append((setting, f"{setting} must be {expected}, not {show(given)}"))
        elif kind == "value_error" and error is not None:
            out.append((setting, str(error)))
        elif kind in _KIND_WORDS:
            what = f"{setting} must be" if setting else "it must be"
            out.append((setting, f"{what} {_KIND_WORDS[kind]}, not {show(given)}"))
        elif kind in _BOUND_KINDS:
            out.append((setting, f"{setting}: {err['msg'].lower()}, not {show(given)}"))
        else:
            out.append((setting, f"{setting}: {err['msg']} (got {show(given)})"))
    return out
