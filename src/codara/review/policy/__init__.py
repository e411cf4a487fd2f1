"""Declarative review policies, evaluated with CEL.

A workflow declares in ``codara.toml`` the shape of the values its policies look at
(``[workflows.<name>.policy_input]``) and an ordered list of policies
(``[[workflows.<name>.policies]]``), each a CEL condition (``when``) and an outcome: ``allow``,
``deny`` or ``ask`` (send to a human reviewer of ``role``). :func:`load_policies` validates and
compiles them, rejecting anything that would fail later; :meth:`WorkflowPolicies.evaluate`
turns one set of input values into a :class:`Decision`.

Semantics
---------
* Policies are evaluated in declaration order; the first whose condition is true decides.
* None fires: ``allow``. An ``allow`` (by default or by an ``allow`` policy) may then be
  picked for an audit after the fact by ``[workflows.<name>.sampling]``: it stays ``allow``
  (the answer goes out at once) with ``sampled`` set and the audit's role and deadline; the
  review gate creates the audit review beside it. The choice hashes the workflow name and
  the caller's ``decision_key`` (e.g. ``f"{run_id}:{step}"``) with sha256, so it is the
  same on every replay and in every process, and raising the rate only adds keys.
* Inputs are coerced to the declared types before CEL sees them: an ``int`` given for a
  ``double`` field becomes a double (CEL does not compare ``150`` with ``100.0``); an ``int``
  field is saturated to the int64 range; a ``double`` too large for a float becomes infinity;
  text with unpaired surrogates has them replaced by U+FFFD. A field that is absent or None
  gets the zero value of its type (``0.0``, ``0``, ``""``, ``false``, or a table of zero
  values) and is listed in :attr:`Decision.defaults_used`. Keys not declared are ignored.
  A value that cannot be read as its type (text for a number, a number for a bool, a
  fractional number for an int) raises :class:`PolicyInputError`.
* If a condition fails at run time (division by zero, an overflow), the policy does not
  silently pass: the decision is ``ask`` to that policy's ``role``, or ``deny`` if it has
  none, with :attr:`Decision.error` and the reason saying it could not be evaluated.

Modules
-------
This package's ``__init__`` is the facade; the parts live in private modules beside it:

* ``_schema``: the rule models (:class:`PolicyRule`, :class:`SamplingRule`), durations
  and version digests; ``_errors``: :class:`PolicyError` and friends.
* ``_input``: the declared input shape, and coercing caller values into it.
* ``_parse``: the process's CEL environment (cel-python's ``CompiledRunner``), parsing
  and syntax errors with line:column.
* ``_check`` (with ``_types``): the load-time checks of names and types, and
  compiling.
* ``_eval``: evaluation and :class:`Decision`.

Cost: most of a decision (about 85% for the three-policy example) is cel-python evaluating
each policy evaluated, some 30 us per policy and more for each input a condition reads (celpy
copies its activation and resolves every name through runtime ``typing`` calls). Reading the
inputs, taking the lock and building the decision are done once per decision.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, cast

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

from codara.review.policy._check import compile_rules
from codara.review.policy._errors import (
    PolicyError,
    PolicyInputError,
    PolicyProblem,
    problems_from_validation,
)
from codara.review.policy._eval import Decision, Engine, sample_point
from codara.review.policy._input import Reader, check_shape, fields_of
from codara.review.policy._schema import (
    OnTimeout,
    Outcome,
    PolicyRule,
    SamplingRule,
    digest,
    drop_computed_version,
)

__all__ = [
    "Decision",
    "OnTimeout",
    "Outcome",
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "SamplingRule",
    "WorkflowPolicies",
    "load_policies",
    "sample_point",
]


class WorkflowPolicies(BaseModel):
    """A workflow's validated, compiled review policies. Build with :func:`load_policies`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str
    rules: tuple[PolicyRule, ...] = ()
    sampling: SamplingRule | None = None
    reject_reasons: tuple[str, ...] = ()
    """Reasons a reviewer may pick when rejecting (shown by the review console)."""
    policy_input: dict[str, Any] = Field(default_factory=dict)
    """The declared input shape: field -> "double" | "int" | "string" | "bool" | table."""

    _engine: Engine = PrivateAttr()
    _version: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _drop_version(cls, data: Any) -> Any:
        return drop_computed_version(data)

    @field_validator("policy_input")
    @classmethod
    def _valid_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        shape, faults = check_shape(value)
        if faults:
            raise ValueError("; ".join(f"{where}: {reason}" for where, reason in faults))
        return shape

    def model_post_init(self, context: Any, /) -> None:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        problems = [
            PolicyProblem(self.workflow, name, "name", "two policies share this name")
            for name in duplicates
        ]
        fields = fields_of(self.policy_input)
        compiled, compile_problems = compile_rules(
            self.workflow, self.rules, self.policy_input, fields
        )
        problems.extend(compile_problems)
        if problems:
            raise PolicyError(self.workflow, problems)
        self._version = digest(
            {
                "workflow": self.workflow,
                "rules": [rule.version for rule in self.rules],
                "sampling": self.sampling.version if self.sampling else None,
                "reject_reasons": list(self.reject_reasons),
                "policy_input": self.policy_input,  # plain dicts: check_shape made them so
            }
        )
        reader = Reader(self.workflow, fields)
        self._engine = Engine(self.workflow, compiled, reader, self.sampling, self._version)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def version(self) -> str:
        """sha256 (hex) over every rule's version, sampling, reject reasons and input shape."""
        return self._version

    @property
    def paths_read(self) -> tuple[str, ...]:
        """The dotted input paths the conditions read (``data.stale``), each once, in
        policy order: what a decision needs recorded to be taken again (``policy simulate``)."""
        private = cast(dict[str, Any], self.__pydantic_private__)
        engine: Engine = private["_engine"]
        return tuple(dict.fromkeys(path for rule in engine.rules for path in rule.paths))

    def evaluate(self, values: Mapping[str, Any], *, decision_key: str) -> Decision:
        """Decide for ``values`` (of the declared shape); see the module docs for semantics.

        ``decision_key`` identifies the decision for sampling (e.g. ``f"{run_id}:{step}"``):
        the same key always gets the same answer. Raises :class:`PolicyInputError` only for
        values that cannot be read as their declared type.
        """
        # Read the engine from pydantic's private-attribute dict: ``self._engine`` goes through
        # BaseModel.__getattr__, which costs a few microseconds per decision.
        private = cast(dict[str, Any], self.__pydantic_private__)
        engine: Engine = private["_engine"]
        return engine.decide(values, decision_key)


