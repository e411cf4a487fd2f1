"""Presentation helpers for the console's templates: times, JSON, journal rows, ordering."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment

from codara.review import ReviewItem
from codara.store import JournalRecord

__all__ = [
    "DONE",
    "holder",
    "journal_rows",
    "register_filters",
    "safe_next",
    "sort_by_deadline",
]

# What the page after a POST says happened (``?done=...``); anything else shows nothing.
DONE = {
    "approved": "Approved. The run resumes.",
    "edited": "Your edited proposal was recorded. The run resumes with it.",
    "rejected": "Rejected. The run resumes with your reason.",
    "claimed": "Claimed: colleagues skip this item for the next 15 minutes.",
    "unclaimed": "Released back to the queue.",
    "bulk": "Approved {n} low-risk item(s).",
    "cancelled": "Run cancelled.",
}


def when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60)} min"
    return f"{hours / 24:.1f} days"


def until(ts: float | None, now: float) -> str:
    """A deadline relative to now: 'in 55 min' or '5 min overdue'."""
    if ts is None:
        return "no deadline"
    return f"in {_span(ts - now)}" if ts >= now else f"{_span(now - ts)} overdue"


def ago(ts: float | None, now: float) -> str:
    return "—" if ts is None else f"{_span(now - ts)} ago"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def register_filters(env: Environment) -> None:
    env.filters.update(
        when=when, until=until, ago=ago, pretty=pretty, short=short, duration=duration
    )


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def journal_rows(rows: Iterable[JournalRecord]) -> list[dict[str, Any]]:
    """The run's trace for display, values decoded from JSON; a read says what it read."""
    from codara.engine._read import read_summary

    return [
        {
            "seq": r.seq,
            "kind": r.kind,
            "name": r.name,
            "status": r.status,
            "duration": r.finished_at - r.started_at,
            "attempts": r.attempts,
            "input": _decoded(r.input),
            "output": _decoded(r.output),
            "error": _decoded(r.error),
            "at": r.started_at,
            "data": read_summary(r),
        }
        for r in rows
    ]


def sort_by_deadline(items: Iterable[ReviewItem]) -> list[ReviewItem]:
    """Oldest (nearest) deadline first, items without one last; then priority, then age."""
    return sorted(
        items,
        key=lambda i: (i.due_at is None, i.due_at or 0.0, -i.priority, i.created_at),
    )


def holder(item: ReviewItem, now: float) -> str | None:
    """Who holds the item's claim right now (a lapsed claim holds nothing)."""
    if item.status != "claimed" or item.assignee is None:
        return None
    if item.claim_expires_at is not None and item.claim_expires_at <= now:
        return None
    return item.assignee


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/queue"
    if any(c in target for c in "\r\n\x00") or target.startswith("/login"):
        return "/queue"
    return target
