"""Settings: the only module that reads files or the environment for configuration.

Sources, lowest precedence first: built-in defaults, ``codara.toml`` (or the file named by
``CODARA_CONFIG``), then ``CODARA_*`` environment variables. Secrets never live in the file:
settings that need one name the environment variable that holds it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codara.errors import ConfigError

__all__ = [
    "AUDIT_KEY_ENV",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_DATABASE_URL",
    "REFERENCE_PATH",
    "EmbeddingSettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "WorkerSettings",
    "audit_key",
    "load_settings",
    "reference_markdown",
]

DEFAULT_CONFIG_FILE = "codara.toml"
DEFAULT_DATABASE_URL = "sqlite:///codara.db"

Durability = Literal["fsync", "os"]

# Environment variable -> (section, key). Documented in docs/reference/config.md, which
# reference_markdown() generates from this module.
_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CODARA_DATABASE_URL": ("store", "url"),
    "CODARA_DURABILITY": ("store", "durability"),
    "CODARA_POOL_SIZE": ("store", "pool_size"),
    "CODARA_WORKER_CONCURRENCY": ("worker", "concurrency"),
    "CODARA_LEASE_SECONDS": ("worker", "lease_seconds"),
    "CODARA_POLL_INTERVAL": ("worker", "poll_interval"),
    "CODARA_POLL_MIN_INTERVAL": ("worker", "poll_min_interval"),
    "CODARA_SHUTDOWN_GRACE_SECONDS": ("worker", "shutdown_grace_seconds"),
    "CODARA_MAX_CLAIMS": ("worker", "max_claims"),
    "CODARA_MAX_BODY_BYTES": ("server", "max_body_bytes"),
    "CODARA_TRUSTED_PROXIES": ("server", "trusted_proxies"),
}


class _Section(BaseModel):
    # The docstring under each field is its description in the reference (field_docs below).
    # Not pydantic's use_attribute_docstrings: that reads and parses this file's source at
    # every import (about a tenth of `codara runs list`'s start-up) for text only the
    # reference generator needs.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Section):
    """Where runs, journals and reviews are stored, and how durably."""

    url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy-style URL: ``sqlite:///path.db`` or ``postgresql://user@host/db``."""
    durability: Durability = "fsync"
    """SQLite only. ``fsync``: a committed step survives power loss (synchronous=FULL).
    ``os``: WAL with synchronous=NORMAL, survives a killed process but not a power cut."""
    pool_size: int = Field(default=4, ge=1, le=64)
    """PostgreSQL connections per worker process."""


class WorkerSettings(_Section):
    """How a worker process (``codara worker``, ``App.work``) claims and executes runs."""

    concurrency: int = Field(default=16, ge=1, le=10_000)
    """Runs one worker process executes at once."""
    lease_seconds: float = Field(default=30.0, gt=0.5, le=3600)
    """How long a claim lasts without a heartbeat before another worker may take the run."""
    poll_interval: float = Field(default=0.1, gt=0, le=60)
    """Longest time, in seconds, an idle worker waits before looking for work again when
    nothing wakes it (a run made ready in the same process, or a PostgreSQL notification,
    wakes it at once). The wait starts at ``poll_min_interval`` after activity and doubles
    while the worker finds nothing, up to this. Also bounds how late a timer fires."""
    poll_min_interval: float = Field(default=0.005, gt=0, le=60)
    """Shortest wait, in seconds, between an idle worker's looks for work: the one right
    after activity (a run claimed, a run of the worker ended or parked, a wake-up). Lower
    finds runs made ready by other SQLite processes sooner; it never exceeds
    ``poll_interval``."""
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM/SIGINT: how long in-flight steps may take to finish before the worker
    cancels them and hands their runs back."""
    max_claims: int = Field(default=5, ge=1, le=1000)
    """A run claimed this many times in a row whose lease lapsed each time (its worker was
    killed or stalled) fails with ``PoisonRunError`` at the next claim instead of looping."""


class ServerSettings(_Section):
    """The web server (``codara serve``): limits on what a request may carry."""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    """Largest request body accepted, in bytes; a bigger one is refused with 413 before it is
    read whole (by its Content-Length, or by counting a chunked body as it arrives)."""
    max_signal_payload_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024 * 1024)
    """Largest signal payload (``POST /api/runs/ID/signals/NAME``), in bytes of its JSON."""
    trusted_proxies: str = "127.0.0.1,::1"
    """Comma-separated addresses or networks (``10.0.0.0/8``) of reverse proxies whose
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed: a request from one of them is
    taken to come from the right-most address in ``X-Forwarded-For`` that is not a trusted
    proxy (login throttling per address uses it). Empty: believe no proxy."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry[:60]!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                ) from None
        return value


