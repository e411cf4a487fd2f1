"""Codara's own tables: schema, migrations and the queries on them.

Nothing outside this package talks SQL to Codara's tables.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from codara.errors import SchemaOutOfDateError
from codara.store import _decisions as decisions
from codara.store import _gate as gate
from codara.store import _reviews as reviews
from codara.store import _workflows as registry
from codara.store._base import FencedError, Params, Store, Tx, own_sql
from codara.store._migrate import SchemaState, check_schema, head_revision, schema_state, upgrade
from codara.store._reviews import ReviewEvent, ReviewRecord, TokenRecord, UserRecord
from codara.store._types import Claim, JournalRecord, RunRecord
from codara.store._url import DatabaseURL, parse_url
from codara.store._workflows import WorkflowRecord

__all__ = [
    "Claim",
    "DatabaseURL",
    "FencedError",
    "JournalRecord",
    "Params",
    "ReviewEvent",
    "ReviewRecord",
    "RunRecord",
    "SchemaState",
    "Store",
    "TokenRecord",
    "Tx",
    "UserRecord",
    "WorkflowRecord",
    "check_schema",
    "decisions",
    "gate",
    "head_revision",
    "open_store",
    "own_sql",
    "parse_url",
    "registry",
    "reviews",
    "schema_state",
    "upgrade",
]

Migrate = Literal["check", "create-if-empty", "upgrade"]


async def open_store(
    url: str | DatabaseURL,
    *,
    durability: str = "fsync",
    pool_size: int = 4,
    pool_timeout: float = 5.0,
    migrate: Migrate = "create-if-empty",
) -> Store:
    """Open the store at ``url``.

    ``pool_size`` and ``pool_timeout`` (PostgreSQL): connections in the pool, and the
    longest a call waits for a free one before raising StoreUnavailableError.

    ``migrate``: ``check`` refuses an out-of-date schema (what a worker does); ``create-if-empty``
    also creates the tables in an empty database (embedded use, tests, the demo) but never
    upgrades an existing older schema; ``upgrade`` migrates to the newest schema.
    """
    parsed = parse_url(url) if isinstance(url, str) else url
    state = await asyncio.to_thread(schema_state, parsed)
    if not state.up_to_date:
        if migrate == "upgrade" or (migrate == "create-if-empty" and state.empty):
            await asyncio.to_thread(upgrade, parsed)
        else:
            raise SchemaOutOfDateError(
                f"the database {parsed.redacted()} has schema {state.describe()}; "
                f"this Codara needs revision {state.head}",
                hint="run `codara db upgrade` (with the same CODARA_DATABASE_URL) and start again",
            )
    if parsed.dialect == "sqlite":
        from codara.store._sqlite import SQLiteStore

        return SQLiteStore(parsed, durability=durability)
    from codara.store._postgres import PostgresStore

    return await PostgresStore.connect(parsed, pool_size=pool_size, pool_timeout=pool_timeout)
