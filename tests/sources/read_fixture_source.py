"""A connector of the tests' own, loaded as a custom kind (``read_fixture_source:JsonList``):
it serves the records of a JSON list file, and logs every batch it reads, so that tests can
tell what the engine read from a source and what it replayed from the journal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from codara.errors import ScopeError
from codara.sources import JSON, Batch, Plan, Rejected, Source, SourceConfig


class JsonListConfig(SourceConfig):
    root: str
    allowed: list[str]
    newest: float | None = None


class JsonList(Source):
    kind: ClassVar[str] = "json-list"
    config_model: ClassVar[type[SourceConfig]] = JsonListConfig

    @property
    def _config(self) -> JsonListConfig:
        assert isinstance(self.config, JsonListConfig)
        return self.config

    def plan(self, target: str, /, **params: Any) -> Plan:
        if target not in self._config.allowed:
            raise ScopeError(f"{target!r} is not one of the allowed files", rule="path")
        return Plan(self.name, target, params, (target,))

    async def batches(self, plan: Plan, cursor: JSON = None) -> AsyncIterator[Batch]:
        root = Path(self._config.root)
        items = json.loads((root / plan.target).read_text())
        start = int(cursor) if isinstance(cursor, int) else 0
        size = self._config.batch_rows
        for at in range(start, len(items), size):
            with open(root / "reads.log", "a") as log:
                log.write(f"{plan.target} {at}\n")
            rows: list[dict[str, JSON]] = []
            rejected: list[Rejected] = []
            for i, item in enumerate(items[at : at + size], start=at):
                if isinstance(item, dict):
                    rows.append(item)
                else:
                    rejected.append(Rejected(item, "not an object", "not_object", f"item {i}"))
            end = at + size
            yield Batch(rows, rejected, end if end < len(items) else None,
                        version="v1", newest=self._config.newest)  # fmt: skip
        if not items:
            yield Batch([], [], None, version="v1", newest=self._config.newest)


class Ticket(BaseModel):
    """The record model the tests declare (``record_model = "read_fixture_source:Ticket"``)."""

    id: int
    text: str = Field(min_length=1)