class EmbeddingSettings(_Section):
    """The built-in embedding model (``codara.models``): its threads, and how texts from
    concurrent runs are batched into model calls (see ``TextBatcher``)."""

    threads: int = Field(default=0, ge=0, le=64)
    """onnxruntime threads one model call uses; ``0``: one per CPU this process may use, at
    most 8."""
    batch_tokens: int = Field(default=256, ge=16, le=65536)
    """Token budget of one model call, padding included: its texts x its longest text's
    tokens. Waiting texts are sorted by length and grouped up to this; a text longer than
    the budget goes alone."""
    batch_texts: int = Field(default=256, ge=1, le=4096)
    """Most texts in one model call."""
    batch_wait: float = Field(default=0.002, ge=0, le=1)
    """Seconds a text that finds the model idle waits for others (or for a full budget)
    before the call starts; while the model is busy texts only wait for it."""


class Settings(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)

    store: StoreSettings = StoreSettings()
    """``[store]``: the database."""
    worker: WorkerSettings = WorkerSettings()
    """``[worker]``: the worker processes."""
    server: ServerSettings = ServerSettings()
    """``[server]``: the web server's request limits."""
    embedding: EmbeddingSettings = EmbeddingSettings()
    """``[embedding]``: the built-in embedding model."""
    source_file: str | None = None
    """The file the settings came from, if any (for error messages)."""

    def section(self, name: str) -> Mapping[str, Any]:
        """A raw section that another module validates itself (policies, models, ...)."""
        extra = self.model_extra or {}
        value = extra.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"[{name}] in {self.source_file or 'the configuration'} must be a table",
                hint=f"write it as a TOML table: [{name}]",
            )
        return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {path}: {exc.strerror}",
            hint="check the path, or unset CODARA_CONFIG to use ./codara.toml",
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            hint="fix the line named above; TOML strings need quotes, tables need [brackets]",
        ) from exc


def _format_validation(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid settings in {where}: " + "; ".join(parts)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Load settings from ``path`` (default ``$CODARA_CONFIG`` or ``./codara.toml``).

    A missing default file is fine (defaults apply); a file named explicitly must exist.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or "CODARA_CONFIG" in env
    file = Path(path) if path is not None else Path(env.get("CODARA_CONFIG", DEFAULT_CONFIG_FILE))
    data: dict[str, Any] = {}
    source: str | None = None
    if file.exists() or explicit:
        data = _read_toml(file)
        source = str(file)
    for var, (section, key) in _ENV_OVERRIDES.items():
        if var in env and env[var] != "":
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"[{section}] in {source} must be a table")
            table[key] = env[var]
    for section, values in (overrides or {}).items():
        table = data.setdefault(section, {})
        table.update({k: v for k, v in values.items() if v is not None})
    data["source_file"] = source
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = source or "the environment"
        raise ConfigError(
            _format_validation(exc, where),
            hint="see docs/reference/config.md for every key and its allowed values",
        ) from exc


# -- the reference (docs/reference/config.md) --------------------------------------------------
REFERENCE_PATH = "docs/reference/config.md"
"""Where the configuration reference lives in the repository, relative to its root."""

_REGENERATE = "python tools/gen_config_reference.py"

# Sections that layers above this one validate themselves (``Settings.section``).
_OTHER_SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "[app]",
        '`module = "package.module:app"`: the `codara.App` whose workflows the CLI loads for '
        "the commands that execute or start runs from code (`codara worker`, `codara run`, "
        "...). Also `CODARA_APP` or `--app`. `codara serve` does not need it.",
        "[operations](../operations.md)",
    ),
    (
        "[effects.NAME]",
        "the policies of effect NAME, checked before it is claimed: `facts` (NAME = "
        '`"input.FIELD"` or `"read.SOURCE.FIELD"`), `policy_input`, `policies`, '
        "`reject_reasons`.",
        "[effects](../effects.md)",
    ),
    (
        "[lineage]",
        "OpenLineage run events for reads, off by default: `enabled`, `namespace`, "
        "`transport` (`file` with `path`, or `http` with `url`, `endpoint`, `api_key_env`, "
        "`timeout`, `retries`), `queue_size`, `close_timeout`.",
        "[lineage](../lineage.md)",
    ),
    (
        "[notifications]",
        "the webhook told of review events: `webhook_url`, `secret_env` (the name of the "
        "variable holding the signing secret; the secret itself is never in the file), "
        "`review_url`, `timeout`, `attempts`.",
        "`NotificationSettings` in `src/codara/review/_notify.py`",
    ),
    (
        "[privacy]",
        "`reveal = { ROLE = [KIND, ...] }`: the reviewer roles that may see the original "
        "behind a token of those kinds (`email`, `phone`, `iban`, `card`, `name`, `address`, "
        "`text`) in a review they decide; nobody else may.",
        "[privacy](../privacy.md#a-reviewer-seeing-an-original)",
    ),
    (
        "[sources.NAME]",
        "a data source workflows read with `ctx.read`: `kind` (`sql`, `http`, `file`, or "
        "`package.module:Class`), its scope, `batch_rows`, `max_age` and `on_stale`, "
        "`record_model` and `contract`, `release_to`, and the keys of its kind.",
        "[sources](../sources.md)",
    ),
    (
        "[workflows.NAME]",
        "the review policies of workflow NAME: `policy_input`, `policies`, `sampling`, "
        '`reject_reasons`; and `effects = "live"` or `"shadow"` (effects recorded, not done).',
        "[policies](../policies.md)",
    ),
)

