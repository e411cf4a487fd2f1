"""How the CLI finds its settings, its store and the user's :class:`codara.App`.

The workflows live in the user's code: an importable ``module:attribute`` that names a
``codara.App``. It comes from ``--app``, else ``CODARA_APP``, else ``[app] module`` in
``codara.toml``. The current directory is put on ``sys.path`` first, as ``python -m`` does.

The store always comes from the CLI's own settings (``codara.toml`` or ``--config``,
``CODARA_*`` variables, ``--database-url``), never from arguments given to ``App()`` in the
user's module, so that every command looks at the same database.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from codara.errors import CodaraError, ConfigError, InputError

if TYPE_CHECKING:  # imported where used: `codara --help` loads none of them
    from codara.config import Settings
    from codara.engine import App, Workflow
    from codara.store import Migrate

__all__ = [
    "Options",
    "check_inputs",
    "import_app",
    "load_cli_settings",
    "load_input_file",
    "open_app",
    "options",
    "parse_json",
    "resolve_app_spec",
]

APP_ENV = "CODARA_APP"


@dataclass
class Options:
    """The global options, given before the command (``codara --config x.toml runs list``)."""

    config: Path | None = None
    app: str | None = None
    database_url: str | None = None
    json: bool = False


def load_cli_settings(opts: Options) -> Settings:
    from codara.config import load_settings

    return load_settings(
        opts.config,
        overrides={"store": {"url": opts.database_url}} if opts.database_url else None,
    )


def resolve_app_spec(settings: Settings, cli_value: str | None) -> tuple[str, str]:
    """The ``module:attribute`` to import, and where it came from (for messages)."""
    if cli_value:
        return cli_value, "--app"
    env = os.environ.get(APP_ENV, "")
    if env:
        return env, APP_ENV
    section = settings.section("app")
    where = settings.source_file or "codara.toml"
    value = section.get("module")
    if value is None:
        raise ConfigError(
            "no Codara app to load: the workflows are defined in your code, and the CLI "
            "needs to know where",
            hint=f'add [app] module = "yourpackage.module:app" to {where}, '
            f"set {APP_ENV}=module:app, or pass --app module:app",
        )
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"[app] module in {where} must be a string like 'package.module:app' (got {value!r})",
            hint='write it as module = "package.module:app"',
        )
    unknown = sorted(set(section) - {"module"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [app] of {where}: {', '.join(unknown)}",
            hint="[app] takes only `module`",
        )
    return value.strip(), f"[app] module in {where}"


@contextmanager
def _config_env(config: Path | None) -> Iterator[None]:
    """While importing the user's module, its ``App()`` reads the same file the CLI does."""
    if config is None:
        yield
        return
    old = os.environ.get("CODARA_CONFIG")
    os.environ["CODARA_CONFIG"] = str(config)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CODARA_CONFIG", None)
        else:
            os.environ["CODARA_CONFIG"] = old


def import_app(spec: str, source: str, *, config: Path | None = None) -> App:
    """Import ``module:attribute`` (attribute defaults to ``app``) and check it is an App."""
    from codara.engine import App

    module_name, _, attr = spec.strip().partition(":")
    attr = attr or "app"
    tried = f"{spec!r} (from {source})"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(
            f"{tried} is not of the form 'package.module:attribute'",
            hint="name an importable module and the App in it, e.g. myproject.app:app",
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        with _config_env(config):
            module = importlib.import_module(module_name)
    except CodaraError:
        raise  # e.g. a broken codara.toml read by App() at import time: already explained
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise ConfigError(
                f"cannot import the app {tried}: no module named {missing!r}",
                hint=f"check the spelling; the current directory ({cwd}) and PYTHONPATH are "
                "searched, so run codara from your project's root",
            ) from exc
        raise ConfigError(
            f"importing the app {tried} failed: {exc}",
            hint="install the missing package in the environment codara runs in",
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"importing the app {tried} raised {type(exc).__name__}: {exc}",
            hint=f"run `python -c 'import {module_name}'` to see the traceback "
            "(or set CODARA_DEBUG=1)",
        ) from exc
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"the module {module_name!r} has no attribute {attr!r} (tried {tried})",
                hint=f"define `{attr} = codara.App()` in {module_name}, or name the right "
                "attribute after the colon",
            )
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        what = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ConfigError(
            f"{module_name}:{attr} is {what}, not a codara.App (tried {tried})",
            hint="point at the object created with `codara.App()` that your workflows are "
            "registered on",
        )
    return obj


