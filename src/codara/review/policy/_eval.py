"""Evaluating compiled policies: one set of input values in, one :class:`Decision` out.

Per decision: the inputs are read once (:class:`~codara.review.policy._input.Reader`), the CEL
lock is taken once, and each policy's program gets only the top-level inputs it reads (celpy
copies its activation and loads every variable given on each evaluation, so this is the part
of the cost that is ours to keep small). The strings, settings and versions a decision carries
are worked out when the policies are loaded, not per decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import CELEvalError

from codara.review.policy._input import Reader
from codara.review.policy._parse import Cel, quiet
from codara.review.policy._schema import OnTimeout, Outcome, PolicyRule, SamplingRule, seconds

__all__ = [
    "CompiledRule",
    "Decision",
    "Engine",
    "cel_error",
    "describe_error",
    "is_bool",
    "is_propagated",
    "is_structural",
    "kind_of",
    "sample_point",
]

logger = logging.getLogger("codara.review._policy")  # the name it has always logged under

# --------------------------------------------------------------------------- CEL values and errors


def cel_error(exc: BaseException) -> tuple[str, type[BaseException] | None, str]:
    """(celpy's message, the Python exception class behind it, its detail) of an error."""
    if not isinstance(exc, CELEvalError):
        return type(exc).__name__, type(exc), str(exc)
    args: tuple[Any, ...] = exc.args
    while (
        len(args) >= 3
        and isinstance(args[1], type)
        and issubclass(args[1], CELEvalError)
        and isinstance(args[2], tuple)
    ):
        args = args[2]
    message = str(args[0]) if args else type(exc).__name__
    kind = args[1] if len(args) > 1 and isinstance(args[1], type) else None
    detail = ""
    if len(args) > 2:
        inner = args[2]
        detail = str(inner[0]) if isinstance(inner, tuple) and inner else str(inner)
    return message, kind, detail


def is_propagated(exc: BaseException) -> bool:
    """True when celpy tripped over an error value from a part of the expression (its ``? :``
    and macros raise a TypeError naming CELEvalError): the cause lies in that part."""
    return "CELEvalError" in cel_error(exc)[2]


def is_structural(exc: BaseException) -> bool:
    """True for errors that come from the condition's form (types, names), not from values."""
    message, kind, _ = cel_error(exc)
    if message == "unbound function":
        return True
    if is_propagated(exc):
        return False
    return kind is not None and issubclass(kind, (TypeError, AttributeError))


def describe_error(exc: BaseException) -> str:
    message, kind, detail = cel_error(exc)
    if is_propagated(exc):
        return "a part of the condition failed"
    if kind is not None and issubclass(kind, ZeroDivisionError):
        return "division by zero"
    if message == "return error for overflow" and detail == "overflow":
        return "a number went out of range (overflow)"
    if kind is not None and issubclass(kind, (TypeError, AttributeError)):
        return f"values of the wrong type ({detail or message})"
    text = f"{message}: {detail}" if detail else message
    return text if len(text) <= 200 else text[:197] + "..."


_TYPE_WORDS: tuple[tuple[type, str], ...] = (
    (celtypes.BoolType, "true/false (bool)"),
    (bool, "true/false (bool)"),
    (celtypes.UintType, "an unsigned whole number (uint)"),
    (celtypes.IntType, "a whole number (int)"),
    (celtypes.DoubleType, "a number (double)"),
    (celtypes.StringType, "text (string)"),
    (celtypes.BytesType, "bytes"),
    (celtypes.ListType, "a list"),
    (celtypes.MapType, "a table (map)"),
    (celtypes.TimestampType, "a timestamp"),
    (celtypes.DurationType, "a duration"),
    (type(None), "null"),
)


def kind_of(value: object) -> str:
    for cls, words in _TYPE_WORDS:
        if isinstance(value, cls):
            return words
    return type(value).__name__


def is_bool(value: object) -> bool:
    """celpy's bool, or the Python bool that ``has()`` gives."""
    return isinstance(value, (celtypes.BoolType, bool))


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the policies decided for one set of inputs. ``inputs_seen`` is JSON-able."""

    outcome: Outcome
    policy: str | None
    """The policy that decided (fired, or failed to evaluate); None when none fired."""
    policy_version: str
    """Full sha256 of the deciding policy; of the whole policy set when ``policy`` is None."""
    reason: str
    role: str | None = None
    deadline: timedelta | None = None
    on_timeout: OnTimeout | None = None
    escalate_to: str | None = None
    escalation_deadline: timedelta | None = None
    approvals: int = 0
    """Distinct approvals needed; 0 unless the outcome is ``ask``."""
    priority: int | None = None
    sampled: bool = False
    """True when sampling picked this ``allow`` for an audit after the fact: the answer goes
    out at once, and ``role``, ``deadline`` ... say who audits it and by when."""
    sampling_rate: float | None = None
    """The chance every automatic answer had of being picked (set when ``sampled``)."""
    inputs_seen: dict[str, Any] = field(default_factory=dict)
    """The coerced values the policies saw (non-finite doubles as "NaN", "Infinity", ...)."""
    defaults_used: tuple[str, ...] = ()
    """Input fields that were absent (or None) and took their zero value."""
    error: str | None = None
    """Set when the deciding policy could not be evaluated (the outcome is then fail-safe)."""
    policy_set_version: str = ""
    """sha256 of the workflow's whole policy set (all rules, sampling, input shape)."""

    @property
    def short_version(self) -> str:
        return self.policy_version[:12]

    def as_record(self) -> dict[str, Any]:
        """The decision as a JSON-able dict (durations in seconds) for the journal."""
        return {
            "outcome": self.outcome,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "policy_set_version": self.policy_set_version,
            "reason": self.reason,
            "role": self.role,
            "deadline": seconds(self.deadline),
            "on_timeout": self.on_timeout,
            "escalate_to": self.escalate_to,
            "escalation_deadline": seconds(self.escalation_deadline),
            "approvals": self.approvals,
            "priority": self.priority,
            "sampled": self.sampled,
            "sampling_rate": self.sampling_rate,
            "inputs_seen": self.inputs_seen,
            "defaults_used": list(self.defaults_used),
            "error": self.error,
        }


def sample_point(workflow: str, decision_key: str) -> float:
    """Where a decision key falls in [0, 1): sampled when below the rate (sha256, stable)."""
    data = f"codara.review.sampling\x00{workflow}\x00{decision_key}"
    digest_bytes = hashlib.sha256(data.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest_bytes[:8], "big") / 2**64


def _show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return value
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, int) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _review(rule: PolicyRule | SamplingRule) -> dict[str, Any]:
    """The settings a review decision carries."""
    return {
        "role": rule.role,
        "deadline": rule.deadline,
        "on_timeout": rule.on_timeout,
        "escalate_to": rule.escalate_to,
        "escalation_deadline": rule.escalation_deadline,
        "approvals": rule.approvals,
    }


