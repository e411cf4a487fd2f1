"""Review policies: loading, outcomes, sampling, fail-safe evaluation and config errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from codara.errors import CodaraError, ConfigError, InputError
from codara.review.policy import (
    Decision,
    PolicyError,
    PolicyInputError,
    WorkflowPolicies,
    load_policies,
    sample_point,
)

EXAMPLE_TOML = """
[workflows.triage]
reject_reasons = ["wrong_intent", "unsafe_reply", "needs_more_info"]

[workflows.triage.policy_input]
confidence = "double"
label = "string"
sensitive = "bool"
amount = "double"
customer = { tier = "string", country = "string" }

[[workflows.triage.policies]]
name = "sensitive-intents-to-fraud"
when = "sensitive"
outcome = "ask"
role = "fraud"
deadline = "4h"
on_timeout = "escalate"
escalate_to = "fraud-lead"
escalation_deadline = "2h"
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

CONFIDENT = {"confidence": 0.99, "label": "refund", "amount": 20.0}


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE_TOML)


def table(raw: dict[str, Any]) -> dict[str, Any]:
    workflow: dict[str, Any] = raw["workflows"]["triage"]
    return workflow


def with_policy(**settings: Any) -> dict[str, Any]:
    """The example with one more policy, placed first."""
    raw = example()
    table(raw)["policies"].insert(0, {"name": "extra", "outcome": "deny", **settings})
    return raw


def load_error(raw: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policies(raw, workflow="triage")
    return caught.value


def unsampled_key(policies: WorkflowPolicies) -> str:
    rate = policies.sampling.rate if policies.sampling else 0.0
    return next(f"k{i}" for i in range(1000) if sample_point(policies.workflow, f"k{i}") >= rate)


def sampled_key(policies: WorkflowPolicies) -> str:
    assert policies.sampling is not None
    rate = policies.sampling.rate
    return next(f"k{i}" for i in range(1000) if sample_point(policies.workflow, f"k{i}") < rate)


@pytest.fixture(scope="module")
def policies() -> WorkflowPolicies:
    return load_policies(example(), workflow="triage")


@pytest.fixture(scope="module")
def key(policies: WorkflowPolicies) -> str:
    return unsampled_key(policies)


# --------------------------------------------------------------------------- loading


def test_example_loads_with_every_setting(policies: WorkflowPolicies) -> None:
    fraud, low, big = policies.rules
    assert [r.name for r in policies.rules] == [
        "sensitive-intents-to-fraud",
        "low-confidence",
        "big-refund",
    ]
    assert fraud.approvals == 2  # four_eyes = true
    assert fraud.deadline == timedelta(hours=4)
    assert fraud.on_timeout == "escalate"
    assert fraud.escalate_to == "fraud-lead"
    assert fraud.escalation_deadline == timedelta(hours=2)
    assert low.approvals == 1
    assert low.deadline == timedelta(hours=24)
    assert big.role is None
    assert policies.sampling is not None
    assert policies.sampling.rate == 0.05
    assert policies.sampling.deadline == timedelta(hours=72)
    assert policies.reject_reasons == ("wrong_intent", "unsafe_reply", "needs_more_info")
    assert policies.policy_input["customer"] == {"tier": "string", "country": "string"}
    for versioned in (*policies.rules, policies.sampling, policies):
        version: str = versioned.version  # type: ignore[attr-defined]
        assert len(version) == 64
        int(version, 16)
    assert fraud.short_version == fraud.version[:12]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(minutes=90)),
    ],
)
def test_deadline_spellings(text: str, expected: timedelta) -> None:
    raw = example()
    table(raw)["policies"][1]["deadline"] = text
    assert load_policies(raw, workflow="triage").rules[1].deadline == expected


def test_versions_follow_meaning_not_spelling(policies: WorkflowPolicies) -> None:
    raw = example()
    table(raw)["policies"][1]["deadline"] = "1440m"  # the same 24 hours
    same = load_policies(raw, workflow="triage")
    assert same.rules[1].version == policies.rules[1].version
    assert same.version == policies.version

    table(raw)["policies"][1]["when"] = "confidence < 0.8"
    changed = load_policies(raw, workflow="triage")
    assert changed.rules[1].version != policies.rules[1].version
    assert changed.rules[0].version == policies.rules[0].version
    assert changed.version != policies.version


