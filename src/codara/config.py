"""Settings: the only module that reads files or the environment for configuration.

Sources, lowest precedence first: built-in defaults, ``codara.toml`` (or the file named by
``CODARA_CONFIG``), then ``CODARA_*`` environment variables. Secrets never live in the file:
settings that need one name the environment variable that holds it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codara.errors import ConfigError

__all__ = [
    "AUDIT_KEY_ENV",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_DATABASE_URL",
    "Settings",
    "StoreSettings",
    "WorkerSettings",
    "audit_key",
    "load_settings",
]

DEFAULT_CONFIG_FILE = "codara.toml"
DEFAULT_DATABASE_URL = "sqlite:///codara.db"

Durability = Literal["fsync", "os"]

# Environment variable -> (section, key). Documented in docs/reference/config.md.
_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CODARA_DATABASE_URL": ("store", "url"),
    "CODARA_DURABILITY": ("store", "durability"),
    "CODARA_WORKER_CONCURRENCY": ("worker", "concurrency"),
    "CODARA_LEASE_SECONDS": ("worker", "lease_seconds"),
    "CODARA_POLL_INTERVAL": ("worker", "poll_interval"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Section):
    url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy-style URL: ``sqlite:///path.db`` or ``postgresql://user@host/db``."""
    durability: Durability = "fsync"
    """SQLite only. ``fsync``: a committed step survives power loss (synchronous=FULL).
    ``os``: WAL with synchronous=NORMAL, survives a killed process but not a power cut."""
    pool_size: int = Field(default=4, ge=1, le=64)
    """PostgreSQL connections per worker process."""


class WorkerSettings(_Section):
    concurrency: int = Field(default=16, ge=1, le=10_000)
    """Runs one worker process executes at once."""
    lease_seconds: float = Field(default=30.0, gt=0.5, le=3600)
    """How long a claim lasts without a heartbeat before another worker may take the run."""
    poll_interval: float = Field(default=0.1, gt=0, le=60)
    """Seconds an idle worker waits before looking for work again."""


class Settings(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)

    store: StoreSettings = StoreSettings()
    worker: WorkerSettings = WorkerSettings()
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
