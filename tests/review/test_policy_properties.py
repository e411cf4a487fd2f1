"""Property tests: evaluation never raises on input of the declared shape, and agrees with a
plain-Python reading of the example policies."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codara.review.policy import (
    PolicyError,
    PolicyInputError,
    WorkflowPolicies,
    load_policies,
    sample_point,
)

EXAMPLE_TOML = """
[workflows.triage.policy_input]
confidence = "double"
label = "string"
sensitive = "bool"
amount = "double"
count = "int"
customer = { tier = "string", country = "string", address = { zip = "string", lines = "int" } }

[[workflows.triage.policies]]
name = "sensitive-intents-to-fraud"
when = "sensitive"
outcome = "ask"
role = "fraud"
deadline = "4h"
on_timeout = "escalate"
escalate_to = "fraud-lead"
four_eyes = true

[[workflows.triage.policies]]
name = "low-confidence"
when = "confidence < 0.85"
outcome = "ask"
role = "support"
deadline = "24h"
on_timeout = "deny"

[[workflows.triage.policies]]
name = "big-refund"
when = "amount > 500.0 && customer.tier != 'gold'"
outcome = "deny"

[workflows.triage.sampling]
rate = 0.05
role = "audit"
deadline = "72h"
on_timeout = "close"
"""

# Policies that do arithmetic and string work on every field, so that extreme values reach
# division, overflow and regex paths. None of them may make evaluation raise.
STRESS_POLICIES = [
    ("per-item", "100 / count > 2", "ask", "ops"),
    ("scaled", "count * 1000 + customer.address.lines > 7", "deny", None),
    ("ratio", "amount / confidence > 3.5 || -amount < confidence * 2.0", "ask", "ops"),
    ("modulo", "count % (customer.address.lines - 1) == 0", "ask", "ops"),
    ("text", "size(label) > 3 && label.startsWith(customer.tier + customer.country)", "deny", None),
    ("zip", "customer.address.zip.matches('^[0-9]{5}$') && int(amount) > 10", "ask", "ops"),
    ("conv", "double(count) > amount && string(count) != label", "allow", None),
]

EXAMPLE = tomllib.loads(EXAMPLE_TOML)
SHAPE: dict[str, Any] = EXAMPLE["workflows"]["triage"]["policy_input"]

# Text including unpaired surrogates, control characters and astral-plane characters.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)


def value_of(kind: Any) -> st.SearchStrategy[Any]:
    """Values of one declared type, as a caller might pass them (None means absent)."""
    if isinstance(kind, Mapping):
        return st.none() | shaped(kind)
    if kind == "double":
        return st.none() | st.floats() | st.integers(min_value=-(10**400), max_value=10**400)
    if kind == "int":
        return (
            st.none()
            | st.integers(min_value=-(10**30), max_value=10**30)
            | st.sampled_from([2**63 - 1, -(2**63), 2**62, 0, -1, 1])
        )
    if kind == "string":
        return st.none() | any_text | st.sampled_from(["gold", "silver", "", "12345"])
    assert kind == "bool"
    return st.none() | st.booleans()


def shaped(shape: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings of the declared shape: any field may be missing; undeclared extras allowed."""
    return st.fixed_dictionaries(
        {},
        optional={name: value_of(kind) for name, kind in shape.items()}
        | {"undeclared": st.integers() | any_text},
    )


@pytest.fixture(scope="module", autouse=True)
def example() -> WorkflowPolicies:
    """Also warms celpy up before any property test runs: its first use raises the recursion
    limit, which Hypothesis would report if it happened inside a test."""
    return load_policies(EXAMPLE, workflow="triage")


def _load(policies: list[dict[str, Any]]) -> WorkflowPolicies:
    raw = tomllib.loads(EXAMPLE_TOML)
    raw["workflows"]["triage"]["policies"] = policies
    return load_policies(raw, workflow="triage")


@pytest.fixture(scope="module")
def stress() -> list[WorkflowPolicies]:
    """Each stress policy on its own, so every one is evaluated for every input."""
    return [
        _load([{"name": name, "when": when, "outcome": outcome} | ({"role": role} if role else {})])
        for name, when, outcome, role in STRESS_POLICIES
    ]


def as_double(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def expected_example(values: Mapping[str, Any]) -> tuple[str, str | None]:
    """The example's policies, read in plain Python."""
    customer = values.get("customer") or {}
    tier = customer.get("tier") or ""
    if values.get("sensitive"):
        return "ask", "sensitive-intents-to-fraud"
    if as_double(values.get("confidence")) < 0.85:
        return "ask", "low-confidence"
    if as_double(values.get("amount")) > 500.0 and tier != "gold":
        return "deny", "big-refund"
    return "allow", None


FAST = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(values=shaped(SHAPE), key=any_text)
def test_example_never_raises_and_matches_plain_python(
    example: WorkflowPolicies, values: dict[str, Any], key: str
) -> None:
    decision = example.evaluate(values, decision_key=key)
    outcome, policy = expected_example(values)
    if outcome == "allow" and sample_point("triage", key) < 0.05:
        assert decision.sampled  # still allow: audited after the fact
        assert decision.role == "audit"
    else:
        assert not decision.sampled
    assert (decision.outcome, decision.policy) == (outcome, policy)
    assert decision.error is None
    json.dumps(decision.as_record(), allow_nan=False).encode("utf-8")
    assert example.evaluate(values, decision_key=key) == decision


@FAST
@given(values=shaped(SHAPE))
def test_stress_policies_never_raise_and_never_silently_allow(
    stress: list[WorkflowPolicies], values: dict[str, Any]
) -> None:
    for policies in stress:
        decision = policies.evaluate(values, decision_key="k")
        assert decision.outcome in ("allow", "deny", "ask")
        if decision.error is not None:
            assert decision.outcome in ("ask", "deny")
            assert "could not be evaluated" in decision.reason
            assert decision.role == policies.rules[0].role
            assert "wrong type" not in decision.error  # type errors are caught at load
        json.dumps(decision.as_record(), allow_nan=False).encode("utf-8")


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["tier", "country", "address", "zip", "lines"]), children)
    ),
    max_leaves=8,
)


