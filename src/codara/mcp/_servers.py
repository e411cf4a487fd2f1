"""The MCP servers an app declares: their tools checked and called, and described for agents.

:class:`McpServers` knows nothing of runs (the engine journals the calls, see
``codara.engine._mcp``). What it guarantees for a call: the tool is declared in
``[mcp.NAME] tools`` with the kind asked for, and offered by the server; the arguments match
the tool's ``inputSchema``; all of that before anything is sent. The answer is the tool's
``structuredContent`` (checked by the SDK against its ``outputSchema``), or its text when it
has none; an ``isError`` result, a malformed one or a transport failure is a
:class:`ToolError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from codara.errors import ConfigError, ScopeError, ToolError
from codara.mcp._config import ServerConfig, ToolDecl, load_configs
from codara.mcp._connection import Connection

if TYPE_CHECKING:
    from mcp.types import CallToolResult, Tool

__all__ = ["KEY_META", "McpServers", "ToolDefinition", "load_servers"]

KEY_META = "codara/idempotency_key"
"""The ``_meta`` key of a ``tools/call`` request that carries an effect's idempotency key."""

_MAX_TEXT = 500


@dataclass(frozen=True)
class ToolDefinition:
    """A declared tool as an agent needs it: its name, what the server says it does, the
    JSON Schema of its arguments, and whether it is a read or an effect (``effect`` is then
    the name to call it by with ``ctx.effect``)."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    kind: Literal["read", "effect"]
    effect: str | None


def load_servers(
    section: Mapping[str, Any], where: str = "codara.toml",
    environ: Mapping[str, str] | None = None,
) -> McpServers:  # fmt: skip
    """Validate every ``[mcp.NAME]`` table of ``section`` (ConfigError on the first that is
    wrong, naming the file, the table and the key); nothing is started until first used."""
    return McpServers(load_configs(section, where), where, environ)


class McpServers:
    """The declared MCP servers of one app: one session per server, opened at its first call
    and reused, reopened after the server died, closed with the app."""

    def __init__(self, configs: Mapping[str, ServerConfig], where: str = "codara.toml",
                 environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.configs = dict(configs)
        self.where = where
        self._connections = {n: Connection(n, c, where, environ) for n, c in self.configs.items()}
        self._validators: dict[tuple[str, str, int], Any] = {}
        self.checked = False

    def __contains__(self, name: object) -> bool:
        return name in self.configs

    def __len__(self) -> int:
        return len(self.configs)

    def connection(self, server: str) -> Connection:
        found = self._connections.get(server)
        if found is None:
            known = ", ".join(sorted(self.configs)) or "none"
            raise ConfigError(
                f"no MCP server named {server!r} is declared (declared: {known})",
                hint=f"add an [mcp.{server}] table to codara.toml",
            )
        return found

    def declared(self, server: str, tool: str, kind: str | None = None) -> ToolDecl:
        """The declaration of ``tool``; ScopeError if it is not declared (deny by default)
        or, with ``kind``, declared as the other kind."""
        config = self.connection(server).config
        decl = config.tools.get(tool)
        if decl is None:
            raise ScopeError(
                f"MCP tool {server}.{tool} is not declared, so it may not be called "
                f"(declared: {', '.join(sorted(config.tools))})",
                rule="tool",
                hint=f'declare it in [mcp.{server}] tools = {{ {tool} = "read" }} (or "effect")',
            )
        if kind is not None and decl.kind != kind:
            if decl.kind == "effect":
                raise ScopeError(
                    f"MCP tool {server}.{tool} is declared an effect: it is called with "
                    f"ctx.effect({config.effect_name(server, tool)!r}, args), not as a read",
                    rule="tool_kind",
                )
            raise ScopeError(f"MCP tool {server}.{tool} is declared a read, not an effect",
                             rule="tool_kind")  # fmt: skip
        return decl

    def effect_tools(self) -> list[tuple[str, str, ToolDecl]]:
        """``(server, tool, declaration)`` of every tool declared an effect."""
        return [(server, tool, decl) for server, config in self.configs.items()
                for tool, decl in config.tools.items() if decl.kind == "effect"]  # fmt: skip

    # -- sessions ----------------------------------------------------------------------------
    async def _open(self, server: str) -> tuple[Any, dict[str, Tool]]:
        conn = self.connection(server)
        session, tools = await conn.session()
        missing = sorted(set(conn.config.tools) - set(tools))
        if missing:
            await conn.drop()
            raise ConfigError(
                f"[mcp.{server}] in {self.where}: tools.{missing[0]} is declared, but "
                f"{conn.what} does not offer it (it offers: {', '.join(sorted(tools)) or 'none'})",
                hint="correct the tool's name, or remove it from tools",
            )
        return session, tools

    async def check(self) -> None:
        """Start or reach every declared server once and check that it offers every
        declared tool: a worker does this at start, so a wrong command, an unreachable URL,
        a missing variable or a misspelt tool stops it there, naming the server."""
        for server in self.configs:
            await self._open(server)
        self.checked = True

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    async def definitions(self, server: str) -> list[ToolDefinition]:
        """The declared tools of ``server`` as the server describes them (it is reached):
        name, description, input JSON Schema, and kind (``read`` or ``effect``, with the
        effect's name). Only declared tools are listed; an agent given these can propose a
        call, and Codara still checks and journals it (a read with
        :func:`codara.mcp_read`, an effect with ``ctx.effect``)."""
        _, tools = await self._open(server)
        config = self.connection(server).config
        return [
            ToolDefinition(
                server,
                name,
                tools[name].description or "",
                dict(tools[name].input_schema),
                decl.kind,
                config.effect_name(server, name) if decl.kind == "effect" else None,
            )
            for name, decl in config.tools.items()
        ]

    # -- a call ------------------------------------------------------------------------------
    async def call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None,
        *,
        kind: Literal["read", "effect"],
        key: str | None = None,
    ) -> Any:
        """Call declared ``tool`` of ``server`` and return its answer (see the module). With
        ``key`` (an effect's idempotency key) the request's ``_meta`` carries it as
        :data:`KEY_META`, and the argument ``key_arg`` too when the tool declares one."""
        decl = self.declared(server, tool, kind)
        args = self._arguments(server, tool, decl, arguments, key)
        conn = self.connection(server)
        session, tools = await self._open(server)
        self._check_arguments(server, tool, tools[tool], args)
        meta = None if key is None else {KEY_META: key}
        result = await conn.call(session, tool, args, meta)
        return self._answer(conn, tool, result)

    def _arguments(
        self, server: str, tool: str, decl: ToolDecl, arguments: Mapping[str, Any] | None,
        key: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        if arguments is None:
            args: dict[str, Any] = {}
        elif isinstance(arguments, Mapping):
            args = dict(arguments)
        else:
            raise ToolError(
                f"MCP tool {server}.{tool} takes its arguments as a JSON object, not "
                f"{type(arguments).__name__}; nothing was sent",
                outcome="refused", non_retryable=True,
            )  # fmt: skip
        if key is not None and decl.key_arg is not None:
            if decl.key_arg in args and args[decl.key_arg] != key:
                raise ToolError(
                    f"MCP tool {server}.{tool}: argument {decl.key_arg!r} carries the "
                    "idempotency key, which Codara sets; nothing was sent",
                    outcome="refused", non_retryable=True,
                    hint=f"leave {decl.key_arg} out of the arguments (or pass key= to ctx.effect)",
                )  # fmt: skip
            args[decl.key_arg] = key
        return args

    def _check_arguments(self, server: str, tool: str, spec: Tool, args: dict[str, Any]) -> None:
        """The arguments against the tool's inputSchema (jsonschema, the draft the schema
        names); the message names the places and rules, never the values."""
        schema = spec.input_schema
        cache_key = (server, tool, id(schema))
        validator = self._validators.get(cache_key)
        if validator is None:
            from jsonschema.validators import validator_for  # type: ignore[import-untyped]

            cls = validator_for(schema)
            validator = self._validators[cache_key] = cls(schema)
        errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            problems = "; ".join(_problem(e) for e in errors[:5])
            raise ToolError(
                f"the arguments of MCP tool {server}.{tool} do not match its inputSchema: "
                f"{problems}; nothing was sent",
                outcome="refused", non_retryable=True,
            )  # fmt: skip

    @staticmethod
    def _answer(conn: Connection, tool: str, result: CallToolResult) -> Any:
        if result.is_error:
            text = " ".join(c.text for c in result.content if c.type == "text").strip()
            raise ToolError(
                f"{conn.what}: {tool} reported an error: {text[:_MAX_TEXT] or '(no text)'}",
                outcome="refused", non_retryable=True,
            )  # fmt: skip
        if result.structured_content is not None:
            return result.structured_content
        kinds = sorted({c.type for c in result.content if c.type != "text"})
        if kinds:
            raise ToolError(
                f"{conn.what}: {tool} returned {', '.join(kinds)} content, which Codara does not "
                "journal (it takes structuredContent or text)",
                outcome="unknown", non_retryable=True,
            )  # fmt: skip
        return "\n".join(c.text for c in result.content if c.type == "text")


def _problem(error: Any) -> str:
    where = error.json_path
    if error.validator in ("required", "additionalProperties", "dependentRequired"):
        return f"{where}: {error.message}"  # names properties, not values
    return f"{where}: must satisfy {error.validator} {error.validator_value!r}"
