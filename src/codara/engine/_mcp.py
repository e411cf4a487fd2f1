"""MCP tools in runs: a read tool is a journaled step, an effect tool a Codara effect.

``await codara.mcp_read(ctx, "crm", "lookup_order", {"order_id": "A1"})`` calls a tool
declared ``read`` in ``[mcp.crm]`` as step ``mcp:crm.lookup_order``: the answer is masked at
the same choke point as a source's records (personal values become tokens, the originals go
to the vault when it is keyed), journaled once, and returned from the journal on replay
without calling the server again. A tool declared ``effect`` is registered as the effect
``mcp.SERVER.TOOL`` (or the name the declaration gives) when the app loads ``[mcp]``: it has
the idempotency key (sent in the request's ``_meta``, and as ``key_arg`` if declared),
``[effects.NAME]`` policies, shadow mode, retries and, with ``reconcile``, a read tool that
answers "did it happen?" for the key.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from codara.engine._context import Step
from codara.engine._effects import Effect, EffectCall, EffectRefused
from codara.errors import ConfigError, ScopeError
from codara.mcp import McpServers, ToolDecl, ToolError

if TYPE_CHECKING:
    from codara.engine._context import Context

__all__ = ["bind", "mcp_effects", "mcp_read"]

_SERVERS: weakref.WeakKeyDictionary[Context, McpServers] = weakref.WeakKeyDictionary()


def bind(ctx: Context, servers: McpServers | None) -> None:
    """Give a run's context the app's MCP servers (the executor does, for every run)."""
    if servers is not None:
        _SERVERS[ctx] = servers


def _masked(exc: ToolError) -> ToolError:
    """``exc`` with personal values in its message tokenised (a server's error text may
    quote them), so that neither the journal nor the run's error holds them."""
    from codara.engine._privacy import privacy

    message, found = privacy().mask(exc.message)
    if not found:
        return exc
    return ToolError(str(message), outcome=exc.outcome, non_retryable=exc.non_retryable,
                     hint=exc.hint)  # fmt: skip


async def mcp_read(
    ctx: Context, server: str, tool: str, arguments: Mapping[str, Any] | None = None
) -> Any:
    """Call MCP tool ``tool`` of server ``server``, declared ``read`` in ``[mcp.SERVER]``,
    as a step of the run; return its answer (its ``structuredContent``, or its text), masked.

    Journaled once as step ``mcp:SERVER.TOOL`` with the (masked) arguments; a replay returns
    the journaled answer and does not call the server. A tool not declared, declared an
    effect, or given arguments its ``inputSchema`` refuses fails the step before anything is
    sent, as does an ``isError`` or malformed answer after (none of them retried); a server
    that cannot be reached, goes away or times out fails the attempt, and the step is
    retried by the app's retry policy (a dead stdio server is started again).
    """
    servers = _SERVERS.get(ctx)
    if servers is None or server not in servers:
        known = ", ".join(sorted(servers.configs)) if servers is not None else "none"
        raise ConfigError(
            f"mcp_read({server!r}, {tool!r}): no MCP server of that name is declared "
            f"(declared: {known})",
            hint=f"add an [mcp.{server}] table to codara.toml",
        )
    from codara.engine._privacy import privacy

    shield = privacy()
    given = dict(arguments) if isinstance(arguments, Mapping) else arguments
    shown, _ = shield.mask(given)  # the journal's copy of the arguments, masked
    store = ctx._store

    async def read(server: str, tool: str, arguments: Any) -> Any:
        # ``arguments`` is the masked copy the journal shows; the call gets the originals
        try:
            answer = await servers.call(server, tool, given, kind="read")
        except ToolError as exc:
            raise _masked(exc) from None
        masked, found = shield.mask(answer)
        if found:
            await shield.keep(store, found)  # the originals, sealed, when the vault is keyed
        return masked

    return await ctx.step(Step(f"mcp:{server}.{tool}", result_type=Any), read, server, tool, shown)


# -- effect tools --------------------------------------------------------------------------
def _tokens(answer: Any) -> Any:
    """An effect tool's answer with personal values tokenised before the effect journals
    it. An effect's handler has no store, so their originals are not kept in the vault."""
    from codara.engine._privacy import privacy

    masked, _ = privacy().mask(answer)
    return masked


async def _run(servers: McpServers, server: str, tool: str, args: Any, call: EffectCall) -> Any:
    try:
        return _tokens(await servers.call(server, tool, args, kind="effect", key=call.key))
    except (ScopeError, ConfigError) as exc:  # refused before anything was sent
        raise EffectRefused(exc.message) from None
    except ToolError as exc:
        exc = _masked(exc)
        if exc.outcome == "refused":  # nothing was done: the call was refused, or failed
            raise EffectRefused(exc.message) from None
        raise exc from None  # it may have happened: reconcile, then retry with the same key


async def _reconcile(servers: McpServers, server: str, decl: ToolDecl, args: Any,
                     call: EffectCall) -> Any:  # fmt: skip
    assert decl.reconcile is not None
    try:
        found = await servers.call(
            server, decl.reconcile, {decl.key_for_reconcile: call.key}, kind="read"
        )
    except ToolError as exc:
        raise _masked(exc) from None
    if isinstance(found, dict) and set(found) == {"result"}:
        found = found["result"]  # the SDK's servers wrap a return that is not an object
    return None if found in (None, {}, [], "") else _tokens(found)


def _shadow(result: Any, args: Any) -> Any:
    return result  # the declaration's shadow_result, whatever the arguments


def mcp_effects(servers: McpServers) -> list[Effect]:
    """The effects of the tools ``[mcp.*]`` declares ``effect``."""
    effects = []
    for server, tool, decl in servers.effect_tools():
        config = servers.configs[server]
        reconcile = None if decl.reconcile is None else partial(_reconcile, servers, server, decl)
        effects.append(Effect(
            name=config.effect_name(server, tool),
            run=partial(_run, servers, server, tool),
            reconcile=reconcile,
            shadow=partial(_shadow, decl.shadow_result),
        ))  # fmt: skip
    return effects
