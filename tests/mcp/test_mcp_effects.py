"""MCP effect tools are Codara effects (``ctx.effect("mcp.crm.refund", args)``): the
idempotency key reaches the server in the request's ``_meta`` and as the declared
``key_arg``; the effect happens once across a replay and across a server that died after
doing it (the ``reconcile`` read tool answers for the key); shadow mode starts no server;
an isError answer and bad arguments are refused (nothing happened). A real server each
time, counting what reached it and what its ledger holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.mcp.conftest import ToolServer, stdio_table, write_config

import codara
from codara.engine import EffectFailedError, RetryPolicy
from codara.mcp import KEY_META
from codara.trace import verify_chain

REFUND = (
    '{ find_refund = "read", broken = "read", refund = { kind = "effect", '
    'key_arg = "idempotency_key", reconcile = "find_refund", '
    'shadow_result = { refund_id = "shadow" } } }'
)


def _app(path: Path, db_url: str) -> codara.App:
    retry = RetryPolicy(max_attempts=3, initial_delay=0.001)
    return codara.App(db_url, durability="os", config_file=path, retry=retry)


def _register(app: codara.App) -> None:
    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, order_id: str) -> Any:
        done = await ctx.effect("mcp.crm.refund", {"order_id": order_id, "amount_cents": 1250})
        await ctx.wait_for("go")  # parks: the run is executed again from its journal
        return done


async def test_the_key_reaches_the_server_and_the_effect_happens_once_across_a_replay(
    tmp_path: Path, db_url: str, stdio_server: ToolServer
) -> None:
    app = _app(write_config(tmp_path, stdio_table(tools=REFUND)), db_url)
    _register(app)
    async with app:
        run_id = await app.start_run("refunds", "R-1")
        assert (await app.resume(run_id)).status == "waiting"
        await app.send_signal(run_id, "go")
        outcome = await app.resume(run_id)
        rows = await app.journal(run_id)
        report = await verify_chain(app.store, run_id)
    key = f"{run_id}:r:0"
    (call,) = stdio_server.calls("refund")
    assert call["meta"] == {KEY_META: key}
    assert call["args"]["idempotency_key"] == key
    assert outcome.status == "completed"
    assert {k: v for k, v in outcome.output.items() if k != "contact"} == {
        "refund_id": "rf1", "order_id": "R-1", "amount_cents": 1250
    }  # fmt: skip
    assert outcome.output["contact"].startswith("<email:")  # a token, as journaled
    assert "jane.doe@example.com" not in " ".join(f"{r.output}" for r in rows)
    assert list(stdio_server.ledger()) == [key]
    effect = [r for r in rows if r.kind == "effect"]
    assert [r.status for r in effect] == ["claimed", "ok"]
    assert effect[0].name == "mcp.crm.refund"
    assert report.ok, report.problems


async def test_a_server_that_dies_after_refunding_is_reconciled_not_refunded_twice(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "die-after-refund"
    flag.touch()
    monkeypatch.setenv("MCP_DIE_AFTER_REFUND", str(flag))
    table = stdio_table(tools=REFUND, env="MCP_DIE_AFTER_REFUND")
    app = _app(write_config(tmp_path, table), sqlite_url)
    _register(app)
    async with app:
        run_id = await app.start_run("refunds", "R-2")
        assert (await app.resume(run_id)).status == "waiting"
        rows = await app.journal(run_id)
        opened = app.mcp.connection("crm").opened
    key = f"{run_id}:r:0"
    assert [c["tool"] for c in stdio_server.calls()] == ["refund", "find_refund"]
    assert stdio_server.calls("find_refund")[0]["args"] == {"idempotency_key": key}
    assert list(stdio_server.ledger()) == [key]  # refunded once
    assert opened == 2  # started again to ask "did it happen?"
    _claimed, ok = [r for r in rows if r.kind == "effect"]
    assert ok.status == "ok"
    assert '"via":"reconciled"' in (ok.output or "").replace(" ", "")
    assert '"refund_id":"rf1"' in (ok.output or "").replace(" ", "")


async def test_shadow_mode_starts_no_server_and_returns_the_declared_result(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer
) -> None:
    config = stdio_table(tools=REFUND) + '[workflows.refunds]\neffects = "shadow"\n'
    app = _app(write_config(tmp_path, config), sqlite_url)
    _register(app)
    async with app:
        run_id = await app.start_run("refunds", "R-3")
        assert (await app.resume(run_id)).status == "waiting"
        await app.send_signal(run_id, "go")
        outcome = await app.resume(run_id)
        opened = app.mcp.connection("crm").opened
    assert outcome.output == {"refund_id": "shadow"}
    assert opened == 0
    assert stdio_server.calls() == []


async def test_an_error_answer_or_bad_arguments_are_refused_effects(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer
) -> None:
    tools = REFUND.replace('broken = "read"', 'broken = "effect"')
    app = _app(write_config(tmp_path, stdio_table(tools=tools)), sqlite_url)
    failures: dict[str, EffectFailedError] = {}

    @app.workflow(name="bad")
    async def bad(ctx: codara.Context, _: None) -> None:
        for label, name, args in [
            ("isError", "mcp.crm.broken", {}),
            ("bad args", "mcp.crm.refund", {"order_id": "X"}),
            ("key given", "mcp.crm.refund", {"order_id": "X", "amount_cents": 1,
                                             "idempotency_key": "mine"}),
        ]:  # fmt: skip
            try:
                await ctx.effect(name, args)
            except EffectFailedError as exc:
                failures[label] = exc

    async with app:
        run_id = await app.start_run("bad", None)
        assert (await app.resume(run_id)).status == "completed"
    assert [c["tool"] for c in stdio_server.calls()] == ["broken"]  # once: never retried
    assert {label: f.outcome for label, f in failures.items()} == {
        "isError": "refused", "bad args": "refused", "key given": "refused"
    }  # fmt: skip
    assert "broken reported an error: Error executing tool broken" in failures["isError"].message
    assert "'amount_cents' is a required property; nothing was sent" in str(failures["bad args"])
    assert "carries the idempotency key, which Codara sets" in str(failures["key given"])
    assert stdio_server.ledger() == {}