def test_accepts_document_workflows_table_or_workflow_table(policies: WorkflowPolicies) -> None:
    raw = example()
    for given in (raw, raw["workflows"], table(raw)):
        assert load_policies(given, workflow="triage").version == policies.version


def test_workflow_without_policies_allows_everything() -> None:
    empty = load_policies(example(), workflow="other")
    decision = empty.evaluate({"anything": 1}, decision_key="k")
    assert decision.outcome == "allow"
    assert decision.policy is None


def test_keys_of_other_settings_are_ignored() -> None:
    raw = example()
    table(raw)["model"] = "gpt"
    table(raw)["retries"] = 3
    load_policies(raw, workflow="triage")


def test_conditions_that_use_more_of_cel_load() -> None:
    raw = example()
    conditions = [
        "has(customer.tier) && customer.tier in ['gold', 'platinum']",
        "['gold', 'platinum'].exists(t, t == customer.tier)",
        "label.startsWith('refund') || label.matches('^cancel')",
        "size(label) > 3 && label.contains('x')",
        "confidence < 0.5 ? amount > 10.0 : amount > 100.0",
        "int(amount) % 2 == 0",
        "type(amount) == double",
        "amount > 100",  # a double compared with a whole number literal works this way round
    ]
    table(raw)["policies"] = [
        {"name": f"p{i}", "when": when, "outcome": "deny"} for i, when in enumerate(conditions)
    ]
    loaded = load_policies(raw, workflow="triage")
    assert len(loaded.rules) == len(conditions)


# --------------------------------------------------------------------------- outcomes


