"""The tamper corpus: every kind of tampering is detected on SQLite and PostgreSQL, with and
without CODARA_AUDIT_KEY, and untouched data (runs in every state) is never reported.

Each tampering is applied to the same store, checked, and undone (the audit tables restored
from a snapshot, which must then verify clean again).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from scenario import Scenario, build, make_app

from codara.store._audit import chain_key
from codara.trace import Anchor, make_anchor, read_anchor

KEY = "test-audit-key-0123456789abcdef"

Tamper = Callable[[Scenario], Awaitable[None]]


@pytest.fixture(params=["unkeyed", "keyed"])
def keyed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "keyed":
        monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
    else:
        monkeypatch.delenv("CODARA_AUDIT_KEY", raising=False)
    return bool(request.param == "keyed")


@pytest.fixture
async def scenario(db_url: str, keyed: bool) -> AsyncIterator[Scenario]:
    app = make_app(db_url)
    async with app:
        yield await build(app)


# -- the corpus ------------------------------------------------------------------------------
async def edit_journal_row(s: Scenario) -> None:
    rid = s.runs["five"]
    await s.sql("UPDATE codara_journal SET output = '99' WHERE run_id = ? AND seq = 2", rid)


async def delete_journal_row(s: Scenario) -> None:
    await s.sql("DELETE FROM codara_journal WHERE run_id = ? AND seq = 1", s.runs["five"])


async def delete_journal_tail(s: Scenario) -> None:
    await s.sql("DELETE FROM codara_journal WHERE run_id = ? AND seq >= 4", s.runs["five"])


async def insert_journal_row(s: Scenario) -> None:
    """A well-chained row appended after the result (plain SHA-256, like an attacker's)."""
    rows = await s.app.journal(s.runs["five"])
    extra = replace(rows[2], op=99, name="forged")
    await s.rewrite_journal(s.runs["five"], [*rows, extra])


async def insert_row_in_the_middle(s: Scenario) -> None:
    rows = await s.app.journal(s.runs["five2"])
    forged = replace(rows[1], name="forged", output="1")
    # keep the original hashes of every row: the forged one shifts the later rows down
    await s.sql("DELETE FROM codara_journal WHERE run_id = ? AND seq >= 2", s.runs["five2"])
    for seq, row in enumerate([forged, *rows[2:]], start=2):
        await s.sql(
            "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, "
            "error, started_at, finished_at, attempts, prev_hash, hash, branch) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row.run_id, seq, row.op, row.kind, row.name, row.status, row.input, row.output,
            row.error, row.started_at, row.finished_at, row.attempts, row.prev_hash,
            row.hash, row.branch,
        )  # fmt: skip


async def reorder_journal_rows(s: Scenario) -> None:
    rows = {r.seq: r for r in await s.app.journal(s.runs["five"])}
    for a, b in ((1, 3), (3, 1)):
        r = rows[b]
        await s.sql(
            "UPDATE codara_journal SET op = ?, name = ?, output = ?, prev_hash = ?, hash = ?, "
            "started_at = ?, finished_at = ? WHERE run_id = ? AND seq = ?",
            r.op, r.name, r.output, r.prev_hash, r.hash, r.started_at, r.finished_at,
            s.runs["five"], a,
        )  # fmt: skip


async def edit_run_output(s: Scenario) -> None:
    await s.sql("UPDATE codara_runs SET output = '6' WHERE id = ?", s.runs["five"])


async def edit_run_error(s: Scenario) -> None:
    await s.sql("UPDATE codara_runs SET error = NULL WHERE id = ?", s.runs["boom"])


async def edit_run_status(s: Scenario) -> None:
    await s.sql("UPDATE codara_runs SET status = 'completed' WHERE id = ?", s.runs["boom"])


async def cancel_with_tail_cut(s: Scenario) -> None:
    """A completed run made to look cancelled: the result row and the step before it cut."""
    await s.sql("DELETE FROM codara_journal WHERE run_id = ? AND seq >= 4", s.runs["five"])
    await s.sql(
        "UPDATE codara_runs SET status = 'cancelled', output = NULL WHERE id = ?", s.runs["five"]
    )


async def uncancel(s: Scenario) -> None:
    """A cancelled run made to look still asleep."""
    rid = s.runs["nap_cancelled"]
    await s.sql("UPDATE codara_runs SET status = 'sleeping' WHERE id = ?", rid)


async def cancel_a_waiting_run(s: Scenario) -> None:
    """A waiting run marked cancelled by hand, without Codara's cancel."""
    await s.sql("UPDATE codara_runs SET status = 'cancelled' WHERE id = ?", s.runs["waits"])


async def delete_run(s: Scenario) -> None:
    await s.sql("DELETE FROM codara_journal WHERE run_id = ?", s.runs["five2"])
    await s.sql("DELETE FROM codara_runs WHERE id = ?", s.runs["five2"])


async def rewrite_chain_consistently(s: Scenario) -> None:
    """Edit a step's output and the run's output, re-hash every row (no key: SHA-256)."""
    rid = s.runs["five"]
    rows = await s.app.journal(rid)
    rows[2] = replace(rows[2], output="1000")
    rows[-1] = replace(rows[-1], output="7")
    await s.rewrite_journal(rid, rows)
    await s.sql("UPDATE codara_runs SET output = '7' WHERE id = ?", rid)


async def rewrite_chain_and_heads(s: Scenario) -> None:
    """As above, and the chain heads re-hashed from that run's entry on: only the key (the
    heads before are keyed) or an anchor can tell."""
    await rewrite_chain_consistently(s)
    rid = s.runs["five"]
    heads = await s.heads()
    entry = next(h for h in heads if h.subject == rid)
    new_head = (await s.app.journal(rid))[-1].hash
    await s.rewrite_heads(entry.seq, {entry.seq: {"head": new_head}})


async def delete_run_and_its_heads(s: Scenario) -> None:
    """A run deleted with its heads entry, and the heads after it re-chained (no key)."""
    rid = s.runs["five2"]
    heads = await s.heads()
    entry = next(h for h in heads if h.subject == rid)
    await delete_run(s)
    # move every later entry down one seq, re-chained
    await s.sql("DELETE FROM codara_chain_heads WHERE seq = ?", entry.seq)
    await s.sql("UPDATE codara_chain_heads SET seq = seq - 1 WHERE seq > ?", entry.seq)
    await s.rewrite_heads(entry.seq, {})


async def truncate_heads(s: Scenario) -> None:
    """The newest heads entries deleted: only an anchor written before can tell."""
    heads = await s.heads()
    await s.sql("DELETE FROM codara_chain_heads WHERE seq > ?", heads[-1].seq - 2)


async def delete_heads_entry(s: Scenario) -> None:
    heads = await s.heads()
    entry = next(h for h in heads if h.subject == s.runs["five2"])
    await s.sql("DELETE FROM codara_chain_heads WHERE seq = ?", entry.seq)


async def edit_heads_entry(s: Scenario) -> None:
    heads = await s.heads()
    entry = next(h for h in heads if h.subject == s.runs["boom"])
    await s.sql("UPDATE codara_chain_heads SET state = 'completed' WHERE seq = ?", entry.seq)


async def _events(s: Scenario, label: str) -> list[tuple[int, str]]:
    rows = await s.app.store.execute_raw(
        "SELECT id, action FROM codara_review_events WHERE review_id = ? ORDER BY id",
        (s.reviews[label],),
    )
    return [(int(r[0]), str(r[1])) for r in rows]


async def edit_review_event(s: Scenario) -> None:
    """Who decided: the approving reviewer's name replaced."""
    event_id = next(i for i, a in await _events(s, "approved") if a == "approve")
    await s.sql("UPDATE codara_review_events SET actor = 'mallory' WHERE id = ?", event_id)


async def edit_review_diff(s: Scenario) -> None:
    """The edit diff changed and the event re-hashed without the key."""
    event_id = next(i for i, a in await _events(s, "edited") if a == "edit")
    detail = json.dumps({"diff": [], "comment": None})
    forged = await s.forged_event_hash(event_id, detail=detail)
    await s.sql(
        "UPDATE codara_review_events SET detail = ?, hash = ? WHERE id = ?",
        detail, forged, event_id,
    )  # fmt: skip


async def edit_review_shown(s: Scenario) -> None:
    """What the reviewer was shown, rewritten."""
    event_id = next(i for i, a in await _events(s, "approved") if a == "approve")
    await s.sql("UPDATE codara_review_events SET shown = '{}' WHERE id = ?", event_id)


async def delete_last_review_event(s: Scenario) -> None:
    event_id = (await _events(s, "approved"))[-1][0]
    await s.sql("DELETE FROM codara_review_events WHERE id = ?", event_id)


async def delete_first_review_event(s: Scenario) -> None:
    event_id = (await _events(s, "open"))[0][0]
    await s.sql("DELETE FROM codara_review_events WHERE id = ?", event_id)


async def delete_review(s: Scenario) -> None:
    rid = s.reviews["edited"]
    await s.sql("DELETE FROM codara_review_events WHERE review_id = ?", rid)
    await s.sql("DELETE FROM codara_reviews WHERE id = ?", rid)


# (tampering, detected without an anchor when unkeyed, ... when keyed)
CORPUS: list[tuple[Tamper, bool, bool]] = [
    (edit_journal_row, True, True),
    (delete_journal_row, True, True),
    (delete_journal_tail, True, True),
    (insert_journal_row, True, True),
    (insert_row_in_the_middle, True, True),
    (reorder_journal_rows, True, True),
    (edit_run_output, True, True),
    (edit_run_error, True, True),
    (edit_run_status, True, True),
    (cancel_with_tail_cut, True, True),
    (uncancel, True, True),
    (cancel_a_waiting_run, True, True),
    (delete_run, True, True),
    (rewrite_chain_consistently, True, True),
    (rewrite_chain_and_heads, False, True),
    (delete_run_and_its_heads, False, True),
    (truncate_heads, False, False),
    (delete_heads_entry, True, True),
    (edit_heads_entry, True, True),
    (edit_review_event, True, True),
    (edit_review_diff, True, True),
    (edit_review_shown, True, True),
    (delete_last_review_event, True, True),
    (delete_first_review_event, True, True),
    (delete_review, True, True),
]


async def test_untouched_data_is_never_reported(scenario: Scenario, keyed: bool) -> None:
    report = await scenario.app.verify()
    assert report.problems == []
    assert report.keyed is keyed
    assert report.unkeyed_hashes == 0
    assert report.runs_checked == len(scenario.runs)
    assert report.reviews_checked == 3
    # one heads entry per ended run (7) and one per review event (3 creates, 2 claims,
    # an approve and an edit)
    assert report.heads_checked == 7 + 7
    for run_id in scenario.runs.values():
        assert (await scenario.app.verify(run_id)).ok


async def test_every_tampering_is_detected(scenario: Scenario, keyed: bool) -> None:
    app = scenario.app
    anchor_doc = await make_anchor(app.store, chain_key(), app.clock())
    anchor = read_anchor(json.dumps(anchor_doc), chain_key(), "anchor.json")
    assert isinstance(anchor, Anchor)
    assert (await app.verify(anchor=anchor)).ok
    saved = await scenario.snapshot()
    missed: list[str] = []
    for tamper, unkeyed_alone, keyed_alone in CORPUS:
        await tamper(scenario)
        with_anchor = await app.verify(anchor=anchor)
        if with_anchor.ok:
            missed.append(f"{tamper.__name__} (with the anchor)")
        alone = keyed_alone if keyed else unkeyed_alone
        if alone and (await app.verify()).ok:
            missed.append(tamper.__name__)
        await scenario.restore(saved)
        clean = await app.verify(anchor=anchor)
        assert clean.ok, (tamper.__name__, clean.problems)
    assert missed == []


async def test_an_anchor_taken_before_is_not_fooled_by_later_work(scenario: Scenario) -> None:
    """New runs and review events after the anchor extend the heads: still clean."""
    app = scenario.app
    anchor = read_anchor(
        json.dumps(await make_anchor(app.store, chain_key(), app.clock())), chain_key(), "a"
    )
    await app.run("five")
    await app.cancel(scenario.runs["nap"])
    await app.send_signal(scenario.runs["waits"], "go", {"ok": True})
    await app.work(until_idle=True)
    report = await app.verify(anchor=anchor)
    assert report.problems == []
    assert report.anchor_checked
