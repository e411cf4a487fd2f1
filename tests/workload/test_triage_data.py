"""The reference workload reads only through governed sources: the inbox file (its bad rows
quarantined with their reasons), the CRM's customers and the payments (stale records
flagged to a person, broken ones quarantined), and none of the personal values in them,
or in the tickets' text, reaches the store, the logs, the API or the console unmasked."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from examples.support_triage import crm as crm_module
from examples.support_triage.app import CONFIG, build, load
from examples.support_triage.data import load_examples, split
from examples.support_triage.inbox import Manifest, write_inbox
from examples.support_triage.payments import PaymentsService
from examples.support_triage.simulate import settle

import codara
from codara.api import create_app
from codara.auth import Users

# the fraud policies come first: a ticket (maybe) about card security goes to fraud whatever
# its data
FRAUD_POLICIES = ("card-security-to-fraud", "maybe-card-security-to-fraud")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triage-cache")


@dataclass
class Done:
    app: codara.App
    manifest: Manifest
    seeded: crm_module.Seeded
    stale: int
    """A clean customer made stale on purpose."""
    broken: int
    """Another clean customer made to break its rules on purpose."""
    triage: list[tuple[dict[str, Any], dict[str, Any]]]
    """(input, output) of every triage run."""
    intake: dict[str, Any]


async def _run(
    db_url: str, tmp_path: Path, cache: Path, payments: Callable[[str], PaymentsService]
) -> tuple[codara.App, Done]:
    crm = f"sqlite:///{tmp_path / 'crm.db'}"
    settings = load(CONFIG, crm_url=crm, inbox=tmp_path / "inbox",
                    overrides={"store": {"url": db_url, "durability": "os"}})  # fmt: skip
    work = build(settings, inbox_size=30, fit_per_intent=5, tune_per_intent=5, cache_dir=cache)
    parts = split(load_examples(), inbox_size=30, fit_per_intent=5, tune_per_intent=5)
    seeded = crm_module.create(crm)
    manifest = write_inbox(tmp_path / "inbox", parts.inbox, personal_every=3)
    clean = [int(r["customer_id"]) for r in _inbox_rows(manifest.path)
             if int(r["customer_id"]) not in seeded.broken
             and int(r["customer_id"]) not in seeded.broken_transactions.values()
             and int(r["customer_id"]) not in seeded.stale]  # fmt: skip
    stale, broken = clean[0], next(c for c in clean if c != clean[0])
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=90)).replace(tzinfo=None)
    with sqlite3.connect(tmp_path / "crm.db") as conn:  # one of each on purpose
        conn.execute(
            "UPDATE customers SET updated_at = ? WHERE id = ?", (old.isoformat(" "), stale)
        )
        conn.execute("UPDATE customers SET tier = 'gold?' WHERE id = ?", (broken,))
    work.payments.url = payments(crm).url
    app = work.app
    return app, Done(app, manifest, seeded, stale, broken, [], {})


def _inbox_rows(path: Path) -> list[dict[str, str]]:
    import csv
    import io

    text = path.read_bytes().decode("utf-8", errors="replace")
    return [r for r in csv.DictReader(io.StringIO(text)) if r["id"].startswith("T")]


async def _settle(app: codara.App, done: Done) -> None:
    await app.start_run("intake", {"pattern": "inbox.csv"})
    await settle(app)  # refund requests may wait for finance after their reply's review
    for _ in range(10):  # until_idle stops when nothing is ready *now*: a run handed back
        # after a store hiccup is queued for a moment later; wait for it (bounded)
        queued = [r for r in await app.store.list_runs(limit=1000) if r.status == "queued"]
        if not queued:
            break
        soonest = min(r.ready_at or 0.0 for r in queued)
        print(f"\n{len(queued)} run(s) queued after until_idle, the first ready in "
              f"{soonest - time.time():.2f} s: {[r.id for r in queued][:3]}")  # fmt: skip
        await asyncio.sleep(max(0.0, min(5.0, soonest - time.time())))
        await app.work(until_idle=True)
    for run in await app.store.list_runs(limit=1000):
        if run.status != "completed":  # say why: its journal's last rows
            tail = [(j.kind, j.name, j.status, j.error) for j in await app.journal(run.id)][-3:]
            pytest.fail(f"{run.workflow} {run.id} is {run.status} "
                        f"(ready at {run.ready_at}, now {time.time()}): {tail}")  # fmt: skip
        if run.workflow == "intake":
            done.intake = json.loads(run.output or "{}")
        else:
            done.triage.append((json.loads(run.input), json.loads(run.output or "{}")))


async def test_bad_rows_and_records_end_in_quarantine_and_stale_data_asks_a_person(
    db_url: str, tmp_path: Path, model_cache: Path,
    payments_service: Callable[[str], PaymentsService],
) -> None:  # fmt: skip
    app, done = await _run(db_url, tmp_path, model_cache, payments_service)
    async with app:
        await _settle(app, done)
        by_rule: dict[tuple[str, str], int] = {}
        for source, rule, n in await app.store.execute_raw(
            "SELECT source, rule, COUNT(*) FROM codara_quarantine GROUP BY source, rule"
        ):
            by_rule[(str(source), str(rule))] = int(n)
        reads = [json.loads(o)["lineage"] for (o,) in await app.store.execute_raw(
            "SELECT output FROM codara_journal WHERE kind = 'read' AND status = 'ok'")]  # fmt: skip
    m = done.manifest
    # every fault written into the inbox is in quarantine with its rule, and nothing else is
    assert {rule: n for (source, rule), n in by_rule.items() if source == "inbox"} == m.faults
    assert set(m.faults) == {"schema.text", "encoding", "ragged_row", "schema.customer_id",
                             "unknown_customer", "duplicate_id"}  # fmt: skip
    # in = processed + quarantined, for the inbox as a whole
    intake = done.intake
    assert intake["accepted"] + intake["quarantined_by_source"] == m.rows
    assert intake["runs"] + intake["duplicates"] == intake["accepted"]
    assert intake["duplicates"] == m.faults["duplicate_id"]
    assert len(done.triage) == intake["runs"]
    quarantined = [i for i, o in done.triage if o["action"] == "quarantined"]
    assert len(quarantined) == m.faults["unknown_customer"]
    # the broken customer's record is quarantined at each read, and a person decides
    assert by_rule[("crm", "schema.tier")] >= 1
    for ticket, out in done.triage:
        customer = ticket["customer_id"]
        if out["action"] == "quarantined":
            assert out["reason"] == "unknown customer"
            assert not out["stale_data"]  # a lookup that found nothing is not stale
            continue
        assert out["stale_data"] == (customer in (done.stale, *done.seeded.stale)), ticket["id"]
        if customer == done.stale:
            assert out["reason"] in ("stale-customer-record", *FRAUD_POLICIES)
        if customer == done.broken:
            assert out["reason"] in ("customer-record-failed-checks", *FRAUD_POLICIES)
        if customer in (done.stale, done.broken):
            assert out["action"] != "auto_reply"
    # the reads are the lineage: every triage read the CRM and the payments, journaled
    sources = {r["source"] for r in reads}
    assert sources == {"inbox", "crm", "payments"}
    assert sum(r["source"] == "crm" for r in reads) == len(done.triage)
    assert any(r["stale"] for r in reads if r["source"] == "crm")


async def test_no_personal_value_of_the_sources_or_the_tickets_leaks(
    db_url: str, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, payments_service: Callable[[str], PaymentsService],
) -> None:  # fmt: skip
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    caplog.set_level(logging.DEBUG)
    app, done = await _run(db_url, tmp_path, model_cache, payments_service)
    with sqlite3.connect(tmp_path / "crm.db") as conn:
        canaries = [v for row in conn.execute("SELECT name, email, iban FROM customers")
                    for v in row]  # fmt: skip
        canaries += [pan for (pan,) in conn.execute("SELECT pan FROM cards")]
    for value in done.manifest.personal:
        canaries += [value, value.replace(" ", "")]
        if value.isdigit():  # a card number, written in groups of four in the message
            canaries.append(" ".join(value[i : i + 4] for i in range(0, 16, 4)))
    assert done.manifest.personal  # the messages did carry some
    async with app:
        await _settle(app, done)
        users = Users(app.store, app.clock)
        await users.add("boss", ["admin"])
        token = await users.create_token("boss", "test")
        api = create_app(app)
        import httpx

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:  # fmt: skip
            runs = [r.id for r in await app.store.list_runs(limit=1000)]
            reviews = [str(r) for (r,) in await app.store.execute_raw(
                "SELECT id FROM codara_reviews")]  # fmt: skip
            assert reviews  # some tickets went to people
            pages = [await client.get(p) for p in ("/api/runs?limit=200", "/api/reviews",
                                                    "/runs", "/queue")]  # fmt: skip
            pages += [await client.get(f"/api/runs/{r}") for r in runs]
            pages += [await client.get(f"/runs/{r}") for r in runs]
            pages += [await client.get(f"/api/reviews/{r}") for r in reviews]
            pages += [await client.get(f"/reviews/{r}") for r in reviews]
        assert all(p.status_code == 200 for p in pages), {p.status_code for p in pages}
        stored = []
        for (table,) in await app.store.execute_raw(_TABLES[app.store.dialect]):
            stored += [repr(r) for r in await app.store.execute_raw(f"SELECT * FROM {table}")]
    seen = {
        "store": "\n".join(stored),
        "logs": caplog.text,
        "api and console": "\n".join(p.text for p in pages),
    }
    if db_url.startswith("sqlite:///"):
        db = Path(db_url.removeprefix("sqlite:///"))
        seen["database file"] = b"".join(
            p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()
        ).decode("latin-1")
    assert "<name:" in seen["api and console"] or "&lt;name:" in seen["api and console"]
    for where, text in seen.items():
        leaked = [c for c in canaries if c in text]
        assert not leaked, (where, leaked[:5])


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'codara_%'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
    "AND tablename LIKE 'codara_%'",
}
