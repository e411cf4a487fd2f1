"""The settings side of review policies: the rule models, durations and version digests.

Everything here is plain validation of what ``codara.toml`` says; the conditions are checked
and compiled in :mod:`codara.review.policy._check`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    computed_field,
    field_validator,
    model_validator,
)

from codara.review.policy._errors import Problems, show

__all__ = [
    "OnTimeout",
    "Outcome",
    "PolicyRule",
    "SamplingRule",
    "canonical_json",
    "digest",
    "drop_computed_version",
    "parse_duration",
    "seconds",
]

Outcome = Literal["allow", "deny", "ask"]
OnTimeout = Literal["approve", "deny", "escalate", "close"]
"""``close`` is for audits only: an audit nobody decided in time closes with no verdict."""


# --------------------------------------------------------------------------- durations and digests

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
        total = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        if total > _MAX_DURATION.total_seconds():
            raise ValueError(f"{setting} {json.dumps(value)} is longer than ten years")
        duration = timedelta(seconds=total)
    else:
        raise ValueError(f"{setting} must be a duration in quotes, {example}; got {show(value)}")
    if duration <= timedelta(0):
        raise ValueError(f"{setting} must be longer than zero, {example}")
    if duration > _MAX_DURATION:
        raise ValueError(f"{setting} is longer than ten years")
    return duration


def seconds(value: timedelta | None) -> float | None:
    """A duration in seconds, for JSON (None stays None)."""
    return None if value is None else value.total_seconds()


def canonical_json(payload: Mapping[str, Any]) -> str:
    """A JSON payload in canonical form: sorted keys, no spaces, not ASCII-escaped."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of a JSON payload in canonical form."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8", "surrogatepass")).hexdigest()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def drop_computed_version(data: Any) -> Any:
    """Accept ``model_dump()`` output: drop the computed ``version`` (a sha256 hex string)."""
    version = data.get("version") if isinstance(data, Mapping) else None
    if isinstance(version, str) and _SHA256_HEX.fullmatch(version):
        return {k: v for k, v in data.items() if k != "version"}
    return data


# --------------------------------------------------------------------------- rule models


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
            raise Problems(
                [("four_eyes", f"four_eyes must be true or false, not {show(four_eyes)}")]
            )
        approvals = data.get("approvals")
        if four_eyes:
            if approvals is not None and approvals != 2:
                raise Problems(
                    [
                        (
                            "four_eyes",
                            f"four_eyes = true means 2 approvals but approvals = "
                            f"{show(approvals)}; keep only one of the two settings",
                        )
                    ]
                )
            data["approvals"] = 2
        elif approvals is not None and approvals != 1:
            raise Problems(
                [
                    (
                        "four_eyes",
                        f"four_eyes = false contradicts approvals = {show(approvals)}; "
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

    _timeouts: ClassVar[str] = '"approve", "deny" or "escalate"'
    """The on_timeout values this kind of rule takes, for messages."""

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
                    f"decides in time: on_timeout = {self._timeouts}",
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
            raise Problems(faults)
        return self

    def _payload(self) -> dict[str, Any]:
        """The settings that ``version`` covers, durations in seconds."""
        return {
            "role": self.role,
            "deadline": seconds(self.deadline),
            "on_timeout": self.on_timeout,
            "escalate_to": self.escalate_to,
            "escalation_deadline": seconds(self.escalation_deadline),
            "approvals": self.approvals,
        }

    def canonical_text(self) -> str:
        """The rule as sorted, compact JSON (durations in seconds): what ``version`` hashes."""
        return canonical_json(self._payload())

    def model_post_init(self, context: Any, /) -> None:
        self._version = digest(self._payload())

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
    on_timeout: Literal["approve", "deny", "escalate"] | None = None
    """The run waits for this review: what it gets when nobody decides in time."""

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

    def _payload(self) -> dict[str, Any]:
        return {
            "kind": "policy",
            "name": self.name,
            "when": self.when,
            "outcome": self.outcome,
            "priority": self.priority,
            **super()._payload(),
        }


class SamplingRule(_ReviewSettings):
    """``[workflows.<name>.sampling]``: a share of automatic approvals sent to audit review."""

    _timeouts: ClassVar[str] = '"close" or "escalate"'

    on_timeout: Literal["close", "escalate"] | None = None
    """Nothing waits for an audit: at its deadline it closes unlabelled, or escalates."""
    rate: float = Field(strict=True)
    """Share of otherwise-automatic ``allow`` decisions sent to review, 0.0 to 1.0."""

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_in_range(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"rate must be a number between 0 and 1 (e.g. 0.05 for 5%), not {show(value)}"
            )
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"rate must be between 0 and 1 (e.g. 0.05 for 5%), not {show(value)}")
        return float(value)

    @field_validator("on_timeout", mode="before")
    @classmethod
    def _audit_timeout(cls, value: Any) -> Any:
        if value in ("approve", "deny"):
            raise ValueError(
                f'on_timeout = "{value}" has no meaning for an audit: the sampled answer goes '
                "out at once and its audit judges it after the fact, so no decision waits; "
                'use "close" (no verdict, no label) or "escalate"'
            )
        return value

    def _needs_reviewer(self) -> str | None:
        return "sampling with rate above 0" if self.rate > 0 else None

    def _payload(self) -> dict[str, Any]:
        return {"kind": "sampling", "rate": self.rate, **super()._payload()}
