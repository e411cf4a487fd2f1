"""The store's side of the audit trail: how chain hashes are made, and the rows that anchor
each chain's head in one global, append-only sequence (``codara_chain_heads``).

A hash records the scheme that made it, so rows written before a key was set still verify:

- 64 hex digits: plain SHA-256 (no ``CODARA_AUDIT_KEY``; every row before keys existed);
- ``k1:<kid>:`` then 56 hex digits: HMAC-SHA256 keyed with ``CODARA_AUDIT_KEY``, truncated to
  224 bits so it fits the same 64-character column; ``kid`` names the key (4 hex digits of an
  HMAC of a constant), so a verifier can tell a wrong key from tampering.

A heads row is appended, in the same transaction, when a run finishes or is cancelled and
when a review event is written. Heads rows are chained to each other, so deleting a run (or
the last events of a review) means rewriting every later heads row; with a key that needs
the key, and a signed anchor kept outside the database catches it in any case.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codara.config import audit_key
from codara.store._base import Tx
from codara.store._types import JournalRecord

__all__ = [
    "HEADS_GENESIS",
    "HEAD_COLUMNS",
    "LAST_HEAD",
    "LOCK_HEADS",
    "UNKEYED",
    "ChainKey",
    "HeadEntry",
    "HeadRecord",
    "append_head",
    "append_heads",
    "chain_key",
    "chain_review_event",
    "chained_heads",
    "event_text",
    "head_text",
    "heads_from_rows",
    "key_id_of",
    "record_cancel",
    "record_finish",
    "review_genesis",
]

_NULL = "\x00"
HEADS_GENESIS = hashlib.sha256(b"codara-heads-v1").hexdigest()
_KEYED_DIGITS = 56
# One lock for the whole heads sequence (a PostgreSQL advisory lock id: "codara" in ASCII).
LOCK_HEADS = "SELECT pg_advisory_xact_lock(109330076627553)"
LAST_HEAD = "SELECT seq, hash FROM codara_chain_heads ORDER BY seq DESC LIMIT 1"


class ChainKey:
    """Makes chain hashes: HMAC-SHA256 with the audit key, or plain SHA-256 without one.

    ``seal`` is one HMAC per row: the key's inner and outer pads are hashed once here, and
    each row copies them (cheaper than ``hmac.new`` per row).
    """

    __slots__ = ("_inner", "_outer", "_prefix", "keyed", "kid", "seal")

    def __init__(self, secret: bytes | None) -> None:
        self.keyed = secret is not None
        self.kid = ""
        self._prefix = ""
        if secret is None:
            self.seal = _sha256
            return
        self.kid = hmac.new(secret, b"codara-key-id", hashlib.sha256).hexdigest()[:4]
        self._prefix = f"k1:{self.kid}:"
        # HMAC-SHA256 (RFC 2104) with both pads hashed once: per row, two C-level copies.
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.seal = self._hmac

    def _hmac(self, text: str) -> str:
        inner = self._inner.copy()
        inner.update(text.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return self._prefix + outer.hexdigest()[:_KEYED_DIGITS]

    def matches(self, text: str, stored: str) -> bool:
        """Whether ``stored`` is the hash of ``text`` under the scheme ``stored`` names.

        The caller has checked that a keyed ``stored`` carries this key's id.
        """
        if key_id_of(stored) is None:
            return hmac.compare_digest(_sha256(text), stored)
        return hmac.compare_digest(self._hmac(text), stored)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_id_of(stored: str) -> str | None:
    """The key id of a keyed hash, or None for a plain SHA-256 hash."""
    if stored.startswith("k1:") and len(stored) > 8 and stored[7] == ":":
        return stored[3:7]
    return None


UNKEYED = ChainKey(None)
_keys: dict[bytes, ChainKey] = {}


def chain_key() -> ChainKey:
    """The ChainKey for the ``CODARA_AUDIT_KEY`` in the environment now (cached per key)."""
    secret = audit_key()
    if secret is None:
        return UNKEYED
    found = _keys.get(secret)
    if found is None:
        found = _keys[secret] = ChainKey(secret)
    return found


def review_genesis(review_id: str, key: ChainKey) -> str:
    """What a review's first event chains to."""
    return key.seal(f"codara-review-v1\x1f{review_id}")


def event_text(
    prev_hash: str,
    review_id: str,
    actor: str,
    action: str,
    detail: str | None,
    shown: str | None,
    at: float,
) -> str:
    return (
        f"codara-event-v1\x1f{prev_hash}\x1f{review_id}\x1f{actor}\x1f{action}\x1f"
        f"{_NULL if detail is None else detail}\x1f{_NULL if shown is None else shown}\x1f{at!r}"
    )


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """One entry of the global heads sequence: chain ``subject`` had ``length`` rows ending
    in ``head`` when it reached ``state`` (a run's final status, or a review event's action)."""

    seq: int
    kind: str  # run | review
    subject: str
    length: int
    head: str
    state: str
    at: float
    prev_hash: str
    hash: str