# --------------------------------------------------------------------------- loading

_WORKFLOW_KEYS = ("policies", "policy_input", "sampling", "reject_reasons")
_KEY_ALIASES = {
    "policy": "policies",
    "rules": "policies",
    "sample": "sampling",
    "inputs": "policy_input",
    "input": "policy_input",
    "policy_inputs": "policy_input",
    "reject_reason": "reject_reasons",
}


def _workflow_table(raw: Mapping[str, Any], workflow: str) -> object:
    if not any(key in raw for key in _WORKFLOW_KEYS):
        workflows = raw.get("workflows")
        if isinstance(workflows, Mapping):
            return workflows.get(workflow, {})
        if isinstance(raw.get(workflow), Mapping):
            return raw[workflow]
    return raw


def load_policies(raw: Mapping[str, Any], *, workflow: str) -> WorkflowPolicies:
    """Validate and compile a workflow's review policies.

    ``raw`` is the parsed ``codara.toml`` document, its ``[workflows]`` table, or the
    workflow's own table (``[workflows.<workflow>]``). Keys of that table other than
    ``policies``, ``policy_input``, ``sampling`` and ``reject_reasons`` belong to other
    settings and are ignored, unless they look like a misspelling of one of those. A workflow
    with no policies allows everything (subject to sampling).

    Raises :class:`PolicyError` listing every problem found.
    """
    problems: list[PolicyProblem] = []

    def problem(policy: str | None, setting: str | None, reason: str) -> None:
        problems.append(PolicyProblem(workflow, policy, setting, reason))

    table = _workflow_table(raw, workflow) if isinstance(raw, Mapping) else raw
    if not isinstance(table, Mapping):
        problem(None, None, f"[workflows.{workflow}] must be a table")
        raise PolicyError(workflow, problems)

    for key in table:
        if key in _WORKFLOW_KEYS or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, _WORKFLOW_KEYS, n=1, cutoff=0.75)
        guess = _KEY_ALIASES.get(key) or (close[0] if close else None)
        if guess is not None:
            problem(
                None, key, f"unknown key '{key}' in [workflows.{workflow}]; did you mean '{guess}'?"
            )

    shape, shape_faults = check_shape(table.get("policy_input", {}))
    for where, reason in shape_faults:
        problem(None, where, reason)

    rules: list[PolicyRule] = []
    raw_rules = table.get("policies", [])
    if isinstance(raw_rules, Mapping):
        problem(
            None,
            "policies",
            f"policies must be a list of tables: write [[workflows.{workflow}.policies]] "
            "(double brackets) above each policy",
        )
        raw_rules = []
    elif not isinstance(raw_rules, list):
        problem(None, "policies", "policies must be a list of tables")
        raw_rules = []
    seen_names: set[str] = set()
    for index, raw_rule in enumerate(raw_rules, 1):
        name = raw_rule.get("name") if isinstance(raw_rule, Mapping) else None
        label = name if isinstance(name, str) and name.strip() else f"policy #{index}"
        if not isinstance(raw_rule, Mapping):
            problem(label, None, "each policy must be a table of settings")
            continue
        try:
            rule = PolicyRule.model_validate(raw_rule)
        except ValidationError as exc:
            for setting, reason in problems_from_validation(exc, PolicyRule):
                problem(label, setting, reason)
            continue
        if rule.name in seen_names:
            problem(rule.name, "name", "two policies share this name; names must be unique")
            continue
        seen_names.add(rule.name)
        rules.append(rule)

    sampling: SamplingRule | None = None
    if "sampling" in table:
        try:
            sampling = SamplingRule.model_validate(table["sampling"])
        except ValidationError as exc:
            for setting, reason in problems_from_validation(exc, SamplingRule):
                problem(None, f"sampling.{setting}" if setting else "sampling", reason)

    reject_reasons = table.get("reject_reasons", [])
    if not isinstance(reject_reasons, list) or not all(
        isinstance(r, str) and r.strip() for r in reject_reasons
    ):
        problem(
            None, "reject_reasons", 'reject_reasons must be a list of texts, e.g. ["wrong_intent"]'
        )
        reject_reasons = []
    elif len(set(reject_reasons)) != len(reject_reasons):
        problem(None, "reject_reasons", "reject_reasons lists the same reason twice")

    if problems:
        if not shape_faults:  # report broken conditions too, in the same error
            problems.extend(compile_rules(workflow, rules, shape, fields_of(shape))[1])
        raise PolicyError(workflow, problems)
    return WorkflowPolicies(
        workflow=workflow,
        rules=tuple(rules),
        sampling=sampling,
        reject_reasons=tuple(reject_reasons),
        policy_input=shape,
    )
