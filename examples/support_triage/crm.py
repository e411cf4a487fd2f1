"""A small CRM the demo creates: customers, the outbox of replies, and the human queue.

It stands for the bank's real systems. Writes carry an idempotency key (the run id), so a
step that is executed again after a crash does not send a second reply.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

from .data import CUSTOMERS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, tier TEXT NOT NULL,
    country TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    idempotency_key TEXT PRIMARY KEY, ticket_id TEXT, customer_id INTEGER, intent TEXT,
    body TEXT NOT NULL, sent_at TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS human_queue (
    idempotency_key TEXT PRIMARY KEY, ticket_id TEXT, customer_id INTEGER, intent TEXT,
    confidence REAL, reason TEXT, queued_at TEXT DEFAULT CURRENT_TIMESTAMP);
"""

_FIRST = ["Ada", "Ben", "Chloe", "Dev", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon"]
_LAST = ["Ng", "Okafor", "Silva", "Meyer", "Rossi", "Kim", "Dubois", "Novak", "Haddad", "Berg"]


def create(path: Path, *, seed: int = 7) -> None:
    """(Re)create the CRM with ``CUSTOMERS`` synthetic customers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA)
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
            [
                (
                    i,
                    f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                    f"customer{i}@example.com",
                    rng.choices(["standard", "premium", "business"], [7, 2, 1])[0],
                    rng.choice(["GB", "DE", "FR", "ES", "IT", "NL"]),
                )
                for i in range(1, CUSTOMERS + 1)
            ],
        )


class CRM:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                create(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._conn = conn
        return self._conn

    def customer(self, customer_id: int) -> dict[str, Any]:
        """What the workflow may see of a customer: no name, no e-mail (they would land in
        the journal)."""
        row = (
            self._db()
            .execute("SELECT id, tier, country FROM customers WHERE id = ?", (customer_id,))
            .fetchone()
        )
        if row is None:
            return {"id": customer_id, "tier": "unknown", "country": "unknown", "found": False}
        return {"id": row[0], "tier": row[1], "country": row[2], "found": True}

    def send_reply(
        self, key: str, ticket_id: str | None, customer_id: int, intent: str, body: str
    ) -> str:
        self._db().execute(
            "INSERT INTO outbox (idempotency_key, ticket_id, customer_id, intent, body) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            (key, ticket_id, customer_id, intent, body),
        )
        return key

    def queue_for_human(
        self,
        key: str,
        ticket_id: str | None,
        customer_id: int,
        intent: str,
        confidence: float,
        reason: str,
    ) -> str:
        self._db().execute(
            "INSERT INTO human_queue (idempotency_key, ticket_id, customer_id, intent, "
            "confidence, reason) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (key, ticket_id, customer_id, intent, confidence, reason),
        )
        return key

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def counts(self) -> dict[str, int]:
        db = self._db()
        return {
            "outbox": db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0],
            "human_queue": db.execute("SELECT COUNT(*) FROM human_queue").fetchone()[0],
        }
