"""``codara sources list|check`` and ``codara quarantine list|show|retry|drop``, in-process
(Typer's runner) against a store that a real read filled."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import codara
from codara.cli import app as cli_app
from codara.config import load_settings
from codara.store import RunRecord

ITEMS: list[Any] = ["garbage", {"id": 2, "text": ""}, {"id": 4, "text": "where is my money"}]


def _toml(root: Path, url: str) -> Path:
    (root / "inbox.json").write_text(json.dumps(ITEMS))
    config = root / "codara.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\ndurability = "os"\n\n'
        "[sources.inbox]\n"
        'kind = "read_fixture_source:JsonList"\n'
        f'root = "{root}"\n'
        'allowed = ["inbox.json"]\n'
        'record_model = "read_fixture_source:Ticket"\n'
        'release_to = "one_ticket"\n'
    )
    return config


async def _fill(config: Path) -> str:
    app = codara.App(settings=load_settings(config))

    @app.workflow(name="reader")
    async def reader(ctx: codara.Context, target: str) -> int:
        return len((await ctx.read("inbox", target)).rows)

    @app.workflow(name="one_ticket")
    async def one_ticket(ctx: codara.Context, ticket: dict[str, Any]) -> int:
        return int(ticket["id"])

    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        assert await app.output(run_id) == 1
    return run_id


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    return _toml(tmp_path, db_url)


def _cli(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli_app, ["--config", str(config), *args], env={"NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_quarantined_records_are_listed_retried_once_fixed_and_dropped(
    config: Path, tmp_path: Path
) -> None:
    asyncio.run(_fill(config))
    listed = _cli(config, "quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    records = {r["rule"]: r for r in json.loads(listed.stdout)["records"]}
    assert set(records) == {"not_object", "schema.text"}
    assert all(r["status"] == "open" and r["source"] == "inbox" for r in records.values())

    empty = records["schema.text"]
    shown = _cli(config, "quarantine", "show", empty["id"])
    assert shown.exit_code == 0
    assert "String should have at least 1 character" in shown.stdout
    assert '"id": 2' in shown.stdout

    still = _cli(config, "quarantine", "retry", empty["id"], "--json")  # nothing fixed yet
    assert still.exit_code == 4
    assert json.loads(still.stdout)["released"] is False

    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"id": 2, "text": "my transfer failed"}))
    released = _cli(config, "quarantine", "retry", empty["id"], "--record-file", str(fixed),
                    "--by", "ops-anna", "--json")  # fmt: skip
    assert released.exit_code == 0, released.output
    answer = json.loads(released.stdout)
    assert answer["released"] is True
    assert answer["record"]["resolved_by"] == "ops-anna"
    assert answer["run_id"]
    again = _cli(config, "quarantine", "retry", empty["id"], "--record-file", str(fixed))
    assert again.exit_code == 12  # no longer open: a second retry starts nothing

    dropped = _cli(config, "quarantine", "drop", records["not_object"]["id"], "--by", "ops-ben")
    assert dropped.exit_code == 0
    assert json.loads(_cli(config, "quarantine", "list", "--json").stdout)["records"] == []
    closed = json.loads(_cli(config, "quarantine", "list", "--status", "all", "--json").stdout)
    assert sorted((r["status"], r["resolved_by"]) for r in closed["records"]) == [
        ("dropped", "ops-ben"), ("released", "ops-anna"),
    ]  # fmt: skip

    run = asyncio.run(_run(config, answer["run_id"]))
    assert (run.workflow, json.loads(run.input)) == (
        "one_ticket", {"id": 2, "text": "my transfer failed"},
    )  # fmt: skip


async def _run(config: Path, run_id: str) -> RunRecord:
    async with codara.App(settings=load_settings(config)) as app:
        return await app.get_run(run_id)


def test_quarantine_commands_refuse_bad_input_clearly(config: Path) -> None:
    assert _cli(config, "db", "upgrade").exit_code == 0
    unknown = _cli(config, "quarantine", "show", "nope")
    assert unknown.exit_code == 6
    assert "no quarantined record 'nope'" in unknown.output
    status = _cli(config, "quarantine", "list", "--status", "weird")
    assert status.exit_code == 4
    assert "unknown quarantine status" in status.output


def test_sources_check_says_allowed_or_refused_and_why(config: Path) -> None:
    listed = json.loads(_cli(config, "sources", "list", "--json").stdout)["sources"]
    assert [(s["name"], s["contract"]) for s in listed] == [("inbox", "discard_row")]
    allowed = _cli(config, "sources", "check", "inbox", "inbox.json", "--json")
    assert allowed.exit_code == 0
    assert json.loads(allowed.stdout) == {
        "allowed": True, "source": "inbox", "target": "inbox.json", "params": {},
        "touches": ["inbox.json"],
    }  # fmt: skip
    refused = _cli(config, "sources", "check", "inbox", "../secrets.json")
    assert refused.exit_code == 15
    assert "refused (path)" in refused.output
    neither = _cli(config, "sources", "check", "inbox")
    assert neither.exit_code == 4
    unknown = _cli(config, "sources", "check", "crm", "x")
    assert unknown.exit_code == 3
    assert "no source named 'crm'" in unknown.output


def test_runs_show_says_which_data_the_run_read(config: Path) -> None:
    run_id = asyncio.run(_fill(config))
    shown = _cli(config, "runs", "show", run_id)
    assert shown.exit_code == 0, shown.output
    assert (
        "data: 1 record(s) from inbox (inbox.json), batch 0; 2 quarantined "
        "(not_object 1, schema.text 1); version v1"
    ) in shown.stdout


def test_malformed_params_and_record_files_are_refused_and_change_nothing(
    config: Path, tmp_path: Path
) -> None:
    bad_param = _cli(config, "sources", "check", "inbox", "inbox.json", "--param", "noequals")
    assert bad_param.exit_code == 4
    assert "expected NAME=VALUE" in bad_param.output
    asyncio.run(_fill(config))
    [record] = [r for r in json.loads(_cli(config, "quarantine", "list", "--json").stdout)
                ["records"] if r["rule"] == "schema.text"]  # fmt: skip
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": 2, "text": ')
    refused = _cli(config, "quarantine", "retry", record["id"], "--record-file", str(broken))
    assert refused.exit_code == 4
    assert "--record-file" in refused.output
    after = json.loads(_cli(config, "quarantine", "show", record["id"], "--json").stdout)
    assert (after["status"], after["record"]) == ("open", record["record"])  # nothing changed


def test_sources_list_shows_freshness_limits_in_days_hours_or_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference workload's crm source allows 30 days (2,592,000 s in its file)."""
    from codara.cli._output import fmt_limit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-out" / "inbox").mkdir(parents=True)  # its inbox root must exist
    example = Path(__file__).parents[2] / "examples" / "support_triage" / "codara.toml"
    table = _cli(example, "sources", "list")
    assert table.exit_code == 0, table.output
    [crm] = [line for line in table.stdout.splitlines() if " crm " in line]
    assert "30 days" in crm
    assert "e+06" not in table.stdout
    assert [fmt_limit(s) for s in (None, 86400, 5400, 7200, 900, 45, 90.5, 1.5 * 86400)] == [
        "-", "1 day", "90 min", "2 h", "15 min", "45 s", "90.5 s", "36 h",
    ]  # fmt: skip
