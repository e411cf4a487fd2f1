"""``ctx.quarantine``: a workflow puts a record it read in quarantine for a fault the
source's model cannot see (a duplicate id, a customer the CRM does not know). Journaled in
the same transaction as the quarantine row, so a replay writes nothing twice; masked like
a read's records; released by `retry` to the source's ``release_to`` workflow."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

import codara
from codara.config import load_settings
from codara.engine._quarantine import list_records, retry

ROWS = "id,name,text\n1,Ada Lovelace,first\n1,Ada Lovelace,again\n2,Ben Okafor,hello\n"


def _app(db_url: str, tmp_path: Path, **extra: Any) -> codara.App:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "t.csv").write_text(ROWS)
    source = {"kind": "file", "root": str(tmp_path), "paths": ["in/*.csv"],
              "personal": {"name": "name"}, **extra}  # fmt: skip
    settings = load_settings(
        overrides={"store": {"url": db_url, "durability": "os"}, "sources": {"inbox": source}}
    )
    return codara.App(settings=settings)


async def test_a_duplicate_goes_to_quarantine_once_with_its_reason_even_on_replay(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    app = _app(db_url, tmp_path)
    starts: list[int] = []

    @app.workflow(name="intake")
    async def intake(ctx: codara.Context, _: None) -> dict[str, Any]:
        starts.append(1)
        seen: set[str] = set()
        kept, ids = [], []
        for row in (await ctx.read("inbox", "in/*.csv")).rows:
            if row["id"] in seen:
                ids.append(await ctx.quarantine("inbox", row, rule="duplicate_id",
                                                reason=f"ticket {row['id']} came twice",
                                                where=f"ticket {row['id']}"))  # fmt: skip
                continue
            seen.add(str(row["id"]))
            kept.append(row["id"])
        await ctx.wait_for("go")  # parks: the run is executed again from its journal
        return {"kept": kept, "quarantined": ids, "data": ctx.data}

    async with app:
        run_id = await app.start_run("intake", None)
        await app.work(until_idle=True)
        await app.send_signal(run_id, "go")
        await app.work(until_idle=True)
        out = await app.output(run_id)
        records = await list_records(app.store)
        journal = await app.store.execute_raw(
            "SELECT kind, name, output FROM codara_journal WHERE run_id = ? AND kind = ?",
            [run_id, "quarantine"],
        )
        assert (await app.verify(run_id)).ok
    assert out["kept"] == ["1", "2"]
    assert [r.id for r in records] == out["quarantined"]
    [record] = records
    assert (record.rule, record.reason, record.position) == (
        "duplicate_id", "ticket 1 came twice", "ticket 1",
    )  # fmt: skip
    assert record.run_id == run_id
    assert record.record["text"] == "again"
    assert record.record["name"].startswith("<name:")  # masked like the read's records
    assert len(journal) == 1
    assert out["data"]["quarantined"] == 1
    assert len(starts) == 2  # the second execution replayed the quarantine, wrote nothing


async def test_retry_releases_a_workflow_quarantined_record_to_release_to(
    db_url: str, tmp_path: Path
) -> None:
    app = _app(db_url, tmp_path, release_to="handle")

    @app.workflow(name="intake")
    async def intake(ctx: codara.Context, _: None) -> str:
        row = (await ctx.read("inbox", "in/*.csv")).rows[2]
        return await ctx.quarantine("inbox", row, rule="unknown_customer", reason="no such")

    @app.workflow(name="handle")
    async def handle(ctx: codara.Context, row: dict[str, Any]) -> str:
        return str(row["text"])

    async with app:
        qid = await app.run("intake", None)
        retried = await retry(app, app.sources, qid, by="anna")
        assert retried.released
        assert retried.run_id is not None
        await app.work(until_idle=True)
        assert await app.output(retried.run_id) == "hello"


async def test_a_bad_quarantine_call_is_refused_with_the_reason(
    db_url: str, tmp_path: Path
) -> None:
    app = _app(db_url, tmp_path)

    @app.workflow(name="bad")
    async def bad(ctx: codara.Context, which: str) -> str:
        if which == "source":
            return await ctx.quarantine("nope", {"a": 1}, rule="x", reason="y")
        if which == "rule":
            return await ctx.quarantine("inbox", {"a": 1}, rule="Not A Rule", reason="y")
        return await ctx.quarantine("inbox", {"a": 1}, rule="x", reason=" ")

    async with app:
        with pytest.raises(codara.RunError, match="no source 'nope'"):
            await app.run("bad", "source")
        with pytest.raises(codara.RunError, match="short lower-case name"):
            await app.run("bad", "rule")
        with pytest.raises(codara.RunError, match="give the reason"):
            await app.run("bad", "reason")
        assert await list_records(app.store) == []


async def test_an_unmasked_name_never_reaches_the_journal_through_a_later_step(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is not something a detector finds in text; once a run has read it unmasked,
    the exact original is masked wherever the run journals it."""
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    app = _app(db_url, tmp_path, unmasked={"greet": ["name"]})

    def letter(name: str) -> str:
        return f"Dear {name}, thank you."

    @app.workflow(name="greet")
    async def greet(ctx: codara.Context, _: None) -> str:
        row = (await ctx.read("inbox", "in/*.csv", unmasked=["name"])).rows[2]
        assert row["name"] == "Ben Okafor"  # the workflow itself sees the original
        return await ctx.step("letter", letter, row["name"])

    async with app:
        run_id = await app.start_run("greet", None)
        await app.work(until_idle=True)
        out = await app.output(run_id)
        journal = await app.store.execute_raw(
            "SELECT input, output FROM codara_journal WHERE run_id = ?", [run_id]
        )
    assert out.startswith("Dear <name:")
    assert "Okafor" not in repr(journal)
