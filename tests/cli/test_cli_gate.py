"""``codara gate check|promote|rollback|history`` and ``codara metric show`` on SQLite and
PostgreSQL: the verdict and its exit code, refusals below target, overrides by an admin
with a reason, the record of every move, and bad input."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from codara.auth import Users
from codara.review import Principal, Reviews

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

HERE = Path(__file__).resolve().parent

TOML = """
[app]
module = "gate_app:app"

[workflows.answers.policy_input]
confidence = "double"

[[workflows.answers.policies]]
name = "unsure"
when = "confidence < 0.8"
outcome = "ask"
role = "support"

[workflows.answers.sampling]
rate = 1.0               # every automatic answer audited: the test's labels
role = "audit"

[workflows.answers.metric]
name = "answered automatically and correctly"
step = "reply"
label_field = "intent"
success = "automated && correct"
target = {target}
min_cases = 30

[[workflows.answers.metric.guardrails]]
name = "wrong automatic answers"
over = "automated"
counts = "!correct"
at_most = 0.3
"""

AUDITOR = Principal("ada", frozenset({"audit"}))


def write_config(project: Project, target: float = 0.5) -> None:
    (project.path / "codara.toml").write_text(TOML.replace("{target}", str(target)))
    project.env["CODARA_APP"] = "gate_app:app"  # the environment wins over [app] module


def seed(project: Project, *, confident: int = 36, wrong: int = 2, unsure: int = 4) -> None:
    """Runs of answers: ``confident`` automatic ones, all audited (``wrong`` corrected),
    and ``unsure`` ones that wait for support."""
    sys.path.insert(0, str(HERE))
    gate_app = importlib.import_module("gate_app")

    async def go() -> None:
        app = gate_app.build(project.url, str(project.path / "codara.toml"))
        async with app:
            for _ in range(confident):
                await app.start_run("answers", {"intent": "refund", "confidence": 0.95})
            for _ in range(unsure):
                await app.start_run("answers", {"intent": "refund", "confidence": 0.5})
            await app.work(until_idle=True)
            users = Users(app.store, app.clock)
            for name, roles in (("ada", ["audit"]), ("root", ["admin"]), ("sam", ["support"])):
                await users.add(name, roles)
            reviews = Reviews(app.store, app.clock)
            for n, item in enumerate(await reviews.queue(AUDITOR)):
                if n < wrong:
                    await reviews.edit(AUDITOR, item.id, {"intent": "card_arrival"})
                else:
                    await reviews.approve(AUDITOR, item.id)

    asyncio.run(go())


def check(cli: CliFn, project: Project) -> tuple[int, dict[str, Any]]:
    result = cli(project, "--json", "gate", "check", "answers")
    return result.exit_code, json.loads(result.stdout)


def test_check_passes_and_promotion_is_recorded(any_project: Project, cli: CliFn) -> None:
    write_config(any_project)
    seed(any_project)
    code, report = check(cli, any_project)
    assert code == 0, report
    assert report["outcome"] == "pass"
    assert report["stage"] == "pilot"
    assert report["workflow_version"] == "3"
    metric, wrong = report["figures"]
    # 36 automatic answers audited (34 right), 4 taken over by people: 34 / 40 = 85%
    assert metric["estimate"] == pytest.approx(34 / 40)
    assert metric["judged"] == 36
    assert wrong["estimate"] == pytest.approx(2 / 36)
    text = cli(any_project, "gate", "check", "answers")
    assert "PASS" in text.stdout
    assert "answered automatically and correctly" in text.stdout
    done = cli(any_project, "--json", "gate", "promote", "answers", "--to", "shadow",
               "--user", "sam")  # fmt: skip
    assert done.exit_code == 0, done.stdout
    history = json.loads(cli(any_project, "--json", "gate", "history", "answers").stdout)
    (row,) = history
    assert (row["from"], row["to"], row["action"], row["actor"]) == (
        "pilot", "shadow", "promote", "sam",
    )  # fmt: skip
    assert row["versions"]["workflow"] == "3"
    assert row["versions"]["metric"] == report["definition_version"]
    assert row["versions"]["policies"]
    assert row["evidence"]["outcome"] == "pass"
    # the shadow stage's evidence starts when the version entered it: none yet
    code, report = check(cli, any_project)
    assert code == 31
    assert report["stage"] == "shadow"
    assert report["cases"] == 0


def test_below_target_is_refused_and_only_an_admin_overrides(project: Project, cli: CliFn) -> None:
    write_config(project, target=0.99)
    seed(project)
    code, report = check(cli, project)
    assert code == 30  # the upper bound of 85% misses 99%
    assert report["outcome"] == "fail"
    refused = cli(project, "gate", "promote", "answers", "--to", "shadow", "--user", "sam")
    assert refused.exit_code == 30
    assert "stays in pilot" in refused.stderr
    not_admin = cli(project, "gate", "promote", "answers", "--to", "shadow", "--user", "sam",
                    "--override", "--reason", "we know")  # fmt: skip
    assert not_admin.exit_code == 12
    assert "needs the admin role" in not_admin.stderr
    no_reason = cli(project, "gate", "promote", "answers", "--to", "shadow", "--user", "root",
                    "--override")  # fmt: skip
    assert no_reason.exit_code == 4
    assert "needs --reason" in no_reason.stderr
    assert json.loads(cli(project, "--json", "gate", "history", "answers").stdout) == []
    ok = cli(project, "gate", "promote", "answers", "--to", "shadow", "--user", "root",
             "--override", "--reason", "pilot signed off by the board")  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    back = cli(project, "gate", "rollback", "answers", "--user", "root", "--reason", "oops")
    assert back.exit_code == 0, back.stderr
    rows = json.loads(cli(project, "--json", "gate", "history", "answers").stdout)
    assert [(r["action"], r["actor"], r["to"]) for r in rows] == [
        ("override", "root", "shadow"),
        ("rollback", "root", "pilot"),
    ]
    assert rows[0]["reason"] == "pilot signed off by the board"
    assert rows[0]["evidence"]["outcome"] == "fail"  # what the override went past


def test_a_changed_definition_is_recorded_and_shown(project: Project, cli: CliFn) -> None:
    write_config(project, target=0.5)
    seed(project, confident=4, wrong=0, unsure=0)
    first = json.loads(cli(project, "--json", "metric", "show", "answers").stdout)
    write_config(project, target=0.6)
    code, report = check(cli, project)
    assert code == 31  # 4 judged cases, 30 needed
    assert report["definition_previous"] == first["version"]
    assert report["definition_changes"] == 1
    shown = json.loads(cli(project, "--json", "metric", "show", "answers").stdout)
    assert [h["previous"] for h in shown["history"]] == [None, first["version"]]
    assert shown["history"][1]["definition"]["target"] == 0.6


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            ("gate", "promote", "answers", "--to", "staging", "--user", "root"),
            4,
            ["unknown stage 'staging'"],
        ),
        (
            ("gate", "promote", "answers", "--to", "production", "--user", "root"),
            12,
            ["is in pilot", "not to production"],
        ),
        (("gate", "promote", "answers", "--to", "shadow"), 2, ["--user"]),
        (
            ("gate", "promote", "answers", "--to", "shadow", "--user", "nobody"),
            15,
            ["no active user 'nobody'"],
        ),
        (("gate", "rollback", "answers", "--user", "root"), 12, ["nothing to roll back"]),
        (("gate", "check", "nosuch"), 3, ["declares no metric"]),
        (("gate", "check", "answers", "--version", "9"), 0, []),
    ],
)
def test_bad_input(
    project: Project, cli: CliFn, args: tuple[str, ...], code: int, words: list[str]
) -> None:
    write_config(project)
    seed(project, confident=0, unsure=0)
    result = cli(project, *args)
    if code == 0:  # a version with no runs: nothing judged, no verdict
        assert result.exit_code == 31
        return
    assert result.exit_code == code, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr


def test_a_broken_metric_is_a_config_error(project: Project, cli: CliFn) -> None:
    write_config(project)
    seed(project, confident=0, unsure=0)
    text = (project.path / "codara.toml").read_text()
    (project.path / "codara.toml").write_text(text.replace("automated && correct", "automated &&"))
    result = cli(project, "gate", "check", "answers")
    assert result.exit_code == 3
    assert "[workflows.answers.metric]" in result.stderr
    assert "not valid CEL" in result.stderr