def test_allow_when_no_policy_fires(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate(CONFIDENT, decision_key=key)
    assert decision.outcome == "allow"
    assert decision.policy is None
    assert decision.policy_version == policies.version
    assert decision.policy_set_version == policies.version
    assert decision.role is None
    assert decision.approvals == 0
    assert not decision.sampled
    assert "no policy applied" in decision.reason


def test_deny(policies: WorkflowPolicies, key: str) -> None:
    values = {**CONFIDENT, "amount": 600.0, "customer": {"tier": "silver", "country": "FR"}}
    decision = policies.evaluate(values, decision_key=key)
    assert decision.outcome == "deny"
    assert decision.policy == "big-refund"
    assert decision.policy_version == policies.rules[2].version
    assert decision.role is None
    assert decision.approvals == 0
    assert decision.reason == (
        "big-refund: amount > 500.0 && customer.tier != 'gold' was true "
        '(amount=600.0, customer.tier="silver")'
    )


def test_gold_customer_is_not_denied(policies: WorkflowPolicies, key: str) -> None:
    values = {**CONFIDENT, "amount": 600.0, "customer": {"tier": "gold"}}
    assert policies.evaluate(values, decision_key=key).outcome == "allow"


def test_ask(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate({"confidence": 0.62}, decision_key=key)
    assert decision.outcome == "ask"
    assert decision.policy == "low-confidence"
    assert decision.reason == "low-confidence: confidence < 0.85 was true (confidence=0.62)"
    assert decision.role == "support"
    assert decision.deadline == timedelta(hours=24)
    assert decision.on_timeout == "deny"
    assert decision.escalate_to is None
    assert decision.approvals == 1


def test_four_eyes_and_escalation(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate({**CONFIDENT, "sensitive": True}, decision_key=key)
    assert decision.outcome == "ask"
    assert decision.policy == "sensitive-intents-to-fraud"
    assert decision.role == "fraud"
    assert decision.approvals == 2
    assert decision.deadline == timedelta(hours=4)
    assert decision.on_timeout == "escalate"
    assert decision.escalate_to == "fraud-lead"
    assert decision.escalation_deadline == timedelta(hours=2)


def test_m_of_n_approvals() -> None:
    raw = example()
    table(raw)["policies"][1]["approvals"] = 3
    loaded = load_policies(raw, workflow="triage")
    decision = loaded.evaluate({"confidence": 0.1}, decision_key=unsampled_key(loaded))
    assert decision.approvals == 3


def test_first_match_wins_in_declaration_order(policies: WorkflowPolicies, key: str) -> None:
    everything = {
        "sensitive": True,
        "confidence": 0.1,
        "amount": 900.0,
        "customer": {"tier": "silver"},
    }
    assert policies.evaluate(everything, decision_key=key).policy == "sensitive-intents-to-fraud"
    assert policies.evaluate({**everything, "sensitive": False}, decision_key=key).policy == (
        "low-confidence"
    )

    raw = example()
    table(raw)["policies"].reverse()
    reordered = load_policies(raw, workflow="triage")
    decision = reordered.evaluate(everything, decision_key=unsampled_key(reordered))
    assert decision.policy == "big-refund"
    assert decision.outcome == "deny"


def test_allow_policy_ends_evaluation() -> None:
    raw = with_policy(name="trusted", when="customer.tier == 'gold'", outcome="allow")
    loaded = load_policies(raw, workflow="triage")
    values = {"sensitive": True, "customer": {"tier": "gold"}}
    decision = loaded.evaluate(values, decision_key=unsampled_key(loaded))
    assert decision.outcome == "allow"
    assert decision.policy == "trusted"


def test_priority_is_passed_through() -> None:
    raw = example()
    table(raw)["policies"][1]["priority"] = 7
    loaded = load_policies(raw, workflow="triage")
    assert loaded.evaluate({"confidence": 0.1}, decision_key="k").priority == 7


# --------------------------------------------------------------------------- inputs


def test_int_given_for_a_double_is_coerced(key: str) -> None:
    raw = with_policy(name="over-100", when="amount > 100.0")
    loaded = load_policies(raw, workflow="triage")
    decision = loaded.evaluate({**CONFIDENT, "amount": 150}, decision_key=key)
    assert decision.outcome == "deny"
    assert decision.policy == "over-100"
    assert decision.inputs_seen["amount"] == 150.0
    assert isinstance(decision.inputs_seen["amount"], float)

    raw = with_policy(name="under", when="100.0 < amount")
    flipped = load_policies(raw, workflow="triage")
    assert flipped.evaluate({**CONFIDENT, "amount": 150}, decision_key=key).policy == "under"


def test_int_fields_accept_integral_floats_and_saturate() -> None:
    raw = example()
    table(raw)["policy_input"]["count"] = "int"
    table(raw)["policies"] = [{"name": "many", "when": "count > 10", "outcome": "deny"}]
    loaded = load_policies(raw, workflow="triage")
    assert loaded.evaluate({"count": 11.0}, decision_key="k").outcome == "deny"
    huge = loaded.evaluate({"count": 10**40}, decision_key="k")
    assert huge.outcome == "deny"
    assert huge.inputs_seen["count"] == 2**63 - 1


def test_absent_and_none_fields_get_zero_values(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate({"label": None}, decision_key=key)
    # confidence defaults to 0.0, so low-confidence fires: absent never means "all fine"
    assert decision.policy == "low-confidence"
    assert decision.inputs_seen == {
        "confidence": 0.0,
        "label": "",
        "sensitive": False,
        "amount": 0.0,
        "customer": {"tier": "", "country": ""},
    }
    assert decision.defaults_used == ("confidence", "label", "sensitive", "amount", "customer")


def test_undeclared_keys_are_ignored(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate({**CONFIDENT, "secret": "x", "other": object()}, decision_key=key)
    assert decision.outcome == "allow"
    assert "secret" not in decision.inputs_seen


def test_inputs_seen_is_strict_json(policies: WorkflowPolicies, key: str) -> None:
    values = {"confidence": math.nan, "amount": math.inf, "label": "bad \ud800 surrogate"}
    decision = policies.evaluate(values, decision_key=key)
    assert decision.inputs_seen["confidence"] == "NaN"
    assert decision.inputs_seen["amount"] == "Infinity"
    assert decision.inputs_seen["label"] == "bad \ufffd surrogate"
    text = json.dumps(decision.as_record(), allow_nan=False)
    text.encode("utf-8")
    # NaN < 0.85 is false, inf > 500.0 with a non-gold tier denies
    assert decision.policy == "big-refund"


@pytest.mark.parametrize(
    ("values", "field", "expected"),
    [
        ({"label": 3}, "label", "must be text"),
        ({"confidence": "high"}, "confidence", "must be a number"),
        ({"confidence": True}, "confidence", "must be a number"),
        ({"sensitive": 1}, "sensitive", "must be true or false"),
        ({"customer": "gold"}, "customer", "must be a table"),
        ({"customer": {"tier": 5}}, "customer.tier", "must be text"),
    ],
)
def test_values_of_the_wrong_type_raise(
    policies: WorkflowPolicies, values: dict[str, Any], field: str, expected: str
) -> None:
    with pytest.raises(PolicyInputError) as caught:
        policies.evaluate(values, decision_key="k")
    error = caught.value
    assert isinstance(error, InputError)
    assert error.field == field
    assert f"'{field}'" in str(error)
    assert "triage" in str(error)
    assert expected in str(error)


def test_fractional_number_for_an_int_field_raises() -> None:
    raw = example()
    table(raw)["policy_input"]["count"] = "int"
    loaded = load_policies(raw, workflow="triage")
    with pytest.raises(PolicyInputError, match="whole number"):
        loaded.evaluate({"count": 1.5}, decision_key="k")


def test_values_must_be_a_mapping(policies: WorkflowPolicies) -> None:
    with pytest.raises(PolicyInputError, match="mapping"):
        policies.evaluate([1, 2], decision_key="k")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fail-safe


def _arith_policies(**settings: Any) -> WorkflowPolicies:
    raw = example()
    table(raw)["policy_input"]["count"] = "int"
    table(raw)["policies"] = [
        {"name": "per-item", "when": "100 / count > 20", "outcome": "ask", "role": "ops"} | settings
    ]
    return load_policies(raw, workflow="triage")


def test_runtime_error_asks_the_rule_role() -> None:
    loaded = _arith_policies()
    decision = loaded.evaluate({"count": 0}, decision_key="k")
    assert decision.outcome == "ask"
    assert decision.role == "ops"
    assert decision.policy == "per-item"
    assert decision.error == "division by zero in `100 / count`"
    assert "could not be evaluated" in decision.reason
    assert "count=0" in decision.reason
    assert loaded.evaluate({"count": 2}, decision_key="k").outcome == "ask"
    assert loaded.evaluate({"count": 10}, decision_key="k").error is None


def test_runtime_error_without_role_denies() -> None:
    loaded = _arith_policies(outcome="allow", role=None)
    decision = loaded.evaluate({"count": 0}, decision_key="k")
    assert decision.outcome == "deny"
    assert decision.error == "division by zero in `100 / count`"
    assert "denied as a precaution" in decision.reason


def test_failing_safe_logs_our_warning_not_celpys_error(caplog: pytest.LogCaptureFixture) -> None:
    loaded = _arith_policies()
    with caplog.at_level(logging.INFO):
        assert loaded.evaluate({"count": 0}, decision_key="k").error is not None
    assert [(r.name, r.levelname) for r in caplog.records] == [("codara.review._policy", "WARNING")]


def test_overflow_fails_safe_never_allows() -> None:
    raw = example()
    table(raw)["policy_input"]["count"] = "int"
    table(raw)["policies"] = [{"name": "double-it", "when": "count * 2 > 10", "outcome": "deny"}]
    loaded = load_policies(raw, workflow="triage")
    decision = loaded.evaluate({"count": 2**62}, decision_key="k")
    assert decision.outcome == "deny"
    assert decision.error is not None
    assert "overflow" in decision.error


# --------------------------------------------------------------------------- sampling


def test_sampling_picks_an_allow_for_an_audit_after_the_fact(policies: WorkflowPolicies) -> None:
    decision = policies.evaluate(CONFIDENT, decision_key=sampled_key(policies))
    assert decision.outcome == "allow"  # the answer still goes out at once
    assert decision.sampled
    assert decision.sampling_rate == 0.05
    assert decision.as_record()["sampling_rate"] == 0.05
    assert decision.policy is None
    assert decision.role == "audit"
    assert decision.deadline == timedelta(hours=72)
    assert decision.on_timeout == "close"
    assert decision.approvals == 1
    assert "audit after the fact" in decision.reason


@pytest.mark.parametrize("default", ["approve", "deny"])
def test_sampling_refuses_a_default_decision(default: str) -> None:
    raw = example()
    table(raw)["sampling"]["on_timeout"] = default
    message = str(load_error(raw))
    assert "sampling.on_timeout" in message
    assert "no meaning for an audit" in message
    assert '"close"' in message


def test_a_policy_refuses_close() -> None:
    raw = example()
    table(raw)["policies"][0].update(deadline="1h", on_timeout="close")
    message = str(load_error(raw))
    assert "on_timeout must be 'approve', 'deny' or 'escalate', not \"close\"" in message


def test_sampling_deadline_without_on_timeout_names_its_own_values() -> None:
    raw = example()
    del table(raw)["sampling"]["on_timeout"]
    assert 'on_timeout = "close" or "escalate"' in str(load_error(raw))


def test_sampling_leaves_deny_and_ask_alone(policies: WorkflowPolicies) -> None:
    key = sampled_key(policies)
    deny = {**CONFIDENT, "amount": 900.0}
    assert policies.evaluate(deny, decision_key=key).outcome == "deny"
    assert not policies.evaluate({"confidence": 0.1}, decision_key=key).sampled


def test_sampling_is_deterministic_and_close_to_its_rate(policies: WorkflowPolicies) -> None:
    raw = example()
    table(raw)["policies"] = []  # every decision is an automatic allow, open to sampling
    sampling_only = load_policies(raw, workflow="triage")
    keys = [f"run-{i}:classify" for i in range(10_000)]
    first = [sampling_only.evaluate(CONFIDENT, decision_key=k).sampled for k in keys]
    share = sum(first) / len(keys)
    assert 0.04 <= share <= 0.06  # rate 0.05; 10,000 keys give a standard error of 0.0022
    replayed = load_policies(raw, workflow="triage")
    assert [replayed.evaluate(CONFIDENT, decision_key=k).sampled for k in keys[:2000]] == (
        first[:2000]
    )
    # the full example samples the same keys among its automatic approvals
    assert [policies.evaluate(CONFIDENT, decision_key=k).sampled for k in keys[:300]] == (
        first[:300]
    )


def test_sampling_does_not_depend_on_hash_randomisation() -> None:
    # sha256, not hash(): these values are the same in every process and on every machine
    assert sample_point("triage", "run-1:classify") == pytest.approx(0.499323736129647)
    assert sample_point("triage", "run-2:reply") == pytest.approx(0.9118946783719962)
    assert sample_point("other", "run-1:classify") != sample_point("triage", "run-1:classify")


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 200)])
def test_sampling_rate_bounds(rate: float, expected: int) -> None:
    raw = example()
    table(raw)["sampling"]["rate"] = rate
    loaded = load_policies(raw, workflow="triage")
    count = sum(loaded.evaluate(CONFIDENT, decision_key=f"k{i}").sampled for i in range(200))
    assert count == expected


# --------------------------------------------------------------------------- the decision


def test_decision_is_frozen_and_recordable(policies: WorkflowPolicies, key: str) -> None:
    decision = policies.evaluate({"sensitive": True}, decision_key=key)
    assert isinstance(decision, Decision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.outcome = "allow"  # type: ignore[misc]
    record = json.loads(json.dumps(decision.as_record(), allow_nan=False))
    assert record["deadline"] == 4 * 3600
    assert record["approvals"] == 2
    assert record["policy_version"] == policies.rules[0].version


def test_policies_survive_a_dump_and_validate_round_trip(policies: WorkflowPolicies) -> None:
    again = WorkflowPolicies.model_validate(policies.model_dump())
    assert again.version == policies.version
    assert [r.version for r in again.rules] == [r.version for r in policies.rules]


def test_concurrent_evaluations_agree(policies: WorkflowPolicies) -> None:
    inputs = [
        {"confidence": 0.5 + i / 100, "amount": float(i * 20), "sensitive": i % 7 == 0}
        for i in range(50)
    ]
    expected = [policies.evaluate(v, decision_key=f"k{i}") for i, v in enumerate(inputs)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(
                pool.map(
                    lambda iv: policies.evaluate(iv[1], decision_key=f"k{iv[0]}"),
                    enumerate(inputs),
                )
            )
            assert got == expected


def test_evaluation_is_repeatable(policies: WorkflowPolicies) -> None:
    values = {"confidence": 0.7, "label": "x"}
    assert policies.evaluate(values, decision_key="a") == policies.evaluate(
        values, decision_key="a"
    )


# --------------------------------------------------------------------------- broken configs


def test_misspelt_field_is_rejected_at_load_with_the_policy_name() -> None:
    raw = example()
    table(raw)["policies"][1]["when"] = "confidance < 0.8"
    error = load_error(raw)
    assert isinstance(error, ConfigError)
    assert isinstance(error, CodaraError)
    message = str(error)
    assert "workflow 'triage'" in message
    assert "policy 'low-confidence'" in message
    assert "at 1:1" in message
    assert "'confidance' is not a declared input" in message
    assert "Did you mean 'confidence'?" in message
    assert error.policy == "low-confidence"
    assert (error.line, error.column) == (1, 1)
    assert error.hint is not None
    assert "policy_input" in error.hint


@pytest.mark.parametrize(
    ("when", "position", "words"),
    [
        ("confidence <", "1:13", ["syntax error", "ends too early", "after '<'"]),
        ("(confidence < 0.5", "1:18", ["a closing ')' is missing"]),
        ("label = 'refund'", "1:7", ["write '=='"]),
        ("sensitive and label == 'x'", "1:11", ["write '&&' instead of 'and'"]),
        ("label == 'refund", "1:10", ["never closed"]),
        ("confidence < 0.85 &&\n  labl == 'x'", "2:3", ["'labl' is not a declared input"]),
        ("customer.tierr == 'gold'", "1:10", ["'customer' has no field 'tierr'", "'tier'"]),
        ("customer.tier.code == 'x'", "1:15", ["single value", "no field 'code'"]),
        ("label > 3", "1:7", ["'>' cannot compare", "text", "whole number", "`label`"]),
        ("1 < confidence", "1:3", ["whole number", "write 1.0 instead of 1"]),
        ("foo(amount) > 1.0", "1:1", ["'foo' is not a function"]),
        ("label.startswith('a')", "1:7", ["'startswith' is not a function", "'startsWith'"]),
        ("size(amount) > 0", "1:1", ["size() cannot be used with a number"]),
        ("!amount", "1:1", ["'!' needs true/false"]),
        ("sensitive && 1", "1:14", ["'&&' joins conditions", "whole number"]),
        ("amount", "1:1", ["must give true or false", "a number"]),
        ("confidence > 2.0 ? label > 3 : true", "1:26", ["'>' cannot compare"]),
        ("[1, 2].exists(x, x > amount)", "1:20", ["'>' cannot compare", "`x`", "`amount`"]),
    ],
)
def test_broken_conditions_name_policy_position_and_reason(
    when: str, position: str, words: list[str]
) -> None:
    raw = with_policy(name="broken-one", when=when)
    error = load_error(raw)
    message = str(error)
    assert "workflow 'triage'" in message
    assert "policy 'broken-one'" in message
    assert f"when at {position}" in message, message
    for word in words:
        assert word in message, message
    assert len(error.problems) == 1


def test_a_condition_that_always_fails_is_rejected() -> None:
    error = load_error(with_policy(name="always", when="1 / 0 > 0"))
    assert "policy 'always'" in str(error)
    assert "fails for every test input" in str(error)
    assert "division by zero" in str(error)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"when": "confidence < 0.5", "outcome": "ask"}, ["role", 'outcome = "ask" needs a role']),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "deadline": "4 hours"},
            ["deadline", '"4 hours" is not a duration', '"30m"'],
        ),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "deadline": 3600},
            ["deadline must be a duration in quotes", "3600"],
        ),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "deadline": "0m"},
            ["longer than zero"],
        ),
        (
            {
                "when": "sensitive",
                "outcome": "ask",
                "role": "x",
                "deadline": "1h",
                "on_timeout": "escalate",
            },
            ["escalate_to", 'on_timeout = "escalate" needs escalate_to'],
        ),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "deadline": "1h"},
            ["on_timeout is missing"],
        ),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "on_timeout": "deny"},
            ["on_timeout needs a deadline"],
        ),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "on_timeout": "later"},
            ["on_timeout must be 'approve', 'deny' or 'escalate'", '"later"'],
        ),
        ({"when": "sensitive", "outcome": "aks"}, ["outcome must be 'allow', 'deny' or 'ask'"]),
        ({"when": "sensitive", "outcome": "deny", "rol": "x"}, ["unknown setting 'rol'", "'role'"]),
        (
            {"when": "sensitive", "outcome": "ask", "role": "x", "four_eyes": True, "approvals": 3},
            ["four_eyes = true means 2 approvals", "approvals = 3"],
        ),
        ({"when": "sensitive", "outcome": "deny", "approvals": 0}, ["approvals"]),
        ({"when": " ", "outcome": "deny"}, ["when is empty"]),
        ({"when": "sensitive", "outcome": "deny", "role": 3}, ["role must be text", "3"]),
        (
            {"when": "sensitive", "outcome": "deny", "deadline": "1h", "on_timeout": "deny"},
            ["only apply to a human review"],
        ),
    ],
)
def test_broken_settings_name_the_policy_and_reason(
    settings: dict[str, Any], words: list[str]
) -> None:
    error = load_error(with_policy(**{"name": "bad-settings", **settings}))
    message = str(error)
    assert "workflow 'triage'" in message
    assert "policy 'bad-settings'" in message
    for word in words:
        assert word in message, message


