"""The reference workload's CRM in each database the SQL source supports: the demo creates
it by URL (SQLite, PostgreSQL, MariaDB) and the triage reads it through the governed
``crm`` and ``payments`` sources there: stale records flagged, broken ones quarantined."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from examples.support_triage import crm as crm_module
from examples.support_triage.app import CONFIG, build, load
from examples.support_triage.simulate import decide_pending

if TYPE_CHECKING:
    from conftest import SqlDatabase


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triage-cache")


async def test_the_triage_reads_its_crm_in_each_database(
    sql_db: SqlDatabase, tmp_path: Path, model_cache: Path
) -> None:
    seeded = crm_module.create(sql_db.url)
    assert sql_db.scalar("SELECT COUNT(*) FROM customers") == seeded.customers
    stale = next(i for i in seeded.stale if i not in seeded.broken_transactions.values())
    broken = next(iter(seeded.broken))
    clean = next(i for i in range(1, seeded.customers + 1)
                 if i not in seeded.stale and i not in seeded.broken
                 and i not in seeded.broken_transactions.values())  # fmt: skip
    (tmp_path / "inbox").mkdir()
    settings = load(CONFIG, crm_url=sql_db.url, inbox=tmp_path / "inbox", overrides={
        "store": {"url": f"sqlite:///{tmp_path / 'store.db'}", "durability": "os"}})  # fmt: skip
    work = build(settings, inbox_size=20, fit_per_intent=5, tune_per_intent=5,
                 cache_dir=model_cache)  # fmt: skip
    text = "How do I top up my account by bank transfer?"
    async with work.app as app:
        ids = await app.start_runs("triage", [
            {"id": f"T{c}", "text": text, "customer_id": c} for c in (clean, stale, broken)
        ])  # fmt: skip
        await app.work(until_idle=True)
        await decide_pending(app)
        await app.work(until_idle=True)
        out = [await app.output(i) for i in ids]
        [(rule,)] = await app.store.execute_raw(
            "SELECT rule FROM codara_quarantine WHERE source = 'crm'"
        )
        versions = {json.loads(o)["lineage"]["version"] for (o,) in await app.store.execute_raw(
            "SELECT output FROM codara_journal WHERE kind = 'read' AND name = 'crm'")}  # fmt: skip
    work.crm.close()
    assert [o["stale_data"] for o in out] == [False, True, out[2]["stale_data"]]
    assert out[1]["reason"] == "stale-customer-record"
    assert out[2]["reason"] == "customer-record-failed-checks"
    assert rule == seeded.broken[broken]
    assert out[0]["action"] in ("auto_reply", "reviewed_reply")
    if sql_db.kind == "postgresql":  # the data's version is the WAL position it was read at
        assert all(str(v).startswith("pg-lsn:") for v in versions)
    # the replies went to the outbox in the same database, once each
    assert sql_db.scalar("SELECT COUNT(*) FROM outbox") == sum(o["action"] != "human" for o in out)
