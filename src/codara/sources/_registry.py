"""The sources ``codara.toml`` declares, validated at load and opened at first use.

``[sources.NAME]`` tables name a ``kind``; each kind's module (imported only when a source
of that kind is declared, so ``codara --help`` does not pay for pyarrow or SQL drivers)
holds its config model and its connector. Everything wrong with a declaration (an unknown
kind, a misspelt key, a missing environment variable, a root that does not exist) is a
ConfigError naming the source and the key, raised by :func:`load_sources` before any run.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from codara.errors import ConfigError, SourceError
from codara.sources._base import Source, SourceConfig

__all__ = ["KINDS", "ReadObserver", "Sources", "load_sources"]

log = logging.getLogger("codara.sources")

KINDS: dict[str, tuple[str, str, str]] = {
    "sql": ("codara.sources._sql", "SqlSource", "SqlSourceConfig"),
    "http": ("codara.sources._http", "HttpSource", "HttpSourceConfig"),
    "file": ("codara.sources._files", "FileSource", "FileSourceConfig"),
}
"""kind -> (module, connector class, config class)."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


_CUSTOM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _kind(kind: str) -> tuple[type[Source], type[SourceConfig]]:
    """The connector class and config model of ``kind``: a built-in kind, or
    ``package.module:Class`` (ConfigError if that is not importable or not a Source)."""
    if kind in KINDS:
        module_name, source_cls, config_cls = KINDS[kind]
        module = importlib.import_module(module_name)
        return getattr(module, source_cls), getattr(module, config_cls)
    module_name, _, attr = kind.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"the source kind {kind!r} cannot be imported: {exc}",
            hint="give a custom connector as package.module:Class, importable where the "
            "worker runs",
        ) from exc
    if not (isinstance(found, type) and issubclass(found, Source)):
        raise ConfigError(
            f"the source kind {kind!r} is not a codara.sources.Source subclass",
            hint="a custom connector subclasses Source and names its config_model",
        )
    return found, found.config_model


def _validation_message(exc: ValidationError, name: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(table)"
        got = err.get("input")
        shown = "" if isinstance(got, Mapping) else f" (got {got!r})"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return f"[sources.{name}]: " + "; ".join(parts)


def load_sources(section: Mapping[str, Any], where: str = "codara.toml") -> Sources:
    """Validate every ``[sources.NAME]`` table of ``section``; ConfigError on the first
    that is wrong, naming it and what to fix."""
    configs: dict[str, SourceConfig] = {}
    for name, table in section.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"[sources.{name}] in {where}: a source name is a letter, then letters, "
                "digits, '_' or '-' (64 at most)",
                hint="rename the table, e.g. [sources.crm]",
            )
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"sources.{name} in {where} must be a table",
                hint=f'write it as [sources.{name}] with kind = "sql", "http" or "file"',
            )
        kind = table.get("kind")
        if kind not in KINDS and not (isinstance(kind, str) and _CUSTOM.match(kind)):
            raise ConfigError(
                f"[sources.{name}] in {where}: kind must be one of {', '.join(sorted(KINDS))}"
                f" or package.module:Class (got {kind!r})",
                hint='add kind = "sql" (a database), "http" (a JSON API) or "file"',
            )
        _, config_cls = _kind(kind)
        try:
            configs[name] = config_cls.model_validate(dict(table))
        except ConfigError as exc:  # a validator that checked the machine (a root, a variable)
            raise ConfigError(f"[sources.{name}] in {where}: {exc.message}", hint=exc.hint) from exc
        except ValidationError as exc:
            raise ConfigError(
                _validation_message(exc, name) + f" in {where}",
                hint=f"see docs/sources.md for the keys of a {kind} source",
            ) from exc
    return Sources(configs)


class ReadObserver(Protocol):
    """Told of every read as it is journaled (not of replays) and of the end of every run
    that read something: lineage exporters (OpenLineage) hang here. An observer must not
    block and must not raise: a failing export never fails a run."""

    def read(self, run_id: str, workflow: str, lineage: Mapping[str, Any]) -> None: ...

    def run_ended(self, run_id: str, workflow: str, status: str) -> None: ...


class Sources:
    """The declared sources of one App: configs validated, connectors opened on first use
    and closed with the App; ``observers`` are told of reads (see :class:`ReadObserver`)."""

    def __init__(self, configs: Mapping[str, SourceConfig]) -> None:
        self.configs = dict(configs)
        self._open: dict[str, Source] = {}
        self.observers: list[ReadObserver] = []
        self.checked = False
        """Whether :meth:`check` has reached every source once."""

    def observe_read(self, run_id: str, workflow: str, lineage: Mapping[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer.read(run_id, workflow, lineage)
            except Exception:  # an exporter's bug must not fail the read that was journaled
                log.exception("lineage observer %r failed on a read of run %s", observer, run_id)

    def observe_end(self, run_id: str, workflow: str, status: str) -> None:
        for observer in self.observers:
            try:
                observer.run_ended(run_id, workflow, status)
            except Exception:
                log.exception("lineage observer %r failed at the end of run %s", observer, run_id)

    def __contains__(self, name: object) -> bool:
        return name in self.configs

    def __len__(self) -> int:
        return len(self.configs)

    def get(self, name: str) -> Source:
        """The connector of source ``name``, created at its first use."""
        source = self._open.get(name)
        if source is not None:
            return source
        config = self.configs.get(name)
        if config is None:
            known = ", ".join(sorted(self.configs)) or "none"
            raise ConfigError(
                f"no source named {name!r} is declared (declared: {known})",
                hint=f"add a [sources.{name}] table to codara.toml",
            )
        source_cls, _ = _kind(config.kind)
        source = source_cls(name, config)
        self._open[name] = source
        return source

    async def check(self) -> None:
        """Build every declared source's connector and reach it once (see
        :meth:`Source.check`); a ConfigError or SourceError names the source."""
        for name in self.configs:
            source = self.get(name)
            try:
                await source.check()
            except (ConfigError, SourceError) as exc:
                if name in exc.message:
                    raise
                raise type(exc)(f"source {name!r}: {exc.message}", hint=exc.hint) from exc
        self.checked = True

    async def close(self) -> None:
        """Close the opened connectors, then the observers that have a ``close`` (an
        exporter flushing its queue: in a thread, so the event loop is not held)."""
        opened, self._open = list(self._open.values()), {}
        for source in opened:
            await source.close()
        for observer in self.observers:
            close = getattr(observer, "close", None)
            if callable(close):
                try:
                    await asyncio.to_thread(close)
                except Exception:
                    log.exception("lineage observer %r failed to close", observer)


def model_of(config: SourceConfig) -> type[BaseModel] | None:
    """The pydantic model ``record_model`` names, imported; ConfigError if it is not one."""
    if config.record_model is None:
        return None
    module_name, _, attr = config.record_model.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"record_model {config.record_model!r} cannot be imported: {exc}",
            hint="give it as package.module:Model, importable where the worker runs",
        ) from exc
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise ConfigError(
            f"record_model {config.record_model!r} is not a pydantic model",
            hint="point it at a class that subclasses pydantic.BaseModel",
        )
    return found
