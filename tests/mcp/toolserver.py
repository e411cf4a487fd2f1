"""A small MCP server for the tests, written with the official SDK's ``MCPServer``, run as a
real process: ``python toolserver.py`` serves stdio, ``python toolserver.py --http PORT``
streamable HTTP on 127.0.0.1.

Every tool call appends one JSON line to the file named by ``MCP_CALLS_FILE`` (tool, arguments,
the request's ``_meta``), so a test counts what really reached the server. Refunds are kept in
``MCP_LEDGER_FILE`` by idempotency key: the server deduplicates, and ``find_refund`` answers
"did it happen?" for a key.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, Tool
from pydantic import BaseModel

KEY_META = "codara/idempotency_key"
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "amount_cents": {"type": "integer"}},
    "required": ["order_id", "amount_cents"],
}


class Order(BaseModel):
    order_id: str
    amount_cents: int
    email: str
    iban: str


class Refund(BaseModel):
    refund_id: str
    order_id: str
    amount_cents: int
    contact: str = "jane.doe@example.com"  # personal: the journal must hold its token


class ToolServer(MCPServer):
    """Advertises an output schema for the tools that break it on purpose (the SDK's server
    would refuse to send a result that breaks a schema it derived itself)."""

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        for tool in tools:
            if tool.name in ("bad_order", "text_order"):
                tool.output_schema = ORDER_SCHEMA
        return tools


server = ToolServer("codara-test-tools")


def _log(tool: str, args: dict[str, Any], ctx: Context | None = None) -> None:
    meta = dict(ctx.request_context.meta or {}) if ctx is not None else {}
    line: dict[str, Any] = {
        "tool": tool,
        "args": args,
        "meta": {k: v for k, v in meta.items() if k == KEY_META},
    }
    if ctx is not None and ctx.headers is not None:
        expected = f"Bearer {os.environ.get('MCP_EXPECT_TOKEN')}"
        line["auth"] = ctx.headers.get("authorization") == expected
    with open(os.environ["MCP_CALLS_FILE"], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _ledger() -> dict[str, Any]:
    path = os.environ["MCP_LEDGER_FILE"]
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


def _die_once(variable: str) -> None:
    """Exit at once (no answer) if the file ``variable`` names exists, removing it first."""
    flag = os.environ.get(variable)
    if flag and os.path.exists(flag):
        os.remove(flag)
        os._exit(1)


@server.tool(description="Look an order up by its id.")
def lookup_order(order_id: str, ctx: Context) -> Order:
    _log("lookup_order", {"order_id": order_id}, ctx)
    _die_once("MCP_DIE_IN_LOOKUP")
    return Order(
        order_id=order_id, amount_cents=1250, email="jane.doe@example.com",
        iban="DE89370400440532013000",
    )  # fmt: skip


@server.tool(description="Refund an order; deduplicated by the idempotency key.")
def refund(order_id: str, amount_cents: int, ctx: Context, idempotency_key: str = "") -> Refund:
    _log("refund", {"order_id": order_id, "amount_cents": amount_cents,
                    "idempotency_key": idempotency_key}, ctx)  # fmt: skip
    key = str((ctx.request_context.meta or {}).get(KEY_META) or idempotency_key)
    ledger = _ledger()
    if key not in ledger:
        ledger[key] = {"refund_id": f"rf{len(ledger) + 1}", "order_id": order_id,
                       "amount_cents": amount_cents}  # fmt: skip
        with open(os.environ["MCP_LEDGER_FILE"], "w", encoding="utf-8") as f:
            json.dump(ledger, f)
    _die_once("MCP_DIE_AFTER_REFUND")  # the refund happened; the answer never leaves
    return Refund(**ledger[key])


@server.tool(description="The refund made with this idempotency key, if any.")
def find_refund(idempotency_key: str, ctx: Context) -> Refund | None:
    _log("find_refund", {"idempotency_key": idempotency_key}, ctx)
    found = _ledger().get(idempotency_key)
    return None if found is None else Refund(**found)


@server.tool(description="Dies in the middle of the call.")
def die(ctx: Context) -> str:
    _log("die", {}, ctx)
    os._exit(1)


@server.tool(description="Answers after a while.")
async def slow(seconds: float, ctx: Context) -> str:
    _log("slow", {"seconds": seconds}, ctx)
    await asyncio.sleep(seconds)
    return "done"


@server.tool(description="Reports a failure (an isError result).")
def broken(ctx: Context) -> str:
    _log("broken", {}, ctx)
    raise ToolError("the order service is down for maintenance")


@server.tool(description="Structured content that breaks its advertised output schema.")
def bad_order(ctx: Context) -> CallToolResult:
    _log("bad_order", {}, ctx)
    return CallToolResult(
        content=[TextContent(type="text", text='{"order_id": 5}')],
        structured_content={"order_id": 5},
    )


@server.tool(description="Plain text where its output schema promises JSON.")
def text_order(ctx: Context) -> CallToolResult:
    _log("text_order", {}, ctx)
    return CallToolResult(content=[TextContent(type="text", text="order 7 is fine")])


@server.tool(description="Plain text, no output schema.")
def greet(name: str, ctx: Context) -> str:
    _log("greet", {"name": name}, ctx)
    return f"hello {name}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        asyncio.run(server.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2])))
    else:
        server.run()
