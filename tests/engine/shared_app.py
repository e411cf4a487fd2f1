"""The app the shared-workers test runs in ``codara worker`` processes.

``shared`` runs three steps; the last writes one row (run id, pid) into ``shared_effects``
from a connection of its own, outside the journal: an execution of that step twice would
leave two rows, a run lost none.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

import codara

EFFECTS_DDL = "CREATE TABLE shared_effects (run_id TEXT NOT NULL, pid INTEGER NOT NULL)"

app = codara.App()
_conn: psycopg.Connection[Any] | None = None


def _effect(run_id: str) -> int:
    global _conn
    if _conn is None:
        _conn = psycopg.connect(os.environ["CODARA_DATABASE_URL"], autocommit=True)
    _conn.execute("INSERT INTO shared_effects (run_id, pid) VALUES (%s, %s)", (run_id, os.getpid()))
    return os.getpid()


@app.workflow(name="shared")
async def shared(ctx: codara.Context, _: Any) -> int:
    await ctx.step("first", lambda: 1)
    await ctx.step("pause", asyncio.sleep, 0.01)  # runs overlap: both workers get some
    return await ctx.step("effect", _effect, ctx.run_id)
