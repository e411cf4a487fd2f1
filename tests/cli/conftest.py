"""Fixtures for the CLI tests: a project folder, the CLI in-process and as a real process.

``cli`` runs a command in this process (Typer's CliRunner: fast); ``proc`` runs
``python -m codara`` as a subprocess (about a second each: used where the real exit code
and the absence of a traceback matter). Both run in a fresh project folder whose
environment names the sample app and the test's database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner, Result

from codara.cli import app as cli_app

HERE = Path(__file__).resolve().parent
_ENV_CLEAR = ("CODARA_CONFIG", "CODARA_DEBUG", "CODARA_APP", "CODARA_DATABASE_URL", "COLUMNS")


@dataclass
class Project:
    """A folder to run codara in, with the environment that points it at the test's store."""

    path: Path
    url: str
    env: dict[str, str]

    def count_runs(self) -> int:
        rows = self.sql("SELECT COUNT(*) FROM codara_runs")
        return int(str(rows[0][0]))

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run SQL straight on the store's database (``?`` placeholders)."""
        if self.url.startswith("sqlite:///"):
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                rows = conn.execute(statement, params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True) as pg:
            cur = pg.execute(statement.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []


def make_project(tmp_path: Path, url: str) -> Project:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_CLEAR}
    env.update(
        CODARA_APP="sample_app:app",
        CODARA_DATABASE_URL=url,
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p),
        NO_COLOR="1",
    )
    work = tmp_path / "project"
    work.mkdir()
    return Project(work, url, env)


@pytest.fixture(scope="session")
def project_factory() -> Callable[[Path, str], Project]:
    """``make_project(folder, url)`` for fixtures with a wider scope."""
    return make_project


@pytest.fixture
def project(tmp_path: Path, sqlite_url: str) -> Project:
    """A project on a fresh SQLite database (no tables yet)."""
    return make_project(tmp_path, sqlite_url)


@pytest.fixture
def any_project(tmp_path: Path, db_url: str) -> Project:
    """The same, on SQLite and on PostgreSQL."""
    return make_project(tmp_path, db_url)


@pytest.fixture(autouse=True)
def _restore_sys_path() -> Iterator[None]:
    """The CLI puts the current folder on sys.path; undo that after each test."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


CliFn = Callable[..., Result]
ProcFn = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliFn:
    """Run ``codara ARGS`` in this process, in the project's folder and environment."""
    runner = CliRunner()

    def invoke(project: Project, *args: str) -> Result:
        monkeypatch.chdir(project.path)
        env: dict[str, str | None] = {k: project.env.get(k) for k in _ENV_CLEAR}
        env["NO_COLOR"] = "1"
        result = runner.invoke(cli_app, list(args), env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture
def proc() -> ProcFn:
    """Run ``python -m codara ARGS`` as a real process in the project's folder."""

    def run(
        project: Project, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "codara", *args],
            cwd=project.path,
            env={**project.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
