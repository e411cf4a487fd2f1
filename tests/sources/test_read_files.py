"""The file source through ``ctx.read``: declared in the settings, its dirty lines and the
records its model refuses quarantined with their reasons, a crash-free replay that reads
nothing again, and a bad declaration stopped when the App is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import codara
from codara.config import load_settings
from codara.engine import NO_RETRY
from codara.errors import ConfigError

INBOX = (
    "id,customer,text\n"
    "1,10,my card was declined\n"
    "2,11\n"  # ragged: two fields
    "3,12,\n"  # the model refuses an empty text
    "4,13,where is my transfer\n"
)


class Ticket(BaseModel):
    id: int
    customer: int
    text: str = Field(min_length=1)


def _app(db_url: str, root: Path, **table: Any) -> codara.App:
    source = {"kind": "file", "root": str(root), "paths": ["inbox/*.csv"], "batch_rows": 2,
              "record_model": f"{__name__}:Ticket", **table}  # fmt: skip
    settings = load_settings(
        overrides={"store": {"url": db_url, "durability": "os"}, "sources": {"inbox": source}}
    )
    app = codara.App(settings=settings, retry=NO_RETRY)

    @app.workflow(name="intake")
    async def intake(ctx: codara.Context, pattern: str) -> list[int]:
        ids: list[int] = []
        async for batch in ctx.read_batches("inbox", pattern):
            ids.extend(int(str(r["id"])) for r in batch.rows)
        return ids

    return app


async def test_a_dirty_csv_is_read_once_with_its_bad_lines_in_quarantine(
    db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "2026-12.csv").write_text(INBOX)
    app = _app(db_url, tmp_path)
    async with app:
        run_id = await app.start_run("intake", "inbox/*.csv")
        await app.work(until_idle=True)
        assert await app.output(run_id) == [1, 4]
        rows = await app.store.execute_raw(
            "SELECT rule, position FROM codara_quarantine ORDER BY position"
        )
        reads = [r for r in await app.journal(run_id) if r.kind == "read"]
    assert sorted((str(r), str(p)) for r, p in rows) == [
        ("ragged_row", "inbox/2026-12.csv:3"), ("schema.text", "inbox/2026-12.csv:4"),
    ]  # fmt: skip
    lineage = [json.loads(r.output or "")["lineage"] for r in reads]
    assert sum(b["seen"] for b in lineage) == 4  # every line after the header, once
    assert lineage[0]["touched"] == ["inbox/2026-12.csv"]
    assert lineage[0]["newest"] is not None  # the file's modification time


def test_a_file_source_whose_root_is_missing_stops_at_load(tmp_path: Path) -> None:
    app = _app("sqlite:///" + str(tmp_path / "c.db"), tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"\[sources.inbox\]"):
        assert app.sources  # validated when first asked for: at a worker's start