class CompiledRule:
    """A policy ready to evaluate, with what its decisions say worked out in advance."""

    __slots__ = ("fired", "names", "parts", "paths", "review", "rule", "runner", "version")

    def __init__(
        self,
        rule: PolicyRule,
        runner: celpy.Runner,
        paths: tuple[str, ...],
        parts: tuple[tuple[str, celpy.Runner], ...],
    ) -> None:
        self.rule = rule
        self.runner = runner
        self.paths = paths
        """Dotted input paths the condition reads, in order of appearance."""
        self.names = tuple(dict.fromkeys(path.split(".")[0] for path in paths))
        """Top-level inputs it reads: only these are loaded into its activation."""
        self.parts = parts
        """The condition's operations, innermost first, to name the cause of a run-time error."""
        self.version = rule.version
        self.review = _review(rule)
        condition = " ".join(rule.when.split())
        self.fired = f"{rule.name}: {condition} was true"

    def cause(self, context: dict[str, Any], exc: Exception) -> str:
        """What went wrong, naming the innermost part of the condition that failed."""
        for text, runner in self.parts:
            try:
                runner.evaluate(context)
            except Exception as inner:
                if not is_propagated(inner):
                    return f"{describe_error(inner)} in `{text}`"
        return describe_error(exc)

    def shown(self, seen: Mapping[str, Any]) -> str:
        """``path=value, ...`` of the inputs the condition reads."""
        out = []
        for path in self.paths:
            value: Any = seen
            for part in path.split("."):
                value = value[part]
            out.append(f"{path}={_show_value(value)}")
        return ", ".join(out)


