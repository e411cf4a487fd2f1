"""``codara policy simulate``: the journaled decisions of real gated runs (made in this process
on the test's database), re-evaluated from the command line under a policy file; and every
bad input stopping with its reason and exit code."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

import codara
from codara.errors import ConfigError, InputError, UnknownWorkflowError
from codara.review import Principal, ReviewGate, Reviews, load_policies

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

OLD: dict[str, Any] = {
    "policy_input": {"amount": "double", "customer": "string"},
    "policies": [
        {"name": "big", "when": "amount > 100.0", "outcome": "ask", "role": "support"},
    ],
}
NEW = """
[workflows.refunds.policy_input]
amount = "double"

[[workflows.refunds.policies]]
name = "huge"
when = "amount > 1000.0"
outcome = "deny"

[[workflows.refunds.policies]]
name = "big"
when = "amount > 300.0"
outcome = "ask"
role = "finance"
"""
SAM = Principal("sam", frozenset({"support"}))


def seed(project: Project, amounts: list[float], approve: bool = True) -> list[str]:
    """One run per amount (customer: an email, masked at the run's start); the asked ones
    are approved by a person when ``approve``."""

    async def go() -> list[str]:
        app = codara.App(project.url)
        gate = ReviewGate(load_policies(OLD, workflow="refunds"), workflow="refunds")

        @app.workflow(name="refunds")
        async def refunds(ctx: codara.Context, req: dict[str, Any]) -> str:
            proposal = {"intent": "refund", "amount": req["amount"]}
            result = await gate.check(ctx, "refund", proposal, inputs=req)
            return result.outcome

        async with app:
            runs = [
                await app.start_run("refunds", {"amount": a, "customer": "jane@example.com"})
                for a in amounts
            ]
            await app.work(until_idle=True)
            reviews = Reviews(app.store, app.clock)
            for item in await reviews.queue(SAM) if approve else []:
                await reviews.approve(SAM, item.id)
            await app.work(until_idle=True)
            return runs

    return asyncio.run(go())


def _file(project: Project, text: str = NEW) -> str:
    path = project.path / "new.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_simulate_prints_the_counts_and_the_changes(any_project: Project, cli: CliFn) -> None:
    """Amounts 50, 200, 500, 2000: old allow, ask:support x3; new allow, allow, ask:finance,
    deny. On SQLite and PostgreSQL."""
    p = any_project
    runs = seed(p, [50.0, 200.0, 500.0, 2000.0])
    shown = cli(p, "policy", "simulate", "refunds", "--policies", _file(p), "--since", "1d")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "4 decision(s) of 4 run(s)" in out
    assert "changed: 3 decision(s)" in out
    for run_id, change in zip(
        runs[1:],
        ("ask:support -> allow", "ask:support -> ask:finance", "ask:support -> deny"),
        strict=True,
    ):
        assert f"{run_id}:refund: {change}" in out
    assert "labels (field 'amount'): exist only where people decided" not in out
    assert "exist only where people decided a review or an audit: 3 of 4" in out
    assert "jane" not in out
    assert "inputs" not in out

    as_json = cli(p, "policy", "simulate", "refunds", "-p", _file(p), "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["old"]["asked"] == {"support": 3}
    assert (report["new"]["allowed"], report["new"]["asked"], report["new"]["denied"]) == (
        2,
        {"finance": 1},
        1,
    )
    assert {(t["old"], t["new"], t["count"]) for t in report["transitions"]} == {
        ("allow", "allow", 1),
        ("ask:support", "allow", 1),
        ("ask:support", "ask:finance", 1),
        ("ask:support", "deny", 1),
    }
    # approved proposals are correct: the new policies' automatic answers 50 (unlabelled)
    # and 200 (approved) give 1 of 1
    assert report["labels"]["new"]["labelled"] == 1
    assert report["labels"]["new"]["precision"] == 1.0
    assert "jane" not in as_json.stdout


def test_show_inputs_shows_the_masked_values(project: Project, cli: CliFn) -> None:
    [run_id] = seed(project, [500.0], approve=False)
    shown = cli(project, "policy", "simulate", "refunds", "-p", _file(project), "--show-inputs")
    assert shown.exit_code == 0, shown.output
    assert f"{run_id}:refund: ask:support -> ask:finance" in shown.stdout
    assert "'amount': 500.0" in shown.stdout
    assert "'customer': '" in shown.stdout
    assert "jane" not in shown.stdout


def test_nothing_to_simulate_is_no_error(project: Project, cli: CliFn) -> None:
    seed(project, [50.0])
    later = cli(project, "policy", "simulate", "refunds", "-p", _file(project),
                "--since", "2999-01-01T00:00")  # fmt: skip
    assert later.exit_code == InputError.exit_code  # the future: a mistake, said so
    none = cli(project, "policy", "simulate", "refunds", "-p", _file(project), "--step", "x")
    assert none.exit_code == 0, none.output
    assert "nothing to simulate: 1 run(s)" in none.stderr
    assert "gate steps seen: refund" in none.stderr
    as_json = cli(project, "policy", "simulate", "refunds", "-p", _file(project), "--step", "x",
                  "--json")  # fmt: skip
    assert json.loads(as_json.stdout)["nothing_to_simulate"] is True


def test_no_run_in_the_window(project: Project, cli: CliFn) -> None:
    seed(project, [50.0])
    project.sql("UPDATE codara_runs SET created_at = created_at - 30 * 86400")
    old = cli(project, "policy", "simulate", "refunds", "-p", _file(project), "--since", "7d")
    assert old.exit_code == 0, old.output
    assert "nothing to simulate: no run of 'refunds' was created since" in old.stderr
    wider = cli(project, "policy", "simulate", "refunds", "-p", _file(project), "--since", "5w")
    assert "1 decision(s) of 1 run(s)" in wider.stdout


@pytest.mark.parametrize(
    ("args", "text", "code", "message"),
    [
        (["--policies", "absent.toml"], None, ConfigError.exit_code, "--policies: cannot read"),
        (["-p", "new.toml"], "[workflows.refunds\n", ConfigError.exit_code, "not valid TOML"),
        (
            ["-p", "new.toml"],
            NEW.replace("amount > 300.0", "amont > 300.0"),
            ConfigError.exit_code,
            "Did you mean 'amount'",
        ),
        (
            ["-p", "new.toml"],
            NEW.replace("refunds", "other"),
            ConfigError.exit_code,
            "has no [workflows.refunds] table",
        ),
        (["-p", "new.toml", "--since", "lately"], NEW, InputError.exit_code, "--since 'lately'"),
        (
            ["-p", "new.toml", "--step", "effect:refund"],
            NEW,
            ConfigError.exit_code,
            "has no [effects.refund]",
        ),
    ],
)
def test_bad_input_stops_with_the_reason(
    project: Project,
    cli: CliFn,
    args: list[str],
    text: str | None,
    code: int,
    message: str,
) -> None:
    seed(project, [50.0])
    if text is not None:
        _file(project, text)
    result = cli(project, "policy", "simulate", "refunds", *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "hint:" in result.stderr


def test_unknown_workflow(project: Project, cli: CliFn) -> None:
    seed(project, [50.0])
    result = cli(project, "policy", "simulate", "refundz", "-p", _file(project,
                 NEW.replace("refunds", "refundz")))  # fmt: skip
    assert result.exit_code == UnknownWorkflowError.exit_code, result.output
    assert "no workflow 'refundz'" in result.stderr
    assert "known workflows: refunds" in result.stderr
    as_json = cli(project, "policy", "simulate", "refundz", "-p", _file(project,
                  NEW.replace("refunds", "refundz")), "--json")  # fmt: skip
    assert json.loads(as_json.stdout)["error"]["code"] == "unknown_workflow"
