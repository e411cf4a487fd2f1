"""The settings side of review policies: rule models, durations, input shapes and errors.

Everything here is plain validation of what ``codara.toml`` says; compiling and evaluating
the CEL conditions lives in :mod:`codara.review._policy`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from codara.errors import ConfigError, InputError

__all__ = [
    "FieldType",
    "OnTimeout",
    "Outcome",
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "SamplingRule",
    "parse_duration",
]

Outcome = Literal["allow", "deny", "ask"]
OnTimeout = Literal["approve", "deny", "escalate"]
FieldType = Literal["double", "int", "string", "bool"]

FIELD_TYPES: tuple[FieldType, ...] = ("double", "int", "string", "bool")

# Words a field of the input shape may not be called: CEL keywords and reserved words, and
# the type names CEL conditions use as values (``type(x) == int``).
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
RESERVED_NAMES = TYPE_NAMES | frozenset(
    {
        "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
        "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
        "void", "while",
    }
)  # fmt: skip
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Type names people reach for, and the declared type that means the same thing.
_TYPE_ALIASES = {
    "float": "double",
    "number": "double",
    "decimal": "double",
    "integer": "int",
    "long": "int",
    "str": "string",
    "text": "string",
    "boolean": "bool",
}


# --------------------------------------------------------------------------- errors


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


class _Problems(ValueError):
    """Several (setting, reason) faults from one validator, kept apart for the error message."""

    def __init__(self, items: Sequence[tuple[str | None, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in items))
        self.items = tuple(items)


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(?:\d{1,12}\s*[smhd]\s*)+")
_DURATION_PART = re.compile(r"(\d{1,12})\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DURATION = timedelta(days=3650)


def parse_duration(value: object, *, setting: str = "deadline") -> timedelta:
    """``"90s"``, ``"30m"``, ``"4h"``, ``"2d"`` (or combined, ``"1h30m"``) as a timedelta.

    Raises :class:`ValueError` with a message for the person editing ``codara.toml``.
    """
    example = 'e.g. "90s", "30m", "4h" or "2d"'
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if not _DURATION.fullmatch(text):
            raise ValueError(
                f"{setting} {json.dumps(value)} is not a duration: write a whole number "
                f"followed by s (seconds), m (minutes), h (hours) or d (days), {example}"
            )
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        if seconds > _MAX_DURATION.total_seconds():
            raise ValueError(f"{setting} {json.dumps(value)} is longer than ten years")
        duration = timedelta(seconds=seconds)
    else:
        raise ValueError(f"{setting} must be a duration in quotes, {example}; got {_show(value)}")
    if duration <= timedelta(0):
        raise ValueError(f"{setting} must be longer than zero, {example}")
    if duration > _MAX_DURATION:
        raise ValueError(f"{setting} is longer than ten years")
    return duration


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _digest(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _show(value: object) -> str:
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


# --------------------------------------------------------------------------- rule models

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def drop_computed_version(data: Any) -> Any:
    """Accept ``model_dump()`` output: drop the computed ``version`` (a sha256 hex string)."""
    version = data.get("version") if isinstance(data, Mapping) else None
    if isinstance(version, str) and _SHA256_HEX.fullmatch(version):
        return {k: v for k, v in data.items() if k != "version"}
    return data


class _ReviewSettings(BaseModel):
    """Who reviews, by when, and what happens when nobody decides in time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str | None = Field(default=None, strict=True)
    """The reviewer group that decides (required for ``outcome = "ask"``)."""
    deadline: timedelta | None = None
    """How long reviewers have, from ``"90s"``, ``"30m"``, ``"4h"``, ``"2d"``."""
    on_timeout: OnTimeout | None = None
    """What happens at the deadline: approve, deny, or escalate to ``escalate_to``."""
    escalate_to: str | None = Field(default=None, strict=True)
    escalation_deadline: timedelta | None = None
    approvals: int = Field(default=1, strict=True, ge=1, le=20)
    """Distinct reviewers who must approve (``four_eyes = true`` means 2)."""

    _version: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _four_eyes(cls, data: Any) -> Any:
        data = drop_computed_version(data)
        if not isinstance(data, Mapping) or "four_eyes" not in data:
            return data
        data = dict(data)
        four_eyes = data.pop("four_eyes")
        if not isinstance(four_eyes, bool):
            raise _Problems(
                [("four_eyes", f"four_eyes must be true or false, not {_show(four_eyes)}")]
            )
        approvals = data.get("approvals")
        if four_eyes:
            if approvals is not None and approvals != 2:
                raise _Problems(
                    [
                        (
                            "four_eyes",
                            f"four_eyes = true means 2 approvals but approvals = "
                            f"{_show(approvals)}; keep only one of the two settings",
                        )
                    ]
                )
            data["approvals"] = 2
        elif approvals is not None and approvals != 1:
            raise _Problems(
                [
                    (
                        "four_eyes",
                        f"four_eyes = false contradicts approvals = {_show(approvals)}; "
                        "keep only one of the two settings",
                    )
                ]
            )
        return data

    @field_validator("deadline", "escalation_deadline", mode="before")
    @classmethod
    def _parse_deadline(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        return parse_duration(value, setting=str(info.field_name))

    @field_validator("role", "escalate_to")
    @classmethod
    def _not_blank(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"{info.field_name} must name a reviewer role, not be empty")
        return value

    def _needs_reviewer(self) -> str | None:
        """Why this rule must name a role, or None when it need not."""
        return None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        faults: list[tuple[str | None, str]] = []
        why = self._needs_reviewer()
        if why is not None and self.role is None:
            faults.append(
                (
                    "role",
                    f'{why} needs a role: the reviewer group who decides, e.g. role = "support"',
                )
            )
        if self.deadline is not None and self.on_timeout is None:
            faults.append(
                (
                    "on_timeout",
                    "deadline is set but on_timeout is missing: say what happens when nobody "
                    'decides in time: on_timeout = "approve", "deny" or "escalate"',
                )
            )
        if self.on_timeout is not None and self.deadline is None:
            faults.append(("deadline", 'on_timeout needs a deadline, e.g. deadline = "4h"'))
        if self.on_timeout == "escalate" and self.escalate_to is None:
            faults.append(
                (
                    "escalate_to",
                    'on_timeout = "escalate" needs escalate_to: the role that takes over when '
                    'the deadline passes, e.g. escalate_to = "fraud-lead"',
                )
            )
        if self.on_timeout != "escalate":
            for name in ("escalate_to", "escalation_deadline"):
                if getattr(self, name) is not None:
                    faults.append(
                        (
                            name,
                            f'{name} is only used with on_timeout = "escalate"; remove it',
                        )
                    )
        if self.role is None and why is None:
            extra = [
                name
                for name in ("deadline", "on_timeout", "escalate_to", "escalation_deadline")
                if getattr(self, name) is not None
            ]
            if self.approvals != 1:
                extra.append("approvals")
            if extra:
                faults.append(
                    (
                        extra[0],
                        f"{', '.join(extra)} only apply to a human review: set role, or remove "
                        + ("it" if len(extra) == 1 else "them"),
                    )
                )
        if faults:
            raise _Problems(faults)
        return self

    def _review_payload(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "deadline": _seconds(self.deadline),
            "on_timeout": self.on_timeout,
            "escalate_to": self.escalate_to,
            "escalation_deadline": _seconds(self.escalation_deadline),
            "approvals": self.approvals,
        }

    def canonical_text(self) -> str:
        """The rule as sorted, compact JSON (durations in seconds): what ``version`` hashes."""
        raise NotImplementedError

    def model_post_init(self, context: Any, /) -> None:
        self._version = hashlib.sha256(
            self.canonical_text().encode("utf-8", "surrogatepass")
        ).hexdigest()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def version(self) -> str:
        """sha256 (hex) of :meth:`canonical_text`; show the first 12 characters."""
        return self._version

    @property
    def short_version(self) -> str:
        return self._version[:12]


class PolicyRule(_ReviewSettings):
    """One ``[[workflows.<name>.policies]]`` entry."""

    name: str = Field(strict=True, min_length=1, max_length=200)
    when: str = Field(strict=True)
    """A CEL condition over the workflow's declared ``policy_input``."""
    outcome: Outcome
    priority: int | None = Field(default=None, strict=True)
    """Passed through to the decision (for the review queue); does not change evaluation order."""

    @field_validator("when")
    @classmethod
    def _when_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "when is empty: write the condition under which this policy applies, "
                'e.g. when = "confidence < 0.85"'
            )
        return value

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value

    def _needs_reviewer(self) -> str | None:
        return 'outcome = "ask"' if self.outcome == "ask" else None

    def canonical_text(self) -> str:
        payload = {
            "kind": "policy",
            "name": self.name,
            "when": self.when,
            "outcome": self.outcome,
            "priority": self.priority,
            **self._review_payload(),
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SamplingRule(_ReviewSettings):
    """``[workflows.<name>.sampling]``: a share of automatic approvals sent to audit review."""

    rate: float = Field(strict=True)
    """Share of otherwise-automatic ``allow`` decisions sent to review, 0.0 to 1.0."""

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_in_range(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"rate must be a number between 0 and 1 (e.g. 0.05 for 5%), not {_show(value)}"
            )
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"rate must be between 0 and 1 (e.g. 0.05 for 5%), not {_show(value)}")
        return float(value)

    def _needs_reviewer(self) -> str | None:
        return "sampling with rate above 0" if self.rate > 0 else None

    def canonical_text(self) -> str:
        payload = {"kind": "sampling", "rate": self.rate, **self._review_payload()}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- error translation

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
        if isinstance(error, _Problems):
            out.extend(error.items)
        elif kind == "missing":
            out.append(
                (
                    setting,
                    f"the setting '{setting}' is missing{_SETTING_HELP.get(str(setting), '')}",
                )
            )
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
            out.append((setting, f"{setting} must be {expected}, not {_show(given)}"))
        elif kind == "value_error" and error is not None:
            out.append((setting, str(error)))
        elif kind in _KIND_WORDS:
            what = f"{setting} must be" if setting else "it must be"
            out.append((setting, f"{what} {_KIND_WORDS[kind]}, not {_show(given)}"))
        elif kind in (
            "greater_than_equal",
            "less_than_equal",
            "string_too_short",
            "string_too_long",
        ):
            out.append((setting, f"{setting}: {err['msg'].lower()}, not {_show(given)}"))
        else:
            out.append((setting, f"{setting}: {err['msg']} (got {_show(given)})"))
    return out


