"""``ctx.read``: scope before reading, quarantine with reasons, freshness, lineage, and a
batch is read once: replays come from the journal, quarantine rows are written once.

The source is a connector of the tests' own (``read_fixture_source.JsonList``, loaded as a
custom kind), so that what the engine asked of it can be counted; the built-in connectors
have their own tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import codara
from codara.config import load_settings
from codara.engine import NO_RETRY
from codara.errors import ConfigError, ScopeError, StaleDataError

KIND = "read_fixture_source:JsonList"

ITEMS: list[Any] = [
    {"id": 1, "text": "my card is lost"},
    "garbage",  # the connector rejects it: not an object
    {"id": 2, "text": ""},  # the model refuses it: text too short
    {"id": 3, "text": "refund please", "extra": 1},  # a field the model does not know
    {"id": "x", "text": "not a number"},  # the model refuses it: id is not an int
    {"id": 4, "text": "where is my money"},
]


class Ticket(BaseModel):
    id: int
    text: str = Field(min_length=1)


def _app(db_url: str, root: Path, *, fail_after: bool = False, **source: Any) -> codara.App:
    (root / "inbox.json").write_text(json.dumps(ITEMS))
    table = {"kind": KIND, "root": str(root), "allowed": ["inbox.json"], "batch_rows": 2,
             "record_model": f"{__name__}:Ticket", **source}  # fmt: skip
    settings = load_settings(
        overrides={"store": {"url": db_url, "durability": "os"}, "sources": {"inbox": table}}
    )
    app = codara.App(settings=settings, retry=NO_RETRY)
    failures: list[int] = []

    @app.workflow(name="reader")
    async def reader(ctx: codara.Context, target: str) -> dict[str, Any]:
        result = await ctx.read("inbox", target)

        def after() -> int:
            if fail_after and not failures:
                failures.append(1)
                raise RuntimeError("a later step fails once")
            return len(result.rows)

        await ctx.step("after", after)
        return {"ids": [r["id"] for r in result.rows], "quarantined": result.quarantined,
                "stale": result.stale}  # fmt: skip

    return app


def _reads(root: Path) -> list[str]:
    log = root / "reads.log"
    return log.read_text().splitlines() if log.exists() else []


async def _quarantine(app: codara.App) -> list[tuple[str, str, str]]:
    rows = await app.store.execute_raw(
        "SELECT rule, position, record FROM codara_quarantine ORDER BY position"
    )
    return [(str(r), str(p), str(rec)) for r, p, rec in rows]


async def test_a_read_quarantines_what_it_cannot_accept_and_journals_its_lineage(
    db_url: str, tmp_path: Path
) -> None:
    app = _app(db_url, tmp_path)
    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        out = await app.output(run_id)
        quarantined = await _quarantine(app)
        reads = [r for r in await app.journal(run_id) if r.kind == "read"]
    assert out == {"ids": [1, 4], "quarantined": 4, "stale": False}
    assert sorted(rule for rule, _, _ in quarantined) == [
        "not_object", "schema.id", "schema.text", "unknown_field",
    ]  # fmt: skip
    assert [json.loads(rec) for _, _, rec in quarantined if _ == "item 1"] == ["garbage"]
    assert len(reads) == 3  # batch_rows 2: three batches, one journal row each
    lineage = [json.loads(r.output or "")["lineage"] for r in reads]
    assert sum(b["seen"] for b in lineage) == len(ITEMS)  # in = accepted + quarantined
    assert sum(b["accepted"] + b["quarantined"] for b in lineage) == len(ITEMS)
    assert lineage[0] | {"by_rule": None} == {
        "source": "inbox", "kind": "json-list", "target": "inbox.json", "params": {},
        "touched": ["inbox.json"], "batch": 0, "seen": 2, "accepted": 1, "quarantined": 1,
        "by_rule": None, "version": "v1", "newest": None, "age": None, "max_age": None,
        "stale": False, "model": f"{__name__}:Ticket", "contract": "discard_row",
    }  # fmt: skip
    assert lineage[0]["by_rule"] == {"not_object": 1}
    from codara.console._view import journal_rows  # the console's run page says the same

    shown = [r["data"] for r in journal_rows(reads)]
    assert (
        shown[0]
        == "1 record(s) from inbox (inbox.json), batch 0; 1 quarantined (not_object 1); version v1"
    )


async def test_a_replayed_read_reads_nothing_and_quarantines_nothing_again(
    db_url: str, tmp_path: Path
) -> None:
    app = _app(db_url, tmp_path, fail_after=True)
    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "failed"
        reads_before, quarantined_before = _reads(tmp_path), await _quarantine(app)
        await app.retry(run_id, by="test")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        assert record.status == "completed", record.error
        assert _reads(tmp_path) == reads_before == ["inbox.json 0", "inbox.json 2",
                                                    "inbox.json 4"]  # fmt: skip
        assert await _quarantine(app) == quarantined_before
        assert len(quarantined_before) == 4
        assert (await app.output(run_id))["ids"] == [1, 4]
        assert (await app.verify(run_id)).ok


async def test_evolve_keeps_new_fields_and_freeze_fails_the_read(
    db_url: str, tmp_path: Path
) -> None:
    evolving = _app(db_url, tmp_path, contract="evolve")
    async with evolving:
        run_id = await evolving.start_run("reader", "inbox.json")
        await evolving.work(until_idle=True)
        assert (await evolving.output(run_id))["ids"] == [1, 3, 4]
        freezing = _app(db_url, tmp_path, contract="freeze")
        async with freezing:
            frozen = await freezing.start_run("reader", "inbox.json")
            await freezing.work(until_idle=True)
            record = await freezing.get_run(frozen)
            error = json.loads(record.error or "{}")
            rules = {r for r, _, _ in await _quarantine(freezing)}
    assert record.status == "failed"
    assert "frozen contract" in error["message"]
    assert "not_object" in error["message"]
    assert "not_object" in rules  # quarantined all the same


async def test_a_read_outside_the_scope_is_refused_before_anything_is_read(
    db_url: str, tmp_path: Path
) -> None:
    app = _app(db_url, tmp_path)
    async with app:
        run_id = await app.start_run("reader", "../etc/passwd")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        [read] = [r for r in await app.journal(run_id) if r.kind == "read"]
    assert record.status == "failed"
    assert _reads(tmp_path) == []
    assert read.status == "error"
    error = json.loads(read.error or "{}")
    assert error["type"] == "codara.errors.ScopeError"
    assert error["rule"] == "path"


async def test_stale_data_is_flagged_or_refused_as_the_source_says(
    db_url: str, tmp_path: Path
) -> None:
    old = 1_000_000.0  # 1970: far older than a minute
    flagging = _app(db_url, tmp_path, max_age=60, newest=old)
    async with flagging:
        run_id = await flagging.start_run("reader", "inbox.json")
        await flagging.work(until_idle=True)
        assert (await flagging.output(run_id))["stale"] is True
        refusing = _app(db_url, tmp_path, max_age=60, newest=old, on_stale="refuse")
        async with refusing:
            refused = await refusing.start_run("reader", "inbox.json")
            await refusing.work(until_idle=True)
            record = await refusing.get_run(refused)
    assert record.status == "failed"
    assert "stale" in json.loads(record.error or "{}")["message"]


async def test_the_read_errors_replay_as_what_they_were(db_url: str, tmp_path: Path) -> None:
    """Inline, the workflow sees ScopeError and StaleDataError themselves, not a wrapper."""
    app = _app(db_url, tmp_path, max_age=60, newest=1_000_000.0, on_stale="refuse")
    seen: list[type[BaseException]] = []

    @app.workflow(name="catcher")
    async def catcher(ctx: codara.Context, target: str) -> str:
        try:
            await ctx.read("inbox", target)
        except (ScopeError, StaleDataError) as exc:
            seen.append(type(exc))
            return type(exc).__name__
        return "read"

    async with app:
        scope = await app.start_run("catcher", "nope.json")
        stale = await app.start_run("catcher", "inbox.json")
        await app.work(until_idle=True)
        assert await app.output(scope) == "ScopeError"
        assert await app.output(stale) == "StaleDataError"
    assert sorted(seen, key=str) == [ScopeError, StaleDataError]


def test_bad_source_declarations_stop_at_load(tmp_path: Path) -> None:
    def load(table: dict[str, Any]) -> None:
        settings = load_settings(overrides={"sources": {"inbox": table}})
        assert codara.App(settings=settings).sources  # validated when first asked for

    with pytest.raises(ConfigError, match="kind must be one of"):
        load({"kind": "ftp"})
    with pytest.raises(ConfigError, match="cannot be imported"):
        load({"kind": "no_such_module:Source"})
    with pytest.raises(ConfigError, match=r"\[sources.inbox\]: allowed: Field required"):
        load({"kind": KIND, "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="batch_rowz"):
        load({"kind": KIND, "root": str(tmp_path), "allowed": [], "batch_rowz": 3})


STALE_POLICY: dict[str, Any] = {
    "workflows": {
        "answer": {
            "policy_input": {"data": {"stale": "bool", "quarantined": "int"}},
            "policies": [
                {
                    "name": "stale data",
                    "when": "data.stale",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                },
            ],
        }
    }
}


@pytest.mark.parametrize("stale", [True, False])
async def test_policies_see_whether_the_run_read_stale_data(
    db_url: str, tmp_path: Path, stale: bool
) -> None:
    from codara.review import ReviewGate, install_reviews, load_policies

    limits: dict[str, Any] = {"max_age": 60, "newest": 1_000_000.0} if stale else {}
    app = _app(db_url, tmp_path, **limits)
    gate = ReviewGate(load_policies(STALE_POLICY, workflow="answer"), workflow="answer")
    install_reviews(app)

    @app.workflow(name="answer")
    async def answer(ctx: codara.Context, target: str) -> str:
        await ctx.read("inbox", target)
        result = await gate.check(ctx, "reply", {"text": "hello"}, inputs={})
        return result.outcome

    async with app:
        run_id = await app.start_run("answer", "inbox.json")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        [policy] = [r for r in await app.journal(run_id) if r.name == "policy:reply"]
    seen = json.loads(policy.output or "{}")
    assert seen["inputs_seen"]["data"] == {"stale": stale, "quarantined": 4}
    if stale:
        assert (record.status, seen["outcome"]) == ("waiting", "ask")  # a person is asked
    else:
        assert (record.status, seen["outcome"]) == ("completed", "allow")
