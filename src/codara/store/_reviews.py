"""SQL for reviews, their event log, users and tokens. Every function runs inside a ``Tx``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from codara.store._audit import chain_review_event
from codara.store._base import Tx, signal_run

__all__ = ["ReviewEvent", "ReviewRecord", "TokenRecord", "UserRecord", "signal_run"]


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    id: str
    run_id: str
    workflow: str
    step: str
    status: str
    role: str
    assignee: str | None
    claim_expires_at: float | None
    priority: int
    due_at: float | None
    follow_up_at: float | None
    on_timeout: str
    escalate_to: str | None
    escalation_seconds: float | None
    escalation_level: int
    approvals_required: int
    initiator: str | None
    low_risk: int
    policy: str | None
    policy_version: str | None
    reason: str | None
    proposal: str
    proposal_schema: str | None
    context: str | None
    reject_reasons: str | None
    outcome: str | None
    result: str | None
    version: int
    created_at: float
    updated_at: float
    decided_at: float | None
    kind: str = "decision"
    """``decision`` (the run waits for it) or ``audit`` (after the fact: the answer went out)."""
    sampling_probability: float | None = None
    """An audit's chance of having been picked: its verdict weighs 1 / this in estimates."""


@dataclass(frozen=True, slots=True)
class ReviewEvent:
    id: int
    review_id: str
    actor: str
    action: str
    detail: str | None
    shown: str | None
    at: float
    prev_hash: str = ""  # the review's event chain (see store/_audit.py)
    hash: str = ""


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    password_hash: str | None
    roles: str
    disabled: int
    created_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str
    username: str
    name: str
    kind: str
    created_at: float
    expires_at: float | None
    revoked: int


REVIEW_COLUMNS = ", ".join(f.name for f in fields(ReviewRecord))
_EVENT_COLUMNS = ", ".join(f.name for f in fields(ReviewEvent))
_USER_COLUMNS = ", ".join(f.name for f in fields(UserRecord))
_TOKEN_COLUMNS = ", ".join(f.name for f in fields(TokenRecord))
OPEN = ("pending", "claimed")
RUN_FINISHED = ("completed", "failed", "cancelled")


# -- reviews ---------------------------------------------------------------------------------
async def insert_review(tx: Tx, record: ReviewRecord) -> None:
    marks = ", ".join("?" * len(fields(ReviewRecord)))
    values = [getattr(record, f.name) for f in fields(ReviewRecord)]
    await tx.execute(f"INSERT INTO codara_reviews ({REVIEW_COLUMNS}) VALUES ({marks})", values)


async def get_review(tx: Tx, review_id: str, *, lock: bool = False) -> ReviewRecord | None:
    sql = f"SELECT {REVIEW_COLUMNS} FROM codara_reviews WHERE id = ?"
    if lock:  # the caller changes it: nobody else may in between
        await tx.for_update()
        if tx.dialect == "postgresql":
            sql += " FOR UPDATE"
    rows = await tx.fetchall(sql, (review_id,))
    return ReviewRecord(*rows[0]) if rows else None


async def list_reviews(
    tx: Tx,
    *,
    roles: Sequence[str] | None,
    statuses: Sequence[str],
    run_id: str | None = None,
    limit: int = 100,
) -> list[ReviewRecord]:
    clauses = [f"status IN ({', '.join('?' * len(statuses))})"]
    params: list[Any] = list(statuses)
    if roles is not None:
        if not roles:
            return []
        clauses.append(f"role IN ({', '.join('?' * len(roles))})")
        params.extend(roles)
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    # Most urgent first: priority, then the nearest deadline (none last), then the oldest.
    sql = (
        f"SELECT {REVIEW_COLUMNS} FROM codara_reviews WHERE {' AND '.join(clauses)} "
        "ORDER BY priority DESC, CASE WHEN due_at IS NULL THEN 1 ELSE 0 END, due_at, "
        "created_at LIMIT ?"
    )
    rows = await tx.fetchall(sql, (*params, limit))
    return [ReviewRecord(*r) for r in rows]


async def queue_counts(
    tx: Tx, roles: Sequence[str] | None
) -> list[tuple[str, int, float | None, float]]:
    """Per role: open items, the nearest deadline, the oldest item's creation time."""
    where = "status IN ('pending', 'claimed')"
    params: list[Any] = []
    if roles is not None:
        if not roles:
            return []
        where += f" AND role IN ({', '.join('?' * len(roles))})"
        params.extend(roles)
    rows = await tx.fetchall(
        f"SELECT role, COUNT(*), MIN(due_at), MIN(created_at) FROM codara_reviews "
        f"WHERE {where} GROUP BY role ORDER BY role",
        params,
    )
    return [(r[0], int(r[1]), r[2], r[3]) for r in rows]


