"""``verify_chain``: every chain, the heads sequence, and an anchor, checked together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codara.errors import ConfigError
from codara.store import ReviewEvent, Store
from codara.store._audit import (
    HEAD_COLUMNS,
    HEADS_GENESIS,
    ChainKey,
    HeadRecord,
    chain_key,
    event_text,
    head_text,
    heads_from_rows,
)
from codara.trace._chain import AuditProblem, AuditReport, Checker, check_run, downgraded

__all__ = ["Anchor", "verify_chain"]

_EVENT_COLUMNS = "id, review_id, actor, action, detail, shown, at, prev_hash, hash"


@dataclass(frozen=True)
class Anchor:
    """The newest heads entry at some moment, kept outside the database."""

    seq: int
    hash: str


def check_heads(heads: Sequence[HeadRecord], checker: Checker) -> list[AuditProblem]:
    """The heads sequence itself: contiguous from 1, chained, every entry intact."""
    problems: list[AuditProblem] = []

    def add(text: str) -> None:
        problems.append(AuditProblem("", None, text))

    prev, expected = HEADS_GENESIS, 1
    for h in heads:
        if h.seq != expected:
            add(f"heads #{expected} to #{h.seq - 1} are missing: chain heads were deleted")
        expected = h.seq + 1
        if h.prev_hash != prev:
            add(
                f"heads #{h.seq} does not chain to the entry before: chain heads were "
                "deleted, inserted or rewritten"
            )
        text = head_text(h.seq, h.kind, h.subject, h.length, h.head, h.state, h.at, h.prev_hash)
        why = checker.valid(text, h.hash)
        if why is not None:
            add(f"heads #{h.seq} was edited" if why == "edited" else f"heads #{h.seq}: {why}")
        elif downgraded(h.hash, h.prev_hash, h.head):
            add(
                f"heads #{h.seq} hashed without the key after keyed entries: rewritten, or "
                "written without CODARA_AUDIT_KEY"
            )
        prev = h.hash
    return problems


def check_review(
    review_id: str,
    run_id: str | None,
    events: list[ReviewEvent],
    heads: Sequence[HeadRecord],
    checker: Checker,
) -> list[AuditProblem]:
    """One review's event chain, and its recorded heads."""
    problems: list[AuditProblem] = []

    def add(text: str) -> None:
        problems.append(AuditProblem(run_id or "", None, text, review_id))

    if run_id is None:
        add("the review was deleted, but its events or chain heads remain")
    geneses = checker.geneses(f"codara-review-v1\x1f{review_id}")
    prev: str | None = None
    for e in events:
        if (e.prev_hash not in geneses) if prev is None else (e.prev_hash != prev):
            add(
                f"event #{e.id} ({e.action} by {e.actor}) does not chain "
                "to the event before: events were deleted, inserted or reordered"
            )
        text = event_text(e.prev_hash, e.review_id, e.actor, e.action, e.detail, e.shown, e.at)
        why = checker.valid(text, e.hash)
        if why is not None:
            add(
                f"event #{e.id} ({e.action}) was edited"
                if why == "edited"
                else f"event #{e.id}: {why}"
            )
        elif downgraded(e.hash, e.prev_hash):
            add(f"event #{e.id} hashed without the key after keyed events: rewritten")
        prev = e.hash
    if events and not heads:
        add(
            "the review's events were never recorded in the chain heads: "
            "written outside Codara, or its heads entries deleted"
        )
    if heads and heads[-1].length != len(events):
        add(
            f"the review has {len(events)} event(s), but {heads[-1].length} "
            f"were recorded (heads #{heads[-1].seq}): events were deleted "
            "or added"
        )
    for entry in heads:
        if 0 < entry.length <= len(events) and events[entry.length - 1].hash != entry.head:
            add(
                f"the events do not match the head recorded at heads #{entry.seq}: "
                "the review's chain was rewritten"
            )
    return problems


def check_anchor(heads: Sequence[HeadRecord], anchor: Anchor) -> list[AuditProblem]:
    if anchor.seq == 0:
        ok = anchor.hash == HEADS_GENESIS
        found = True
    else:
        match = [h for h in heads if h.seq == anchor.seq]
        found = bool(match)
        ok = found and match[0].hash == anchor.hash
    if not found:
        return [
            AuditProblem(
                "",
                None,
                (
                    f"heads #{anchor.seq}, named by the anchor, is missing: the "
                    "chain heads were truncated or rewritten"
                ),
            )
        ]
    if not ok:
        return [
            AuditProblem(
                "",
                None,
                (
                    f"heads #{anchor.seq} does not match the anchor: the chain "
                    "heads were rewritten before the anchor"
                ),
            )
        ]
    return []