def test_policy_without_a_name_is_numbered() -> None:
    raw = example()
    del table(raw)["policies"][1]["name"]
    message = str(load_error(raw))
    assert "policy 'policy #2'" in message
    assert "the setting 'name' is missing" in message


def test_duplicate_policy_names() -> None:
    raw = example()
    table(raw)["policies"][2]["name"] = "low-confidence"
    assert "two policies share this name" in str(load_error(raw))


@pytest.mark.parametrize(
    ("rate", "words"),
    [
        (1.5, ["sampling.rate", "between 0 and 1", "1.5"]),
        (-0.1, ["sampling.rate", "between 0 and 1"]),
        (math.nan, ["sampling.rate", "between 0 and 1"]),
        ("5%", ["sampling.rate", "must be a number"]),
    ],
)
def test_sampling_rate_outside_0_1(rate: object, words: list[str]) -> None:
    raw = example()
    table(raw)["sampling"]["rate"] = rate
    message = str(load_error(raw))
    for word in words:
        assert word in message, message


def test_sampling_needs_a_role() -> None:
    raw = example()
    del table(raw)["sampling"]["role"]
    assert "sampling with rate above 0 needs a role" in str(load_error(raw))


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ({"amount": "float"}, ["policy_input.amount", 'Write "double"']),
        ({"in": "string"}, ["'in' is a reserved word"]),
        ({"my-field": "string"}, ["cannot be used in conditions"]),
        ({"customer": {"tier": "enum"}}, ["policy_input.customer.tier"]),
    ],
)
def test_bad_input_shapes(shape: dict[str, Any], words: list[str]) -> None:
    raw = example()
    table(raw)["policy_input"].update(shape)
    message = str(load_error(raw))
    for word in words:
        assert word in message, message


