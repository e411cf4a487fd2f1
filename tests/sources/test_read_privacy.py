"""A read's personal data is masked before the journal, the quarantine or the workflow see
it: declared fields tokenised whole, other strings scanned, originals sealed in the vault
in the same transaction as the read's journal row."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import codara
from codara.config import load_settings

ROWS = (
    "id,name,email,iban,note\n"
    "1,Ada Lovelace,ada@example.org,GB82 WEST 1234 5698 7654 32,call +44 7911 123456\n"
    "2,Ben Okafor,ben.okafor@example.org,DE89 3704 0044 0532 0130 00,\n"
    "3,Eva Rossi\n"  # ragged: quarantined, and masked there too
)
CANARIES = ("Ada Lovelace", "ada@example.org", "GB82", "7911 123456", "Ben Okafor",
            "ben.okafor", "DE89", "Eva Rossi")  # fmt: skip


async def test_a_reads_personal_fields_never_reach_the_store_unmasked(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "customers.csv").write_text(ROWS)
    source = {"kind": "file", "root": str(tmp_path), "paths": ["crm/*.csv"],
              "personal": {"name": "name", "email": "email", "iban": "iban"}}  # fmt: skip
    settings = load_settings(
        overrides={"store": {"url": db_url, "durability": "os"}, "sources": {"crm": source}}
    )
    app = codara.App(settings=settings)

    @app.workflow(name="look")
    async def look(ctx: codara.Context, _: None) -> list[str]:
        rows = (await ctx.read("crm", "crm/*.csv")).rows
        return [f"{r['name']} {r['email']} {r['note']}" for r in rows]

    async with app:
        run_id = await app.start_run("look", None)
        await app.work(until_idle=True)
        seen = await app.output(run_id)
        stored: list[str] = []
        for table in ("codara_runs", "codara_journal", "codara_quarantine", "codara_vault"):
            stored.extend(repr(r) for r in await app.store.execute_raw(f"SELECT * FROM {table}"))
        [(vaulted,)] = await app.store.execute_raw("SELECT COUNT(*) FROM codara_vault")
    text = "\n".join(stored)
    assert seen[0].startswith("<name:") and "<email:" in seen[0] and "<phone:" in seen[0]  # noqa: PT018
    for canary in CANARIES:
        assert canary not in text, canary
        assert all(canary not in s for s in seen), canary
    assert vaulted >= 7  # 2 names, 2 emails, 2 IBANs, a phone (and the ragged row's name)


async def test_an_allowed_workflow_reads_a_field_unmasked_and_it_is_recorded(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codara.errors import ScopeError

    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "customers.csv").write_text(ROWS)
    source = {"kind": "file", "root": str(tmp_path), "paths": ["crm/*.csv"],
              "personal": {"name": "name", "email": "email", "iban": "iban"},
              "unmasked": {"fraud": ["iban"]}}  # fmt: skip
    settings = load_settings(
        overrides={"store": {"url": db_url, "durability": "os"}, "sources": {"crm": source}}
    )
    app = codara.App(settings=settings)

    revealed: list[str] = []

    @app.workflow(name="fraud")
    async def fraud(ctx: codara.Context, _: None) -> list[str]:
        rows = (await ctx.read("crm", "crm/*.csv", unmasked=["iban"])).rows
        revealed.extend(str(r["iban"]) for r in rows)
        return [f"{r['name']} {r['iban']}" for r in rows]

    @app.workflow(name="support")
    async def support(ctx: codara.Context, _: None) -> str:
        try:
            await ctx.read("crm", "crm/*.csv", unmasked=["iban"])
        except ScopeError as exc:
            return exc.rule
        return "read"

    async with app:
        fraud_run = await app.start_run("fraud", None)
        support_run = await app.start_run("support", None)
        await app.work(until_idle=True)
        seen = await app.output(fraud_run)
        refused = await app.output(support_run)
        journal = "".join(r.output or "" for r in await app.journal(fraud_run))
        events = await app.store.execute_raw("SELECT actor, kind, run_id FROM codara_unmask_events")
    # the workflow saw the iban (the name stays masked: only the iban was asked for), but
    # what it journals from then on, its result included, is masked again
    assert seen[0].startswith("<name:")
    assert "<iban:" in seen[0]
    assert "GB82" not in journal
    assert "GB82 WEST 1234 5698 7654 32" in revealed
    assert refused == "unmask"
    assert sorted(events) == [("workflow fraud", "iban", fraud_run)] * 2
