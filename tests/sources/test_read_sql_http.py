"""The SQL and HTTP sources through ``ctx.read``: declared in the settings, scope-checked,
their refused records quarantined, and a worker that cannot reach or load a source stops
at start with the source named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

import codara
from codara.config import load_settings
from codara.engine import NO_RETRY
from codara.errors import ConfigError, ScopeError, SourceError
from codara.testing import FakeAPIServer, FakeResponse

if TYPE_CHECKING:
    from conftest import SqlDatabase


class Customer(BaseModel):
    id: int
    tier: str


def _app(store: Path, sources: dict[str, Any]) -> codara.App:
    settings = load_settings(
        overrides={
            "store": {"url": f"sqlite:///{store}", "durability": "os"},
            "sources": sources,
        }
    )
    return codara.App(settings=settings, retry=NO_RETRY)


async def test_a_sql_read_is_scoped_and_its_bad_rows_quarantined(
    sql_db: SqlDatabase, tmp_path: Path
) -> None:
    sql_db.run(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(80), tier VARCHAR(20))",
        "INSERT INTO customers VALUES (1, 'Ada Ng', 'gold'), (2, 'Ben Kim', NULL), "
        "(3, 'Eva Rossi', 'standard')",
    )
    app = _app(tmp_path / "store.db", {"crm": {
        "kind": "sql", "url": sql_db.url, "tables": {"customers": ["id", "tier"]},
        "record_model": f"{__name__}:Customer",
    }})  # fmt: skip

    @app.workflow(name="lookup")
    async def lookup(ctx: codara.Context, _: None) -> dict[str, Any]:
        found = await ctx.read("crm", "SELECT id, tier FROM customers ORDER BY id")
        try:
            await ctx.read("crm", "SELECT name FROM customers")
        except ScopeError as exc:
            refused = exc.rule
        return {"ids": [r["id"] for r in found.rows], "quarantined": found.quarantined,
                "refused": refused}  # fmt: skip

    async with app:
        run_id = await app.start_run("lookup", None)
        await app.work(until_idle=True)
        assert await app.output(run_id) == {"ids": [1, 3], "quarantined": 1, "refused": "column"}
        [(rule,)] = await app.store.execute_raw("SELECT rule FROM codara_quarantine")
    assert rule == "schema.tier"


async def test_a_worker_stops_at_start_when_a_source_is_unreachable(tmp_path: Path) -> None:
    app = _app(tmp_path / "store.db", {"crm": {
        "kind": "sql", "url": "mysql+pymysql://root@127.0.0.1:1/test",
        "tables": {"customers": ["id"]},
    }})  # fmt: skip
    async with app:
        with pytest.raises(SourceError, match="crm"):
            await app.work(until_idle=True)


async def test_a_missing_credential_variable_stops_the_worker_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CODARA_TEST_API_TOKEN", raising=False)
    app = _app(tmp_path / "store.db", {"api": {
        "kind": "http", "base_url": "http://127.0.0.1:9", "endpoints": ["/v1/customers/{id}"],
        "auth_header": "Authorization", "auth_env": "CODARA_TEST_API_TOKEN",
    }})  # fmt: skip
    async with app:
        with pytest.raises(ConfigError, match="CODARA_TEST_API_TOKEN"):
            await app.work(until_idle=True)


async def test_an_http_read_sends_the_credential_and_journals_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_TEST_API_TOKEN", "Bearer s3cret-token")
    with FakeAPIServer() as api:
        api.add(FakeResponse(body={"id": 7, "tier": "gold"}, headers={"ETag": '"v7"'}))
        app = _app(tmp_path / "store.db", {"api": {
            "kind": "http", "base_url": api.base_url, "endpoints": ["/v1/customers/{id}"],
            "auth_header": "Authorization", "auth_env": "CODARA_TEST_API_TOKEN",
            "record_model": f"{__name__}:Customer",
        }})  # fmt: skip

        @app.workflow(name="fetch")
        async def fetch(ctx: codara.Context, customer: int) -> str:
            one = (await ctx.read("api", "/v1/customers/{id}", id=customer)).one()
            assert one is not None
            return str(one["tier"])

        async with app:
            run_id = await app.start_run("fetch", 7)
            await app.work(until_idle=True)
            assert await app.output(run_id) == "gold"
            journal = await app.journal(run_id)
        [request] = api.requests
    assert request.path == "/v1/customers/7"
    assert request.headers["authorization"] == "Bearer s3cret-token"
    [read] = [r for r in journal if r.kind == "read"]
    assert "GET /v1/customers/{id}" in (read.output or "")
    assert '"version":"\\"v7\\""' in (read.output or "").replace(" ", "")
    assert all("s3cret" not in (r.output or "") + (r.input or "") for r in journal)


async def test_more_concurrent_reads_than_connections_all_finish(
    sql_db: SqlDatabase, tmp_path: Path
) -> None:
    """Bug: with more runs reading a SQL source at once than its connection pool holds, the
    reads that waited for a connection took every worker thread, so the reads holding the
    connections could never go on (a deadlock: 52 triage runs stuck forever). Reads now
    wait for a connection on the event loop, never in a thread."""
    sql_db.run(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, tier VARCHAR(20))",
        "INSERT INTO customers VALUES " + ", ".join(f"({i}, 'standard')" for i in range(1, 81)),
    )
    app = _app(tmp_path / "store.db", {"crm": {
        "kind": "sql", "url": sql_db.url, "tables": {"customers": ["id", "tier"]},
        "max_connections": 3, "batch_rows": 1,
    }})  # fmt: skip

    @app.workflow(name="lookup")
    async def lookup(ctx: codara.Context, n: int) -> list[Any]:
        rows = (await ctx.read("crm", "SELECT id, tier FROM customers WHERE id <= :n "
                               "ORDER BY id", n=n)).rows  # fmt: skip
        return [r["id"] for r in rows]

    async with app:
        ids = await app.start_runs("lookup", [1 + i % 3 for i in range(80)])
        await asyncio.wait_for(app.work(concurrency=80, until_idle=True), timeout=60)
        outputs = [await app.output(run_id) for run_id in ids]
    assert outputs == [list(range(1, 2 + i % 3)) for i in range(80)]
