"""Start-up: what ``codara --help`` and ``codara runs list`` import.

The CLI starts fast because the heavy dependencies load only in the command that needs them
(docs/architecture.md, "Start-up"). These tests pin that without timing anything: they run
the real command under ``python -X importtime`` and read the modules it imported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

# Never needed to print the help: the database stack, the policy language, the server, the
# models, and Codara's own layers below the CLI.
HEAVY = (
    "alembic",
    "celpy",
    "fastapi",
    "httpx",
    "lark",
    "onnxruntime",
    "openlineage",
    "psycopg",
    "pydantic",
    "pydantic_ai",
    "sqlalchemy",
    "starlette",
    "tokenizers",
    "uvicorn",
    "codara.api",
    "codara.auth",
    "codara.config",
    "codara.console",
    "codara.engine",
    "codara.models",
    "codara.review",
    "codara.store",
    "codara.trace",
)
# Listing runs on SQLite opens the store and reads one table: no migration tooling, no other
# database's driver, no policy language, no server, no models, no review layer.
NOT_FOR_RUNS_LIST = (
    "alembic",
    "celpy",
    "fastapi",
    "httpx",
    "lark",
    "onnxruntime",
    "openlineage",
    "psycopg",
    "pydantic_ai",
    "sqlalchemy",
    "starlette",
    "tokenizers",
    "uvicorn",
    "codara.api",
    "codara.auth",
    "codara.console",
    "codara.models",
    "codara.review",
)
# Listing reviews: the queue and the accounts, not the gate, its policies or its webhooks.
NOT_FOR_REVIEW_LIST = (
    *(p for p in NOT_FOR_RUNS_LIST if not p.startswith(("codara.auth", "codara.review"))),
    "codara.review._gate",
    "codara.review._notify",
    "codara.review.policy",
)

_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$")


def imported_by(project: Project, *args: str) -> set[str]:
    """The modules ``python -m codara ARGS`` imports, from ``-X importtime`` on stderr."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "codara", *args],
        cwd=project.path,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {m.group(2) for m in map(_IMPORTED.match, done.stderr.splitlines()) if m}
    assert "codara.cli._main" in modules  # the report was read
    return modules


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


def test_help_imports_nothing_heavy(project: Project) -> None:
    modules = imported_by(project, "--help")
    assert loaded(modules, HEAVY) == []


def test_a_command_group_help_imports_nothing_heavy(project: Project) -> None:
    # Below the top level Typer checks the global options with pydantic: that one is allowed.
    heavy = tuple(p for p in HEAVY if p != "pydantic")
    for args in (("runs", "--help"), ("review", "--help"), ("runs", "list", "--help")):
        assert loaded(imported_by(project, *args), heavy) == [], args


def test_runs_list_on_sqlite_imports_only_what_it_uses(project: Project, cli: CliFn) -> None:
    assert cli(project, "db", "upgrade").exit_code == 0
    assert cli(project, "run", "greet", "--input", '{"name": "x"}').exit_code == 0
    modules = imported_by(project, "runs", "list")
    assert loaded(modules, NOT_FOR_RUNS_LIST) == []
    assert "codara.store._sqlite" in modules  # it did open the store


def test_review_list_loads_no_policy_language_and_no_webhook_client(
    project: Project, cli: CliFn
) -> None:
    """Reading the queue needs the queue, not CEL (compiled only by the gate) nor httpx
    (loaded by the first webhook delivery)."""
    assert cli(project, "db", "upgrade").exit_code == 0
    assert cli(project, "users", "add", "alice", "--role", "support").exit_code == 0
    modules = imported_by(project, "review", "list", "--user", "alice")
    assert loaded(modules, NOT_FOR_REVIEW_LIST) == []
    assert "codara.review._service" in modules  # it did read the queue


def test_import_codara_is_light_and_every_public_name_still_resolves() -> None:
    script = (
        "import sys, codara\n"
        "light = 'codara.engine' not in sys.modules and 'sqlalchemy' not in sys.modules\n"
        "names = {}\n"
        "exec('from codara import *', names)\n"
        "missing = [n for n in codara.__all__ if n not in names or n not in dir(codara)]\n"
        "print(light, missing, codara.App.__module__, codara.Tx.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["True", "[]", "codara.engine._app", "codara.store._base"]