class Engine:
    """Turns input values into decisions for one workflow's compiled policies."""

    __slots__ = (
        "_nothing", "_sample_review", "lock", "reader", "rules", "sampling", "version", "workflow"
    )  # fmt: skip

    def __init__(
        self,
        workflow: str,
        rules: tuple[CompiledRule, ...],
        reader: Reader,
        sampling: SamplingRule | None,
        version: str,
    ) -> None:
        self.workflow = workflow
        self.rules = rules
        self.reader = reader
        self.sampling = sampling if sampling is not None and sampling.rate > 0.0 else None
        """Sampling, when it can pick anything."""
        self._sample_review = _review(sampling) if sampling is not None else {}
        self.version = version
        self.lock = Cel.get().lock
        checked = ", ".join(compiled.rule.name for compiled in rules)
        self._nothing = f"no policy applied (checked: {checked})" if checked else "no policies"

    def decide(self, values: Mapping[str, Any], decision_key: str) -> Decision:
        activation, seen, defaults = self.reader.read(values)
        fired: CompiledRule | None = None
        failed: CompiledRule | None = None
        error = ""
        with self.lock:
            quiet.on = True
            try:
                for compiled in self.rules:
                    context = {name: activation[name] for name in compiled.names}
                    try:
                        result = compiled.runner.evaluate(context)
                    except Exception as exc:
                        failed, error = compiled, compiled.cause(context, exc)
                        break
                    if not is_bool(result):
                        failed, error = compiled, f"it gave {kind_of(result)} instead of true/false"
                        break
                    if result:
                        fired = compiled
                        break
            finally:
                quiet.on = False
        if failed is not None:
            return self._fail_safe(failed, error, seen, defaults)
        if fired is None:
            decision = Decision(
                outcome="allow",
                policy=None,
                policy_version=self.version,
                reason=self._nothing,
                inputs_seen=seen,
                defaults_used=defaults,
                policy_set_version=self.version,
            )
            return self._maybe_sample(decision, decision_key)
        rule = fired.rule
        shown = fired.shown(seen)
        decision = Decision(
            outcome=rule.outcome,
            policy=rule.name,
            policy_version=fired.version,
            reason=f"{fired.fired} ({shown})" if shown else fired.fired,
            priority=rule.priority,
            inputs_seen=seen,
            defaults_used=defaults,
            policy_set_version=self.version,
            **(fired.review if rule.outcome == "ask" else {}),
        )
        if rule.outcome == "allow":
            return self._maybe_sample(decision, decision_key)
        return decision

    def _fail_safe(
        self, compiled: CompiledRule, error: str, seen: dict[str, Any], defaults: tuple[str, ...]
    ) -> Decision:
        rule = compiled.rule
        logger.warning(
            "workflow %r policy %r could not be evaluated (%s); failing safe",
            self.workflow,
            rule.name,
            error,
        )
        shown = compiled.shown(seen)
        inputs = f" with {shown}" if shown else ""
        head = f"{rule.name}: the policy could not be evaluated{inputs}"
        if rule.role is not None:
            outcome: Outcome = "ask"
            reason = f"{head} ({error}); sent to {rule.role} for review as a precaution"
            review = compiled.review
        else:
            outcome = "deny"
            reason = f"{head} ({error}); denied as a precaution (the policy names no reviewer role)"
            review = {}
        return Decision(
            outcome=outcome,
            policy=rule.name,
            policy_version=compiled.version,
            reason=reason,
            priority=rule.priority,
            inputs_seen=seen,
            defaults_used=defaults,
            error=error,
            policy_set_version=self.version,
            **review,
        )

    def _maybe_sample(self, decision: Decision, decision_key: str) -> Decision:
        sampling = self.sampling
        if sampling is None:
            return decision
        if sample_point(self.workflow, decision_key) >= sampling.rate:
            return decision
        return Decision(
            outcome="allow",
            policy=decision.policy,
            policy_version=decision.policy_version,
            reason=(
                f"{decision.reason}; picked for an audit after the fact by sampling "
                f"(rate {sampling.rate:.4g})"
            ),
            priority=decision.priority,
            sampled=True,
            sampling_rate=sampling.rate,
            inputs_seen=decision.inputs_seen,
            defaults_used=decision.defaults_used,
            policy_set_version=self.version,
            **self._sample_review,
        )