def open_app(opts: Options, *, workflows: bool, migrate: Migrate = "check") -> App:
    """An App on the CLI's store; with ``workflows``, carrying the user app's workflows.

    The returned App is not open yet (``async with app:``). Opening it checks (``check``),
    creates (``create-if-empty``) or upgrades the schema.
    """
    from codara.engine import App

    settings = load_cli_settings(opts)
    if not workflows:
        return App(settings=settings, migrate=migrate)
    spec, source = resolve_app_spec(settings, opts.app)
    user = import_app(spec, source, config=opts.config)
    app = App(settings=settings, clock=user.clock, retry=user.retry_policy, migrate=migrate)
    for wf in user.workflows():  # registration order: the last version is the latest
        app.workflow(name=wf.name, version=wf.version, compatible_with=wf.compatible_with)(wf.fn)
    for tick in user.tickers:  # housekeeping such as install_reviews' deadline sweep
        app.add_ticker(tick)
    app._effects = user._effects  # its effects, with the policy gates install_reviews made
    app._mcp = user._mcp  # its MCP servers, if it loaded them (their effects are among those)
    if not app.workflows():
        raise ConfigError(
            f"the app {spec!r} (from {source}) has no workflows registered",
            hint="decorate async functions with @app.workflow(name=...) in the module, or "
            "import the modules that do",
        )
    return app


# -- inputs ------------------------------------------------------------------------------------
_JSON_HINT = (
    'quote it for the shell, e.g. --input \'{"text": "hello"}\'; strings need double quotes'
)


def parse_json(text: str, what: str, *, hint: str = _JSON_HINT) -> Any:
    """Parse JSON given on the command line; the error names the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos})",
            hint=hint,
        ) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(
            f"the input file {path} does not exist", hint="check the path (relative to here)"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the input file {path} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8",
        ) from None
    except OSError as exc:
        raise InputError(
            f"cannot read the input file {path}: {exc.strerror or exc}",
            hint="check that it is a readable file",
        ) from None


def required_fields(wf: Workflow) -> list[str]:
    """The keys a workflow's declared input type requires (empty if it declares none)."""
    if wf.input_adapter is None:
        return []
    try:
        schema = wf.input_adapter.json_schema()
    except Exception:  # a type with no JSON schema: no column check, validation still runs
        return []
    required = schema.get("required", []) if schema.get("type") == "object" else []
    return [str(name) for name in required]


def _load_csv(path: Path, text: str, wf: Workflow) -> list[tuple[str, Any]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(map(str.strip, r))]
    except csv.Error as exc:
        raise InputError(
            f"the CSV file {path} is malformed: {exc}", hint="check the quoting of that line"
        ) from None
    if not rows:
        raise InputError(
            f"the CSV file {path} is empty: it needs a header line and at least one row",
            hint="the first line names the columns, e.g. text,customer",
        )
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header) or len(set(header)) != len(header):
        raise InputError(
            f"the CSV header of {path} has empty or repeated column names: {rows[0]}",
            hint="the first line must name every column once",
        )
    missing = [name for name in required_fields(wf) if name not in header]
    if missing:
        raise InputError(
            f"the CSV file {path} has no column {', '.join(map(repr, missing))}, which workflow "
            f"{wf.name!r} requires (columns found: {', '.join(header)})",
            hint=f"the first line must be a header naming the columns; add {', '.join(missing)}",
        )
    if len(rows) == 1:
        raise InputError(
            f"the CSV file {path} has a header but no rows", hint="add one line per run"
        )
    out: list[tuple[str, Any]] = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(
                f"{path}: row {number} has {len(row)} fields but the header has {len(header)}",
                hint="quote values that contain commas",
            )
        out.append((f"{path} row {number}", dict(zip(header, row, strict=True))))
    return out


def _load_jsonl(path: Path, text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path} line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path} line {number} is not valid JSON: {exc.msg} at column {exc.colno}",
                hint="a JSON Lines file holds one JSON value per line",
            ) from None
    if not out:
        raise InputError(f"the input file {path} has no lines", hint="one JSON value per line")
    return out


def load_input_file(path: Path, wf: Workflow) -> list[tuple[str, Any]]:
    """Inputs from a file, each with a label for messages.

    ``.csv``: one run per row (a dict of the row; the first line is the header).
    ``.jsonl`` / ``.ndjson``: one run per line. Anything else: one JSON document, one run.
    """
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path, text, wf)
    if suffix in (".jsonl", ".ndjson"):
        return _load_jsonl(path, text)
    return [(str(path), parse_json(text, f"the input file {path}"))]


def check_inputs(wf: Workflow, inputs: list[tuple[str, Any]]) -> None:
    """Validate every input before anything is written, naming the first bad one."""
    if wf.input_adapter is None:
        return
    from pydantic import ValidationError

    for label, value in inputs:
        try:
            wf.input_adapter.validate_python(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            raise InputError(
                f"{label}: input for workflow {wf.name!r} is invalid: {problems}",
                hint="pass input of the shape the workflow's second parameter declares",
            ) from None


def options(ctx: typer.Context, json_flag: bool = False) -> Options:
    """The global options of this invocation; a command's own ``--json`` switches JSON on."""
    opts = ctx.find_object(Options)
    if opts is None:
        opts = ctx.ensure_object(Options)
    if json_flag:
        opts.json = True
    return opts