# --------------------------------------------------------------------------- input shape


def check_shape(
    raw: object, prefix: str = "policy_input"
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate a declared input shape; returns (shape, [(setting, reason), ...]).

    A shape maps field names to ``"double"``, ``"int"``, ``"string"``, ``"bool"``, or a nested
    table of the same.
    """
    faults: list[tuple[str, str]] = []
    if not isinstance(raw, Mapping):
        faults.append(
            (prefix, f'{prefix} must be a table of field = "type" entries, not {_show(raw)}')
        )
        return {}, faults
    shape: dict[str, Any] = {}
    for name, spec in raw.items():
        where = f"{prefix}.{name}"
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            faults.append(
                (
                    where,
                    f"field name {_show(name)} cannot be used in conditions: use letters, digits "
                    "and _, starting with a letter",
                )
            )
            continue
        if name in RESERVED_NAMES:
            faults.append(
                (where, f"'{name}' is a reserved word in conditions; pick another field name")
            )
            continue
        if isinstance(spec, Mapping):
            nested, nested_faults = check_shape(spec, where)
            faults.extend(nested_faults)
            shape[name] = nested
        elif isinstance(spec, str) and spec in FIELD_TYPES:
            shape[name] = spec
        else:
            alias = _TYPE_ALIASES.get(spec.strip().lower()) if isinstance(spec, str) else None
            hint = f' Write "{alias}".' if alias else ""
            faults.append(
                (
                    where,
                    f"{_show(spec)} is not a type a condition can use.{hint} Types: "
                    '"double" (number), "int" (whole number), "string" (text), "bool" '
                    "(true/false), or a table of fields",
                )
            )
    return shape, faults


def shape_paths(shape: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf field of a shape as a dotted path, sorted."""
    out: list[str] = []
    for name, spec in shape.items():
        path = f"{prefix}{name}"
        if isinstance(spec, Mapping):
            out.extend(shape_paths(spec, path + ".") or [path])
        else:
            out.append(path)
    return sorted(out)


def shape_digest_payload(shape: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: (shape_digest_payload(v) if isinstance(v, Mapping) else v) for k, v in shape.items()}


def digest(payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of a JSON payload in canonical form."""
    return _digest(payload)