async def verify_chain(
    store: Store,
    run_id: str | None = None,
    *,
    key: ChainKey | None = None,
    anchor: Anchor | None = None,
    require_key: bool = False,
) -> AuditReport:
    """Check one run (and its reviews), or every run, review and chain head in the store.

    ``require_key``: every hash must be keyed (for a store keyed from its first run): an
    unkeyed hash is then a problem, not a row from before the key.
    """
    key = chain_key() if key is None else key
    if require_key and not key.keyed:
        raise ConfigError(
            "checking with require_key needs CODARA_AUDIT_KEY",
            hint="set CODARA_AUDIT_KEY to the key the store's writers use",
        )
    report = AuditReport(keyed=key.keyed)
    checker = Checker(key, report, require_key=require_key)
    heads = heads_from_rows(
        await store.execute_raw(f"SELECT {HEAD_COLUMNS} FROM codara_chain_heads ORDER BY seq")
    )
    report.heads_checked = len(heads)
    report.problems.extend(check_heads(heads, checker))
    if anchor is not None:
        report.anchor_checked = True
        report.problems.extend(check_anchor(heads, anchor))
    by_subject: dict[tuple[str, str], list[HeadRecord]] = {}
    for h in heads:
        by_subject.setdefault((h.kind, h.subject), []).append(h)

    ids = [run_id] if run_id is not None else await _all_run_ids(store)
    for rid in ids:
        run = await store.get_run(rid)
        if run is None:
            report.problems.append(AuditProblem(rid, None, "no such run"))
            continue
        rows = await store.journal(rid)
        report.runs_checked += 1
        report.rows_checked += len(rows)
        report.problems.extend(check_run(run, rows, by_subject.get(("run", rid), ()), checker))
    if run_id is None:
        known = set(ids)
        for (kind, subject), entries in by_subject.items():
            if kind == "run" and subject not in known:
                report.problems.append(
                    AuditProblem(
                        subject,
                        None,
                        f"the run was deleted: the chain heads recorded it as "
                        f"{entries[-1].state} with {entries[-1].length} journal row(s) "
                        f"(heads #{entries[-1].seq})",
                    )
                )
    await _verify_reviews(store, run_id, by_subject, checker, report)
    return report


async def _all_run_ids(store: Store) -> list[str]:
    ids: list[str] = []
    after: str | None = None
    while True:
        page = await store.run_ids(after=after, limit=1000)
        if not page:
            return ids
        ids.extend(page)
        after = page[-1]


async def _verify_reviews(
    store: Store,
    run_id: str | None,
    by_subject: dict[tuple[str, str], list[HeadRecord]],
    checker: Checker,
    report: AuditReport,
) -> None:
    if run_id is None:
        reviews = dict(await store.execute_raw("SELECT id, run_id FROM codara_reviews"))
        rows = await store.execute_raw(
            f"SELECT {_EVENT_COLUMNS} FROM codara_review_events ORDER BY review_id, id"
        )
        subjects = set(reviews) | {s for k, s in by_subject if k == "review"}
    else:
        reviews = dict(
            await store.execute_raw(
                ("SELECT id, run_id FROM codara_reviews WHERE run_id = ?"), (run_id,)
            )
        )
        rows = await store.execute_raw(
            f"SELECT {_EVENT_COLUMNS} FROM codara_review_events WHERE review_id IN "
            "(SELECT id FROM codara_reviews WHERE run_id = ?) ORDER BY review_id, id",
            (run_id,),
        )
        subjects = set(reviews)
    events: dict[str, list[ReviewEvent]] = {}
    for r in rows:
        events.setdefault(r[1], []).append(ReviewEvent(*r))
    subjects |= set(events)
    for review_id in sorted(subjects):
        chain = events.get(review_id, [])
        report.reviews_checked += 1
        report.events_checked += len(chain)
        report.problems.extend(
            check_review(
                review_id,
                reviews.get(review_id),
                chain,
                by_subject.get(("review", review_id), ()),
                checker,
            )
        )