# Variables read outside this module (by the CLI), listed so that the reference is complete.
_OTHER_ENV: tuple[tuple[str, str], ...] = (
    ("CODARA_APP", "the app to load, as `[app] module` (the CLI)"),
    ("CODARA_DEBUG", "`1`: the CLI prints tracebacks of unexpected errors"),
)


def _md(text: str) -> str:
    """Docstring text (reST literals) as one line of Markdown table cell."""
    return " ".join(text.replace("``", "`").split()).replace("|", "\\|")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(f'`"{v}"`' for v in typing.get_args(tp))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):
        return " or ".join(_type_name(a) for a in args) + " (optional)"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds(metadata: list[Any]) -> str:
    marks = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [
        f"{mark} {getattr(m, attr)}"
        for m in metadata
        for attr, mark in marks.items()
        if getattr(m, attr, None) is not None
    ]
    return f", {' and '.join(parts)}" if parts else ""


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def field_docs(model: type) -> dict[str, str]:
    """The docstring written under each annotated field of ``model``'s class body."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for field, after in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs


def reference_markdown() -> str:
    """The text of ``docs/reference/config.md``, generated from the settings models."""
    env_of = {key: var for var, key in _ENV_OVERRIDES.items()}
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/codara/config.py by `{_REGENERATE}`; do not edit. -->",
        "",
        "Settings come from, lowest precedence first: the built-in defaults, `codara.toml` "
        "(in the current folder, or the file `CODARA_CONFIG` names, or `--config PATH`), "
        "then `CODARA_*` environment variables. Secrets never go in the file: a setting that "
        "needs one names the environment variable that holds it. An unknown key or a bad "
        "value stops every command with the file, the key and what is allowed.",
    ]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        out += ["", f"## `[{section}]`", ""]
        if model.__doc__:
            out += [_md(model.__doc__), ""]
        out += [
            "| key | type | default | environment | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        docs = field_docs(model)
        for key, f in model.model_fields.items():
            env = env_of.get((section, key))
            out.append(
                f"| `{key}` | {_type_name(f.annotation)}{_bounds(f.metadata)} | "
                f"{_toml(f.default)} | {f'`{env}`' if env else '-'} | "
                f"{_md(f.description or docs.get(key, ''))} |"
            )
    out += [
        "",
        "## Sections read by other parts of Codara",
        "",
        "These are validated where they are used; a mistake in them is reported the same way.",
        "",
        "| section | what it holds | see |",
        "| --- | --- | --- |",
        *(f"| `{name}` | {text} | {see} |" for name, text, see in _OTHER_SECTIONS),
        "",
        "## Environment variables",
        "",
        "| variable | sets |",
        "| --- | --- |",
        "| `CODARA_CONFIG` | the configuration file to read instead of `./codara.toml` (it "
        "must exist) |",
        *(f"| `{var}` | `[{s}] {k}` |" for var, (s, k) in _ENV_OVERRIDES.items()),
        *(f"| `{var}` | {text} |" for var, text in _OTHER_ENV),
        "",
        "A variable that sets a key counts as unset when it is empty.",
        "",
    ]
    return "\n".join(out)


AUDIT_KEY_ENV = "CODARA_AUDIT_KEY"
_MIN_AUDIT_KEY = 16


def audit_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The secret that keys the audit chain's HMACs (``CODARA_AUDIT_KEY``), or None if unset.

    A secret, so it is read from the environment only, never from ``codara.toml``.
    """
    env = os.environ if environ is None else environ
    value = env.get(AUDIT_KEY_ENV, "")
    if value == "":
        return None
    if len(value) < _MIN_AUDIT_KEY:
        raise ConfigError(
            f"{AUDIT_KEY_ENV} is too short ({len(value)} characters; at least "
            f"{_MIN_AUDIT_KEY} are needed)",
            hint="use a long random secret, e.g. the output of `openssl rand -hex 32`, and keep "
            "it outside the database",
        )
    return value.encode()
