"""MCP read tools in runs (``codara.mcp_read``): journaled once as a step and replayed without
calling the server again, masked at the journal's choke point, over stdio and streamable
HTTP; what is refused before anything is sent (an undeclared tool, arguments the tool's
inputSchema refuses) and what fails clearly after (an isError answer, a malformed one, a
server that dies mid-call or does not answer in time). A real server each time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.mcp.conftest import TOKEN, ToolServer, start_http_server, stdio_table, write_config

import codara
from codara.engine import RetryPolicy
from codara.errors import ConfigError
from codara.mcp import ToolError
from codara.trace import verify_chain

READS = (
    '{ lookup_order = "read", greet = "read", refund = "effect", bad_order = "read", '
    'text_order = "read", broken = "read", slow = "read", die = "read" }'
)
IBAN = "DE89370400440532013000"
EMAIL = "jane.doe@example.com"


def _app(path: Path, db_url: str, attempts: int = 3) -> codara.App:
    retry = RetryPolicy(max_attempts=attempts, initial_delay=0.001)
    return codara.App(db_url, durability="os", config_file=path, retry=retry)


def _journal_text(rows: list[Any]) -> str:
    return " ".join(f"{r.name} {r.input} {r.output} {r.error}" for r in rows)


async def test_a_read_is_journaled_once_masked_and_replayed_without_calling_again(
    tmp_path: Path, db_url: str, stdio_server: ToolServer
) -> None:
    app = _app(write_config(tmp_path, stdio_table(tools=READS)), db_url)

    @app.workflow(name="lookup")
    async def lookup(ctx: codara.Context, order_id: str) -> dict[str, Any]:
        order = await codara.mcp_read(ctx, "crm", "lookup_order", {"order_id": order_id})
        hello = await codara.mcp_read(ctx, "crm", "greet", {"name": "Codara"})
        await ctx.wait_for("go")  # parks: the run is executed again from its journal
        return {"order": order, "hello": hello}

    async with app:
        run_id = await app.start_run("lookup", "A-1")
        assert (await app.resume(run_id)).status == "waiting"
        await app.send_signal(run_id, "go")
        outcome = await app.resume(run_id)
        assert outcome.status == "completed"
        rows = await app.journal(run_id)
        report = await verify_chain(app.store, run_id)
        opened = app.mcp.connection("crm").opened
    assert [c["tool"] for c in stdio_server.calls()] == ["lookup_order", "greet"]  # once each
    assert opened == 1  # one session, reused by both calls
    order = outcome.output["order"]
    assert order["order_id"] == "A-1"
    assert order["amount_cents"] == 1250
    assert order["iban"] != IBAN
    assert order["email"] != EMAIL
    assert outcome.output["hello"] == {"result": "hello Codara"}
    steps = [r for r in rows if r.kind == "step"]
    assert [r.name for r in steps] == ["mcp:crm.lookup_order", "mcp:crm.greet"]
    assert IBAN not in _journal_text(rows)
    assert EMAIL not in _journal_text(rows)
    assert order["iban"] in (steps[0].output or "")
    assert report.ok, report.problems


async def test_streamable_http_sends_the_secret_header_and_never_journals_it(
    tmp_path: Path, sqlite_url: str, http_server: ToolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_TOKEN", TOKEN)
    config = (
        f'[mcp.crm]\nurl = "{http_server.url}"\n'
        'headers = { Authorization = "Bearer ${MCP_TOKEN}" }\n'
        'tools = { lookup_order = "read" }\n'
        '[mcp.gone]\nurl = "http://127.0.0.1:9/mcp"\ntimeout_s = 5\n'
        'headers = { Authorization = "Bearer ${MCP_TOKEN}" }\ntools = { lookup_order = "read" }\n'
    )
    app = _app(write_config(tmp_path, config), sqlite_url, attempts=1)

    @app.workflow(name="lookup")
    async def lookup(ctx: codara.Context, server: str) -> Any:
        return await codara.mcp_read(ctx, server, "lookup_order", {"order_id": "H-1"})

    before = len(http_server.calls())
    async with app:
        good = await app.start_run("lookup", "crm")
        assert (await app.resume(good)).status == "completed"
        bad = await app.start_run("lookup", "gone")
        failed = await app.resume(bad)
        text = _journal_text(await app.journal(good) + await app.journal(bad))
    calls = http_server.calls()[before:]
    assert [(c["tool"], c["args"], c["auth"]) for c in calls] == [
        ("lookup_order", {"order_id": "H-1"}, True)
    ]
    assert failed.status == "failed"
    assert failed.error is not None
    assert "MCP server 'gone' (http://127.0.0.1:9/mcp) cannot be reached" in failed.error["message"]
    assert TOKEN not in text
    assert TOKEN not in str(failed.error)
    assert IBAN not in text


async def test_refused_before_sending_and_failures_after_are_journaled_step_errors(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer
) -> None:
    table = stdio_table(tools=READS, extra="timeout_s = 1.5")
    app = _app(write_config(tmp_path, table), sqlite_url, attempts=1)
    outcomes: dict[str, str] = {}

    @app.workflow(name="try")
    async def try_(ctx: codara.Context, _: None) -> dict[str, str]:
        cases: list[tuple[str, str, Any]] = [
            ("undeclared", "delete_everything", {}),
            ("effect", "refund", {"order_id": "A", "amount_cents": 1}),
            ("bad args", "lookup_order", {"order_id": 7, "extra": EMAIL}),
            ("not an object", "lookup_order", ["A-1"]),
            ("isError", "broken", {}),
            ("bad structure", "bad_order", {}),
            ("text for JSON", "text_order", {}),
            ("timeout", "slow", {"seconds": 30}),
        ]
        for label, tool, args in cases:
            try:
                await codara.mcp_read(ctx, "crm", tool, args)
            except codara.StepFailedError as exc:
                outcomes[label] = exc.message
        return outcomes

    async with app:
        definitions = {d.name: d for d in await app.mcp.definitions("crm")}
        run_id = await app.start_run("try", None)
        assert (await app.resume(run_id)).status == "completed"
        rows = await app.journal(run_id)
    # refused before anything was sent: only the four that are allowed reached the server
    assert [c["tool"] for c in stdio_server.calls()] == [
        "broken", "bad_order", "text_order", "slow"
    ]  # fmt: skip
    assert "MCP tool crm.delete_everything is not declared" in outcomes["undeclared"]
    assert "declared an effect: it is called with ctx.effect('mcp.crm.refund'" in outcomes["effect"]
    assert (
        "do not match its inputSchema: $.order_id: must satisfy type 'string'"
        in outcomes["bad args"]
    )
    assert "takes its arguments as a JSON object, not list" in outcomes["not an object"]
    assert "broken reported an error: Error executing tool broken: the order service is down" \
        in outcomes["isError"]  # fmt: skip
    assert "bad_order returned a malformed result: its structuredContent does not match the " \
        "tool's outputSchema at $ (required: ['order_id', 'amount_cents'])" \
        in outcomes["bad structure"]  # fmt: skip
    assert "text_order returned a malformed result: Tool text_order has an output schema but " \
        "did not return structured content" in outcomes["text for JSON"]  # fmt: skip
    assert "slow did not answer within 1.5 s" in outcomes["timeout"]
    errors = [r for r in rows if r.kind == "step"]
    assert len(errors) == 8
    assert all(r.status == "error" and r.attempts == 1 for r in errors)
    assert EMAIL not in _journal_text(rows)
    assert all("\n" not in message.split("\n  hint: ")[0] for message in outcomes.values())
    # for an agent: the declared tools only, as the server describes them
    assert sorted(definitions) == sorted(
        ["lookup_order", "greet", "refund", "bad_order", "text_order", "broken", "slow", "die"]
    )
    lookup, refund = definitions["lookup_order"], definitions["refund"]
    assert (lookup.kind, lookup.effect) == ("read", None)
    assert lookup.description == "Look an order up by its id."
    assert lookup.input_schema["required"] == ["order_id"]
    assert (refund.kind, refund.effect) == ("effect", "mcp.crm.refund")
    assert {"order_id", "amount_cents"} <= set(refund.input_schema["properties"])


async def test_a_stdio_server_that_dies_mid_call_is_started_again_and_the_step_retried(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "die-once"
    flag.touch()
    monkeypatch.setenv("MCP_DIE_IN_LOOKUP", str(flag))
    table = stdio_table(tools=READS, env="MCP_DIE_IN_LOOKUP")
    app = _app(write_config(tmp_path, table), sqlite_url)

    @app.workflow(name="lookup")
    async def lookup(ctx: codara.Context, _: None) -> Any:
        return await codara.mcp_read(ctx, "crm", "lookup_order", {"order_id": "D-1"})

    async with app:
        run_id = await app.start_run("lookup", None)
        outcome = await app.resume(run_id)
        rows = await app.journal(run_id)
        opened = app.mcp.connection("crm").opened
    assert outcome.status == "completed"
    assert outcome.output["order_id"] == "D-1"
    assert [c["tool"] for c in stdio_server.calls()] == ["lookup_order", "lookup_order"]
    assert opened == 2  # the server was started again for the retry
    (step,) = [r for r in rows if r.kind == "step"]
    assert step.status == "ok"
    assert step.attempts == 2


async def test_an_http_server_that_dies_mid_call_fails_the_step_clearly_after_its_retries(
    tmp_path: Path, sqlite_url: str
) -> None:
    proc, server = start_http_server(tmp_path)
    try:
        config = f'[mcp.crm]\nurl = "{server.url}"\ntimeout_s = 5\ntools = {{ die = "read" }}\n'
        app = _app(write_config(tmp_path, config), sqlite_url, attempts=2)

        @app.workflow(name="die")
        async def die(ctx: codara.Context, _: None) -> Any:
            return await codara.mcp_read(ctx, "crm", "die", {})

        async with app:
            run_id = await app.start_run("die", None)
            outcome = await app.resume(run_id)
            rows = await app.journal(run_id)
    finally:
        proc.kill()
        proc.wait()
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert [c["tool"] for c in server.calls()] == ["die"]
    assert f"MCP server 'crm' ({server.url}) cannot be reached" in outcome.error["message"]
    (step,) = [r for r in rows if r.kind == "step"]
    assert step.status == "error"
    assert step.attempts == 2  # it died, then was not there any more


async def test_start_checks_name_the_server_and_what_is_wrong(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing_tool = stdio_table(tools='{ lookup_order = "read", lookup_ordr = "read" }')
    app = _app(write_config(tmp_path, missing_tool, "a.toml"), sqlite_url)
    async with app:
        with pytest.raises(
            ConfigError,
            match=r"\[mcp.crm\] in .*a.toml: tools.lookup_ordr is "
            r"declared, but MCP server 'crm' \(stdio: python.*\) does not offer "
            r"it \(it offers: bad_order, broken, die, find_refund, greet",
        ):
            await app.ready_mcp()

    no_binary = '[mcp.crm]\ncommand = "/nonexistent/mcp-server"\ntools = { a = "read" }\n'
    app = _app(write_config(tmp_path, no_binary, "b.toml"), sqlite_url)

    @app.workflow(name="w")
    async def w(ctx: codara.Context, _: None) -> Any:
        return await codara.mcp_read(ctx, "crm", "a", {})

    async with app:
        run_id = await app.start_run("w", None)
        with pytest.raises(
            ToolError,
            match=r"MCP server 'crm' \(stdio: mcp-server\) cannot be "
            "started: FileNotFoundError",
        ):
            await app.work(until_idle=True)  # the worker stops at start, before any run
        assert (await app.get_run(run_id)).status == "queued"

    monkeypatch.delenv("MCP_LEDGER_FILE")
    app = _app(write_config(tmp_path, stdio_table(tools=READS), "c.toml"), sqlite_url)
    async with app:
        with pytest.raises(
            ConfigError,
            match=r"\[mcp.crm\] in .*c.toml: env names the "
            "environment variable MCP_LEDGER_FILE, which is not set",
        ):
            await app.ready_mcp()
