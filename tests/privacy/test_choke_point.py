"""Run inputs are masked before anything is stored: canaries seeded in an input appear
nowhere in the store (tables, raw SQLite file and WAL bytes), the workflow sees tokens, the
originals sit sealed in the vault, and erasing a subject leaves the audit trail clean."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

import codara
from codara.engine._privacy import erase, privacy

CARD = "4111 1111 1111 1111"
EMAIL = "Jane.Doe+bank@Example.com"
IBAN = "GB82 WEST 1234 5698 7654 32"
CANARIES = (CARD.replace(" ", ""), CARD, "jane.doe", "Jane.Doe", "GB82WEST", "WEST 1234")


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))


def _app(url: str) -> codara.App:
    app = codara.App(url, durability="os")

    @app.workflow(name="echo")
    async def echo(ctx: codara.Context, ticket: dict[str, Any]) -> str:
        return await ctx.step("seen", lambda: str(ticket["text"]))

    return app


async def _dump(app: codara.App) -> str:
    parts: list[str] = []
    for table in ("codara_runs", "codara_journal", "codara_vault", "codara_chain_heads"):
        parts.extend(repr(r) for r in await app.store.execute_raw(f"SELECT * FROM {table}"))
    return "\n".join(parts)


async def test_a_runs_input_is_masked_before_it_is_stored(
    db_url: str, tmp_path: Path, keys: None
) -> None:
    text = f"my card {CARD} was charged twice, write to {EMAIL}, refund to {IBAN}"
    app = _app(db_url)
    async with app:
        run_id = await app.start_run("echo", {"id": 7, "text": text})
        await app.work(until_idle=True)
        seen = str(await app.output(run_id))
        stored = await _dump(app)
        [(vaulted,)] = await app.store.execute_raw("SELECT COUNT(*) FROM codara_vault")
    assert seen.startswith("my card <card:")
    assert "<email:" in seen and "<iban:" in seen  # noqa: PT018 - one sentence, three kinds
    assert "was charged twice" in seen  # the rest of the text is left as it was
    for canary in CANARIES:
        assert canary not in stored, canary
    assert vaulted == 3  # the originals, sealed: the vault row holds ciphertext only
    if db_url.startswith("sqlite:///"):
        db = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
        for canary in CANARIES:
            assert canary.encode() not in raw, canary


async def test_erasing_a_subject_deletes_its_originals_and_the_audit_stays_clean(
    db_url: str, keys: None
) -> None:
    app = _app(db_url)
    async with app:
        run_id = await app.start_run("echo", {"id": 1, "text": f"mail me at {EMAIL}"})
        await app.work(until_idle=True)
        before = await app.store.execute_raw("SELECT token FROM codara_vault")
        erased = await erase(app.store, privacy(), "jane.doe+bank@example.com", by="dpo")
        after = await app.store.execute_raw("SELECT token FROM codara_vault")
        report = await app.verify()
        events = await app.store.execute_raw("SELECT actor, purpose FROM codara_unmask_events")
        output = str(await app.output(run_id))
    assert len(before) == 1
    assert erased == [before[0][0]]
    assert after == []
    assert report.ok, report.problems
    assert events == [("dpo", "erased (right to erasure)")]
    assert erased[0] in output  # the token stays where it was, meaning nothing any more


async def test_without_a_vault_key_originals_are_not_kept(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.delenv("CODARA_VAULT_KEY", raising=False)
    app = _app(db_url)
    async with app:
        await app.start_run("echo", {"id": 1, "text": f"card {CARD}"})
        assert await app.store.execute_raw("SELECT COUNT(*) FROM codara_vault") == [(0,)]
        assert CARD not in await _dump(app)


def test_codara_privacy_erase_reads_the_subject_from_stdin(tmp_path: Path, keys: None) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from codara.cli import app as cli_app

    url = f"sqlite:///{tmp_path / 'c.db'}"

    async def start() -> None:
        async with _app(url) as app:
            await app.start_run("echo", {"id": 1, "text": f"mail me at {EMAIL}"})

    asyncio.run(start())
    runner = CliRunner()
    args = ["--database-url", url, "privacy", "erase", "--subject", "-", "--by", "dpo", "--json"]
    first = runner.invoke(cli_app, args, input="jane.doe+bank@example.com\n")
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.stdout)["erased"]) == 1
    assert "jane.doe" not in first.output  # the value is never echoed
    again = runner.invoke(cli_app, args, input="jane.doe+bank@example.com\n")
    assert json.loads(again.stdout)["erased"] == []
    empty = runner.invoke(cli_app, args, input="\n")
    assert empty.exit_code == 4


def test_log_lines_are_written_with_tokens_not_personal_values(
    keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from codara.cli._output import log_to_stderr

    with log_to_stderr("info"):
        log = logging.getLogger("codara.test")
        log.warning("customer %s wrote from %s", "7", EMAIL)
        try:
            raise ValueError(f"bad card {CARD}")
        except ValueError:
            log.exception("a step failed")
    err = capsys.readouterr().err
    assert "customer 7 wrote from <email:" in err
    assert "ValueError: bad card <card:" in err  # the traceback too
    for canary in CANARIES:
        assert canary not in err, canary