def test_single_bracket_policies_table() -> None:
    raw = example()
    table(raw)["policies"] = table(raw)["policies"][0]
    assert "[[workflows.triage.policies]]" in str(load_error(raw))


def test_misspelt_workflow_key() -> None:
    raw = example()
    table(raw)["policy"] = table(raw).pop("policies")
    assert "did you mean 'policies'" in str(load_error(raw))


def test_every_problem_is_reported_at_once() -> None:
    raw = example()
    table(raw)["policies"][0]["when"] = "sensitiv"
    table(raw)["policies"][1]["deadline"] = "soon"
    table(raw)["sampling"]["rate"] = 2
    error = load_error(raw)
    assert len(error.problems) == 3
    message = str(error)
    assert "has 3 problems" in message
    assert "policy 'sensitive-intents-to-fraud'" in message
    assert "policy 'low-confidence'" in message
    assert "sampling.rate" in message


def test_works_after_another_runner_kind_built_the_shared_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import celpy
    import celpy.celparser

    from codara.review.policy import _parse

    monkeypatch.setattr(celpy.celparser.CELParser, "CEL_PARSER", None)
    celpy.Environment()  # InterpretedRunner: builds celpy's shared parser with lark.Tree
    cel = _parse.Cel()
    assert cel.parser is not celpy.celparser.CELParser.CEL_PARSER
    runner = cel.program(cel.parse("1 < 2"))
    assert runner.evaluate({}) is not None