async def update_review(tx: Tx, review_id: str, version: int, **changes: Any) -> bool:
    """Apply ``changes`` if the row is still at ``version`` (optimistic concurrency)."""
    sets = ", ".join(f"{name} = ?" for name in changes)
    n = await tx.execute(
        f"UPDATE codara_reviews SET {sets}, version = version + 1 WHERE id = ? AND version = ?",
        (*changes.values(), review_id, version),
    )
    return n == 1


async def due_reviews(tx: Tx, now: float, limit: int = 100) -> list[str]:
    rows = await tx.fetchall(
        "SELECT id FROM codara_reviews WHERE status IN ('pending', 'claimed') "
        "AND due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
        (now, limit),
    )
    return [r[0] for r in rows]


async def add_event(
    tx: Tx,
    review_id: str,
    actor: str,
    action: str,
    detail: str | None,
    shown: str | None,
    at: float,
) -> None:
    """Append an event to the review's hash chain (and its head to the global heads)."""
    prev, h = await chain_review_event(tx, review_id, actor, action, detail, shown, at)
    await tx.execute(
        "INSERT INTO codara_review_events (review_id, actor, action, detail, shown, at, "
        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (review_id, actor, action, detail, shown, at, prev, h),
    )


async def run_status(tx: Tx, run_id: str) -> str | None:
    """The status of a review's run, read inside the review's transaction."""
    rows = await tx.fetchall("SELECT status FROM codara_runs WHERE id = ?", (run_id,))
    return str(rows[0][0]) if rows else None


async def open_reviews_of_finished_runs(tx: Tx, limit: int = 100) -> list[tuple[str, str]]:
    """(review id, run status) of open items whose run is finished: nobody waits for them.
    Audits are not among them: they judge a finished answer, whatever became of its run."""
    marks = ", ".join("?" * len(RUN_FINISHED))
    rows = await tx.fetchall(
        "SELECT r.id, u.status FROM codara_reviews r JOIN codara_runs u ON u.id = r.run_id "
        f"WHERE r.status IN ('pending', 'claimed') AND r.kind <> 'audit' "
        f"AND u.status IN ({marks}) "
        "ORDER BY r.created_at LIMIT ?",
        (*RUN_FINISHED, limit),
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def events(tx: Tx, review_id: str) -> list[ReviewEvent]:
    rows = await tx.fetchall(
        f"SELECT {_EVENT_COLUMNS} FROM codara_review_events WHERE review_id = ? ORDER BY id",
        (review_id,),
    )
    return [ReviewEvent(*r) for r in rows]


# -- users and tokens ------------------------------------------------------------------------
async def upsert_user(
    tx: Tx, username: str, password_hash: str | None, roles: str, now: float
) -> None:
    found = await tx.fetchall("SELECT username FROM codara_users WHERE username = ?", (username,))
    if found:
        await tx.execute(
            "UPDATE codara_users SET password_hash = COALESCE(?, password_hash), roles = ?, "
            "disabled = 0 WHERE username = ?",
            (password_hash, roles, username),
        )
    else:
        await tx.execute(
            f"INSERT INTO codara_users ({_USER_COLUMNS}) VALUES (?, ?, ?, 0, ?)",
            (username, password_hash, roles, now),
        )


async def get_user(tx: Tx, username: str) -> UserRecord | None:
    rows = await tx.fetchall(
        f"SELECT {_USER_COLUMNS} FROM codara_users WHERE username = ?", (username,)
    )
    return UserRecord(*rows[0]) if rows else None


async def list_users(tx: Tx) -> list[UserRecord]:
    rows = await tx.fetchall(f"SELECT {_USER_COLUMNS} FROM codara_users ORDER BY username")
    return [UserRecord(*r) for r in rows]


async def users_with_role(tx: Tx, role: str) -> list[str]:
    return [u.username for u in await list_users(tx) if role in u.roles.split(",")]


async def insert_token(tx: Tx, token: TokenRecord) -> None:
    marks = ", ".join("?" * len(fields(TokenRecord)))
    values = [getattr(token, f.name) for f in fields(TokenRecord)]
    await tx.execute(f"INSERT INTO codara_tokens ({_TOKEN_COLUMNS}) VALUES ({marks})", values)


async def get_token(tx: Tx, token_hash: str) -> TokenRecord | None:
    rows = await tx.fetchall(
        f"SELECT {_TOKEN_COLUMNS} FROM codara_tokens WHERE token_hash = ?", (token_hash,)
    )
    return TokenRecord(*rows[0]) if rows else None


async def revoke_tokens(tx: Tx, *, username: str, name: str | None = None) -> int:
    if name is None:
        return await tx.execute(
            "UPDATE codara_tokens SET revoked = 1 WHERE username = ?", (username,)
        )
    return await tx.execute(
        "UPDATE codara_tokens SET revoked = 1 WHERE username = ? AND name = ?", (username, name)
    )
