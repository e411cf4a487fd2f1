"""One MCP server's session: opened at first use with the official SDK's ``ClientSession``
over its stdio or streamable-HTTP transport, kept open and shared by every call of the
process, reopened (a stdio server started again) after it died.

The SDK's transports and sessions are anyio context managers, which must be entered and left
in one task; so each session lives in a task of its own (``_hold``), created with an empty
``contextvars.Context`` so that it is never numbered as a workflow branch, and calls are
made from the callers' tasks through the shared session (the SDK correlates the answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import sys
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from codara.errors import ConfigError, ToolError
from codara.mcp._config import VARIABLE, ServerConfig

if TYPE_CHECKING:
    from mcp.types import CallToolResult, Tool

    from mcp import ClientSession

__all__ = ["Connection"]

log = logging.getLogger("codara.mcp")


def _value_of(values: Mapping[str, str], match: re.Match[str]) -> str:
    return values[match.group(1)]


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside an anyio task group's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    exc = _leaf(exc)
    from mcp import MCPError

    if isinstance(exc, MCPError):
        return exc.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Connection:
    """The session of server ``name``; see the module."""

    def __init__(self, name: str, config: ServerConfig, where: str,
                 environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.where = where
        self._environ = environ
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._session: ClientSession | None = None
        self._tools: dict[str, Tool] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0
        """How many sessions this connection opened (a restarted server counts again)."""

    @property
    def what(self) -> str:
        """The server as errors name it: never a header or an environment value."""
        if self.config.command is not None:
            return f"MCP server {self.name!r} (stdio: {os.path.basename(self.config.command)})"
        return f"MCP server {self.name!r} ({self.config.url})"

    # -- the environment: only names in the file, values from here ---------------------------
    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _variable(self, var: str, key: str) -> str:
        value = self._env().get(var)
        if value is None or value == "":
            raise ConfigError(
                f"[mcp.{self.name}] in {self.where}: {key} names the environment variable "
                f"{var}, which is not set in this process",
                hint=f"export {var}=... where the worker runs (secrets come from the "
                "environment, never from codara.toml)",
            )
        return value

    def _headers(self) -> dict[str, str]:
        headers = {}
        for name, template in self.config.headers.items():
            values = {var: self._variable(var, f"headers.{name}")
                      for var in VARIABLE.findall(template)}  # fmt: skip
            headers[name] = VARIABLE.sub(partial(_value_of, values), template)
        return headers

    # -- the session -----------------------------------------------------------------------
    async def session(self) -> tuple[ClientSession, dict[str, Tool]]:
        """The open session and the server's tools, opening it (again) if need be."""
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:  # an asyncio.Lock serves one event loop
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            alive = self._task is not None and not self._task.done() and self._loop is loop
            if self._session is not None and alive:
                return self._session, self._tools
            if self._loop is loop:
                await self._drop_locked()
            self._session, self._task, self._stop = None, None, None  # another loop's: let go
            return await self._open(loop)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> tuple[ClientSession, dict[str, Tool]]:
        ready: asyncio.Future[tuple[ClientSession, dict[str, Tool]]] = loop.create_future()
        stop = asyncio.Event()
        params = self._transport_params()  # a missing variable: ConfigError, before a process
        task = loop.create_task(self._hold(params, ready, stop), context=contextvars.Context())
        try:
            async with asyncio.timeout(self.config.start_timeout_s):
                session, tools = await asyncio.shield(ready)
        except TimeoutError:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # the SDK stops the process
            raise ToolError(
                f"{self.what} did not start or answer within {self.config.start_timeout_s:g} s",
                hint="check that the server starts by hand; raise start_timeout_s if it is slow",
            ) from None
        except asyncio.CancelledError:
            stop.set()
            task.cancel()
            raise
        except ToolError:
            raise
        except Exception as exc:
            how = "started" if self.config.command is not None else "reached"
            raise ToolError(
                f"{self.what} cannot be {how}: {_reason(exc)}",
                hint="check command/args (run it by hand) or the url, and the server's log",
            ) from None
        self._session, self._tools, self._task, self._stop, self._loop = (
            session, tools, task, stop, loop
        )  # fmt: skip
        self.opened += 1
        return session, tools

    def _transport_params(self) -> Any:
        if self.config.command is not None:
            from mcp import StdioServerParameters

            env = {var: self._variable(var, "env") for var in self.config.env}
            return StdioServerParameters(command=self.config.command, args=list(self.config.args),
                                         env=env, cwd=self.config.cwd)  # fmt: skip
        return self._headers()

    def _transport(self, params: Any, stack: contextlib.AsyncExitStack) -> Any:
        if self.config.command is not None:
            from mcp import stdio_client

            return stdio_client(params, errlog=sys.stderr)
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        client = create_mcp_http_client(headers=params)
        stack.push_async_callback(client.aclose)
        assert self.config.url is not None
        return streamable_http_client(self.config.url, http_client=client)

    async def _hold(
        self,
        params: Any,
        ready: asyncio.Future[tuple[ClientSession, dict[str, Tool]]],
        stop: asyncio.Event,
    ) -> None:
        """Open the transport and the session, list the tools, hand them over, and keep
        them open until ``stop`` (or until the server goes away)."""
        from mcp.types import Implementation

        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport(params, stack))
                session = await stack.enter_async_context(ClientSession(
                    streams[0], streams[1], client_info=Implementation(name="codara",
                                                                       version="0.1.0"),
                ))  # fmt: skip
                await session.initialize()
                tools: dict[str, Tool] = {}
                cursor: str | None = None
                while True:
                    from mcp.types import PaginatedRequestParams

                    page = await session.list_tools(
                        params=None if cursor is None else PaginatedRequestParams(cursor=cursor)
                    )
                    tools.update({t.name: t for t in page.tools})
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                if not ready.done():
                    ready.set_result((session, tools))
                await stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
        except BaseException as exc:  # the server went away: the next call opens it again
            if not ready.done():
                ready.set_exception(_leaf(exc) if isinstance(exc, Exception | BaseExceptionGroup)
                                    else exc)  # fmt: skip
            else:
                log.debug("%s: session ended: %s", self.what, _reason(exc))

    async def drop(self) -> None:
        """Close the session (a call found it dead): the next call opens a new one."""
        async with self._lock:
            await self._drop_locked()

    async def _drop_locked(self) -> None:
        task, stop = self._task, self._stop
        self._session, self._task, self._stop = None, None, None
        if task is None or stop is None:
            return
        stop.set()
        try:
            async with asyncio.timeout(5.0):  # the SDK bounds its own shutdown waits too
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._session, self._task, self._stop = None, None, None  # another loop's
            return
        await self.drop()

    # -- a call ----------------------------------------------------------------------------
    async def call(self, session: ClientSession, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None) -> CallToolResult:  # fmt: skip
        """``tools/call`` on the open session; transport failures as ToolError (retryable:
        the server may have done it, and a new session is opened for the next call)."""
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        from mcp import MCPError

        try:
            return await session.call_tool(
                tool, arguments, read_timeout_seconds=self.config.timeout_s,
                meta=meta,  # type: ignore[arg-type]
            )  # fmt: skip
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolError(
                    f"{self.what}: {tool} did not answer within {self.config.timeout_s:g} s",
                    outcome="unknown",
                ) from None
            if exc.code == CONNECTION_CLOSED:
                await self.drop()
                raise ToolError(
                    f"{self.what} went away during {tool} ({exc.message}); it is started or "
                    "reached again at the next call",
                    outcome="unknown",
                ) from None
            raise ToolError(  # the server answered with a protocol error: it would again
                f"{self.what}: {tool} failed with MCP error {exc.code}: {exc.message}",
                outcome="refused",
                non_retryable=True,
            ) from None
        except RuntimeError as exc:  # the SDK checked the result against the outputSchema
            raise ToolError(f"{self.what}: {tool} {_malformed(exc)}", outcome="unknown",
                            non_retryable=True) from None  # fmt: skip
        except (OSError, EOFError) as exc:
            await self.drop()
            raise ToolError(f"{self.what} went away during {tool} ({_reason(exc)})",
                            outcome="unknown") from None  # fmt: skip
        except Exception as exc:
            import anyio

            if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError):
                await self.drop()
                raise ToolError(f"{self.what} went away during {tool} ({_reason(exc)})",
                                outcome="unknown") from None  # fmt: skip
            raise


def _malformed(exc: RuntimeError) -> str:
    """Why a result is malformed, without quoting it (it may hold personal values)."""
    cause = exc.__cause__
    validator = getattr(cause, "validator", None)
    if validator is not None:
        path = getattr(cause, "json_path", "$")
        expected = getattr(cause, "validator_value", None)
        return (
            "returned a malformed result: its structuredContent does not match the tool's "
            f"outputSchema at {path} ({validator}: {expected!r})"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"returned a malformed result: {first}"
