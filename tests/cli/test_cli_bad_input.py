"""Every failure a user can cause: the exit code, a message naming the problem, a hint, no
traceback, and nothing half-written (the number of runs is the same before and after).

The exit codes are checked on a real ``python -m codara`` process for one case of each
code; the other cases run in-process (same code path, much faster).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from codara.cli import app as cli_app
from codara.errors import (
    ConfigError,
    ConflictError,
    DatabaseUnreachableError,
    InputError,
    NotFoundError,
    SchemaOutOfDateError,
    StoreError,
    UnknownWorkflowError,
)

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

Real = dict[str, tuple["Project", "subprocess.CompletedProcess[str]"]]


def assert_fails(result: Any, code: int, *fragments: str) -> None:
    """Exit ``code``; ``error:`` naming every fragment, a ``hint:``, no traceback."""
    exit_code = getattr(result, "exit_code", None)
    if exit_code is None:
        exit_code = result.returncode
    err = result.stderr
    assert exit_code == code, f"exit {exit_code}, wanted {code}\n{err}\n{result.stdout}"
    assert err.startswith("error: "), err
    assert "\nhint: " in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "Traceback" not in err


@pytest.fixture
def seeded(project: Project, cli: CliFn) -> Project:
    """A project whose database holds one finished run."""
    result = cli(project, "run", "greet")
    assert result.exit_code == 0, result.output
    assert project.count_runs() == 1
    return project


def _run_id(project: Project) -> str:
    return str(project.sql("SELECT id FROM codara_runs")[0][0])


# -- one real process per exit code, all started at once ---------------------------------------
@dataclass
class Case:
    args: list[str]
    seeded: bool = True
    env: dict[str, str] = field(default_factory=dict)
    toml: str | None = None


_FINISHED_RUN = "{finished_run}"
CASES = {
    "unknown_workflow": Case(["run", "gret", "--input", "{}"]),
    "malformed_json": Case(["run", "greet", "--input", '{"name": "ada",}']),
    "toml_syntax": Case(["run", "greet"], toml='[store]\ndurability = "os"\nurl = \n'),
    "unreachable_pg": Case(
        ["run", "greet"],
        seeded=False,
        env={"CODARA_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/codara"},
    ),
    "mysql_json": Case(
        ["--json", "runs", "list"], seeded=False, env={"CODARA_DATABASE_URL": "mysql://u@h/d"}
    ),
    "worker_no_schema": Case(["worker", "--until-idle"], seeded=False),
    "show_unknown": Case(["runs", "show", "nope"]),
    "signal_finished": Case(["signal", _FINISHED_RUN, "approve", "--payload", "1"]),
    "usage": Case(["run", "greet", "--nope"], seeded=False),
}


@pytest.fixture(scope="module")
def real(
    tmp_path_factory: pytest.TempPathFactory, project_factory: Callable[[Path, str], Project]
) -> dict[str, tuple[Project, subprocess.CompletedProcess[str]]]:
    """Run every case in CASES as ``python -m codara`` (concurrently: each takes ~1 s)."""
    seed = tmp_path_factory.mktemp("seed") / "seed.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(seed.parent)
        mp.setenv("CODARA_APP", "sample_app:app")
        mp.setenv("CODARA_DATABASE_URL", f"sqlite:///{seed}")
        assert CliRunner().invoke(cli_app, ["run", "greet"]).exit_code == 0
    started = {}
    for name, case in CASES.items():
        base = tmp_path_factory.mktemp(name)
        db = base / "codara.db"
        if case.seeded:
            shutil.copy(seed, db)
        project = project_factory(base, f"sqlite:///{db}")
        if case.toml is not None:
            (project.path / "codara.toml").write_text(case.toml, "utf-8")
        args = [a.replace(_FINISHED_RUN, _run_id(project)) if case.seeded else a for a in case.args]
        child = subprocess.Popen(
            [sys.executable, "-m", "codara", *args],
            cwd=project.path,
            env={**project.env, **case.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[name] = (project, child, args)
    results = {}
    for name, (project, child, args) in started.items():
        out, err = child.communicate(timeout=120)
        results[name] = (project, subprocess.CompletedProcess(args, child.returncode, out, err))
    return results


def test_unknown_workflow(real: Real) -> None:
    project, result = real["unknown_workflow"]
    assert_fails(result, UnknownWorkflowError.exit_code, "'gret'", "known: approval")
    assert result.stdout == ""
    assert project.count_runs() == 1


def test_malformed_input_json(real: Real) -> None:
    project, result = real["malformed_json"]
    assert_fails(result, InputError.exit_code, "--input is not valid JSON", "line 1 column 16")
    assert project.count_runs() == 1


def test_codara_toml_syntax_error_names_the_line(real: Real) -> None:
    project, result = real["toml_syntax"]
    assert_fails(result, ConfigError.exit_code, "codara.toml is not valid TOML", "line 3")
    assert project.count_runs() == 1


def test_unreachable_postgres(real: Real) -> None:
    _, result = real["unreachable_pg"]
    assert_fails(result, DatabaseUnreachableError.exit_code, "127.0.0.1:1", "PostgreSQL")


def test_wrong_url_scheme_as_json(real: Real) -> None:
    """With --json the error is a JSON object on stdout."""
    _, result = real["mysql_json"]
    assert result.returncode == ConfigError.exit_code
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "config_error"
    assert "mysql" in error["message"]
    assert "sqlite" in error["hint"]
    assert "Traceback" not in result.stderr


def test_worker_refuses_an_out_of_date_schema_until_db_upgrade(real: Real, cli: CliFn) -> None:
    project, result = real["worker_no_schema"]  # the database has no tables yet
    assert_fails(result, SchemaOutOfDateError.exit_code, "codara db upgrade")
    assert project.sql("SELECT name FROM sqlite_master WHERE name = 'codara_runs'") == []
    upgraded = cli(project, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert cli(project, "worker", "--until-idle").exit_code == 0


def test_show_unknown_run(real: Real) -> None:
    _, result = real["show_unknown"]
    assert_fails(result, NotFoundError.exit_code, "'nope'")


def test_signal_to_a_finished_run(real: Real) -> None:
    project, result = real["signal_finished"]
    assert_fails(result, ConflictError.exit_code, _run_id(project), "completed")
    assert project.sql("SELECT COUNT(*) FROM codara_signals") == [(0,)]


def test_wrong_flag_is_a_usage_error(real: Real) -> None:
    _, result = real["usage"]
    assert result.returncode == 2
    assert "--nope" in result.stderr
    assert "Traceback" not in result.stderr


# -- the same failures, in-process -------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        pytest.param("", ["is empty", "header"], id="empty-no-header"),
        pytest.param(
            "Where is my invoice?\nThe app crashes\n",
            ["no column 'text'", "columns found: Where is my invoice?", "header"],
            id="no-header-row",
        ),
        pytest.param("customer,body\nacme,hi\n", ["no column 'text'"], id="missing-column"),
        pytest.param("text\n", ["header but no rows"], id="header-only"),
        pytest.param(
            "text,customer\nok,acme\nhi,acme,extra\n", ["row 3 has 3 fields"], id="ragged"
        ),
        pytest.param("text\nok\n" + "x" * 200_000 + "\n", ["malformed"], id="huge-field"),
    ],
)
def test_bad_csv(seeded: Project, cli: CliFn, content: str, fragments: list[str]) -> None:
    path = seeded.path / "tickets.csv"
    path.write_text(content, encoding="utf-8")
    result = cli(seeded, "run", "triage", "--input-file", str(path))
    assert_fails(result, InputError.exit_code, str(path), *fragments)
    assert seeded.count_runs() == 1


@pytest.mark.parametrize("name", ["missing.csv", "folder.csv", "latin1.csv"])
def test_unreadable_input_file(seeded: Project, cli: CliFn, name: str) -> None:
    (seeded.path / "folder.csv").mkdir()
    (seeded.path / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    result = cli(seeded, "run", "triage", "-f", name)
    assert_fails(result, InputError.exit_code, name)
    assert seeded.count_runs() == 1


def test_bad_json_lines_write_nothing(seeded: Project, cli: CliFn) -> None:
    path = seeded.path / "people.jsonl"
    path.write_text('{"name": "a"}\n{"name": "b"}\n{"name": c}\n', encoding="utf-8")
    result = cli(seeded, "run", "greet", "-f", str(path))
    assert_fails(result, InputError.exit_code, "line 3 is not valid JSON")
    assert seeded.count_runs() == 1  # lines 1 and 2 were fine, but it is all or nothing


def test_invalid_row_for_the_workflow_writes_nothing(seeded: Project, cli: CliFn) -> None:
    path = seeded.path / "tickets.jsonl"
    path.write_text('{"text": "ok"}\n{"customer": "acme"}\n', encoding="utf-8")
    result = cli(seeded, "run", "triage", "-f", str(path))
    assert_fails(result, InputError.exit_code, "line 2", "text: Field required")
    assert seeded.count_runs() == 1
    both = cli(seeded, "run", "triage", "-f", str(path), "--input", "{}")
    assert_fails(both, InputError.exit_code, "not both")


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[store]\ncolour = "blue"\n', ["store.colour", "Extra inputs"]),
        ('[store]\ndurability = "sometimes"\n', ["store.durability", "'fsync' or 'os'"]),
        ('[app]\nmodule = "sample_app:app"\nextra = 1\n', ["[app]", "extra"]),
    ],
    ids=["unknown-key", "bad-durability", "unknown-app-key"],
)
def test_broken_codara_toml(seeded: Project, cli: CliFn, toml: str, fragments: list[str]) -> None:
    (seeded.path / "codara.toml").write_text(toml, "utf-8")
    del seeded.env["CODARA_APP"]
    result = cli(seeded, "run", "greet")
    assert_fails(result, ConfigError.exit_code, "codara.toml", *fragments)
    assert seeded.count_runs() == 1


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("no_such_module:app", ["no module named 'no_such_module'", "current directory"]),
        ("sample_app:nope", ["no attribute 'nope'"]),
        ("sample_app:Ticket", ["is a class, not a codara.App"]),
        ("not a module", ["package.module:attribute"]),
        (None, ["no Codara app to load", "[app] module"]),
    ],
    ids=["module", "attribute", "not-an-app", "malformed", "none"],
)
def test_app_not_found(seeded: Project, cli: CliFn, spec: str | None, fragments: list[str]) -> None:
    if spec is None:
        del seeded.env["CODARA_APP"]
    else:
        seeded.env["CODARA_APP"] = spec
    result = cli(seeded, "run", "greet")
    assert_fails(result, ConfigError.exit_code, *fragments)
    assert seeded.count_runs() == 1


def test_sqlite_folder_missing(project: Project, cli: CliFn, tmp_path: Path) -> None:
    project.env["CODARA_DATABASE_URL"] = f"sqlite:///{tmp_path}/no/such/dir/c.db"
    result = cli(project, "run", "greet")
    assert_fails(result, DatabaseUnreachableError.exit_code, "folder does not exist")
    assert not (tmp_path / "no").exists()


def test_tables_without_a_revision_record(seeded: Project, cli: CliFn) -> None:
    seeded.sql("DELETE FROM codara_alembic_version")
    refused = cli(seeded, "worker", "--until-idle")
    assert_fails(refused, SchemaOutOfDateError.exit_code, "codara db upgrade")
    upgrade = cli(seeded, "db", "upgrade")
    assert_fails(upgrade, StoreError.exit_code, "no schema version record", "restore it from a")
    assert seeded.count_runs() == 1


def test_unknown_schema_revision(seeded: Project, cli: CliFn) -> None:
    seeded.sql("UPDATE codara_alembic_version SET version_num = '0000'")
    assert_fails(cli(seeded, "worker", "--until-idle"), SchemaOutOfDateError.exit_code, "0000")
    upgrade = cli(seeded, "db", "upgrade")
    assert_fails(upgrade, StoreError.exit_code, "'0000'", "cannot upgrade the schema")
    assert seeded.count_runs() == 1


def test_cancel_and_signal_conflicts(seeded: Project, cli: CliFn) -> None:
    run_id = _run_id(seeded)
    assert_fails(cli(seeded, "runs", "cancel", run_id), ConflictError.exit_code, "completed")
    assert_fails(cli(seeded, "runs", "cancel", "nope"), NotFoundError.exit_code, "'nope'")
    bad = cli(seeded, "signal", run_id, "go", "--payload", "{oops")
    assert_fails(bad, InputError.exit_code, "--payload is not valid JSON")
    status = cli(seeded, "runs", "list", "--status", "done")
    assert_fails(status, InputError.exit_code, "'done'", "completed")


def test_unexpected_errors_are_short_unless_debugging(seeded: Project, cli: CliFn) -> None:
    seeded.sql("DROP TABLE codara_journal")
    run_id = _run_id(seeded)
    result = cli(seeded, "runs", "show", run_id)
    assert_fails(result, 1, "unexpected OperationalError", "no such table", "CODARA_DEBUG=1")
    seeded.env["CODARA_DEBUG"] = "1"
    debug = cli(seeded, "runs", "show", run_id)
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