HEAD_COLUMNS = "seq, kind, subject, length, head, state, at, prev_hash, hash"


def head_text(
    seq: int,
    kind: str,
    subject: str,
    length: int,
    head: str,
    state: str,
    at: float,
    prev_hash: str,
) -> str:
    return (
        f"codara-head-v1\x1f{seq}\x1f{kind}\x1f{subject}\x1f{length}\x1f{head}\x1f{state}\x1f"
        f"{at!r}\x1f{prev_hash}"
    )


async def append_head(
    tx: Tx, kind: str, subject: str, length: int, head: str, state: str, at: float
) -> None:
    """Append one heads row inside ``tx``. Appends are serialised: SQLite's write lock, and on
    PostgreSQL a transaction-scoped advisory lock taken after the run row's lock (every
    caller locks the run row first, so the two locks are always taken in the same order)."""
    await append_heads(tx, [(kind, subject, length, head, state, at)])


HeadEntry = tuple[str, str, int, str, str, float]
"""What one heads row records: kind, subject, length, head, state, at."""


async def append_heads(tx: Tx, entries: Sequence[HeadEntry]) -> None:
    """Append heads rows inside ``tx``, in order, each chained to the one before (a group
    commit's finishes: one lock, one read of the last head, one INSERT)."""
    if not entries:
        return
    if tx.dialect == "postgresql":
        await tx.fetchall(LOCK_HEADS)
    last = await tx.fetchall(LAST_HEAD)
    rows = chained_heads(last[0] if last else None, entries)
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(entries))
    params = [v for row in rows for v in row]
    await tx.execute(f"INSERT INTO codara_chain_heads ({HEAD_COLUMNS}) VALUES {values}", params)


def chained_heads(
    last: Sequence[Any] | None, entries: Sequence[HeadEntry]
) -> list[tuple[Any, ...]]:
    """The heads rows (``HEAD_COLUMNS``) for ``entries``, chained after ``last`` (the newest
    heads row's seq and hash, read under the heads lock; None: the sequence is empty)."""
    seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, HEADS_GENESIS)
    key = chain_key()
    rows: list[tuple[Any, ...]] = []
    for kind, subject, length, head, state, at in entries:
        h = key.seal(head_text(seq, kind, subject, length, head, state, at, prev))
        rows.append((seq, kind, subject, length, head, state, at, prev, h))
        seq, prev = seq + 1, h
    return rows


async def record_finish(tx: Tx, record: JournalRecord, status: str, now: float) -> None:
    """A run finished with ``record`` (its result row) as the last row of its chain."""
    await append_head(tx, "run", record.run_id, record.seq + 1, record.hash, status, now)


async def record_cancel(tx: Tx, run_id: str, now: float) -> None:
    """A run was cancelled: its chain ends where it is now (the run row is locked by the
    cancelling UPDATE, and its old owner is fenced, so nothing is appended after this)."""
    last = await tx.fetchall(
        "SELECT seq, hash FROM codara_journal WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
        (run_id,),
    )
    if last:
        length, head = int(last[0][0]) + 1, str(last[0][1])
    else:
        rows = await tx.fetchall("SELECT genesis_hash FROM codara_runs WHERE id = ?", (run_id,))
        length, head = 0, str(rows[0][0])
    await append_head(tx, "run", run_id, length, head, "cancelled", now)


async def chain_review_event(
    tx: Tx,
    review_id: str,
    actor: str,
    action: str,
    detail: str | None,
    shown: str | None,
    at: float,
) -> tuple[str, str]:
    """The (prev_hash, hash) of a new event of ``review_id``, and its heads row appended.

    On PostgreSQL the review's run row is locked first (see ``append_head``), which also
    serialises concurrent events of one review.
    """
    if tx.dialect == "postgresql":
        await tx.fetchall(
            "SELECT id FROM codara_runs WHERE id = "
            "(SELECT run_id FROM codara_reviews WHERE id = ?) FOR UPDATE",
            (review_id,),
        )
    key = chain_key()
    last = await tx.fetchall(
        "SELECT hash FROM codara_review_events WHERE review_id = ? ORDER BY id DESC LIMIT 1",
        (review_id,),
    )
    count = await tx.fetchall(
        "SELECT COUNT(*) FROM codara_review_events WHERE review_id = ?", (review_id,)
    )
    prev = str(last[0][0]) if last else review_genesis(review_id, key)
    h = key.seal(event_text(prev, review_id, actor, action, detail, shown, at))
    await append_head(tx, "review", review_id, int(count[0][0]) + 1, h, action, at)
    return prev, h


def heads_from_rows(rows: Sequence[Sequence[Any]]) -> list[HeadRecord]:
    return [HeadRecord(*r) for r in rows]