@FAST
@given(
    values=st.dictionaries(
        st.sampled_from(["confidence", "label", "sensitive", "amount", "count", "customer", "x"]),
        json_like,
    )
)
def test_any_input_gives_a_decision_or_a_policy_input_error(
    example: WorkflowPolicies, values: dict[str, Any]
) -> None:
    outcome: str
    try:
        outcome = example.evaluate(values, decision_key="k").outcome
    except PolicyInputError as exc:
        outcome, field, message = "", exc.field, str(exc)
    if not outcome:
        assert field
        assert "triage" in message
    assert outcome in ("", "allow", "deny", "ask")


@FAST
@given(key=any_text)
def test_sampling_is_a_pure_function_of_the_key(example: WorkflowPolicies, key: str) -> None:
    calm = {"confidence": 0.99}
    first = example.evaluate(calm, decision_key=key)
    assert first.sampled == (sample_point("triage", key) < 0.05)
    assert example.evaluate(calm, decision_key=key).sampled == first.sampled


cel_alphabet = st.sampled_from(
    [
        "amount", "confidence", "label", "count", "customer", ".", "tier", "address", "zip",
        "(", ")", "[", "]", "{", "}", ",", ":", "?", "!", "-", "+", "*", "/", "%", "<", ">=",
        "==", "!=", "&&", "||", " in ", "1", "2.5", "'x'", "true", "null", "size", "has",
        "exists", "x", "int", "double", "matches", " ", "\n", "1u", "b'z'", "foo", "=",
    ]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(cel_alphabet, min_size=1, max_size=12))
def test_loading_any_condition_gives_policies_or_a_policy_error(parts: list[str]) -> None:
    raw = tomllib.loads(EXAMPLE_TOML)
    when = "".join(parts)
    raw["workflows"]["triage"]["policies"] = [{"name": "fuzz", "when": when, "outcome": "deny"}]
    try:
        loaded = load_policies(raw, workflow="triage")
    except PolicyError as exc:
        error = str(exc)
    else:
        error = ""
        assert loaded.evaluate({}, decision_key="k").outcome in ("allow", "deny", "ask")
    assert not error or "policy 'fuzz'" in error


# Conditions over the declared fields: typed ones (mostly valid) and freely mixed ones
# (mostly type errors, which must be refused at load).
DOUBLES = ["amount", "confidence", "2.5", "0.0", "-1.5", "double(count)"]
INTS = ["count", "customer.address.lines", "1", "0", "-3", "size(label)", "int(amount)"]
STRINGS = ["label", "customer.tier", "customer.address.zip", "'gold'", "''", "string(count)"]
BOOLS = ["sensitive", "true", "false", "has(customer.tier)"]
ARITHMETIC = ["+", "-", "*", "/"]
COMPARE = ["<", "<=", ">", ">=", "==", "!="]


def _binary(
    left: st.SearchStrategy[str], ops: list[str], right: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    return st.tuples(left, st.sampled_from(ops), right).map(lambda t: f"({t[0]} {t[1]} {t[2]})")


def typed_conditions() -> st.SearchStrategy[str]:
    doubles = st.recursive(
        st.sampled_from(DOUBLES), lambda inner: _binary(inner, ARITHMETIC, inner), max_leaves=4
    )
    ints = st.recursive(
        st.sampled_from(INTS), lambda inner: _binary(inner, [*ARITHMETIC, "%"], inner), max_leaves=4
    )
    strings = st.recursive(
        st.sampled_from(STRINGS), lambda inner: _binary(inner, ["+"], inner), max_leaves=3
    )
    comparisons = st.one_of(
        _binary(doubles, COMPARE, doubles),
        _binary(ints, COMPARE, ints),
        _binary(strings, COMPARE, strings),
        st.tuples(strings, st.lists(strings, max_size=3)).map(
            lambda t: f"({t[0]} in [{', '.join(t[1])}])"
        ),
        strings.map(lambda e: f"{e}.startsWith('a')"),
        st.sampled_from(BOOLS),
    )
    return st.recursive(
        comparisons,
        lambda inner: st.one_of(
            _binary(inner, ["&&", "||", "==", "!="], inner),
            inner.map(lambda e: f"!{e}"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        ),
        max_leaves=4,
    )


def mixed_conditions() -> st.SearchStrategy[str]:
    atom = st.sampled_from(DOUBLES + INTS + STRINGS + BOOLS)
    ops = [*ARITHMETIC, "%", *COMPARE, "&&", "||", "in"]
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            _binary(inner, ops, inner),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
            inner.map(lambda e: f"!{e}"),
            st.lists(inner, min_size=1, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        ),
        max_leaves=5,
    )


@settings(max_examples=50, deadline=None)
@given(
    when=typed_conditions() | mixed_conditions(),
    inputs=st.lists(shaped(SHAPE), min_size=1, max_size=2),
)
def test_a_loaded_condition_never_fails_on_types_at_run_time(
    when: str, inputs: list[dict[str, Any]]
) -> None:
    try:
        loaded = _load([{"name": "gen", "when": when, "outcome": "ask", "role": "ops"}])
    except PolicyError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        assert "policy 'gen'" in error
        return
    for values in inputs:
        decision = loaded.evaluate(values, decision_key="k")
        if decision.error is not None:
            assert decision.outcome == "ask"
            assert "wrong type" not in decision.error, (when, values, decision.error)
