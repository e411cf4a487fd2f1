"""What ``[mcp.NAME]`` in ``codara.toml`` declares, checked when it is loaded.

A server is either a command Codara starts and talks to over stdio, or a URL it reaches over
streamable HTTP. Secrets never live in the file: ``env`` names the environment variables the
command is given, and a header's value names the variables it is made of
(``Authorization = "Bearer ${MCP_TOKEN}"``). Only the tools named in ``tools`` may be called,
each declared a ``read`` (no side effects) or an ``effect``::

    [mcp.crm]
    command = "python"
    args = ["-m", "crm_mcp"]
    env = ["CRM_API_TOKEN"]
    timeout_s = 20
    tools = { lookup_order = "read", find_refund = "read", refund = { kind = "effect",
              key_arg = "idempotency_key", reconcile = "find_refund" } }
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from codara.errors import ConfigError

__all__ = ["ServerConfig", "ToolDecl", "load_configs"]

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
TOOL = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
"""An MCP tool name (the specification's characters and length)."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VARIABLE = re.compile(r"\$\{([^}]*)\}")
"""``${NAME}`` in a header value: the value of environment variable NAME."""
_HEADER = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 header name


class ToolDecl(BaseModel):
    """One declared tool: ``"read"``, ``"effect"``, or a table with ``kind`` and, for an
    effect, how its idempotency key and reconcile are passed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["read", "effect"]
    effect: str | None = None
    """The effect's name for ``ctx.effect`` (default ``mcp.SERVER.TOOL``)."""
    key_arg: str | None = None
    """The argument that also carries the idempotency key (it always goes in ``_meta``)."""
    reconcile: str | None = None
    """A read tool of the same server answering "did it happen?" for a key."""
    reconcile_arg: str | None = None
    """The reconcile tool's argument for the key (default ``key_arg``, else
    ``idempotency_key``)."""
    shadow_result: Any = None
    """What the effect returns in shadow mode (JSON; default null)."""

    @model_validator(mode="after")
    def _effect_only(self) -> ToolDecl:
        if self.kind == "read":
            given = [k for k in ("effect", "key_arg", "reconcile", "reconcile_arg",
                                 "shadow_result") if k in self.model_fields_set]  # fmt: skip
            if given:
                raise ValueError(f"{', '.join(given)} only apply to an effect tool")
        if self.effect is not None and not (
            1 <= len(self.effect) <= 200 and self.effect.strip() == self.effect
        ):
            raise ValueError("effect must be a name of 1 to 200 characters")
        if self.reconcile_arg is not None and self.reconcile is None:
            raise ValueError("reconcile_arg needs reconcile (the tool that takes it)")
        return self

    @property
    def key_for_reconcile(self) -> str:
        return self.reconcile_arg or self.key_arg or "idempotency_key"


class ServerConfig(BaseModel):
    """``[mcp.NAME]``: one MCP server and the tools Codara may call on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = None
    """stdio: the executable to start (the server speaks MCP on its stdin and stdout)."""
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    """stdio: names of environment variables passed to the command (besides ``HOME``,
    ``PATH`` and the few the SDK always passes); never values."""
    cwd: str | None = None
    url: str | None = None
    """streamable HTTP: the server's endpoint, ``http(s)://host[:port]/path``."""
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers, each value made of ``${NAME}`` environment variables."""
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds for each tool call to answer."""
    start_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds to start (stdio) or reach (HTTP) the server and list its tools."""
    tools: dict[str, ToolDecl] = Field(min_length=1)
    """The only tools that may be called: name -> ``"read"`` | ``"effect"`` | a table."""

    @field_validator("tools", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: {"kind": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: dict[str, ToolDecl]) -> dict[str, ToolDecl]:
        for name, decl in value.items():
            if not TOOL.match(name):
                raise ValueError(f"{name!r} is not an MCP tool name (letters, digits, _ . -)")
            if decl.reconcile is not None:
                other = value.get(decl.reconcile)
                if other is None or other.kind != "read":
                    raise ValueError(
                        f"{name}: reconcile = {decl.reconcile!r} must name a tool declared "
                        '"read" in the same tools table'
                    )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, name in enumerate(value, 1):
            if not ENV_NAME.match(name):
                raise ValueError(  # not quoted: it may be a value, and a secret
                    f"entry {i} is not an environment variable name: env lists names, the "
                    "values come from the environment"
                )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None or parts.query:
            raise ValueError(
                "url must not hold credentials or a query string; send them in headers, "
                'e.g. headers = { Authorization = "Bearer ${MCP_TOKEN}" }'
            )
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"url has an invalid port: {exc}") from None
        return parts.geturl()

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not _HEADER.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            names = VARIABLE.findall(template)
            if not names:
                raise ValueError(
                    f"headers.{name} must name the environment variable that holds its value, "
                    f'e.g. {name} = "Bearer ${{MCP_TOKEN}}" (a secret never goes in the file)'
                )
            for var in names:
                if not ENV_NAME.match(var):
                    raise ValueError(f"headers.{name}: {var!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "give either command (a server started over stdio) or url (streamable HTTP)"
            )
        if self.url is not None and (self.args or self.env or self.cwd is not None):
            raise ValueError("args, env and cwd are for a command; a url server takes headers")
        if self.command is not None and self.headers:
            raise ValueError("headers are for a url server; a command gets env")
        if self.command is not None and not self.command.strip():
            raise ValueError("command must not be empty")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def effect_name(self, server: str, tool: str) -> str:
        return self.tools[tool].effect or f"mcp.{server}.{tool}"


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(table)"
        got = err.get("input")
        secretive = bool(err["loc"]) and err["loc"][0] in ("env", "headers")  # may hold a secret
        shown = (
            "" if isinstance(got, Mapping) or err["type"] == "missing" or secretive
            else f" (got {got!r})"
        )  # fmt: skip
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(parts)


def load_configs(section: Mapping[str, Any], where: str) -> dict[str, ServerConfig]:
    """Every ``[mcp.NAME]`` of ``section`` validated; ConfigError on the first that is
    wrong, naming the file, the table and the key."""
    configs: dict[str, ServerConfig] = {}
    effects: dict[str, str] = {}
    for name, table in section.items():
        if not NAME.match(name):
            raise ConfigError(
                f"[mcp.{name}] in {where}: a server name is a letter, then letters, digits, "
                "'_' or '-' (64 at most)",
                hint="rename the table, e.g. [mcp.crm]",
            )
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"mcp.{name} in {where} must be a table",
                hint=f'write it as [mcp.{name}] with command = "..." or url = "..."',
            )
        try:
            config = ServerConfig.model_validate(dict(table))
        except ValidationError as exc:
            raise ConfigError(
                f"[mcp.{name}] in {where}: {_problems(exc)}",
                hint="see docs/mcp.md for the keys of an MCP server",
            ) from None
        for tool, decl in config.tools.items():
            if decl.kind == "effect":
                effect = config.effect_name(name, tool)
                if effect in effects:
                    raise ConfigError(
                        f"[mcp.{name}] in {where}: tools.{tool} is effect {effect!r}, which "
                        f"{effects[effect]} already is",
                        hint='give one of them another name: { kind = "effect", effect = ... }',
                    )
                effects[effect] = f"[mcp.{name}] tools.{tool}"
        configs[str(name)] = config
    return configs
