"""MCP tools as agent tools (``codara.agents.mcp_tools``): a read tool the model calls is
``codara.mcp_read`` (one journaled, masked step), an effect tool is the effect (its key on
the server, once across a replay). The model is the real OpenAI client against the loopback
server; the MCP server is the real test server over stdio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.mcp.conftest import ToolServer, stdio_table, write_config

import codara
from codara.agents import durable_agent, mcp_tools
from codara.engine import RetryPolicy
from codara.models import LLMSettings
from codara.testing import FakeLLMServer, FakeReply

TOOLS = (
    '{ lookup_order = "read", find_refund = "read", refund = { kind = "effect", '
    'key_arg = "idempotency_key", reconcile = "find_refund" } }'
)


async def test_an_agent_reads_and_refunds_through_mcp_once_across_a_replay(
    tmp_path: Path,
    db_url: str,
    stdio_server: ToolServer,
    fake_llm: FakeLLMServer,
    api_keys: dict[str, str],
) -> None:
    retry = RetryPolicy(max_attempts=2, initial_delay=0.001)
    config = write_config(tmp_path, stdio_table(tools=TOOLS))
    app = codara.App(db_url, durability="os", config_file=config, retry=retry)
    settings = LLMSettings(provider="openai", model="gpt-4o-mini",
                           base_url=fake_llm.openai_base_url, max_retries=0)  # fmt: skip
    fake_llm.add(
        FakeReply.tool_call("lookup_order", {"order_id": "R-1"}),
        FakeReply.tool_call("refund", {"order_id": "R-1", "amount_cents": 1250}),
        FakeReply(text="Refunded R-1."),
    )
    outputs: list[str] = []

    async with app:
        tools = await mcp_tools(app, "crm")
        assert sorted(t.name for t in tools) == ["find_refund", "lookup_order", "refund"]
        clerk = durable_agent(settings, name="clerk", instructions="Help.", tools=tools)

        @app.workflow(name="support")
        async def support(ctx: codara.Context, text: str) -> str:
            async with clerk:
                result = await clerk.run(text)
            outputs.append(str(result.output))
            await ctx.wait_for("go")
            return str(result.output)

        run_id = await app.start_run("support", "Please refund order R-1")
        await app.work(until_idle=True)
        await app.send_signal(run_id, "go")
        await app.work(until_idle=True)
        assert await app.output(run_id) == "Refunded R-1."
        rows = [(r.kind, r.name, r.status) for r in await app.journal(run_id)]
        journal_text = " ".join(f"{r.input} {r.output}" for r in await app.journal(run_id))
    assert outputs == ["Refunded R-1.", "Refunded R-1."]
    assert len(stdio_server.calls("lookup_order")) == 1, "the replay read nothing again"
    [key] = stdio_server.ledger()  # one refund, under the effect's key
    assert key.startswith(f"{run_id}:")
    assert len(stdio_server.calls("refund")) == 1
    assert ("step", "mcp:crm.lookup_order", "ok") in rows
    assert ("effect", "mcp.crm.refund", "ok") in rows
    assert len(fake_llm.requests) == 3
    # what the model was shown of the order is the masked form
    shown: Any = fake_llm.requests[1].body["messages"][-1]["content"]
    assert "<email:" in shown
    assert "jane.doe@example.com" not in shown
    assert "jane.doe@example.com" not in journal_text
