"""Keyed chains: the HMAC is standard, hashes name their scheme, rows from before the key still
verify, and a wrong or missing key is told apart from tampering."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from scenario import build, make_app

from codara.errors import ConfigError
from codara.store._audit import UNKEYED, ChainKey, key_id_of
from codara.testing import FakeClock
from codara.trace import genesis_hash

KEY = "test-audit-key-0123456789abcdef"


@pytest.mark.parametrize("secret", [b"k" * 16, b"0123456789abcdef" * 3, b"x" * 200])
def test_the_keyed_seal_is_hmac_sha256_truncated_to_fit_the_column(secret: bytes) -> None:
    key = ChainKey(secret)
    text = "codara \x1f row \u00e9"
    expected = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:56]
    sealed = key.seal(text)
    assert sealed == f"k1:{key.kid}:{expected}"
    assert len(sealed) == 64
    assert key_id_of(sealed) == key.kid
    assert key.matches(text, sealed)
    assert not key.matches(text + "!", sealed)


def test_unkeyed_hashes_are_plain_sha256_as_before() -> None:
    text = "codara-run-v1\x1frun\x1fwf\x1f1\x1fnull"
    assert UNKEYED.seal(text) == hashlib.sha256(text.encode()).hexdigest()
    assert key_id_of(UNKEYED.seal(text)) is None
    assert genesis_hash("run", "wf", "1", "null") == UNKEYED.seal(text)


def test_a_short_key_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from codara.store._audit import chain_key

    monkeypatch.setenv("CODARA_AUDIT_KEY", "tiny-secret")
    with pytest.raises(ConfigError, match="too short") as info:
        chain_key()
    assert "tiny-secret" not in str(info.value)


async def test_rows_from_before_the_key_still_verify_and_new_rows_are_keyed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store filled without a key, then the key set: the old chains verify (counted as
    unkeyed), a sleeping run resumed under the key continues its chain with keyed rows."""
    monkeypatch.delenv("CODARA_AUDIT_KEY", raising=False)
    clock = FakeClock()
    app = make_app(db_url, clock)
    async with app:
        s = await build(app)
        monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
        report = await app.verify()
        assert report.problems == []
        assert report.keyed
        assert report.unkeyed_hashes > 0
        clock.advance(7200)  # the sleeping run wakes, under the key now
        await app.work(until_idle=True)
        await app.send_signal(s.runs["waits"], "go", 1)
        await app.work(until_idle=True)
        await app.cancel(s.runs["open"])  # a run from before the key, cancelled under it
        assert (await app.get_run(s.runs["nap"])).status == "completed"
        rows = await app.journal(s.runs["nap"])
        assert key_id_of(rows[0].hash) is None
        assert key_id_of(rows[-1].hash) is not None
        report = await app.verify()
        assert report.problems == []


async def test_a_wrong_or_missing_key_is_named_not_mistaken_for_edits(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
    app = make_app(sqlite_url)
    async with app:
        await app.run("five")
        assert (await app.verify()).ok
        monkeypatch.setenv("CODARA_AUDIT_KEY", "another-key-0123456789")
        wrong = await app.verify()
        assert wrong.problems
        assert all("a different key, or a forged hash" in p.problem for p in wrong.problems)
        monkeypatch.delenv("CODARA_AUDIT_KEY")
        missing = await app.verify()
        assert missing.problems
        assert all("CODARA_AUDIT_KEY is not set" in p.problem for p in missing.problems)


async def test_a_worker_without_the_key_after_keyed_rows_is_reported(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyedness never drops along a chain: a process that lost the key shows up."""
    monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
    clock = FakeClock()
    app = make_app(sqlite_url, clock)
    async with app:
        run_id = await app.start_run("nap")
        await app.work(until_idle=True)
        monkeypatch.delenv("CODARA_AUDIT_KEY")
        clock.advance(7200)
        await app.work(until_idle=True)
        monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
        problems = [p.problem for p in (await app.verify(run_id)).problems]
        assert problems
        assert any("hashed without the key after keyed" in p for p in problems)


async def test_a_total_rewrite_without_the_key_looks_legacy_unless_the_key_is_required(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything re-hashed with plain SHA-256 (genesis, rows, heads) looks like data from
    before the key: verify counts it; ``require_key`` reports it."""
    from dataclasses import replace

    from codara.store._audit import HEADS_GENESIS, head_text
    from codara.trace import record_hash

    monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
    app = make_app(db_url)
    async with app:
        await app.run("five")
        run = (await app.store.list_runs())[0]
        assert (await app.verify(require_key=True)).ok
        genesis = genesis_hash(run.id, run.workflow, run.version, run.input)
        prev = genesis
        sql = app.store.execute_raw
        await sql("UPDATE codara_runs SET genesis_hash = ? WHERE id = ?", (genesis, run.id))
        for row in await app.journal(run.id):
            row = replace(row, prev_hash=prev)
            prev = record_hash(row)
            await sql(
                "UPDATE codara_journal SET prev_hash = ?, hash = ? WHERE run_id = ? AND seq = ?",
                (row.prev_hash, prev, run.id, row.seq),
            )
        kind, subject, length, state, at = (
            await sql("SELECT kind, subject, length, state, at FROM codara_chain_heads")
        )[0]
        text = head_text(1, kind, subject, length, prev, state, at, HEADS_GENESIS)
        await sql(
            "UPDATE codara_chain_heads SET head = ?, hash = ?",
            (prev, UNKEYED.seal(text)),
        )
        lenient = await app.verify()
        assert lenient.problems == []
        assert lenient.unkeyed_hashes == 1 + 6 + 1
        strict = await app.verify(require_key=True)
        assert len(strict.problems) == 1 + 6 + 1
        assert all("--require-key" in p.problem for p in strict.problems)
        monkeypatch.delenv("CODARA_AUDIT_KEY")
        with pytest.raises(ConfigError, match="needs CODARA_AUDIT_KEY"):
            await app.verify(require_key=True)
